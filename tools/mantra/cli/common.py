"""Options and helpers the subcommands share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mantra.board import DEFAULT_BOARD
from mantra.product import DEFAULT_PRODUCT
from mantra.workspace import Workspace

BoardOption = Annotated[
    str, typer.Option("-b", "--board", metavar="BOARD", help="Board: a folder of board-support/ (`mantra boards`).")
]
ProductOption = Annotated[
    str, typer.Option("-p", "--product", metavar="PRODUCT", help="Product: a folder of manifests/.")
]
ReleaseOption = Annotated[bool, typer.Option("--release", help="Optimized build (cargo --release).")]
KtestOption = Annotated[
    bool, typer.Option("--ktest", help="The in-guest kernel test image (MantraCore with --features ktest).")
]

KeysOption = Annotated[
    Path | None,
    typer.Option("--keys", metavar="DIR", envvar="MANTRA_KEYS", file_okay=False,
                 help="The product's key set (./mantra keys init DIR). Default for builds: development keys "
                      "in build/keys/PRODUCT, made on first use."),
]

__all__ = ["BoardOption", "KeysOption", "ProductOption", "ReleaseOption", "KtestOption", "DEFAULT_BOARD", "DEFAULT_PRODUCT",
           "workspace"]


def workspace(ctx: typer.Context) -> Workspace:
    """The checkout the root command located."""
    return ctx.find_root().obj
