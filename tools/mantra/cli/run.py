"""`mantra run`: build the image, then boot it on the board's runner."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import typer

from mantra import build as driver
from mantra.cli.common import (
    DEFAULT_BOARD,
    DEFAULT_PRODUCT,
    BoardOption,
    KtestOption,
    ProductOption,
    ReleaseOption,
    workspace,
)
from mantra.console import err, step
from mantra.runners import BootResult, runner_for


def _describe(result: BootResult, timeout: float | None, debug_exit: bool) -> str:
    if result.timed_out:
        return f"stopped after {timeout:g} s (--timeout): exit status {result.status}"
    if result.matched:
        return "the console printed the --until text: exit status 0"
    text = f"QEMU exited with status {result.exit_code}"
    if debug_exit and result.exit_code is not None and result.exit_code % 2 == 1:
        text += f" (the guest wrote {result.exit_code >> 1:#x} to isa-debug-exit)"
    return text


def run(
    ctx: typer.Context,
    board: BoardOption = DEFAULT_BOARD,
    product: ProductOption = DEFAULT_PRODUCT,
    release: ReleaseOption = False,
    headless: Annotated[
        bool, typer.Option("--headless", help="Capture the console to console.log beside the image (and echo it).")
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", metavar="S", min=0, help="With --headless: stop after S seconds (exit status 124)."),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--until", metavar="TEXT",
                     help="With --headless: stop once the console prints a line holding TEXT (exit status 0)."),
    ] = None,
    ktest: KtestOption = False,
    icount: Annotated[
        bool, typer.Option("--icount", help="Count guest instructions (QEMU -icount shift=0): deterministic timing.")
    ] = False,
    smp: Annotated[
        int | None,
        typer.Option("--smp", metavar="N", min=1, max=256,
                     help="Boot with N CPUs instead of the board's count (qemu.smp in board.toml)."),
    ] = None,
    tpm: Annotated[
        bool, typer.Option("--tpm", help="Give the board a TPM 2.0 (swtpm, started and stopped with QEMU; "
                                         "its state persists in tpm/ beside the image).")
    ] = False,
    console_port: Annotated[
        int | None,
        typer.Option("--console-port", metavar="PORT", min=1, max=65535,
                     help="Put the console on TCP 127.0.0.1:PORT (pyserial URL socket://127.0.0.1:PORT) instead of "
                          "this terminal; the board starts once a program connects. --timeout S stops it.")
    ] = None,
) -> None:
    """Build the image of BOARD and PRODUCT and boot it (QEMU: Ctrl-A X quits).

    The console is on this terminal. With --headless it is captured to
    console.log beside the image and echoed; the exit status is then QEMU's
    (the guest's isa-debug-exit value v gives (v << 1) | 1), 0 when --until
    matched, 124 on --timeout. With --tpm the board has a TPM 2.0 emulated
    by swtpm, whose state is kept in tpm/ beside the image (delete it for a
    fresh TPM). With --console-port PORT the console is a TCP socket on
    127.0.0.1:PORT for a program (e.g. the attestation host) to talk to.
    """
    if console_port is not None and (headless or until is not None):
        raise typer.BadParameter("--console-port puts the console on a socket: --headless and --until do not apply",
                                 param_hint="--console-port")
    if not headless and until is not None or (not headless and console_port is None and timeout is not None):
        raise typer.BadParameter("--timeout and --until need --headless", param_hint="--timeout/--until")
    ws = workspace(ctx)
    built = driver.build(ws, board, product, release=release, ktest=ktest)
    board_data = built.board
    if smp is not None:
        board_data = dataclasses.replace(board_data, qemu=dataclasses.replace(board_data.qemu, smp=smp))
    runner = runner_for(board_data, built.config.values, built.image, built.image.parent)
    if console_port is not None:
        step(f"Booting {ws.relative(built.image)} with the console on a socket")
        raise typer.Exit(runner.run_console_port(port=console_port, icount=icount, tpm=tpm, timeout=timeout))
    if not headless:
        raise typer.Exit(runner.run_interactive(icount=icount, tpm=tpm))
    step(f"Booting {ws.relative(built.image)} headless; console log: {ws.relative(runner.work_dir / 'console.log')}")
    result = runner.run_headless(timeout=timeout, icount=icount, until=until, echo=True, tpm=tpm)
    err.print()
    step(_describe(result, timeout, built.config.values.get("QEMU_DEBUG_EXIT") == "y"))
    raise typer.Exit(result.status)


def register(app: typer.Typer) -> None:
    app.command()(run)
