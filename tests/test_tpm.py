"""The board's TPM 2.0 (`mantra run --tpm`, `boot(..., tpm=True)`): swtpm
started before QEMU and stopped after it in every case, its state kept per
image, helpful errors when it is missing or fails, and MantraCore's `tpm:`
line from the ACPI TPM2 table. Tests marked `boot` boot the default image."""

from __future__ import annotations

import os
import re
import shutil
import signal
from dataclasses import replace
from pathlib import Path

import pytest
from mantra import proc
from mantra.board import Board
from mantra.build import BuildResult
from mantra.errors import MantraError
from mantra.qemu import boot
from mantra.runners import runner_for
from mantra.runners.qemu import QemuRunner
from mantra.runners.swtpm import Swtpm

CONFIG = {"QEMU_DEBUG_EXIT": "y", "DEBUG_EXIT_IO_PORT": "0xf4"}
BOOT_TIMEOUT = 180
TIS_LINE = re.compile(r"^tpm: TPM 2\.0 \(TIS/FIFO, registers at 0xfed40000\)", re.M)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "image.img"
    path.write_bytes(bytes(512))
    return path


def swtpm_pids(state_dir: Path) -> list[int]:
    """Processes running swtpm on `state_dir`, found in /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if argv and os.path.basename(argv[0]) == b"swtpm" and any(str(state_dir).encode() in a for a in argv):
            pids.append(int(entry.name))
    return pids


def fake_swtpm(tmp_path: Path, body: str) -> str:
    """A stand-in for swtpm: a shell script running `body`."""
    script = tmp_path / "fake-bin" / "swtpm"
    script.parent.mkdir()
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


def use_swtpm(monkeypatch: pytest.MonkeyPatch, path: str | None) -> None:
    """Makes proc.require_tool find `path` for swtpm (None: not installed)."""
    real_which = shutil.which

    def which(tool: str, *args: object, **kwargs: object) -> str | None:
        if os.path.basename(tool) == "swtpm":
            return path
        return real_which(tool, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(proc.shutil, "which", which)


def test_board_names_its_tpm_device(board: Board, image: Path) -> None:
    assert board.qemu.tpm_device == "tpm-tis"
    runner = runner_for(board, CONFIG, image, image.parent)
    assert isinstance(runner, QemuRunner) and runner.capabilities.tpm
    assert runner.tpm_state_dir == image.parent / "tpm"
    socket = Path("/tmp/mantra-tpm-x/swtpm.sock")
    cmd = runner.command(["-serial", "stdio"], icount=False, tpm_socket=socket)
    line = " ".join(cmd)
    assert f"-chardev socket,id=chrtpm,path={socket} -tpmdev emulator,id=tpm0,chardev=chrtpm" in line
    assert "-device tpm-tis,tpmdev=tpm0" in line
    assert "-tpmdev" not in runner.command([], icount=False)


def test_missing_swtpm_is_a_clear_error(board: Board, image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_swtpm(monkeypatch, None)
    runner = runner_for(board, CONFIG, image, image.parent)
    with pytest.raises(MantraError) as caught:
        runner.run_headless(timeout=5, tpm=True)
    assert caught.value.message == "swtpm not found"
    assert "install the Debian packages swtpm swtpm-tools (./mantra installs them)" in str(caught.value.hint)
    # Nothing was started or created.
    assert not (image.parent / "console.log").exists()
    assert not runner.tpm_state_dir.exists()


def test_board_without_tpm_refuses_tpm(board: Board, image: Path) -> None:
    no_tpm = replace(board, qemu=replace(board.qemu, tpm_device=None))
    runner = runner_for(no_tpm, CONFIG, image, image.parent)
    with pytest.raises(MantraError, match="board qemu-x86_64 has no TPM"):
        runner.run_headless(timeout=5, tpm=True)


def test_swtpm_runs_only_inside_its_context(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Swtpm(state) as swtpm:
        assert swtpm.socket.is_socket()
        assert len(str(swtpm.socket)) < 108
        assert swtpm.process is not None and swtpm.process.poll() is None
        assert swtpm_pids(state) == [swtpm.process.pid]
        socket_dir = swtpm.socket.parent
    assert swtpm.process.returncode is not None
    assert swtpm_pids(state) == []
    assert not socket_dir.exists()
    assert state.is_dir()


def test_swtpm_failing_to_start_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_swtpm(monkeypatch, fake_swtpm(tmp_path, 'echo "swtpm: cannot load the TPM state" >&2; exit 1'))
    state = tmp_path / "state"
    with pytest.raises(MantraError) as caught:
        Swtpm(state).start()
    assert "swtpm failed to start (exit status 1):\nswtpm: cannot load the TPM state" in caught.value.message
    assert "delete that directory" in str(caught.value.hint) and str(state) in str(caught.value.hint)


def test_swtpm_without_socket_times_out_and_is_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_swtpm(monkeypatch, fake_swtpm(tmp_path, "echo starting; exec sleep 60"))
    swtpm = Swtpm(tmp_path / "state", socket_timeout=0.5)
    with pytest.raises(MantraError, match=r"did not create its control socket .* within 0.5 s:\nstarting"):
        swtpm.start()
    assert swtpm.process is not None and swtpm.process.returncode is not None


def pids_running(marker: str) -> list[int]:
    """Processes whose command line holds `marker`."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def fake_qemu(tmp_path: Path, board: Board, body: str) -> Board:
    """`board` with a shell script running `body` as its QEMU."""
    script = tmp_path / "fake-qemu"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return replace(board, qemu=replace(board.qemu, binary=str(script)))


