"""`mantra slot install`: write a signed image's slot into a slot of another
disk image (what a flasher or an updater does)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mantra.console import out
from mantra.errors import MantraError
from mantra.signing.image import SLOTS
from mantra.signing.install import install_slot
from mantra.signing.keys import load_root_public

slot_app = typer.Typer(help="A/B slots of disk images.", no_args_is_help=True)


@slot_app.command("install")
def install(
    target: Annotated[Path, typer.Argument(metavar="TARGET_IMAGE", dir_okay=False,
                                           help="The disk image (device) to install into.")],
    slot: Annotated[str, typer.Option("--slot", metavar="a|b", help="The slot of TARGET_IMAGE to write.")],
    source: Annotated[Path, typer.Option("--from", metavar="SOURCE_IMAGE", dir_okay=False,
                                         help="A signed disk image (./mantra build, ./mantra sign).")],
    source_slot: Annotated[str, typer.Option("--from-slot", metavar="a|b",
                                             help="The slot of SOURCE_IMAGE to take.")] = "a",
    root: Annotated[Path | None, typer.Option("--root", metavar="PUB", dir_okay=False,
                                              help="Verify the source slot against this root public key "
                                                   "first.")] = None,
) -> None:
    """Install the contents of a signed image's slot into a slot of another disk image.

    Writes a fresh FAT file system holding SOURCE_IMAGE's slot files (kernel,
    boot filesystem, command line, MANTRA/MANIFEST.SIG) into the --slot
    partition of TARGET_IMAGE; the ESP, the other slot and the firmware state
    of TARGET_IMAGE are left alone. MantraBoot sees new contents there on the
    next boot: the slot becomes pending with CONFIG_BOOT_TRIES tries."""
    for value in (slot, source_slot):
        if value not in SLOTS:
            raise MantraError(f"no slot {value!r}", "--slot a or --slot b")
    if target.resolve() == source.resolve() and slot == source_slot:
        raise MantraError("the source and target slot are the same", "give another --slot or --from image")
    root_public = load_root_public(root) if root is not None else None
    installed = install_slot(target, slot, source, source_slot=source_slot, root_public=root_public)
    out.print(f"installed slot {source_slot} of {source} into slot {slot} of {target} (partition "
              f"{installed.partition.name}): {len(installed.files)} files, {sum(installed.files.values())} bytes, "
              f"MANIFEST.SIG sha256 {installed.envelope_sha256}", markup=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.add_typer(slot_app, name="slot")
