"""Results: test failures apart from infrastructure errors, bounded retries,
JUnit XML and a readable report with each board's console log.

    outcome = run_with_retries(lambda: scenario(target), retries=2, reset=...)

`classify` sorts an exception: a TestFailure or AssertionError is the
system under test failing ("failed"); an InfraError (the bench: power,
console silent, board gone, lock held, SSH) is "error" and is retried up to
`retries` times (after `reset`, e.g. powering the board off); anything else
(a bug in a test or in the bench code) is "error" too, with its traceback,
and is not retried.
"""

from __future__ import annotations

import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mantra.hil.errors import HilError

PASSED, FAILED, INFRA, ERROR = "passed", "failed", "infrastructure error", "error"


def classify(exc: BaseException | None) -> str:
    if exc is None:
        return PASSED
    if isinstance(exc, HilError):
        return {"infra": INFRA, "failure": FAILED}.get(exc.kind, ERROR)
    if isinstance(exc, AssertionError):
        return FAILED
    return ERROR


def describe(exc: BaseException) -> str:
    if isinstance(exc, HilError):
        return str(exc)
    if isinstance(exc, AssertionError):
        return f"assertion failed: {exc}" if str(exc) else "assertion failed"
    return "".join(traceback.format_exception(exc)).rstrip()


@dataclass
class Attempt:
    outcome: str
    message: str
    duration: float
    error_type: str | None = None


@dataclass
class Result:
    place: str
    scenario: str
    outcome: str = PASSED
    message: str = ""
    duration: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)
    console: str = ""
    console_log: Path | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def retried(self) -> int:
        return len(self.attempts) - 1


def run_with_retries(body: Callable[[], Any], *, retries: int, reset: Callable[[], None] | None = None,
                     sleep: float = 0.0) -> tuple[list[Attempt], Any]:
    """Runs `body`, again after an infrastructure error (at most `retries`
    more times, calling `reset` before each retry); returns the attempts
    and the last return value (None unless it passed)."""
    attempts: list[Attempt] = []
    while True:
        started = time.monotonic()
        try:
            value = body()
        except Exception as exc:  # noqa: BLE001 - sorted, not hidden
            outcome = classify(exc)
            attempts.append(Attempt(outcome, describe(exc), time.monotonic() - started, type(exc).__name__))
            if outcome == INFRA and len(attempts) <= retries:
                if reset is not None:
                    try:
                        reset()
                    except Exception as reset_exc:  # noqa: BLE001
                        attempts[-1].message += f"\n(reset before the retry failed too: {describe(reset_exc)})"
                        return attempts, None
                time.sleep(sleep)
                continue
            return attempts, None
        attempts.append(Attempt(PASSED, "", time.monotonic() - started))
        return attempts, value


def summarize(results: list[Result]) -> dict[str, int]:
    counts = {PASSED: 0, FAILED: 0, INFRA: 0, ERROR: 0}
    for result in results:
        counts[result.outcome] += 1
    return counts


def write_junit(results: list[Result], path: Path, *, name: str = "mantra-hil", wall: float | None = None) -> None:
    """JUnit XML: a testsuite per place; a test failure is <failure>, an
    infrastructure error <error type="infrastructure">; the console is in <system-out>."""
    root = ET.Element("testsuites", name=name)
    counts = summarize(results)
    root.set("tests", str(len(results)))
    root.set("failures", str(counts[FAILED]))
    root.set("errors", str(counts[INFRA] + counts[ERROR]))
    if wall is not None:
        root.set("time", f"{wall:.3f}")
    for place in dict.fromkeys(r.place for r in results):
        mine = [r for r in results if r.place == place]
        c = summarize(mine)
        suite = ET.SubElement(root, "testsuite", name=place, tests=str(len(mine)), failures=str(c[FAILED]),
                              errors=str(c[INFRA] + c[ERROR]), time=f"{sum(r.duration for r in mine):.3f}")
        for result in mine:
            case = ET.SubElement(suite, "testcase", classname=f"hil.{place}", name=result.scenario,
                                 time=f"{result.duration:.3f}")
            props = ET.SubElement(case, "properties")
            ET.SubElement(props, "property", name="attempts", value=str(len(result.attempts)))
            for index, attempt in enumerate(result.attempts[:-1], 1):
                ET.SubElement(props, "property", name=f"retried-after-attempt-{index}",
                              value=f"{attempt.error_type}: {attempt.message.splitlines()[0] if attempt.message else ''}")
            first_line = result.message.splitlines()[0] if result.message else ""
            if result.outcome == FAILED:
                ET.SubElement(case, "failure", message=first_line, type="test failure").text = result.message
            elif result.outcome == INFRA:
                ET.SubElement(case, "error", message=first_line, type="infrastructure").text = result.message
            elif result.outcome == ERROR:
                ET.SubElement(case, "error", message=first_line, type="error").text = result.message
            if result.console:
                ET.SubElement(case, "system-out").text = _clean(result.console)
    ET.indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def _xml_safe(text: str) -> str:
    return "".join(ch if ch in "\t\n\r" or ord(ch) >= 0x20 else f"\\x{ord(ch):02x}" for ch in text)


def _clean(text: str) -> str:
    text = text.replace("\x1b[2J", "").replace("\x1b[01;01H", "").replace("\x1b[=3h", "").replace("\r", "")
    return _xml_safe(text).replace("```", "'''")


def summary_line(results: list[Result], wall: float) -> str:
    c = summarize(results)
    places = len({r.place for r in results})
    serial = sum(r.duration for r in results)
    retried = sum(r.retried for r in results)
    return (f"hil: {len(results)} scenario run(s) on {places} place(s): {c[PASSED]} passed, {c[FAILED]} failed, "
            f"{c[INFRA]} infrastructure error(s), {c[ERROR]} error(s); {retried} retried; "
            f"wall time {wall:.1f} s (scenario time summed over places {serial:.1f} s)")


def write_report(results: list[Result], path: Path, *, wall: float, title: str = "mantra hil test") -> None:
    """A markdown report: the summary, a table, then each run with its messages and console log."""
    lines = [f"# {title}", "", summary_line(results, wall), "",
             "| place | scenario | outcome | attempts | time |", "| --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r.place} | {r.scenario} | {r.outcome} | {len(r.attempts)} | {r.duration:.1f} s |")
    for r in results:
        lines += ["", f"## {r.place}: {r.scenario} — {r.outcome}", ""]
        for index, attempt in enumerate(r.attempts, 1):
            text = attempt.message.strip() or "ok"
            lines.append(f"- attempt {index}: {attempt.outcome} ({attempt.duration:.1f} s)"
                         + (f" [{attempt.error_type}]" if attempt.error_type else ""))
            if attempt.message:
                lines += ["", "  ```", *("  " + line for line in _clean(text).splitlines()), "  ```"]
        for key, value in r.details.items():
            lines.append(f"- {key}: {value}")
        if r.console_log:
            lines.append(f"- full console log: {r.console_log}")
        lines += ["", "<details><summary>console</summary>", "", "```", _clean(r.console).rstrip(), "```", "",
                  "</details>"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
