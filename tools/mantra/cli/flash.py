"""`mantra flash`: write a signed image's slot to a board over its serial
line (MantraBoot's flash mode, docs/flash-protocol.md), or over USB (DFU)."""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (BarColumn, DownloadColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)
from rich.text import Text

from typer.core import TyperCommand

from mantra import build as driver
from mantra.cli.common import DEFAULT_BOARD, DEFAULT_PRODUCT, BoardOption, ProductOption, workspace
from mantra.console import err, out
from mantra.errors import MantraError
from mantra.provision.messages import SUPPORTED_BAUDS
from mantra.provision.serial_flash import DEFAULT_WAIT, FlashResult, bench_line, flash as flash_serial

_VID_PID = re.compile(r"^[0-9a-fA-F]{1,4}:[0-9a-fA-F]{1,4}$")


def _log(line: str) -> None:
    err.print(f"[dim]flash:[/] {line}", markup=True, highlight=False, soft_wrap=True)


class _BytesOr(ProgressColumn):
    """`inner` for tasks counting bytes, `done/total` (or nothing) for the others."""

    def __init__(self, inner: ProgressColumn, counts: bool) -> None:
        super().__init__()
        self.inner = inner
        self.counts = counts

    def render(self, task):  # noqa: ANN001, ANN201 - rich's signature
        if task.fields.get("bytes"):
            return self.inner.render(task)
        return Text(f"{int(task.completed)}/{int(task.total or 0)} blocks" if self.counts else "")


@contextmanager
def _progress():
    """A rich progress bar (bytes of the slot image sent, rate, time left)
    and one for the board's FINISH check; yields (data, busy) callbacks."""
    columns = (TextColumn("{task.description}"), BarColumn(), _BytesOr(DownloadColumn(), True),
               _BytesOr(TransferSpeedColumn(), False), _BytesOr(TimeRemainingColumn(), False))
    with Progress(*columns, console=err, transient=False) as bar:
        tasks: dict[str, int] = {}

        def task(name: str, total: int) -> int:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total, bytes=name == "sending")
            return tasks[name]

        def data(done: int, total: int) -> None:
            bar.update(task("sending", total), completed=done, total=total)

        def busy(done: int, total: int) -> None:
            bar.update(task("board checking", total), completed=done, total=total)

        yield data, busy


def _summary(result: FlashResult, image: Path, from_slot: str) -> str:
    if result.dry_run:
        line_s = result.tx_bytes * 10 / result.baud
        return (f"flash: dry run: slot {from_slot} of {image} -> slot {result.target_slot} of the {result.board} on "
                f"{result.port}: {result.mapped_blocks} of {result.image_size // result.block_size} blocks mapped "
                f"({result.mapped_blocks * result.block_size} of {result.image_size} bytes), {result.encoded_bytes} "
                f"bytes encoded ({result.compression.name.lower()}), about {result.tx_bytes} bytes on the line "
                f"(~{line_s:.0f} s at {result.baud} baud; fewer if the board holds some blocks), effective about "
                f"{result.image_size / result.tx_bytes:.1f} x line rate; nothing was written")
    state = "pending: it boots next" if result.activated else "written (not activated)"
    return (f"flash: OK: slot {from_slot} of {image} -> slot {result.target_slot} of the {result.board} on "
            f"{result.port}: {result.sent_blocks} blocks sent, {result.held_blocks} already held, "
            f"{result.mapped_blocks} mapped of {result.image_size // result.block_size}; {result.line_bytes} bytes on "
            f"the line ({result.data.resent} frames resent; {result.wait_bytes} more while waiting for the board) in "
            f"{result.seconds:.1f} s at {result.baud} baud; "
            f"slot {result.target_slot} is {state}")


