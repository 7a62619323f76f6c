"""`mantra hil`: the hardware-in-the-loop bench (package mantra.hil).

    mantra hil places                      # the bench's places, their resources and locks
    mantra hil lock qemu-1 [--for 2h]      # keep a place (until unlock or expiry)
    mantra hil unlock qemu-1 [--break]     # --break: a stale lock, or someone else's
    mantra hil power on|off|cycle qemu-1
    mantra hil flash qemu-1 [--image IMG]
    mantra hil boot qemu-1 [--until booted|healthy]
    mantra hil console qemu-1              # the console on this terminal (Ctrl-C leaves)
    mantra hil test --places qemu-1,qemu-2 [--scenario boot,service-restart] [--junit F] [--report F]
    mantra hil serve                       # on a bench host, for remote places (over SSH)

Exit status of `test`: 0 all passed, 1 a test failed, 3 only infrastructure errors.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from mantra.cli.common import workspace
from mantra.console import err, out, step

BenchOption = Annotated[Path | None, typer.Option(
    "--bench", metavar="FILE", envvar="MANTRA_HIL_BENCH", dir_okay=False,
    help="The bench file (default: hil/benches/qemu.toml, QEMU places).")]
OwnerOption = Annotated[str | None, typer.Option(
    "--owner", metavar="NAME", envvar="MANTRA_HIL_OWNER", help="Who holds the locks (default: user@host).")]
PlaceArgument = Annotated[str, typer.Argument(metavar="PLACE", help="A place of the bench (mantra hil places).")]

app = typer.Typer(name="hil", no_args_is_help=True, help="Hardware-in-the-loop bench: places, locks, power, "
                  "console, flash, boot and tests on QEMU or real boards, locally or over SSH.")


def _bench(ctx: typer.Context, path: Path | None):  # noqa: ANN202
    from mantra.hil.bench import load_bench

    return load_bench(path, root=workspace(ctx).root)


def _owner(owner: str | None) -> str:
    from mantra.hil.lock import default_owner

    return owner or default_owner()


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip()
    try:
        if text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except (ValueError, IndexError):
        raise typer.BadParameter(f"{text!r}: a duration such as 90, 30m, 2h") from None


def _open(ctx: typer.Context, bench_path: Path | None, place: str, owner: str | None, wait: float = 0.0,
          image: Path | None = None) -> Any:
    from mantra.hil.run import open_board

    bench = _bench(ctx, bench_path)
    notes: list[str] = []
    board = open_board(bench, place, owner=_owner(owner), wait=wait, image=image, notes=notes)
    for note in notes:
        err.print(f"[yellow]{note}[/]")
    return board


@app.command()
def places(ctx: typer.Context, bench: BenchOption = None,
           verbose: Annotated[bool, typer.Option("-v", "--verbose",
                                                 help="Also list the USB serial ports connected now.")] = False) -> None:
    """List the bench's places, their resources and who holds them."""
    from rich.table import Table

    loaded = _bench(ctx, bench)
    locks = loaded.locks()
    table = Table(title=f"places of {loaded.path}")
    for column in ("place", "kind", "resources", "lock"):
        table.add_column(column)
    for spec in loaded.places.values():
        info = locks.read(spec.name) if not spec.remote else None
        table.add_row(spec.name, spec.kind, spec.summary(), info.describe() if info else
                      ("(ask the bench host)" if spec.remote else "free"))
    out.print(table)
    if verbose:
        from mantra.hil.resources import list_serial_ports

        for port in list_serial_ports():
            if port.vid is not None:
                out.print(f"USB serial: {port.device} vid={port.vid:04x} pid={port.pid:04x} "
                          f"serial={port.serial_number} location={port.location}", markup=False, soft_wrap=True)


def _remote_link(ctx: typer.Context, bench_path: Path | None, place: str):  # noqa: ANN202
    loaded = _bench(ctx, bench_path)
    spec = loaded.place(place)
    if not spec.remote:
        return loaded, None, place
    from mantra.hil.remote import link_for, remote_place

    return loaded, link_for(loaded, spec), remote_place(spec)


