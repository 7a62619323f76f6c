"""Remote places: `mantra hil serve` on the bench host, reached over SSH
(paramiko) through a real sshd on 127.0.0.1 that these tests start, with
host and client keys generated at test time (tests/hil_sshd.py). The
protocol itself is also tested without SSH."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from mantra.build import BuildResult
from mantra.cli import app
from mantra.hil.bench import load_bench
from mantra.hil.errors import LockHeld, RemoteError
from mantra.hil.lock import LockDir
from mantra.hil.remote import RemoteTarget, serve
from mantra.hil.results import INFRA, PASSED, classify
from mantra.hil.run import RunOptions, run_places
from typer.testing import CliRunner
from hil_sshd import Sshd, start_sshd
from support import ROOT


def test_protocol_without_ssh(tmp_path: Path) -> None:
    bench_file = tmp_path / "bench.toml"
    bench_file.write_text(f'[bench]\nstate_dir = "{tmp_path}/s"\nlock_dir = "{tmp_path}/l"\n[places.q1]\nqemu = {{}}\n')
    requests = [
        {"id": 1, "op": "places"},
        {"id": 2, "op": "lock", "place": "q1", "owner": "alice"},
        {"id": 3, "op": "unlock", "place": "q1", "owner": "bob"},
        {"id": 4, "op": "open", "place": "q1", "owner": "bob"},
        {"id": 5, "op": "transition", "place": "q1", "state": "booted"},
        {"id": 6, "op": "lock", "place": "nope"},
        {"id": 7, "op": "unlock", "place": "q1", "owner": "alice"},
    ]
    stdin = io.StringIO("\n".join(json.dumps(r) for r in requests) + "\nnot json\n")
    stdout = io.StringIO()
    serve(load_bench(bench_file, root=tmp_path), stdin, stdout)
    hello, *answers = [json.loads(line) for line in stdout.getvalue().splitlines()]
    assert hello["hello"] == "mantra-hil" and hello["version"] == 1 and hello["places"] == ["q1"]
    by_id = {a["id"]: a for a in answers}
    assert by_id[1]["result"][0]["name"] == "q1" and by_id[1]["result"][0]["lock"] is None
    assert by_id[2]["ok"] and "locked by alice" in by_id[2]["result"]
    assert by_id[3]["error"]["type"] == "LockHeld" and "not yours" in by_id[3]["error"]["message"]
    assert by_id[4]["error"]["type"] == "LockHeld"
    assert by_id[5]["error"]["message"] == "place q1 is not open in this session"
    assert by_id[6]["error"]["type"] == "BenchFileError"
    assert by_id[7]["ok"]
    assert answers[-1]["id"] is None and "bad request" in answers[-1]["error"]["message"]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


def benches(directory: Path, sshd: Sshd, image: Path) -> tuple[Path, Path]:
    """The bench host's file (a QEMU place) and the client's (that place, remote)."""
    remote = directory / "bench-host.toml"
    remote.write_text(f'[bench]\nstate_dir = "{directory}/host-state"\nlock_dir = "{directory}/host-locks"\n'
                      f'[places.qemu-r1]\nqemu = {{ image = "{image}" }}\n')
    client = directory / "client.toml"
    client.write_text(
        f'[bench]\nstate_dir = "{directory}/client-state"\nlock_dir = "{directory}/client-locks"\n'
        f'[places.far-1]\nremote = {{ host = "127.0.0.1", port = {sshd.port}, user = "{sshd.user}", '
        f'key = "{sshd.client_key}", known_hosts = "{sshd.known_hosts}", place = "qemu-r1", '
        f'command = "{ROOT}/.venv/bin/mantra hil serve", bench = "{remote}" }}\n'
        f'[places.far-unknown-host]\nremote = {{ host = "127.0.0.1", port = {sshd.port}, user = "{sshd.user}", '
        f'key = "{sshd.client_key}", known_hosts = "{directory}/empty_known_hosts", place = "qemu-r1" }}\n')
    (directory / "empty_known_hosts").write_text("")
    return remote, client


def test_remote_lock_contention_over_ssh(sshd: Sshd, tmp_path: Path) -> None:
    _, client = benches(tmp_path, sshd, tmp_path / "no-image.img")

    def cli(*args: str):  # noqa: ANN202
        return CliRunner().invoke(app, ["--workspace", str(ROOT), "hil", *args, "--bench", str(client)])

    locked = cli("lock", "far-1", "--owner", "alice", "--for", "10m")
    assert locked.exit_code == 0, locked.output
    assert "far-1: locked by alice" in locked.output
    # The lock file is on the bench host (here: its lock directory), not on the client.
    assert LockDir(tmp_path / "host-locks").read("qemu-r1").owner == "alice"
    assert not (tmp_path / "client-locks").exists()
    bench = load_bench(client, root=ROOT)
    with pytest.raises(LockHeld, match=r"place qemu-r1 is locked by alice .*\(on .*@127\.0\.0\.1:\d+\)") as held:
        RemoteTarget.connect(bench, bench.place("far-1"), owner="bob")
    assert classify(held.value) == INFRA
    refused = cli("unlock", "far-1", "--owner", "bob")
    assert refused.exit_code == 1 and "not yours to unlock" in refused.output
    broken = cli("unlock", "far-1", "--owner", "bob", "--break")
    assert broken.exit_code == 0 and "unlocked (it was locked by alice" in broken.output
    assert LockDir(tmp_path / "host-locks").read("qemu-r1") is None
    # A host key we do not know is refused: an infrastructure error, not a silent trust.
    with pytest.raises(RemoteError, match="cannot reach the bench host .* over SSH"):
        RemoteTarget.connect(bench, bench.place("far-unknown-host"), owner="bob")
    assert "Accepted publickey" in sshd.log.read_text()


@pytest.mark.boot
def test_remote_qemu_place_runs_the_scenarios_and_loses_its_board(sshd: Sshd, default_image: BuildResult,
                                                                  tmp_path: Path) -> None:
    """boot and service-restart on a place behind SSH; then QEMU dies on the
    bench host mid-test: the client gets BoardGone (its type crosses the
    link), an infrastructure error, and the strategy recovers."""
    import os
    import signal

    from mantra.hil.errors import BoardGone
    from mantra.hil.scenarios import boot, service_restart

    _, client = benches(tmp_path, sshd, default_image.image)
    bench = load_bench(client, root=ROOT)
    with RemoteTarget.connect(bench, bench.place("far-1"), owner="ci-remote") as target:
        booted = boot(target)
        assert booted["services"] == "logd, demo, crashy, attestd" and booted["slot"] == "a"
        restarted = service_restart(target)
        assert restarted["crashes"] == 5 and restarted["restart delays (ms)"] == "100 200 400 800"
        console = target.console.text
        assert "MantraBoot 0.1.0 (board qemu-x86_64)" in console and "MantraCore ready" in console
        # The lock is on the bench host, in the name of this client's owner, tied to the server's pid.
        lock = LockDir(tmp_path / "host-locks").read("qemu-r1")
        assert lock.owner == "ci-remote" and lock.pid is not None and lock.pid != os.getpid()

        target.strategy.transition("off")
        target.strategy.transition("booted")
        pid = target.qemu_pid()
        assert pid
        os.kill(pid, signal.SIGKILL)  # the bench host is this machine
        with pytest.raises(BoardGone, match=r"(?s)QEMU was killed \(SIGKILL\).*\(on .*127\.0\.0\.1") as gone:
            target.console.expect("init: all services healthy", timeout=120)
        assert classify(gone.value) == INFRA
        target.strategy.transition("booted")  # recovers through power-off
        assert target.qemu_pid() not in (None, pid)
    # The client keeps a copy of the remote console; the bench host has the original.
    local = (tmp_path / "client-state" / "far-1" / "console.log").read_text()
    remote = (tmp_path / "host-state" / "qemu-r1" / "console.log").read_text(errors="replace")
    assert re.search(r"init: all services healthy", local) and local.count("MantraCore ready") == 3
    assert "MantraCore ready" in remote
    # Closing released the lock and powered the board off.
    assert not list((tmp_path / "host-locks").glob("*.lock"))
    assert not (tmp_path / "host-state" / "qemu-r1" / "qemu.json").exists()