def flash(
    ctx: typer.Context,
    image: Annotated[Path | None, typer.Argument(
        metavar="IMAGE", dir_okay=False,
        help="A signed disk image from ./mantra build (build/BOARD/PRODUCT/image.img).")] = None,
    board: BoardOption = DEFAULT_BOARD,
    port: Annotated[str | None, typer.Option(
        "--port", metavar="PORT",
        help="The board's serial line: a tty (/dev/ttyUSB0), a pty, or any pyserial URL (socket://HOST:PORT).")]
        = None,
    baud: Annotated[int | None, typer.Option(
        "--baud", metavar="N",
        help=f"Switch the line to N baud after HELLO ({', '.join(map(str, SUPPORTED_BAUDS))}); the board and "
             "the host go back to the old rate if it does not work.")] = None,
    from_slot: Annotated[str, typer.Option(
        "--from-slot", metavar="a|b", help="The slot of IMAGE to flash (into the board's inactive slot).")] = "a",
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Check the image and (with --port) the board, print the plan; write nothing.")] = False,
    wait: Annotated[float, typer.Option(
        "--wait", metavar="S", min=0.1, help="How long to wait for MantraBoot's flash mode.")] = DEFAULT_WAIT,
    root: Annotated[Path | None, typer.Option(
        "--root", metavar="PUB", dir_okay=False,
        help="The product's root public key to verify IMAGE with (default: the key the build embedded, "
             "config/root_key.bin beside IMAGE, or the product's key set).")] = None,
    compress: Annotated[bool, typer.Option(
        "--compress/--no-compress", help="zlib-compress blocks when the board supports it.")] = True,
    bench: Annotated[bool, typer.Option(
        "--bench", help="Flash the default product to a QEMU board and print `effective throughput: N.N x line "
                        "rate` (slot image bytes ÷ bytes on the line).")] = False,
    product: ProductOption = DEFAULT_PRODUCT,
    usb: Annotated[str | None, typer.Option(
        "--usb", metavar="[VID:PID]",
        help="Flash over USB (DFU) instead of serial; VID:PID defaults to the board's.")] = None,
) -> None:
    """Flash a signed image's slot into a board's inactive slot over serial.

    Before anything is sent: the image's slot manifest must verify, be for
    -b BOARD, and after HELLO match the board's type, root key and rollback
    minimum. Then only the blocks the slot's FAT volume uses and the board
    does not already hold go over the line (zlib-compressed, each with a CRC
    per frame and a SHA-256 per block); the board checks the whole slot,
    the slot is activated (pending: it boots next, and falls back unless it
    confirms) and the board resets. A cut line is resumed by running the
    same command again."""
    ws = workspace(ctx)
    if from_slot not in ("a", "b"):
        raise MantraError(f"no slot {from_slot!r}", "--from-slot a or --from-slot b")
    if baud is not None and baud not in SUPPORTED_BAUDS:
        raise MantraError(f"{baud} baud is not a MantraFlash rate",
                          f"give one of {', '.join(map(str, SUPPORTED_BAUDS))}")
    if usb is not None:
        if usb and not _VID_PID.match(usb):
            raise MantraError(f"--usb {usb}: not a USB id", "give --usb alone (the board's ids) or --usb VID:PID "
                              "in hex, e.g. --usb 1209:0001")
        _flash_usb(image, usb or None, board, ws)
        return
    if bench:
        _bench(ws, board, product, compress)
        return
    if image is None:
        raise MantraError("no IMAGE given", f"give the image to flash, e.g. "
                          f"{ws.relative(ws.build_paths(board, product).image_dir(False) / 'image.img')}")
    if port is None and not dry_run:
        raise MantraError("no --port given", "give the board's serial line: --port /dev/ttyUSB0 (ls "
                          "/dev/serial/by-id/), or a pyserial URL such as socket://127.0.0.1:PORT")
    with _progress() as (progress, busy):
        result = flash_serial(image, port, board, from_slot=from_slot, baud=baud, wait=wait, root=root,
                              compress=compress, dry_run=dry_run, progress=progress, busy=busy, log=_log,
                              workspace_root=ws.root)
    out.print(_summary(result, image, from_slot), markup=False, soft_wrap=True)


def _flash_usb(image: Path | None, vid_pid: str | None, board: str, ws) -> None:
    if image is None:
        raise MantraError("no IMAGE given", "give the image to flash: ./mantra flash -b BOARD --usb IMAGE")
    try:
        from mantra.provision import dfu
    except ImportError:
        raise MantraError("USB flashing (DFU) is not part of this checkout yet",
                          "flash over the serial line instead: --port PORT") from None
    with _progress() as (progress, _busy):
        dfu.flash_usb(image, vid_pid, board, progress)


def _bench(ws, board: str, product: str, compress: bool) -> None:
    from mantra.provision.bench import bench

    built = driver.build(ws, board, product)
    directory = built.image.parent / "flash-bench"
    _log(f"bench: flashing slot a of {ws.relative(built.image)} to a QEMU board ({ws.relative(directory)}, "
         "slot b wiped)")
    with _progress() as (progress, busy):
        result = bench(built.image, board, directory, progress=progress, log=_log, busy=busy,
                       workspace_root=ws.root, compress=compress)
    out.print(f"flash: bench: {result.image_size} slot image bytes, {result.line_bytes} bytes on the line "
              f"({result.mapped_blocks} of {result.image_size // result.block_size} blocks mapped, "
              f"{result.sent_blocks} sent, {result.encoded_bytes} bytes encoded)", markup=False, soft_wrap=True)
    out.print(bench_line(result), markup=False)


class _FlashCommand(TyperCommand):
    """`--usb` takes an optional value: a bare `--usb` (last, or followed
    by anything but VID:PID) means the board's own USB ids."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:  # type: ignore[override]
        fixed = []
        for i, arg in enumerate(args):
            bare = arg == "--usb" and (i + 1 == len(args) or not _VID_PID.match(args[i + 1]))
            fixed.append("--usb=" if bare else arg)
        return super().parse_args(ctx, fixed)


def register(app: typer.Typer) -> None:
    app.command(cls=_FlashCommand)(flash)
