"""`mantra flash` end to end without hardware: the simulator behind a real
TCP socket reached through pyserial's socket:// URL, the CLI through
typer's CliRunner and the ./mantra script, a pty held open elsewhere
(device busy), --bench's line, the --usb hand-off."""

from __future__ import annotations

import os
import re
import sys
import types
from contextlib import contextmanager
from pathlib import Path

import pytest
from flash_device_sim import PtyDevice, SimDevice, SimTransport, TcpDevice
from flash_support import BOARD, device_disk, make_image, make_keyset
from mantra.cli import app
from mantra.provision import serial_flash as sf
from mantra.provision.messages import SlotState
from mantra.signing.verify import verify_disk
from support import mantra
from typer.testing import CliRunner


@pytest.fixture(scope="module")
def keyset(tmp_path_factory):
    return make_keyset(tmp_path_factory.mktemp("keys") / "product")


@pytest.fixture(scope="module")
def image(keyset, tmp_path_factory) -> Path:
    return make_image(tmp_path_factory.mktemp("image"), keyset)


@pytest.fixture
def board(image, keyset, tmp_path):
    dev = SimDevice(device_disk(image, tmp_path / "board" / "disk.img"), board=BOARD,
                    root_public=keyset.root_public)
    yield dev


def invoke(*args: str):
    return CliRunner().invoke(app, ["flash", *args])


def test_flash_over_socket_url(image, board, keyset):
    server = TcpDevice(board)
    try:
        result = invoke("-b", BOARD, "--port", server.url, "--baud", "921600", str(image))
    finally:
        server.close()
    assert result.exit_code == 0, result.output
    assert re.search(rf"flash: OK: slot a of .* -> slot b of the {BOARD} on {re.escape(server.url)}: "
                     r"\d+ blocks sent, \d+ already held", result.output)
    assert "slot b is pending: it boots next" in result.output
    assert board.stats.resets == 1 and board.records["b"].state == SlotState.PENDING
    verify_disk(board.disk, keyset.root_public, slot="b", board=BOARD)


def test_flash_over_a_pty(image, board, keyset):
    """A tty device node (a pty), opened by pyserial's POSIX port, with a
    baud switch (termios on the pty)."""
    pty = PtyDevice(board)
    try:
        result = invoke("-b", BOARD, "--port", pty.path, "--baud", "460800", str(image))
    finally:
        pty.close()
    assert result.exit_code == 0, result.output
    assert f"on {pty.path}:" in result.output and "at 460800 baud" in result.output
    assert board.records["b"].state == SlotState.PENDING
    verify_disk(board.disk, keyset.root_public, slot="b", board=BOARD)


def test_socket_cut_then_resume(image, board, keyset):
    """The TCP connection drops part-way (pyserial: socket disconnected);
    the same command again finishes, sending no block twice."""
    server = TcpDevice(board, cut_after=60_000)
    try:
        first = invoke("-b", BOARD, "--port", server.url, str(image))
        assert first.exit_code == 1
        assert "lost the connection to the board" in first.output
        assert "run the same command again to resume" in first.output
        held = dict(board.stats.writes)
        assert held
        second = invoke("-b", BOARD, "--port", server.url, str(image))
    finally:
        server.close()
    assert second.exit_code == 0, second.output
    assert all(n == 1 for n in board.stats.writes.values())
    assert re.search(rf"{len(held)} already held|\d+ already held", second.output)
    verify_disk(board.disk, keyset.root_public, slot="b", board=BOARD)


def test_wrong_board_message(image):
    result = invoke("-b", "rpi4", "--port", "socket://127.0.0.1:9", str(image))
    assert result.exit_code == 1
    assert "error: wrong board:" in result.output and "is built for qemu-x86_64, not rpi4" in result.output
    assert "try: build the image for rpi4" in result.output


def test_no_board_answers(image):
    """A port nothing listens on: the open fails with advice."""
    result = invoke("-b", BOARD, "--port", "socket://127.0.0.1:9", str(image))
    assert result.exit_code == 1
    assert "error: cannot open socket://127.0.0.1:9" in result.output and "try:" in result.output


