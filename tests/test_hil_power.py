"""Power switches (hil/power.py) against fakes: no switch, a person asked
at the terminal, a USB serial relay on a pty, a network PDU over a TCP line
protocol and over HTTP (local fake servers); the power driver's cycle and
its errors (all PowerError: infrastructure)."""

from __future__ import annotations

import http.server
import os
import socket
import socketserver
import threading
import time
from pathlib import Path

import pytest
from mantra.hil.errors import PowerError
from mantra.hil.power import ManualPower, NetworkPDU, NoPower, PowerDriver, USBRelay, lcus_frame
from mantra.hil.resources import SerialPort
from mantra.hil.results import INFRA, classify


def test_no_switch_is_always_on() -> None:
    driver = PowerDriver(NoPower())
    driver.on()
    assert driver.get() is True
    with pytest.raises(PowerError, match="no power switch") as refused:
        driver.off()
    assert classify(refused.value) == INFRA


def test_manual_power_asks_a_person() -> None:
    asked: list[str] = []
    answers = iter(["", "", "fail"])
    switch = ManualPower("lab-1", prompt=lambda text: asked.append(text) or next(answers))
    driver = PowerDriver(switch, off_time=0)
    driver.cycle()
    assert asked == ["Switch lab-1 OFF, then press Enter (or type 'fail'): ",
                     "Switch lab-1 ON, then press Enter (or type 'fail'): "]
    assert driver.get() is True
    with pytest.raises(PowerError, match="could not switch lab-1 off"):
        driver.off()
    # Nobody to ask (pytest's stdin is not a terminal): refused, not hung.
    with pytest.raises(PowerError, match="no terminal to ask"):
        PowerDriver(ManualPower("lab-1")).on()


def _read_exactly(fd: int, size: int, timeout: float = 5) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < size and time.monotonic() < deadline:
        data += os.read(fd, size - len(data))
    return data


def test_usb_relay_binary_and_text_commands_on_a_pty() -> None:
    master, slave = os.openpty()
    try:
        tty = os.ttyname(slave)
        relay = USBRelay(SerialPort(tty, 9600), channel=2)
        driver = PowerDriver(relay, off_time=0)
        driver.on()
        assert _read_exactly(master, 4) == bytes([0xA0, 0x02, 0x01, 0xA3]) == lcus_frame(2, True)
        driver.cycle()
        assert _read_exactly(master, 8) == lcus_frame(2, False) + lcus_frame(2, True)
        assert driver.get() is True
        text = PowerDriver(USBRelay(SerialPort(tty), channel=1, protocol="text", on_command="ON {channel}",
                                    off_command="OFF {channel}"))
        text.off()
        assert _read_exactly(master, 7) == b"OFF 1\r\n"
    finally:
        os.close(master)
        os.close(slave)
    with pytest.raises(PowerError, match="cannot be opened"):
        PowerDriver(USBRelay(SerialPort("/dev/nonexistent-relay"))).on()
    with pytest.raises(PowerError, match="unknown relay protocol"):
        USBRelay(SerialPort("/dev/null"), protocol="morse").set(True)


class FakePDU:
    """A telnet-ish PDU: `on N` / `off N` / `status N`, answers `OK ...` or `ERR ...`."""

    def __init__(self, outlets: int = 8) -> None:
        self.outlets = {n: False for n in range(1, outlets + 1)}
        self.commands: list[str] = []
        pdu = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.wfile.write(b"FakePDU 1.0 ready\r\n")
                line = self.rfile.readline().decode().strip()
                pdu.commands.append(line)
                verb, _, number = line.partition(" ")
                outlet = int(number) if number.isdigit() else 0
                if outlet not in pdu.outlets:
                    self.wfile.write(b"ERR no such outlet\r\n")
                elif verb in ("on", "off"):
                    pdu.outlets[outlet] = verb == "on"
                    self.wfile.write(f"OK outlet {outlet} {verb}\r\n".encode())
                elif verb == "status":
                    self.wfile.write(f"OK outlet {outlet} is {'on' if pdu.outlets[outlet] else 'off'}\r\n".encode())
                else:
                    self.wfile.write(b"ERR unknown command\r\n")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_network_pdu_line_protocol() -> None:
    pdu = FakePDU()
    try:
        driver = PowerDriver(NetworkPDU("127.0.0.1", pdu.port, outlet=3), off_time=0)
        driver.on()
        assert pdu.outlets[3] is True and driver.get() is True
        driver.off()
        assert pdu.outlets[3] is False and driver.get() is False
        driver.cycle()
        assert pdu.outlets[3] is True
        assert pdu.commands == ["on 3", "status 3", "off 3", "status 3", "off 3", "on 3"]
        with pytest.raises(PowerError, match="refused 'on 9': ERR no such outlet"):
            PowerDriver(NetworkPDU("127.0.0.1", pdu.port, outlet=9)).on()
    finally:
        pdu.stop()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with pytest.raises(PowerError, match=r"cannot reach PDU 127\.0\.0\.1:\d+ outlet 1"):
        PowerDriver(NetworkPDU("127.0.0.1", closed_port, timeout=1)).on()


def test_network_pdu_over_http(tmp_path: Path) -> None:
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            requests.append(self.path)
            status = 200 if self.path.startswith("/outlet/4/") else 404
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"done")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        driver = PowerDriver(NetworkPDU("127.0.0.1", port, outlet=4, protocol="http"), off_time=0)
        driver.cycle()
        assert requests == ["/outlet/4/off", "/outlet/4/on"]
        with pytest.raises(PowerError, match="GET http://127.0.0.1:.*/outlet/5/on failed"):
            PowerDriver(NetworkPDU("127.0.0.1", port, outlet=5, protocol="http")).on()
    finally:
        server.shutdown()
        server.server_close()


def test_driver_turns_any_switch_failure_into_a_power_error() -> None:
    class Broken:
        def describe(self) -> str:
            return "broken switch"

        def set(self, on: bool) -> None:
            raise OSError("relay board unplugged")

        def get(self) -> bool | None:
            raise OSError("relay board unplugged")

    with pytest.raises(PowerError, match="broken switch: switching on failed: relay board unplugged"):
        PowerDriver(Broken()).on()
    with pytest.raises(PowerError, match="reading its state failed"):
        PowerDriver(Broken()).get()
