"""The pytest plugin: `pytest --hil-place NAME` runs tests on a bench place.

    def test_boots(strategy, console):
        strategy.transition("booted")
        console.expect(r"MantraCore ready", timeout=60)

Registered as a pytest11 entry point (pyproject.toml), so any pytest of
this virtualenv has the options. Without --hil-place nothing happens: the
fixtures skip the tests that ask for them, no bench is read, no hook runs
(this module imports nothing heavy at load time).

Options: --hil-place NAME (a place of the bench, local or remote),
--hil-bench FILE (default hil/benches/qemu.toml), --hil-owner NAME,
--hil-retries N (a test that ends in an infrastructure error is run again,
after powering the board off, at most N more times; default 1).

Fixtures: `target` (session scope: the locked place, a Target or a
RemoteTarget), `strategy`, `console`. A test that fails with an
InfraError (power, silent console, board gone, lock held, SSH) is
reported as an *error* ("infrastructure error: ...") rather than a
failure, in the terminal and in --junitxml; the terminal summary counts
both.
"""

from __future__ import annotations

from typing import Any

import pytest

_INFRA_KEY = "hil_infrastructure_errors"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mantra-hil", "MantraOS hardware-in-the-loop bench (mantra.hil)")
    group.addoption("--hil-place", metavar="NAME", default=None, help="run the bench tests on this place")
    group.addoption("--hil-bench", metavar="FILE", default=None,
                    help="the bench file (default: $MANTRA_HIL_BENCH or hil/benches/qemu.toml)")
    group.addoption("--hil-owner", metavar="NAME", default=None, help="lock owner (default: user@host)")
    group.addoption("--hil-retries", metavar="N", type=int, default=1,
                    help="re-runs of a test after an infrastructure error (default 1)")
    group.addoption("--hil-wait", metavar="S", type=float, default=0.0, help="wait this long for a locked place")


def pytest_configure(config: pytest.Config) -> None:
    if _enabled(config):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            def interrupted(signum: int, frame: object) -> None:
                raise KeyboardInterrupt(f"signal {signum}")

            # A cancelled CI job (SIGTERM) ends like Ctrl-C: fixtures close, boards power off.
            signal.signal(signal.SIGTERM, interrupted)


def _enabled(config: pytest.Config) -> bool:
    return config.getoption("--hil-place", default=None) is not None


def _is_infra(excinfo: Any) -> bool:
    if excinfo is None:
        return False
    from mantra.hil.errors import HilError

    value = excinfo.value
    return isinstance(value, HilError) and value.kind == "infra"


@pytest.fixture(scope="session")
def target(request: pytest.FixtureRequest) -> Any:
    config = request.config
    place = config.getoption("--hil-place")
    if place is None:
        pytest.skip("no bench place: run with --hil-place NAME")
    from pathlib import Path

    from mantra.hil.bench import load_bench
    from mantra.hil.run import open_board

    bench_file = config.getoption("--hil-bench")
    bench = load_bench(Path(bench_file) if bench_file else None)
    board = open_board(bench, place, owner=config.getoption("--hil-owner"), wait=config.getoption("--hil-wait"))
    config.stash.setdefault(_BOARDS, []).append(board)  # type: ignore[arg-type]
    import atexit

    atexit.register(board.close)  # however pytest ends, no QEMU outlives it and the lock goes
    yield board
    board.close()


@pytest.fixture
def strategy(target: Any) -> Any:
    return target.strategy


@pytest.fixture
def console(target: Any) -> Any:
    return target.console


_BOARDS = pytest.StashKey[list]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    """With --hil-place: runs a test again after an infrastructure error (bounded)."""
    if not _enabled(item.config):
        return None
    from _pytest.runner import runtestprotocol

    retries = item.config.getoption("--hil-retries")
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for attempt in range(retries + 1):
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
        infra = [r for r in reports if getattr(r, "hil_infra", False)]
        if not infra or attempt == retries:
            break
        for board in item.config.stash.get(_BOARDS, []):
            try:
                board.strategy.transition("off")
            except Exception:  # noqa: BLE001 - the retry will say what is wrong
                pass
        item.config.stash.setdefault(_RETRIED, []).append(item.nodeid)
    for report in reports:
        if getattr(report, "hil_infra", False):
            item.config.stash.setdefault(_INFRA, []).append(item.nodeid)
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


_INFRA = pytest.StashKey[list]()
_RETRIED = pytest.StashKey[list]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # noqa: ANN201
    outcome = yield
    if not _enabled(item.config):
        return
    report = outcome.get_result()
    if report.failed and _is_infra(call.excinfo):
        report.hil_infra = True
        # Reported as an error (as a failing fixture is), not as a test failure.
        if report.when == "call":
            report.when = "setup"  # pytest's terminal and junitxml call a failed setup an "error"
        report.longrepr = f"infrastructure error: {call.excinfo.value}"  # type: ignore[union-attr]
        report.user_properties.append(("hil", "infrastructure error"))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not _enabled(config):
        return
    infra = config.stash.get(_INFRA, [])
    retried = config.stash.get(_RETRIED, [])
    failed = len(terminalreporter.stats.get("failed", []))
    terminalreporter.write_sep("-", f"hil place {config.getoption('--hil-place')}: {failed} test failure(s), "
                                    f"{len(infra)} infrastructure error(s), {len(retried)} retried")
    for name, board in {board.name: board for board in config.stash.get(_BOARDS, [])}.items():
        try:
            terminalreporter.write_line(f"console log of {name}: {board.console_log_path()}")
        except Exception:  # noqa: BLE001
            pass
