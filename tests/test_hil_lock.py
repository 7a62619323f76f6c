"""Place locks (hil/lock.py): one file per place, atomic, with owner, host,
pid and expiry; contention between owners, expiry, dead holders, --break,
and the `mantra hil lock/unlock/places` commands."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mantra.cli import app
from mantra.hil.errors import LockHeld
from mantra.hil.lock import LockDir, PlaceLock
from typer.testing import CliRunner
from support import ROOT


def test_two_owners_contend_and_the_second_gets_it_after_release(tmp_path: Path) -> None:
    locks = LockDir(tmp_path)
    alice = locks.acquire("qemu-1", "alice", pid=os.getpid())
    data = json.loads((tmp_path / "qemu-1.lock").read_text())
    assert data["owner"] == "alice" and data["pid"] == os.getpid() and data["host"] == socket.gethostname()
    assert data["expires"] > time.time() + 3000
    with pytest.raises(LockHeld, match=r"place qemu-1 is locked by alice \(host .*, pid \d+\)"):
        locks.acquire("qemu-1", "bob")
    started = time.monotonic()
    with pytest.raises(LockHeld):
        locks.acquire("qemu-1", "bob", wait=0.5)
    assert time.monotonic() - started >= 0.45
    # Another place is free.
    locks.acquire("qemu-2", "bob").release()
    alice.release()
    assert not (tmp_path / "qemu-1.lock").exists()
    with locks.held("qemu-1", "bob") as bob:
        assert locks.read("qemu-1").owner == "bob" == bob.info.owner


def test_waiting_owner_gets_the_place_when_it_is_released(tmp_path: Path) -> None:
    locks = LockDir(tmp_path)
    alice = locks.acquire("p", "alice", pid=os.getpid())
    import threading

    threading.Timer(0.4, alice.release).start()
    bob = locks.acquire("p", "bob", wait=5)
    assert locks.read("p").owner == "bob"
    bob.release()


def test_same_owner_borrows_without_stealing(tmp_path: Path) -> None:
    locks = LockDir(tmp_path)
    mine = locks.acquire("p", "alice", pid=None, expires_in=600)
    again = locks.acquire("p", "alice", pid=os.getpid())
    assert again.borrowed
    again.release()  # a borrowed lock stays with its original holder
    assert locks.read("p").token == mine.info.token


def test_expired_lock_is_taken_over_and_said_so(tmp_path: Path) -> None:
    locks = LockDir(tmp_path)
    locks.acquire("p", "alice", expires_in=0.2)
    with pytest.raises(LockHeld):
        locks.acquire("p", "bob")
    time.sleep(0.3)
    assert "expired" in locks.read("p").stale_reason()
    notes: list[str] = []
    bob = locks.acquire("p", "bob", notes=notes)
    assert bob.info.owner == "bob"
    assert notes and "took over a stale lock of alice (expired" in notes[0]


def test_lock_of_a_dead_process_is_stale(tmp_path: Path) -> None:
    locks = LockDir(tmp_path)
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(child.stdout)
    info = locks.try_acquire("p", "ci-job-1", pid=dead_pid)
    assert isinstance(info, PlaceLock)
    assert "is gone" in locks.read("p").stale_reason()
    notes: list[str] = []
    assert locks.acquire("p", "ci-job-2", notes=notes).info.owner == "ci-job-2"
    assert "ci-job-1" in notes[0]


def test_unlock_refuses_a_live_lock_of_another_owner_unless_broken(tmp_path: Path) -> None:
    locks = LockDir(tmp_path)
    locks.acquire("p", "alice", pid=None, expires_in=600)
    with pytest.raises(LockHeld, match="not yours to unlock") as refused:
        locks.release("p", "bob")
    assert "--break" in refused.value.hint and "live" in refused.value.hint
    assert locks.read("p").owner == "alice"
    removed = locks.release("p", "bob", force=True)
    assert removed.owner == "alice" and locks.read("p") is None
    assert locks.release("p", "bob") is None


def test_refresh_notices_a_broken_lock(tmp_path: Path) -> None:
    locks = LockDir(tmp_path)
    held = locks.acquire("p", "alice", expires_in=10)
    before = locks.read("p").expires
    held.refresh(expires_in=1000)
    assert locks.read("p").expires > before + 900
    locks.release("p", "bob", force=True)
    with pytest.raises(LockHeld, match="our lock was broken"):
        held.refresh()
    # Releasing a lock that was broken and re-taken does not remove the new one.
    locks.acquire("p", "carol", pid=None)
    held.release()
    assert locks.read("p").owner == "carol"


def test_keep_alive_pushes_the_expiry_until_release(tmp_path: Path) -> None:
    locks = LockDir(tmp_path)
    held = locks.acquire("p", "alice", expires_in=2.0)
    held.keep_alive(every=0.1, expires_in=2.0)
    time.sleep(2.5)  # longer than the expiry: still alice's
    assert locks.read("p").stale_reason() is None
    with pytest.raises(LockHeld):
        locks.acquire("p", "bob")
    held.release()
    assert locks.read("p") is None


def _race(directory: str, owner: str, start: float, results: multiprocessing.Queue) -> None:
    while time.time() < start:
        time.sleep(0.001)
    try:
        LockDir(Path(directory)).acquire("p", owner, pid=None)
        results.put(owner)
    except LockHeld:
        results.put(None)


def test_exactly_one_of_many_simultaneous_owners_wins(tmp_path: Path) -> None:
    results: multiprocessing.Queue = multiprocessing.Queue()
    start = time.time() + 0.5
    workers = [multiprocessing.Process(target=_race, args=(str(tmp_path), f"job-{i}", start, results))
               for i in range(8)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=30) for _ in workers]
    for worker in workers:
        worker.join()
    winners = [o for o in outcomes if o]
    assert len(winners) == 1
    assert LockDir(tmp_path).read("p").owner == winners[0]


def _cli(bench: Path, *args: str):
    return CliRunner().invoke(app, ["--workspace", str(ROOT), "hil", *args, "--bench", str(bench)])


def test_cli_lock_unlock_break_and_places(tmp_path: Path) -> None:
    bench = tmp_path / "bench.toml"
    bench.write_text(f'[bench]\nstate_dir = "{tmp_path}/state"\nlock_dir = "{tmp_path}/locks"\n'
                     '[places.q1]\nqemu = { board = "qemu-x86_64" }\n'
                     '[places.lab]\nconsole = { usb = { vid = "0403", pid = "6001", serial = "FT1" } }\n'
                     'power = { kind = "pdu", host = "10.0.0.5", outlet = 3 }\n')
    first = _cli(bench, "lock", "q1", "--owner", "alice", "--for", "30m")
    assert first.exit_code == 0, first.output
    assert "q1: locked by alice" in first.output
    held = _cli(bench, "lock", "q1", "--owner", "bob")
    assert held.exit_code == 1 and "locked by alice" in held.output and "--break" in held.output
    listing = _cli(bench, "places")
    assert listing.exit_code == 0
    assert "locked by alice" in listing.output and "console USB 0403:6001 FT1" in listing.output
    refused = _cli(bench, "unlock", "q1", "--owner", "bob")
    assert refused.exit_code == 1 and "not yours to unlock" in refused.output
    broken = _cli(bench, "unlock", "q1", "--owner", "bob", "--break")
    assert broken.exit_code == 0 and "unlocked (it was locked by alice" in broken.output
    assert not (tmp_path / "locks" / "q1.lock").exists()
    unknown = _cli(bench, "lock", "nope")
    assert unknown.exit_code == 1 and "no place 'nope'" in unknown.output


def test_a_locked_place_is_an_infrastructure_error_of_the_run(tmp_path: Path) -> None:
    bench = tmp_path / "bench.toml"
    bench.write_text(f'[bench]\nstate_dir = "{tmp_path}/state"\nlock_dir = "{tmp_path}/locks"\n'
                     f'[places.q1]\nqemu = {{ image = "{tmp_path}/no-image.img" }}\n')
    LockDir(tmp_path / "locks").acquire("q1", "alice", pid=None, expires_in=600)
    junit = tmp_path / "junit.xml"
    result = CliRunner().invoke(app, ["--workspace", str(ROOT), "hil", "test", "--bench", str(bench), "--places",
                                      "q1", "--owner", "bob", "--scenario", "boot", "--retries", "0",
                                      "--junit", str(junit), "--report", str(tmp_path / "report.md")])
    assert result.exit_code == 3, result.output  # only infrastructure errors
    assert "0 passed, 0 failed, 1 infrastructure error(s)" in result.output
    import xml.etree.ElementTree as ET

    error = ET.parse(junit).getroot().find(".//testcase/error")
    assert error is not None and error.get("type") == "infrastructure" and "locked by alice" in error.get("message")
    # Nothing touched the board.
    assert not (tmp_path / "state" / "q1" / "console.log").exists()
    assert LockDir(tmp_path / "locks").read("q1").owner == "alice"
