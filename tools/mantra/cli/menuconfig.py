"""`mantra menuconfig`: browse and change the configuration in kconfiglib's menuconfig."""

from __future__ import annotations

import typer

from mantra import kconfig
from mantra.board import load_board
from mantra.cli.common import DEFAULT_BOARD, DEFAULT_PRODUCT, BoardOption, ProductOption, workspace
from mantra.console import out
from mantra.product import load_product


def menuconfig(ctx: typer.Context, board: BoardOption = DEFAULT_BOARD,
               product: ProductOption = DEFAULT_PRODUCT) -> None:
    """Browse and change the configuration of BOARD and PRODUCT in menuconfig.

    Saved changes go to build/BOARD/PRODUCT/menuconfig.conf, which later
    config and build runs merge last; copy its lines to the product's prj.conf
    to keep them for good, delete it to drop them.
    """
    ws = workspace(ctx)
    board_data, product_data = load_board(ws, board), load_product(ws, product)
    saved = kconfig.menuconfig(ws, board_data, product_data)
    if saved is None:
        out.print("No changes saved.")
        return
    kconfig.configure(ws, board_data, product_data)
    out.print(f"Changes saved to {ws.relative(saved)} (merged after the product's prj.conf):")
    out.print(saved.read_text(), markup=False)


def register(app: typer.Typer) -> None:
    app.command()(menuconfig)
