"""`mantra config`: resolve and write a board's and product's configuration."""

from __future__ import annotations

import typer

from mantra import kconfig
from mantra.board import load_board
from mantra.cli.common import DEFAULT_BOARD, DEFAULT_PRODUCT, BoardOption, ProductOption, workspace
from mantra.console import out
from mantra.product import load_product


def config(ctx: typer.Context, board: BoardOption = DEFAULT_BOARD, product: ProductOption = DEFAULT_PRODUCT) -> None:
    """Resolve the configuration of BOARD and PRODUCT into build/BOARD/PRODUCT/config/.

    Merges the board's defconfig and the product's prj.conf onto the Kconfig
    tree, strictly: an unknown symbol, a value that does not hold or unmet
    dependencies are errors. Writes .config, mantra_config.rs and cfg.txt.
    """
    ws = workspace(ctx)
    resolved, outputs = kconfig.configure(ws, load_board(ws, board), load_product(ws, product))
    merged = " + ".join(ws.relative(f) for f in resolved.fragments)
    state = "written" if outputs.changed else "unchanged"
    out.print(f"Configuration of {board}/{product} (Kconfig + {merged}) {state}:")
    for path in (outputs.dotconfig, outputs.rust_constants, outputs.cfg_flags):
        out.print(f"  {ws.relative(path)}")


def register(app: typer.Typer) -> None:
    app.command()(config)
