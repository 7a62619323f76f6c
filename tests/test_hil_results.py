"""Results (hil/results.py, hil/run.py): test failures apart from
infrastructure errors, bounded retries, JUnit XML and the markdown report,
on fake boards."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest
from mantra.hil import run as hil_run
from mantra.hil.bench import load_bench
from mantra.hil.errors import BoardGone, ConsoleSilent, ExpectTimeout, LockHeld, PowerError, TestFailure
from mantra.hil.results import (
    ERROR,
    FAILED,
    INFRA,
    PASSED,
    Result,
    classify,
    run_with_retries,
    summary_line,
    write_junit,
    write_report,
)
from mantra.hil.run import RunOptions, run_places


def test_classification() -> None:
    assert classify(None) == PASSED
    for infra in (PowerError("p"), ConsoleSilent("c"), BoardGone("g"), LockHeld("l")):
        assert classify(infra) == INFRA
    assert classify(TestFailure("t")) == FAILED
    assert classify(ExpectTimeout("e")) == FAILED
    assert classify(AssertionError("a")) == FAILED
    assert classify(KeyError("bug")) == ERROR


def test_infrastructure_errors_are_retried_a_bounded_number_of_times() -> None:
    calls: list[str] = []

    def flaky() -> str:
        calls.append("try")
        raise PowerError("the PDU did not answer")

    attempts, value = run_with_retries(flaky, retries=2, reset=lambda: calls.append("reset"))
    assert value is None
    assert calls == ["try", "reset", "try", "reset", "try"]
    assert [a.outcome for a in attempts] == [INFRA] * 3
    assert attempts[0].error_type == "PowerError" and "PDU" in attempts[0].message

    outcomes = iter([BoardGone("QEMU killed"), None])

    def once() -> str:
        error = next(outcomes)
        if error:
            raise error
        return "ok"

    attempts, value = run_with_retries(once, retries=3)
    assert value == "ok" and [a.outcome for a in attempts] == [INFRA, PASSED]


def test_test_failures_and_bugs_are_not_retried() -> None:
    calls = []
    attempts, _ = run_with_retries(lambda: calls.append(1) or (_ for _ in ()).throw(TestFailure("wrong banner")),
                                   retries=5)
    assert len(calls) == 1 and attempts[0].outcome == FAILED
    attempts, _ = run_with_retries(lambda: {}["missing"], retries=5)
    assert len(attempts) == 1 and attempts[0].outcome == ERROR and "KeyError" in attempts[0].message


def results() -> list[Result]:
    ok = Result("qemu-1", "boot", PASSED, "", 5.0, run_with_retries(lambda: None, retries=0)[0],
                console="MantraBoot 0.1.0\r\n\x1b[2JMantraCore ready\r\n", details={"slot": "a"})
    failed = Result("qemu-1", "service-restart", FAILED, "crashy was killed 0 time(s)", 2.0,
                    run_with_retries(lambda: (_ for _ in ()).throw(TestFailure("crashy was killed 0 time(s)")),
                                     retries=1)[0], console="init: all services up\n")
    infra_attempts, _ = run_with_retries(lambda: (_ for _ in ()).throw(BoardGone("QEMU was killed (SIGKILL)")),
                                         retries=1)
    infra = Result("qemu-2", "boot", INFRA, infra_attempts[-1].message, 7.5, infra_attempts,
                   console="MantraBoot 0.1.0\n")
    return [ok, failed, infra]


def test_junit_xml_separates_failures_from_infrastructure_errors(tmp_path: Path) -> None:
    path = tmp_path / "out" / "junit.xml"
    write_junit(results(), path, wall=9.0)
    root = ET.parse(path).getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("time")) == ("3", "1", "1", "9.000")
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == {"qemu-1", "qemu-2"}
    cases = {(c.get("classname"), c.get("name")): c for c in root.iter("testcase")}
    boot = cases[("hil.qemu-1", "boot")]
    assert boot.find("failure") is None and boot.find("error") is None
    assert "MantraCore ready" in boot.find("system-out").text and "\x1b" not in boot.find("system-out").text
    failure = cases[("hil.qemu-1", "service-restart")].find("failure")
    assert failure is not None and failure.get("type") == "test failure" and "crashy" in failure.get("message")
    error = cases[("hil.qemu-2", "boot")].find("error")
    assert error is not None and error.get("type") == "infrastructure" and "SIGKILL" in error.get("message")
    props = {p.get("name"): p.get("value") for p in cases[("hil.qemu-2", "boot")].iter("property")}
    assert props["attempts"] == "2" and props["retried-after-attempt-1"].startswith("BoardGone: QEMU was killed")


def test_report_has_the_summary_and_each_console(tmp_path: Path) -> None:
    path = tmp_path / "report.md"
    write_report(results(), path, wall=9.0)
    text = path.read_text()
    line = summary_line(results(), 9.0)
    assert line.startswith("hil: 3 scenario run(s) on 2 place(s): 1 passed, 1 failed, 1 infrastructure error(s), "
                           "0 error(s); 1 retried; wall time 9.0 s (scenario time summed over places 14.5 s)")
    assert line in text
    assert "| qemu-2 | boot | infrastructure error | 2 | 7.5 s |" in text
    assert "## qemu-1: service-restart — failed" in text and "crashy was killed 0 time(s)" in text
    assert "MantraCore ready" in text and "init: all services up" in text and "- slot: a" in text


class FakeBoard:
    """A board whose scenario outcomes are scripted."""

    def __init__(self, name: str, script: list[Exception | None]) -> None:
        self.name = name
        self.script = script
        self.offs = 0
        self.closed = False
        self.console = SimpleNamespace(mark=lambda: 0, text_since=lambda start: f"console of {name}\n")
        self.strategy = SimpleNamespace(transition=self._transition)

    def _transition(self, state: str) -> None:
        assert state == "off"
        self.offs += 1

    def console_log_path(self) -> Path:
        return Path(f"/logs/{self.name}.log")

    def close(self) -> None:
        self.closed = True


def test_run_places_retries_infra_errors_and_keeps_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench_file = tmp_path / "bench.toml"
    bench_file.write_text(f'[bench]\nstate_dir = "{tmp_path}/s"\nlock_dir = "{tmp_path}/l"\n'
                          '[places.a]\nqemu = {}\n[places.b]\nqemu = {}\n[places.c]\nqemu = {}\n')
    bench = load_bench(bench_file, root=tmp_path)
    boards = {"a": FakeBoard("a", [BoardGone("QEMU killed"), None]),
              "b": FakeBoard("b", [TestFailure("wrong banner")])}

    def open_board(bench, place, **kwargs):  # noqa: ANN001, ANN003, ANN202
        if place == "c":
            raise LockHeld("place c is locked by alice")
        return boards[place]

    def scripted(board: FakeBoard) -> dict:
        error = board.script.pop(0)
        if error:
            raise error
        return {"ok": True}

    monkeypatch.setattr(hil_run, "open_board", open_board)
    monkeypatch.setitem(hil_run.SCENARIOS, "scripted", scripted)
    lines: list[str] = []
    got, wall = run_places(bench, ["a", "b", "c"], RunOptions(scenarios=["scripted"], retries=1, log=lines.append))
    by_place = {r.place: r for r in got}
    assert by_place["a"].outcome == PASSED and len(by_place["a"].attempts) == 2 and boards["a"].offs == 1
    assert by_place["a"].details == {"ok": True} and by_place["a"].console == "console of a\n"
    assert by_place["b"].outcome == FAILED and len(by_place["b"].attempts) == 1 and boards["b"].offs == 0
    assert by_place["c"].outcome == INFRA and "locked by alice" in by_place["c"].message
    assert len(by_place["c"].attempts) == 2  # getting the place is retried too
    assert boards["a"].closed and boards["b"].closed
    assert any("infrastructure error; powering off and retrying" in line for line in lines)
    with pytest.raises(Exception, match="no scenario 'nope'"):
        run_places(bench, ["a"], RunOptions(scenarios=["nope"]))