def test_qemu_failing_to_start_stops_swtpm(board: Board, image: Path, tmp_path: Path) -> None:
    failing = fake_qemu(tmp_path, board, 'echo "qemu: tpm-emulator: cannot connect" >&2; exit 1')
    runner = runner_for(failing, CONFIG, image, image.parent)
    with pytest.raises(MantraError) as caught:
        runner.run_headless(timeout=30, tpm=True)
    assert "QEMU failed (exit status 1):\nqemu: tpm-emulator: cannot connect" in caught.value.message
    assert f"delete its state {runner.tpm_state_dir}" in str(caught.value.hint)
    assert swtpm_pids(runner.tpm_state_dir) == []


@pytest.mark.parametrize("interrupt", ["ctrl-c", "sigterm"])
def test_an_interrupted_run_stops_qemu_and_swtpm(board: Board, image: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch, interrupt: str) -> None:
    marker = "61.25"  # a sleep no other process runs
    hanging = fake_qemu(tmp_path, board, f"echo booting; exec sleep {marker}")
    runner = runner_for(hanging, CONFIG, image, image.parent)

    class Interrupted:
        """A terminal whose first write is interrupted: by Ctrl-C, or by
        SIGTERM (as `kill` or timeout(1) send)."""

        class buffer:  # noqa: N801 (stands in for sys.stdout.buffer)
            @staticmethod
            def write(data: bytes) -> int:
                if interrupt == "sigterm":
                    signal.raise_signal(signal.SIGTERM)
                raise KeyboardInterrupt

        @staticmethod
        def flush() -> None:
            pass

    monkeypatch.setattr("mantra.runners.qemu.sys.stdout", Interrupted)
    expected = SystemExit if interrupt == "sigterm" else KeyboardInterrupt
    handler_before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(expected):
        runner.run_headless(timeout=30, echo=True, tpm=True)
    assert pids_running(f"sleep {marker}") == []
    assert swtpm_pids(runner.tpm_state_dir) == []
    # The run's SIGTERM handler is gone again.
    assert signal.getsignal(signal.SIGTERM) == handler_before


def test_run_help_offers_tpm() -> None:
    from mantra.cli import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["run", "--help"])
    assert result.exit_code == 0 and "--tpm" in result.output


@pytest.mark.boot
def test_boot_with_tpm_finds_the_tis_and_stops_swtpm(default_image: BuildResult) -> None:
    state = default_image.image.parent / "tpm"
    shutil.rmtree(state, ignore_errors=True)
    first = boot(default_image.image, timeout=BOOT_TIMEOUT, until="MantraCore ready", tpm=True)
    assert first.matched, first.console_text[-3000:]
    assert TIS_LINE.search(first.console_text), first.console_text[-3000:]
    assert "tpm: none" not in first.console_text
    assert swtpm_pids(state) == []
    state_files = sorted(p.name for p in state.iterdir())
    assert state_files, "swtpm kept no state"
    # The second boot reuses the same state directory (a marker survives).
    (state / "marker").write_text("kept")
    second = boot(default_image.image, timeout=BOOT_TIMEOUT, until="MantraCore ready", tpm=True)
    assert second.matched and TIS_LINE.search(second.console_text), second.console_text[-3000:]
    assert (state / "marker").read_text() == "kept"
    assert set(state_files) <= {p.name for p in state.iterdir()}
    assert swtpm_pids(state) == []


@pytest.mark.boot
def test_boot_with_tpm_stops_swtpm_on_timeout(default_image: BuildResult) -> None:
    state = default_image.image.parent / "tpm"
    result = boot(default_image.image, timeout=2, tpm=True)
    assert result.timed_out
    assert swtpm_pids(state) == []


@pytest.mark.boot
def test_boot_without_tpm_says_none(default_image: BuildResult) -> None:
    result = boot(default_image.image, timeout=BOOT_TIMEOUT, until="MantraCore ready")
    assert result.matched, result.console_text[-3000:]
    assert re.search(r"^tpm: none\s*$", result.console_text, re.M), result.console_text[-3000:]


@pytest.mark.boot
def test_corrupt_tpm_state_says_to_delete_it(default_image: BuildResult, tmp_path: Path) -> None:
    runner = runner_for(default_image.board, default_image.config.values, default_image.image, tmp_path)
    runner.tpm_state_dir.mkdir()
    (runner.tpm_state_dir / "tpm2-00.permall").write_bytes(b"not a TPM state" * 100)
    with pytest.raises(MantraError) as caught:
        runner.run_headless(timeout=BOOT_TIMEOUT, until="MantraCore ready", tpm=True)
    assert "swtpm said:" in caught.value.message
    assert f"delete its state {runner.tpm_state_dir}" in str(caught.value.hint)
    assert swtpm_pids(runner.tpm_state_dir) == []
