"""Booting built images headless, for scripts and tests:

    from mantra.qemu import boot
    result = boot(Path("build/qemu-x86_64/default/ktest/image.img"), timeout=120)
    assert result.exit_code == 33

The image's manifest.json (written beside it by `mantra build`) names its
board and product; the board's runner boots it with the configuration the
image was built with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from mantra.board import load_board
from mantra.errors import MantraError
from mantra.kconfig import read_config_values
from mantra.runners import BootResult, runner_for
from mantra.workspace import Workspace

__all__ = ["BootResult", "boot"]


def boot(image: Path, timeout: float, icount: bool = False, *, until: str | None = None, echo: bool = False,
         workspace: Workspace | None = None, smp: int | None = None, tpm: bool = False) -> BootResult:
    """Boots `image` headless for at most `timeout` seconds (or until the
    console prints `until`) and returns how it ended; the console is also
    in console.log beside the image. `smp` overrides the board's CPU count.
    With `tpm` the board has a TPM 2.0 (swtpm, its state in tpm/ beside the
    image), started before and stopped after the boot."""
    workspace = workspace or Workspace.locate()
    manifest_path = image.parent / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise MantraError(f"cannot read {manifest_path}: {exc}", "build the image with ./mantra build") from None
    board = load_board(workspace, manifest["board"])
    dotconfig = workspace.root / manifest["config"]["path"]
    if not dotconfig.is_file() or hashlib.sha256(dotconfig.read_bytes()).hexdigest() != manifest["config"]["sha256"]:
        raise MantraError(f"{dotconfig} is not the configuration {image} was built with",
                          f"rebuild: ./mantra build -b {manifest['board']} -p {manifest['product']}")
    if smp is not None:
        board = dataclasses.replace(board, qemu=dataclasses.replace(board.qemu, smp=smp))
    runner = runner_for(board, read_config_values(dotconfig), image, image.parent)
    return runner.run_headless(timeout=timeout, icount=icount, until=until, echo=echo, tpm=tpm)