def test_dry_run_offline(image):
    result = invoke("-b", BOARD, "--dry-run", str(image))
    assert result.exit_code == 0, result.output
    assert "flash: dry run:" in result.output and "nothing was written" in result.output


def test_missing_port_and_image():
    result = invoke("-b", BOARD, "some.img")
    assert result.exit_code == 1 and "no --port given" in result.output
    result = invoke("-b", BOARD, "--port", "socket://127.0.0.1:9")
    assert result.exit_code == 1 and "no IMAGE given" in result.output
    result = invoke("-b", BOARD, "--port", "x", "--baud", "1000000", "some.img")
    assert result.exit_code == 1 and "not a MantraFlash rate" in result.output


def test_device_busy(tmp_path):
    master, slave = os.openpty()
    try:
        name = os.ttyname(slave)
        holder = sf.SerialTransport.open(name)
        try:
            with pytest.raises(sf.FlashError, match=f"device busy: another program has {name} open") as err:
                sf.SerialTransport.open(name)
            assert "fuser" in err.value.hint
        finally:
            holder.close()
        sf.SerialTransport.open(name).close()  # free again
    finally:
        os.close(master)
        os.close(slave)


def test_bench_line(image, keyset, monkeypatch, tmp_path):
    """--bench builds the default product and flashes it to a board (here
    the simulator in place of QEMU): the last line is the figure."""
    from mantra.cli import flash as flash_cli
    from mantra.provision import bench as bench_module

    built = types.SimpleNamespace(image=image)
    monkeypatch.setattr(flash_cli.driver, "build", lambda ws, board, product: built)
    devices = []

    @contextmanager
    def sim_board(disk: Path):
        dev = SimDevice(disk, board=BOARD, root_public=keyset.root_public)
        tr = SimTransport(dev)
        devices.append(tr)
        yield tr, "sim://bench"

    monkeypatch.setattr(bench_module, "qemu_board", sim_board)
    result = invoke("--bench")
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    match = re.fullmatch(r"effective throughput: (\d+\.\d) x line rate", last)
    assert match, result.output
    tr = devices[0]
    session = sum(len(w) for w in tr.writes if not w.startswith(b"MANTRA-FLASH")) + 14  # from the answered HELLO
    assert float(match.group(1)) == round(8 * 1024 * 1024 / session, 1)
    assert float(match.group(1)) >= 3
    raw = invoke("--bench", "--no-compress")
    assert raw.exit_code == 0, raw.output
    raw_figure = float(raw.output.strip().splitlines()[-1].split()[2])
    assert 3 <= raw_figure < float(match.group(1))  # sparse alone: less, still above 3


def test_usb_hands_over_to_dfu(image, monkeypatch):
    calls = []
    fake = types.ModuleType("mantra.provision.dfu")
    fake.flash_usb = lambda image, vid_pid, board, progress: calls.append((image, vid_pid, board, progress))
    monkeypatch.setitem(sys.modules, "mantra.provision.dfu", fake)
    import mantra.provision

    monkeypatch.setattr(mantra.provision, "dfu", fake, raising=False)
    assert invoke("-b", BOARD, str(image), "--usb", "1209:0001").exit_code == 0
    assert invoke("-b", BOARD, "--usb", str(image)).exit_code == 0
    assert invoke("-b", BOARD, str(image), "--usb").exit_code == 0
    assert [(c[0], c[1], c[2]) for c in calls] == [(image, "1209:0001", BOARD), (image, None, BOARD),
                                                   (image, None, BOARD)]
    assert all(callable(c[3]) for c in calls)
    result = invoke("-b", BOARD, str(image), "--usb=nope")
    assert result.exit_code == 1 and "not a USB id" in result.output


def test_through_the_mantra_script(image):
    result = mantra("flash", "-b", BOARD, "--dry-run", str(image), timeout=300)
    assert result.returncode == 0, result.stderr
    assert "flash: dry run:" in result.stdout
    result = mantra("flash", "-b", "rpi4", "--dry-run", str(image), timeout=300)
    assert result.returncode == 1 and "wrong board" in result.stderr
