"""Booting built images headless, for scripts and tests:

    from mantra.qemu import boot
    result = boot(Path("build/qemu-x86_64/default/ktest/image.img"), timeout=120)
    assert result.exit_code == 33

    # Talk to the running system over its console (runners/console_socket.py):
    with console_session(Path("build/qemu-x86_64/default/image.img"), tpm=True) as console:
        console.wait_for("attestd: TPM", timeout=120)
        console.send_line("MANTRA-ATTEST-REQUEST " + nonce.hex())

The image's manifest.json (written beside it by `mantra build`) names its
board and product; the board's runner boots it with the configuration the
image was built with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mantra.board import load_board
from mantra.errors import MantraError
from mantra.kconfig import read_config_values
from mantra.runners import BoardRunner, BootResult, runner_for
from mantra.runners.console_socket import ConsoleSession
from mantra.workspace import Workspace

__all__ = ["BootResult", "ConsoleSession", "boot", "console_session", "image_runner"]


def boot(image: Path, timeout: float, icount: bool = False, *, until: str | None = None, echo: bool = False,
         workspace: Workspace | None = None, smp: int | None = None, tpm: bool = False) -> BootResult:
    """Boots `image` headless for at most `timeout` seconds (or until the
    console prints `until`) and returns how it ended; the console is also
    in console.log beside the image. `smp` overrides the board's CPU count.
    With `tpm` the board has a TPM 2.0 (swtpm, its state in tpm/ beside the
    image), started before and stopped after the boot."""
    runner = image_runner(image, workspace=workspace, smp=smp)
    return runner.run_headless(timeout=timeout, icount=icount, until=until, echo=echo, tpm=tpm)


@contextmanager
def console_session(image: Path, *, tpm: bool = False, icount: bool = False, workspace: Workspace | None = None,
                    smp: int | None = None, connect_timeout: float = 60) -> Iterator[ConsoleSession]:
    """Boots `image` with its console on a local TCP socket and yields the
    connected ConsoleSession (everything printed is also in console.log
    beside the image); the board (and its swtpm, with `tpm`) stops when
    the block ends."""
    runner = image_runner(image, workspace=workspace, smp=smp)
    with runner.console_session(icount=icount, tpm=tpm, connect_timeout=connect_timeout) as session:
        yield session


def image_runner(image: Path, *, workspace: Workspace | None = None, smp: int | None = None) -> BoardRunner:
    """The runner of the board `image` was built for, with the configuration
    it was built with (from manifest.json beside it)."""
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
    return runner_for(board, read_config_values(dotconfig), image, image.parent)
