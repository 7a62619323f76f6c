"""`mantra flash --bench`: flash a typical image (the default product) to a
QEMU board over its serial console and report docs/flash-protocol.md's
effective throughput (slot image bytes delivered ÷ bytes put on the line).

The board is a copy of the built image whose target slot (b: the board
boots slot a) is wiped, so the whole block map is sent (blocks of zeros
excepted, which the board already holds); QEMU's UART has no line rate, so
the figure is the byte ratio, deterministic on any machine.

`flash_board()` is the seam: it yields (transport, port) for a disk image;
`bench()` takes any such factory, so tests run the same figure logic
against the simulator.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from mantra.errors import MantraError
from mantra.provision.serial_flash import FlashResult, Log, Progress, Transport, flash

BoardFactory = Callable[[Path], AbstractContextManager[tuple[Transport, str]]]


class ConsoleTransport:
    """A Transport over a runner's ConsoleSession (QEMU's console socket)."""

    def __init__(self, console) -> None:
        self.console = console
        self.offset = 0

    def write(self, data: bytes) -> None:
        self.console.send_bytes(data)

    def read(self, timeout: float) -> bytes:
        data = self.console.wait_raw(self.offset, timeout)
        self.offset += len(data)
        return data

    def flush(self) -> None:
        pass

    def set_baud(self, baud: int) -> None:
        pass  # a socket has no line rate

    def close(self) -> None:
        pass


@contextmanager
def qemu_board(disk: Path, *, workspace=None) -> Iterator[tuple[Transport, str]]:
    """Boots `disk` (with manifest.json beside it) in QEMU with its console
    on a local TCP socket; yields the transport and the console's URL."""
    from mantra.qemu import console_session

    with console_session(disk, workspace=workspace) as console:
        yield ConsoleTransport(console), console.url


def wipe_slot(disk: Path, slot: str) -> None:
    """Zeroes a slot partition of `disk` (a board whose slot was never written)."""
    from mantra.signing.image import open_slot

    part = open_slot(disk, slot).partition
    with disk.open("r+b") as f:
        f.seek(part.offset)
        remaining = part.size
        zero = bytes(1 << 20)
        while remaining:
            n = min(remaining, len(zero))
            f.write(zero[:n])
            remaining -= n


def board_disk(image: Path, directory: Path, *, target: str = "b") -> Path:
    """A board for the bench: `image` (and its manifest.json) copied into
    `directory`, its `target` slot wiped."""
    directory.mkdir(parents=True, exist_ok=True)
    disk = directory / "image.img"
    for stale in ("firmware-vars.fd", "tpm"):
        path = directory / stale
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    try:
        subprocess.run(["cp", "--sparse=always", str(image), str(disk)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise MantraError(f"cannot copy {image} to {disk}: {exc}", "check the free disk space") from None
    manifest = image.with_name("manifest.json")
    if manifest.is_file():
        shutil.copy(manifest, directory / "manifest.json")
    wipe_slot(disk, target)
    return disk


def bench(image: Path, board: str, directory: Path, *, board_factory: BoardFactory | None = None,
          progress: Progress | None = None, log: Log | None = None, wait: float = 120.0, clock=None,
          **flash_options) -> FlashResult:
    """Flashes slot a of `image` to a fresh board made from it (slot b wiped)
    and returns the result; `result.effective` is the figure, `bench_line`
    prints it."""
    import time

    disk = board_disk(image, directory)
    with (board_factory or qemu_board)(disk) as (transport, port):
        return flash(image, port, board, transport=transport, progress=progress, log=log, wait=wait,
                     clock=clock or getattr(transport, "clock", None) or time.monotonic, **flash_options)
