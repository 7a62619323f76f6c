"""`mantra verify`: check a signed image offline, as MantraBoot would."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mantra.console import out
from mantra.signing.keys import load_root_public
from mantra.errors import MantraError
from mantra.signing.image import SLOTS
from mantra.signing.verify import VerifyFailure, verify_disk


def verify(
    image: Annotated[Path, typer.Argument(metavar="IMAGE", dir_okay=False, help="A signed disk image.")],
    root: Annotated[Path, typer.Option("--root", metavar="PUB", dir_okay=False,
                                       help="The product's root public key (DIR/root.pub of its key set).")],
    min_counter: Annotated[int | None, typer.Option(
        "--min-counter", metavar="N", min=0, help="Refuse a security counter lower than N (rollback check).")] = None,
    min_revocations: Annotated[int | None, typer.Option(
        "--min-revocations", metavar="N", min=0,
        help="Refuse a revocation list older than version N.")] = None,
    board: Annotated[str | None, typer.Option("-b", "--board", help="Refuse an image for another board.")] = None,
    slot: Annotated[str | None, typer.Option(
        "--slot", metavar="a|b", help="Check only this slot; default: the ESP (MantraBoot) and every slot.")] = None,
) -> None:
    """Check a signed image offline against the product's root public key.

    Checked: the ESP's signed manifest (it lists MantraBoot) and each
    slot's (kernel, boot filesystem, command line), or only --slot's. An
    empty slot is reported, not refused. Each check is printed: the key record's root signature, the revocation list's signature and that
    the key is not revoked, the manifest's signature, the key's validity when
    it signed, the security counter, the board, and every component's size
    and SHA-256. Exit status 1 and `verify: FAILED: ...` when a check fails."""
    if slot is not None and slot not in SLOTS:
        raise MantraError(f"no slot {slot!r}", "--slot a or --slot b")
    root_public = load_root_public(root)

    def report(line: str) -> None:
        out.print(f"verify: {line}", markup=False, soft_wrap=True)

    try:
        verified = verify_disk(image, root_public, min_counter=min_counter, min_revocations=min_revocations,
                               board=board, slot=slot, report=report)
    except VerifyFailure as failure:
        for reason in failure.reasons:
            out.print(f"verify: FAILED: {reason}", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    if verified.esp is not None:
        out.print(f"verify: OK: {image}: ESP (MantraBoot) signed by key {verified.esp.key.key_id.hex()}",
                  markup=False, soft_wrap=True)
    for name, slot_verified in verified.slots.items():
        manifest = slot_verified.manifest
        out.print(f"verify: OK: {image} is {manifest.product} {manifest.version} for {manifest.board}, security "
                  f"counter {manifest.security_counter}, signed by key {slot_verified.key.key_id.hex()} (slot {name})",
                  markup=False, soft_wrap=True)
    for name in verified.empty:
        out.print(f"verify: note: slot {name} is empty", markup=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command()(verify)
