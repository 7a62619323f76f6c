"""`mantra sign`: sign a built image with a product key set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mantra.cli.common import KeysOption
from mantra.console import err, out
from mantra.errors import MantraError
from mantra.signing import keys as signing_keys
from mantra.signing.image import MANIFEST_PATH, SLOTS
from mantra.signing.sign import sign_disk


def sign(
    image: Annotated[Path, typer.Argument(metavar="IMAGE", dir_okay=False, help="A disk image ./mantra build wrote.")],
    keys: KeysOption = None,
    counter: Annotated[
        int | None,
        typer.Option("--counter", min=0, max=2**64 - 1,
                     help="Security counter (rollback index); default: the product's, from manifest.json."),
    ] = None,
    slot: Annotated[str | None, typer.Option("--slot", metavar="a|b",
                                             help="Sign only this slot; default: the ESP and every slot.")] = None,
) -> None:
    """Sign a built image with the product's keys (MANTRA/MANIFEST.SIG on its ESP and in each slot).

    Each signed manifest (board, product, version, security counter, every
    component's size and SHA-256, build provenance, with the key record and
    revocation list) goes to MANTRA/MANIFEST.SIG of the file system holding
    its components: the ESP's lists MantraBoot, each slot's its kernel, boot
    filesystem and command line. Board, product, version and provenance come
    from manifest.json beside IMAGE.
    """
    if slot is not None and slot not in SLOTS:
        raise MantraError(f"no slot {slot!r}", "--slot a or --slot b")
    if keys is None:
        raise MantraError("which keys? sign needs the product's key set", "./mantra sign IMAGE --keys DIR "
                          "(or set MANTRA_KEYS); create one with ./mantra keys init DIR")
    keyset = signing_keys.load_keyset(keys)
    results = sign_disk(image, keyset, signing_keys.passphrase_for(keys), security_counter=counter, slot=slot)
    if keyset.development:
        err.print(f"[yellow]warning:[/] signed with the development keys in {keys}; do not ship this image")
    for result in results:
        manifest = result.manifest
        out.print(f"signed {image}: {MANIFEST_PATH} ({len(result.envelope)} bytes), key {result.key.id.hex()}, "
                  f"{manifest.product} {manifest.version} for {manifest.board}, security counter "
                  f"{manifest.security_counter}, {len(manifest.components)} components ({result.target})",
                  markup=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command()(sign)
