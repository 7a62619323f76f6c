"""`mantra build`: configure, compile and pack the disk image."""

from __future__ import annotations

import typer
from rich.table import Table

from mantra import build as driver
from mantra.cli.common import (
    DEFAULT_BOARD,
    DEFAULT_PRODUCT,
    BoardOption,
    KeysOption,
    KtestOption,
    ProductOption,
    ReleaseOption,
    workspace,
)
from mantra.console import out


def build(ctx: typer.Context, board: BoardOption = DEFAULT_BOARD, product: ProductOption = DEFAULT_PRODUCT,
          release: ReleaseOption = False, ktest: KtestOption = False, keys: KeysOption = None) -> None:
    """Build the disk image build/BOARD/PRODUCT/image.img and its manifest.json.

    Configure, compile MantraBoot and MantraCore, pack a GPT disk: the ESP
    (MantraBoot, MantraCore, the boot filesystem) and the empty A/B slots,
    and sign it (MANTRA/MANIFEST.SIG) with the product's keys: --keys DIR or
    $MANTRA_KEYS (passphrase from $MANTRA_KEY_PASSPHRASE or a prompt), else
    development keys in build/keys/PRODUCT.
    --ktest builds build/BOARD/PRODUCT/ktest/image.img instead.
    """
    ws = workspace(ctx)
    result = driver.build(ws, board, product, release=release, ktest=ktest, keys=keys)
    table = Table("component", "path on the ESP", "bytes", "sha256", box=None, header_style="bold")
    for component in result.components:
        table.add_row(component.name, component.path, f"{component.size:,}", component.sha256[:16])
    out.print(table)
    out.print(f"image:    {ws.relative(result.image)}")
    out.print(f"manifest: {ws.relative(result.manifest)}")
    if result.keys is not None:
        out.print(f"signed:   key {result.signed_by[:16]} ({ws.relative(result.keys)})")


def register(app: typer.Typer) -> None:
    app.command()(build)