@app.command()
def lock(ctx: typer.Context, place: PlaceArgument, bench: BenchOption = None, owner: OwnerOption = None,
         hold: Annotated[str, typer.Option("--for", metavar="DURATION", help="Expiry (90, 30m, 2h).")] = "2h",
         wait: Annotated[float, typer.Option("--wait", metavar="S", help="Wait for a held lock.")] = 0.0) -> None:
    """Lock a place for OWNER until `unlock` or the expiry."""
    loaded, link, name = _remote_link(ctx, bench, place)
    if link is not None:
        try:
            described = link.call("lock", wait + 30, place=name, owner=_owner(owner), wait=wait,
                                  expires_in=_duration(hold))
        finally:
            link.close()
    else:
        notes: list[str] = []
        taken = loaded.locks().acquire(place, _owner(owner), wait=wait, expires_in=_duration(hold), pid=None,
                                       notes=notes)
        for note in notes:
            err.print(f"[yellow]{note}[/]")
        described = taken.info.describe()
    out.print(f"{place}: {described}", markup=False, soft_wrap=True)


@app.command()
def unlock(ctx: typer.Context, place: PlaceArgument, bench: BenchOption = None, owner: OwnerOption = None,
           force: Annotated[bool, typer.Option("--break", help="Remove the lock even if another owner "
                                               "holds it (a stale lock).")] = False) -> None:
    """Release a place (yours; with --break anyone's)."""
    loaded, link, name = _remote_link(ctx, bench, place)
    if link is not None:
        try:
            removed = link.call("unlock", place=name, owner=_owner(owner), **{"break": force})
        finally:
            link.close()
    else:
        info = loaded.locks().release(place, _owner(owner), force=force)
        removed = info.describe() if info else None
    out.print(f"{place}: " + (f"unlocked (it was {removed})" if removed else "was not locked"), markup=False, soft_wrap=True)


@app.command()
def power(ctx: typer.Context,
          action: Annotated[str, typer.Argument(metavar="on|off|cycle|status")],
          place: PlaceArgument, bench: BenchOption = None, owner: OwnerOption = None) -> None:
    """Switch a place's board on, off, or off and on again."""
    if action not in ("on", "off", "cycle", "status"):
        raise typer.BadParameter("on, off, cycle or status", param_hint="ACTION")
    board = _open(ctx, bench, place, owner)
    try:
        if action == "status":
            state = board.power.get()
            out.print(f"{place}: power {'on' if state else 'off' if state is False else 'unknown'}", soft_wrap=True)
            return
        if action != "on" and hasattr(board.console, "close"):
            board.console.close()
        getattr(board.power, action)()
        out.print(f"{place}: power {action}")
    finally:
        board.close(power_off=False)


@app.command()
def flash(ctx: typer.Context, place: PlaceArgument, bench: BenchOption = None, owner: OwnerOption = None,
          image: Annotated[Path | None, typer.Option("--image", metavar="IMG", dir_okay=False,
                                                     help="The image (default: the place's built image; for a remote place, a path on its bench host).")] = None
          ) -> None:
    """Flash a place (strategy: off -> flash-mode -> flashed)."""
    board = _open(ctx, bench, place, owner, image=image.resolve() if image else None)
    try:
        for state in ("off", "flash-mode", "flashed"):
            step(f"{place}: {state}")
            board.strategy.transition(state)
        out.print(f"{place}: {board.strategy.flash_report}", markup=False, soft_wrap=True)
    finally:
        board.close(power_off=False)


@app.command()
def boot(ctx: typer.Context, place: PlaceArgument, bench: BenchOption = None, owner: OwnerOption = None,
         until: Annotated[str, typer.Option("--until", metavar="booted|healthy")] = "healthy",
         off: Annotated[bool, typer.Option("--off", help="Power the board off afterwards.")] = False) -> None:
    """Boot a place and wait for the banners (and init's health verdict)."""
    board = _open(ctx, bench, place, owner)
    started = time.monotonic()
    try:
        board.strategy.transition(until)
        info = board.strategy.boot_info or {}
        out.print(f"{place}: {until} in {time.monotonic() - started:.1f} s: MantraBoot {info.get('bootloader')} "
                  f"(board {info.get('board')}), slot {info.get('slot')}, services {', '.join(info.get('services', []))}"
                  + (f"; healthy {board.strategy.healthy_ms} ms after boot" if until == "healthy" else ""),
                  markup=False, soft_wrap=True)
        out.print(f"console log: {board.console_log_path()}", markup=False, soft_wrap=True)
    finally:
        board.close(power_off=off)


