"""Resources and the console driver without hardware: USB serial adapters
matched by VID/PID/serial through a mocked list_ports (the one seam),
re-resolved at every open; the console driver on a pty and on a fake
board's TCP socket (send, expect, full log, silent vs wrong output vs a
vanished port, no silent re-opening); bench files."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from mantra.hil import resources
from mantra.hil.bench import load_bench
from mantra.hil.console import ConsoleDriver
from mantra.hil.errors import BenchFileError, BoardGone, ConsoleSilent, ExpectTimeout, NoSuchResource
from mantra.hil.resources import SerialPort, USBMatch, USBSerialPort
from mantra.hil.target import Target


def port(device: str, vid: int | None, pid: int | None, serial: str | None, location: str = "1-1:1.0"):
    return SimpleNamespace(device=device, vid=vid, pid=pid, serial_number=serial, location=location)


def test_usb_adapter_is_matched_by_vid_pid_and_serial(monkeypatch: pytest.MonkeyPatch) -> None:
    present = [port("/dev/ttyS0", None, None, None), port("/dev/ttyUSB0", 0x0403, 0x6001, "OTHER"),
               port("/dev/ttyUSB1", 0x0403, 0x6001, "FT5XK1"), port("/dev/ttyACM0", 0x2E8A, 0x000A, "FT5XK1")]
    monkeypatch.setattr(resources, "list_serial_ports", lambda: present)
    adapter = USBSerialPort(USBMatch.from_config({"vid": "0403", "pid": "0x6001", "serial": "FT5XK1"}))
    assert adapter.resolve() == "/dev/ttyUSB1"
    # Re-enumerated after a power cycle: another path, the same adapter.
    present[2] = port("/dev/ttyUSB4", 0x0403, 0x6001, "FT5XK1")
    assert adapter.resolve() == "/dev/ttyUSB4" and "last seen at /dev/ttyUSB4" in adapter.describe()
    # Without the serial number two adapters match: refused, not guessed.
    with pytest.raises(NoSuchResource, match="2 serial adapters match USB 0403:6001"):
        USBSerialPort(USBMatch(0x0403, 0x6001)).resolve()
    del present[2]
    with pytest.raises(NoSuchResource, match=r"no serial adapter USB 0403:6001 serial FT5XK1 \(USB serial ports "
                                             r"now: /dev/ttyUSB0 \(0403:6001 OTHER\), /dev/ttyACM0"):
        adapter.resolve()


def test_usb_interface_of_a_multi_port_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resources, "list_serial_ports", lambda: [
        port("/dev/ttyUSB0", 0x0403, 0x6011, "QUAD", "1-2:1.0"), port("/dev/ttyUSB1", 0x0403, 0x6011, "QUAD", "1-2:1.1")])
    assert USBSerialPort(USBMatch(0x0403, 0x6011, "QUAD", interface=1)).resolve() == "/dev/ttyUSB1"


def test_console_on_a_usb_adapter_that_is_a_pty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The adapter resolves (mocked list_ports) to a real pty, opened by pyserial."""
    master, slave = os.openpty()
    device = os.ttyname(slave)
    monkeypatch.setattr(resources, "list_serial_ports", lambda: [port(device, 0x10C4, 0xEA60, "CP1")])
    adapter = USBSerialPort(USBMatch(0x10C4, 0xEA60, "CP1"))
    console = ConsoleDriver("lab-1", adapter, tmp_path / "console.log")
    console.open(timeout=5)
    try:
        os.write(master, b"MantraBoot 0.1.0 (board lab-board)\r\nMantraCore ready (12 tsc)\r\n")
        found = console.expect(r"^MantraBoot (\S+) \(board (\S+)\)", timeout=5)
        assert found[2] == "lab-board"
        console.expect("MantraCore ready", timeout=5)
        console.send("MANTRA-FLASH")
        deadline = time.monotonic() + 5
        typed = b""
        while b"MANTRA-FLASH\r\n" not in typed and time.monotonic() < deadline:
            typed += os.read(master, 100)
        assert b"MANTRA-FLASH\r\n" in typed
    finally:
        console.close()
        os.close(master)
        os.close(slave)
    assert (tmp_path / "console.log").read_bytes().startswith(b"MantraBoot 0.1.0 (board lab-board)\r\n")


class FakeBoard:
    """A TCP console like QEMU's: sends `lines` once a client connects, then
    keeps quiet, or closes (`close_after`)."""

    def __init__(self, lines: list[bytes], close_after: float | None = None) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.lines = lines
        self.close_after = close_after
        self.received = b""
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            with client:
                try:
                    for line in self.lines:
                        client.sendall(line)
                        time.sleep(0.01)
                    client.settimeout(self.close_after or 30)
                    while chunk := client.recv(100):
                        self.received += chunk
                except OSError:
                    pass

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"


def test_expect_moves_a_cursor_and_the_log_has_everything(tmp_path: Path) -> None:
    board = FakeBoard([b"one\r\n", b"two\r\n", b"one again\r\n"])
    console = ConsoleDriver("p", SerialPort(board.url), tmp_path / "c.log")
    console.open()
    try:
        first = console.expect(r"^one", 5)
        second = console.expect(r"^one", 5)
        assert second.start() > first.start() and console.text[second.start():].startswith("one again")
        # start= looks back
        assert console.expect("two", 5, start=0)
        console.send("hello")
        deadline = time.monotonic() + 5
        while b"hello\r\n" not in board.received and time.monotonic() < deadline:
            time.sleep(0.02)
        assert board.received == b"hello\r\n"
        with pytest.raises(ValueError):
            console.send("two\nlines")
    finally:
        console.close()
    assert (tmp_path / "c.log").read_bytes() == b"one\r\ntwo\r\none again\r\n"


