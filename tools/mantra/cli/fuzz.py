"""`mantra fuzz`: long syscall-fuzzing runs of the user-mode test suite."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from mantra.board import DEFAULT_BOARD
from mantra.build import build
from mantra.cli.common import workspace
from mantra.console import out, step
from mantra.errors import MantraError
from mantra.qemu import boot

FUZZ_PRODUCT = "utest"
FUZZ_SERVICE = "utest"
# Guest wall time per 50 000 syscalls under TCG, with a wide margin, plus the boot.
SECONDS_PER_50K = 120
BOOT_SECONDS = 180
_FUZZ_LINE = re.compile(r"fuzz: (\d+) random syscalls, (\d+) refused with an error, (\d+) succeeded")
_EXIT_LINE = re.compile(r"init: utest exited \(([^)]*\)?)\)")


def fuzz(
    ctx: typer.Context,
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="Random syscalls to issue.")] = 50_000,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the random sequence.")] = 0x5EED,
    board: Annotated[str, typer.Option("-b", "--board", help="Board to run on.")] = DEFAULT_BOARD,
) -> None:
    """Boot the utest product with COUNT random syscalls (random numbers and
    arguments, real and forged handles, bad pointers) and check that the
    kernel survives: no kernel fault or panic, no hang, and the suite's
    process ends normally. Prints the figures; exit status 0 only on success."""
    ws = workspace(ctx)
    result = build(ws, board, FUZZ_PRODUCT, service_args={FUZZ_SERVICE: (f"fuzz={count}", f"seed={seed}")},
                   variant="fuzz")
    timeout = BOOT_SECONDS + SECONDS_PER_50K * (count / 50_000 + 1)
    step(f"Booting {ws.relative(result.image)}: {count} random syscalls (seed {seed}), at most {timeout:.0f} s")
    run = boot(result.image, timeout=timeout, until="utest exited", workspace=ws)
    console = run.console_text
    figures = _FUZZ_LINE.search(console)
    exited = _EXIT_LINE.search(console)
    problems = []
    if "KERNEL FAULT" in console or "KERNEL PANIC" in console:
        problems.append("the kernel faulted (see the console log)")
    if not run.matched:
        problems.append(f"no end of the run within {timeout:.0f} s (a hang?)")
    if figures is None:
        problems.append("the fuzzer printed no figures")
    if exited is not None and exited[1] != "code 0":
        problems.append(f"the test process ended with {exited[1]}")
    if figures:
        issued, refused, succeeded = (int(v) for v in figures.groups())
        out.print(f"fuzz: {issued} random syscalls (seed {seed}): {refused} refused with an error, "
                  f"{succeeded} succeeded; kernel alive")
    if problems:
        raise MantraError("; ".join(problems), f"console log: {ws.relative(run.log)}")
    out.print(f"console log: {ws.relative(run.log)}")


def register(app: typer.Typer) -> None:
    app.command()(fuzz)
