"""`mantra boards`: the boards of board-support/."""

from __future__ import annotations

import typer
from rich.table import Table

from mantra.board import board_names, load_board
from mantra.cli.common import workspace
from mantra.console import out


def boards(ctx: typer.Context) -> None:
    """List the boards (folders of board-support/)."""
    ws = workspace(ctx)
    table = Table("board", "arch", "runner", "description", box=None, header_style="bold")
    for name in board_names(ws):
        board = load_board(ws, name)
        table.add_row(board.name, board.arch, board.runner, board.description)
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command()(boards)