@app.command()
def console(ctx: typer.Context, place: PlaceArgument, bench: BenchOption = None, owner: OwnerOption = None,
            timeout: Annotated[float | None, typer.Option("--timeout", metavar="S",
                                                          help="Leave after S seconds.")] = None,
            expect: Annotated[str | None, typer.Option("--expect", metavar="REGEX",
                                                       help="Leave (status 0) once a line matches.")] = None) -> None:
    """Show a place's console here; lines typed are sent to the board. Ctrl-C leaves."""
    from mantra.hil.errors import HilError

    board = _open(ctx, bench, place, owner)
    try:
        if not board.power.get():
            raise HilError(f"{place} is off", f"mantra hil power on {place} (or mantra hil boot {place})")
        board.console.open()
        mark = board.console.mark()
        stop = threading.Event()

        def typing() -> None:
            for line in sys.stdin:
                if stop.is_set():
                    break
                board.console.send(line.rstrip("\r\n"))

        if sys.stdin.isatty():
            threading.Thread(target=typing, daemon=True).start()
        deadline = None if timeout is None else time.monotonic() + timeout
        shown = mark
        try:
            while deadline is None or time.monotonic() < deadline:
                text = board.console.text_since(shown)
                if text:
                    sys.stdout.write(text)
                    sys.stdout.flush()
                    shown += len(text)
                if expect and re.search(expect, board.console.text_since(mark), re.M):
                    return
                if hasattr(board.console, "is_open") and not board.console.is_open:
                    raise HilError(f"{place}: the console closed", "the board stopped")
                time.sleep(0.1)
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()
        if expect:
            raise typer.Exit(1)
    finally:
        board.close(power_off=False)


@app.command()
def test(ctx: typer.Context, bench: BenchOption = None, owner: OwnerOption = None,
         places_option: Annotated[str | None, typer.Option(
             "--places", metavar="A,B", help="Places to run on, in parallel (default: qemu-1; all: every place).")] = None,
         scenario: Annotated[str, typer.Option("--scenario", metavar="S1,S2",
                                               help="Scenarios: boot, service-restart, flash, attest (a place with a TPM).")]
         = "boot,service-restart,flash",
         retries: Annotated[int, typer.Option("--retries", metavar="N", min=0,
                                              help="Retries after an infrastructure error.")] = 1,
         wait: Annotated[float, typer.Option("--wait", metavar="S", help="Wait for a locked place.")] = 0.0,
         junit: Annotated[Path | None, typer.Option("--junit", metavar="PATH", dir_okay=False,
                                                    help="Write JUnit XML (a testsuite per place).")] = None,
         report: Annotated[Path | None, typer.Option("--report", metavar="PATH", dir_okay=False,
                                                     help="Markdown report (default: build/hil/report.md).")] = None,
         build_first: Annotated[bool, typer.Option("--build", help="Build the default image first.")] = False,
         pytest_paths: Annotated[list[str] | None, typer.Option(
             "--pytest", metavar="PATH", help="Run these pytest files on each place instead of the scenarios "
             "(pytest --hil-place PLACE; repeat for several).")] = None) -> None:
    """Run the project's scenarios (or your pytest files) through the bench on one or more places in parallel."""
    from mantra.hil.results import FAILED, INFRA, ERROR, summarize, summary_line, write_junit, write_report
    from mantra.hil.run import RunOptions, run_places, run_pytest_places

    ws = workspace(ctx)
    loaded = _bench(ctx, bench)
    chosen = [p.strip() for p in (places_option or "qemu-1").split(",") if p.strip()]
    if chosen == ["all"]:
        chosen = list(loaded.places)
    if build_first:
        from mantra.build import build

        build(ws, "qemu-x86_64", "default")
    lock_log = threading.Lock()

    def log(line: str) -> None:
        with lock_log:
            err.print(line, markup=False, soft_wrap=True)

    options = RunOptions(scenarios=[s.strip() for s in scenario.split(",") if s.strip()], retries=retries,
                         owner=_owner(owner), wait=wait, log=log)
    if pytest_paths:
        results, wall = run_pytest_places(loaded, chosen, [str(Path(p).resolve()) for p in pytest_paths], options)
    else:
        results, wall = run_places(loaded, chosen, options)
    report = report or loaded.state_dir / "report.md"
    write_report(results, report, wall=wall)
    if junit:
        write_junit(results, junit, wall=wall)
    out.print(summary_line(results, wall), markup=False, soft_wrap=True)
    out.print(f"report: {report}" + (f"; JUnit: {junit}" if junit else ""), markup=False, soft_wrap=True)
    counts = summarize(results)
    if counts[FAILED] or counts[ERROR]:
        raise typer.Exit(1)
    if counts[INFRA]:
        raise typer.Exit(3)


@app.command()
def serve(bench: BenchOption = None) -> None:
    """Serve this host's places to a remote client (line-delimited JSON on stdin/stdout; run over SSH)."""
    from mantra.hil.remote import serve_stdio

    serve_stdio(bench)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="hil")