def test_a_silent_console_is_an_infrastructure_error(tmp_path: Path) -> None:
    board = FakeBoard([])
    console = ConsoleDriver("p", SerialPort(board.url), tmp_path / "c.log")
    console.open()
    try:
        with pytest.raises(ConsoleSilent, match="printed nothing in 0.5 s") as silent:
            console.expect("MantraBoot", 0.5)
        assert silent.value.kind == "infra"
    finally:
        console.close()


def test_other_output_is_a_test_failure(tmp_path: Path) -> None:
    board = FakeBoard([b"MantraBoot 0.1.0\r\n", b"KERNEL PANIC\r\n", b"partial"])
    console = ConsoleDriver("p", SerialPort(board.url), tmp_path / "c.log")
    console.open()
    try:
        with pytest.raises(ExpectTimeout, match=r"(?s)no line matching 'MantraCore ready'.*KERNEL PANIC") as timeout:
            console.expect("MantraCore ready", 0.5)
        assert timeout.value.kind == "failure"
        with pytest.raises(ExpectTimeout):  # an unfinished line is not matched
            console.expect("^partial", 0.3)
    finally:
        console.close()


def test_a_vanished_port_raises_at_once_and_is_not_reopened_silently(tmp_path: Path) -> None:
    board = FakeBoard([b"MantraBoot 0.1.0\r\n"], close_after=1.0)
    console = ConsoleDriver("p", SerialPort(board.url), tmp_path / "c.log")
    console.open()
    started = time.monotonic()
    with pytest.raises(BoardGone, match="the serial port socket://.* closed"):
        console.expect("MantraCore ready", 30)
    assert time.monotonic() - started < 10
    assert not console.is_open
    with pytest.raises(BoardGone):  # still closed: nobody reopened it behind our back
        console.expect("anything", 1)
    console.open()  # explicitly: a new connection, the old text kept
    try:
        console.expect("MantraBoot", 5, start=len("MantraBoot 0.1.0\r\n"))
        assert console.text.count("MantraBoot 0.1.0") == 2
    finally:
        console.close()
    board.server.close()


def test_bench_files(tmp_path: Path) -> None:
    default = load_bench()
    assert {"qemu-1", "qemu-2", "qemu-3", "qemu-tpm"} <= set(default.places)
    assert all(spec.kind == "qemu" for spec in default.places.values())
    good = tmp_path / "lab.toml"
    good.write_text(f'[bench]\nstate_dir = "{tmp_path}/state"\nlock_dir = "{tmp_path}/locks"\n'
                    '[places.lab-1]\n'
                    'console = { usb = { vid = "0403", pid = "6001", serial = "FT5XK1" }, baud = 921600 }\n'
                    'power = { kind = "usb-relay", port = { url = "/dev/ttyUSB9" }, channel = 2 }\n'
                    'dfu = { vid = "0483", pid = "df11", serial = "3671" }\n'
                    'tpm = "hardware"\n'
                    '[places.lab-2]\nconsole = { url = "rfc2217://lab:2217" }\n'
                    'power = { kind = "pdu", host = "10.0.0.5", port = 23, outlet = 3 }\n'
                    '[places.far]\nremote = { host = "bench.example", user = "ci", place = "qemu-1" }\n')
    bench = load_bench(good, root=tmp_path)
    target = Target(bench, bench.place("lab-1"))
    assert target.describe() == {
        "console": "USB 0403:6001 serial FT5XK1 at 921600 baud",
        "power": "USB relay channel 2 on serial /dev/ttyUSB9 at 115200 baud",
        "flasher": "MantraFlash over the console (mantra.provision)",
        "dfu": "DFU USB 0483:df11 serial 3671",
        "tpm": "TPM 2.0 on the board",
    }
    assert "PDU 10.0.0.5:23 outlet 3" in Target(bench, bench.place("lab-2")).describe()["power"]
    assert bench.place("far").summary() == "remote: ci@bench.example:22 place qemu-1"
    for text, error in [
        ('[places.x]\nqemu = {}\ncolour = "red"\n', "unknown key"),
        ('[places.x]\ndescription = "no board"\n', "has no board"),
        ('[places.x]\nqemu = {}\npower = { kind = "lightning" }\n', "power kind 'lightning'"),
        ('[places."a b"]\nqemu = {}\n', "letters, digits"),
        ('[place.x]\nqemu = {}\n', "unknown table"),
        ('[places.x\n', "Expected"),
    ]:
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(BenchFileError, match=error):
            load_bench(bad, root=tmp_path)
    with pytest.raises(BenchFileError, match="no place 'nope'"):
        bench.place("nope")


def test_dfu_device_is_found_by_vid_pid_and_serial(monkeypatch: pytest.MonkeyPatch) -> None:
    import usb.core

    from mantra.hil.resources import USBDFUDevice

    devices = [SimpleNamespace(idVendor=0x0483, idProduct=0xDF11, serial_number="3671"),
               SimpleNamespace(idVendor=0x0483, idProduct=0xDF11, serial_number="9999")]

    def find(find_all: bool, idVendor: int, idProduct: int):  # noqa: N803, ANN202
        assert find_all
        return iter([d for d in devices if (d.idVendor, d.idProduct) == (idVendor, idProduct)])

    monkeypatch.setattr(usb.core, "find", find)
    assert USBDFUDevice(USBMatch(0x0483, 0xDF11, "3671")).find() is devices[0]
    with pytest.raises(NoSuchResource, match="2 USB devices match DFU USB 0483:df11"):
        USBDFUDevice(USBMatch(0x0483, 0xDF11)).find()
    with pytest.raises(NoSuchResource, match="0 USB devices match"):
        USBDFUDevice(USBMatch(0x1209, 0x0001, "x")).find()
