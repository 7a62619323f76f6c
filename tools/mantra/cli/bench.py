"""`mantra bench`: kernel microbenchmarks in guest instructions."""

from __future__ import annotations

import json
import re
from typing import Annotated

import typer
from rich.table import Table

from mantra.board import DEFAULT_BOARD
from mantra.build import build
from mantra.cli.common import workspace
from mantra.console import out, step
from mantra.errors import MantraError
from mantra.qemu import boot

BENCH_PRODUCT = "bench"
BENCH_TIMEOUT = 240
# Two boots: the same-core benchmarks on one CPU (no second CPU can steal a
# benchmark's partner), the cross-core call on two.
RUNS = (("local", 1), ("cross", 2))
# Each benchmark line of the guest: `bench: <name> <median> (<n> iterations)`.
_LINE = re.compile(r"bench: (\w+) (\d+) \((\d+) iterations\)")
_NOT_AVAILABLE = re.compile(r"bench: (\w+) n/a \(([^)]*)\)")
_OVERHEAD = re.compile(r"bench: rdtsc_pair (\d+)")
BENCHMARKS = ("null_syscall", "syscall_dispatch", "channel_write_read", "ipc_call_roundtrip",
              "ipc_call_roundtrip_buffers", "ipc_call_roundtrip_cross_core", "context_switch", "port_wait_wakeup")


def parse(console: str) -> dict[str, object]:
    """The figures the guest printed, as one JSON-able object."""
    results: dict[str, object] = {}
    for name, median, iterations in _LINE.findall(console):
        results[name] = {"median_instructions": int(median), "iterations": int(iterations)}
    for name, why in _NOT_AVAILABLE.findall(console):
        results[name] = {"median_instructions": None, "why": why}
    overhead = _OVERHEAD.search(console)
    return {
        "unit": "guest instructions (QEMU -icount shift=0), median, empty rdtsc pair subtracted",
        "rdtsc_pair": int(overhead[1]) if overhead else None,
        "benchmarks": results,
    }


def bench(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Benchmark the debug build (default: release).")] = False,
    board: Annotated[str, typer.Option("-b", "--board", help="Board to run on.")] = DEFAULT_BOARD,
) -> None:
    """Boot the bench product under -icount shift=0 and print the medians, in
    guest instructions, of: null_syscall (an unknown number, refused by the
    entry stub), syscall_dispatch (CLOCK_GET: full register save, the
    dispatcher and back), channel_write_read,
    ipc_call_roundtrip (8 bytes in registers to another process and address
    space, same core), ipc_call_roundtrip_buffers (the same through memory
    buffers),
    ipc_call_roundtrip_cross_core (server pinned to CPU 1; both CPUs'
    instructions count, in sequence), context_switch, port_wait_wakeup."""
    ws = workspace(ctx)
    console = ""
    logs = []
    for mode, cpus in RUNS:
        result = build(ws, board, BENCH_PRODUCT, release=not debug,
                       service_args={BENCH_PRODUCT: ("iterations=2000", f"mode={mode}")}, variant=mode)
        step(f"Booting {ws.relative(result.image)} under -icount shift=0 with {cpus} CPU(s)")
        run = boot(result.image, timeout=BENCH_TIMEOUT, icount=True, until="bench: done", workspace=ws, smp=cpus)
        logs.append(ws.relative(run.log))
        if not run.matched:
            raise MantraError(f"the {mode} benchmark run did not finish", f"see the console log {logs[-1]}")
        # The local run's cross-core "n/a" line gives way to the two-CPU run's figure.
        console += "\n".join(line for line in run.console_text.splitlines()
                             if not (mode == "local" and "ipc_call_roundtrip_cross_core n/a" in line)) + "\n"
    figures = parse(console)
    missing = [name for name in BENCHMARKS if name not in figures["benchmarks"]]  # type: ignore[operator]
    if missing:
        raise MantraError(f"no figure for {', '.join(missing)}", f"see the console logs {', '.join(logs)}")
    if as_json:
        print(json.dumps(figures, sort_keys=True))
        return
    table = Table("benchmark", "median (guest instructions)", "iterations", box=None, header_style="bold")
    for name in BENCHMARKS:
        entry = figures["benchmarks"][name]  # type: ignore[index]
        if entry["median_instructions"] is None:
            table.add_row(name, "n/a", entry["why"])
        else:
            table.add_row(name, str(entry["median_instructions"]), str(entry["iterations"]))
    out.print(table)
    out.print(f"empty rdtsc pair: {figures['rdtsc_pair']} (subtracted); console logs: {', '.join(logs)}")


def register(app: typer.Typer) -> None:
    app.command()(bench)
