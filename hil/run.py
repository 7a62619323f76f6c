"""`mantra hil test`: scenarios on several places at once, one thread per
place (each board is its own QEMU or hardware; threads only wait on them).

Each place is locked for the run (LockHeld is an infrastructure error),
each scenario is retried after an infrastructure error (the board powered
off first), and each result keeps the console output of its attempts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mantra.hil.bench import Bench
from mantra.hil.errors import HilError
from mantra.hil.results import PASSED, Attempt, Result, describe, run_with_retries
from mantra.hil.scenarios import SCENARIOS
from mantra.runners.core import signals_end_the_run


def open_board(bench: Bench, place: str, *, owner: str | None, wait: float = 0.0, image: Path | None = None,
               notes: list[str] | None = None) -> Any:
    """A locked Target (local place) or RemoteTarget (a place on a bench host over SSH)."""
    spec = bench.place(place)
    if spec.remote:
        from mantra.hil.remote import RemoteTarget

        return RemoteTarget.connect(bench, spec, owner=owner, wait=wait, image=image)
    from mantra.hil.target import Target

    return Target.acquire(bench, place, owner=owner, wait=wait, image=image, notes=notes)


@dataclass
class RunOptions:
    scenarios: Sequence[str] = ("boot", "service-restart")
    retries: int = 1
    owner: str | None = None
    wait: float = 0.0
    image: Path | None = None
    log: Callable[[str], None] = print
    notes: list[str] = field(default_factory=list)
    # Called with (place, board) once the board is open: tests use it to play bench failures.
    on_open: Callable[[str, Any], None] | None = None
    # The boards open now (so an interrupted run can power them off), and the interruption.
    open_boards: dict[str, Any] = field(default_factory=dict)
    cancelled: threading.Event = field(default_factory=threading.Event)


def run_place(bench: Bench, place: str, options: RunOptions) -> list[Result]:
    results: list[Result] = []
    started = time.monotonic()
    board = None
    attempts, board = run_with_retries(
        lambda: open_board(bench, place, owner=options.owner, wait=options.wait, image=options.image,
                           notes=options.notes),
        retries=options.retries, sleep=1.0)
    if board is None:
        # Could not even get the place: every scenario is an infrastructure error.
        for name in options.scenarios:
            last = attempts[-1]
            results.append(Result(place, name, last.outcome, last.message, time.monotonic() - started, attempts))
        return results
    options.open_boards[place] = board
    try:
        if options.on_open:
            options.on_open(place, board)
        for name in options.scenarios:
            if options.cancelled.is_set():
                break
            scenario = SCENARIOS[name]
            mark = board.console.mark()
            begun = time.monotonic()
            options.log(f"[{place}] {name}: running")

            def reset() -> None:
                if options.cancelled.is_set():
                    raise HilError("the run was interrupted", "run it again")
                options.log(f"[{place}] {name}: infrastructure error; powering off and retrying")
                board.strategy.transition("off")

            tries, details = run_with_retries(lambda: scenario(board), retries=options.retries, reset=reset)
            last = tries[-1]
            result = Result(place, name, last.outcome, last.message, time.monotonic() - begun, tries,
                            console=board.console.text_since(mark), console_log=board.console_log_path(),
                            details=details or {})
            options.log(f"[{place}] {name}: {result.outcome} ({result.duration:.1f} s"
                        + (f", {result.retried} retried" if result.retried else "") + ")"
                        + (f": {last.message.splitlines()[0]}" if last.message else ""))
            results.append(result)
    finally:
        options.open_boards.pop(place, None)
        try:
            board.close()
        except Exception as exc:  # noqa: BLE001 - closing must not hide the results
            options.log(f"[{place}] closing failed: {describe(exc)}")
    return results


def run_places(bench: Bench, places: Sequence[str], options: RunOptions) -> tuple[list[Result], float]:
    """Runs the scenarios on every place in parallel; returns the results (in place order) and the wall time."""
    for name in options.scenarios:
        if name not in SCENARIOS:
            raise HilError(f"no scenario {name!r}", f"scenarios: {', '.join(SCENARIOS)}")
    for place in places:
        bench.place(place)
    started = time.monotonic()
    with signals_end_the_run(), ThreadPoolExecutor(max_workers=max(len(places), 1),
                                                        thread_name_prefix="hil") as pool:
        futures = [pool.submit(run_place, bench, place, options) for place in places]
        try:
            results = [result for future in futures for result in future.result()]
        except BaseException:
            # Ctrl-C or SIGTERM (a cancelled CI job): power the boards off so
            # that every place's thread ends now (and no QEMU outlives the run).
            options.cancelled.set()
            for place, board in list(options.open_boards.items()):
                options.log(f"[{place}] interrupted: powering off")
                try:
                    board.power.off()
                except Exception:  # noqa: BLE001
                    pass
            raise
    return results, time.monotonic() - started


__all__ = ["RunOptions", "open_board", "run_place", "run_places", "run_pytest_places"]


def run_pytest_places(bench: Bench, places: Sequence[str], paths: Sequence[str], options: RunOptions
                      ) -> tuple[list[Result], float]:
    """Runs pytest over `paths` once per place, all places at once (one
    pytest process each, with --hil-place), and reads each run's JUnit XML
    back into results: a failure is a test failure, an error the plugin
    marked "infrastructure error" an infrastructure error, any other error
    an error; skipped tests are left out."""
    import sys
    import xml.etree.ElementTree as ET

    from mantra import proc

    for place in places:
        bench.place(place)

    def one(place: str) -> list[Result]:
        junit = bench.state_dir / place / "pytest-junit.xml"
        junit.parent.mkdir(parents=True, exist_ok=True)
        junit.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *paths, "--hil-place", place,
               "--hil-bench", str(bench.path), "--hil-retries", str(options.retries), "--hil-wait",
               str(options.wait), f"--junitxml={junit}"]
        if options.owner:
            cmd += ["--hil-owner", options.owner]
        options.log(f"[{place}] pytest {' '.join(paths)}: running")
        begun = time.monotonic()
        done = proc.run(cmd, what=f"pytest on {place}", hint="see its output", capture=True, check=False)
        if not junit.is_file():
            return [Result(place, "pytest", "error", f"pytest exited with status {done.returncode} without a "
                           f"report:\n{(done.stdout + done.stderr)[-3000:]}", time.monotonic() - begun)]
        results = []
        log = bench.state_dir / place / "console.log"
        for case in ET.parse(junit).getroot().iter("testcase"):
            if case.find("skipped") is not None:
                continue
            failure, error = case.find("failure"), case.find("error")
            name = f"{case.get('classname', '')}::{case.get('name')}".strip(":")
            if failure is not None:
                outcome, message = "failed", failure.get("message") or ""
            elif error is not None:
                message = error.get("message") or ""
                outcome = "infrastructure error" if "infrastructure error" in message else "error"
            else:
                outcome, message = PASSED, ""
            duration = float(case.get("time") or 0)
            results.append(Result(place, name, outcome, message, duration, [Attempt(outcome, message, duration)],
                                  console_log=log if log.is_file() else None))
            options.log(f"[{place}] {name}: {outcome}")
        return results

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(len(places), 1), thread_name_prefix="hil-pytest") as pool:
        results = [r for future in [pool.submit(one, place) for place in places] for r in future.result()]
    return results, time.monotonic() - started
