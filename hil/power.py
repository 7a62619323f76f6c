"""Power switches (resources) and the power driver.

A switch only knows how to set its outlet on or off; the driver adds cycle
timing and turns every failure into a PowerError (an infrastructure error).

| kind | how |
| --- | --- |
| none | the board cannot be switched: on/off are refused unless it is already in that state (always-on boards) |
| manual | asks a person at the bench ("switch BOARD on, then press Enter"); refused without a terminal |
| usb-relay | a serial relay board through pyserial: LCUS-type binary frames (A0 ch state sum) or text templates |
| pdu | a network PDU: a line protocol over TCP (telnet-ish: send "on {outlet}", expect "OK") or HTTP GET URLs |
| qemu | a QEMU board: start QEMU / ask its monitor to quit |
"""

from __future__ import annotations

import re
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from mantra.hil.errors import PowerError
from mantra.hil.resources import SerialPort, USBSerialPort


class PowerSwitch(Protocol):
    def describe(self) -> str: ...
    def set(self, on: bool) -> None: ...
    def get(self) -> bool | None:
        """Whether the outlet is on (None: the switch cannot tell)."""
        ...


@dataclass
class NoPower:
    """A board without a switch (always on)."""

    def describe(self) -> str:
        return "no power switch (always on)"

    def set(self, on: bool) -> None:
        if not on:
            raise PowerError("this place has no power switch: the board cannot be switched off",
                             "add a [place.NAME.power] switch to the bench file, or use strategies that never "
                             "power off")

    def get(self) -> bool | None:
        return True


@dataclass
class ManualPower:
    """A person switches the board when asked."""

    board: str
    prompt: Callable[[str], str] | None = None
    state: bool | None = None

    def describe(self) -> str:
        return "manual (asks at the terminal)"

    def set(self, on: bool) -> None:
        ask = self.prompt
        if ask is None:
            if not sys.stdin.isatty():
                raise PowerError(f"{self.board} needs a person to switch it {'on' if on else 'off'}, "
                                 "and there is no terminal to ask", "run interactively, or give the place a switch")
            ask = input
        answer = ask(f"Switch {self.board} {'ON' if on else 'OFF'}, then press Enter (or type 'fail'): ")
        if answer.strip().lower() in ("fail", "f", "no", "n"):
            raise PowerError(f"the person at the bench could not switch {self.board} {'on' if on else 'off'}",
                             "check the board's supply")
        self.state = on

    def get(self) -> bool | None:
        return self.state


def lcus_frame(channel: int, on: bool) -> bytes:
    """The 4-byte command of LCUS-type USB serial relays: A0, channel, state, checksum."""
    state = 1 if on else 0
    return bytes([0xA0, channel, state, (0xA0 + channel + state) & 0xFF])


@dataclass
class USBRelay:
    """A relay board on a serial port (often a CH340 USB serial adapter)."""

    port: SerialPort | USBSerialPort
    channel: int = 1
    protocol: str = "lcus"  # or "text"
    on_command: str = "relay {channel} on"
    off_command: str = "relay {channel} off"
    state: bool | None = None

    def describe(self) -> str:
        return f"USB relay channel {self.channel} on {self.port.describe()}"

    def set(self, on: bool) -> None:
        if self.protocol == "lcus":
            data = lcus_frame(self.channel, on)
        elif self.protocol == "text":
            data = ((self.on_command if on else self.off_command).format(channel=self.channel) + "\r\n").encode()
        else:
            raise PowerError(f"unknown relay protocol {self.protocol!r}", "use protocol = \"lcus\" or \"text\"")
        try:
            port = self.port.open(2.0)
        except Exception as exc:
            raise PowerError(f"the relay {self.describe()} cannot be opened: {exc}", "is it plugged in?") from None
        try:
            port.write(data)
            flush = getattr(port, "flush", None)
            if flush:
                flush()
        except Exception as exc:
            raise PowerError(f"writing to the relay {self.describe()} failed: {exc}", "check the relay's cable") \
                from None
        finally:
            port.close()
        self.state = on

    def get(self) -> bool | None:
        return self.state


@dataclass
class NetworkPDU:
    """A network power distribution unit.

    `protocol = "tcp"`: connect to host:port, send `on_command`/`off_command`
    (with {outlet}) as a line and read until a line matches `ok` (or `error`).
    `protocol = "http"`: GET `on_url`/`off_url` (with {host}, {outlet}); a 2xx answer is success.
    """

    host: str
    port: int = 23
    outlet: int = 1
    protocol: str = "tcp"
    on_command: str = "on {outlet}"
    off_command: str = "off {outlet}"
    status_command: str | None = "status {outlet}"
    ok: str = r"(?i)^\s*ok\b"
    error: str = r"(?i)^\s*(err|error|fail)"
    on_url: str = "http://{host}:{port}/outlet/{outlet}/on"
    off_url: str = "http://{host}:{port}/outlet/{outlet}/off"
    timeout: float = 5.0
    state: bool | None = field(default=None)

    def describe(self) -> str:
        return f"PDU {self.host}:{self.port} outlet {self.outlet} ({self.protocol})"

    def _line_exchange(self, command: str) -> str:
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as sock:
                sock.sendall(command.format(outlet=self.outlet).encode() + b"\r\n")
                buffered = b""
                deadline = time.monotonic() + self.timeout
                while time.monotonic() < deadline:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    buffered += chunk
                    for raw in re.split(rb"\r?\n", buffered)[:-1]:
                        line = raw.decode(errors="replace")
                        if re.search(self.error, line):
                            raise PowerError(f"{self.describe()} refused {command.format(outlet=self.outlet)!r}: "
                                             f"{line.strip()}", "check the outlet number and the PDU's settings")
                        if re.search(self.ok, line):
                            return line
                raise PowerError(f"{self.describe()} gave no answer to {command.format(outlet=self.outlet)!r} "
                                 f"(got {buffered[-200:]!r})", "check the PDU's protocol settings in the bench file")
        except OSError as exc:
            raise PowerError(f"cannot reach {self.describe()}: {exc}", "is the PDU on the network?") from None

    def set(self, on: bool) -> None:
        if self.protocol == "tcp":
            self._line_exchange(self.on_command if on else self.off_command)
        elif self.protocol == "http":
            address = (self.on_url if on else self.off_url).format(host=self.host, port=self.port, outlet=self.outlet)
            try:
                with urllib.request.urlopen(address, timeout=self.timeout) as answer:
                    answer.read()
            except (urllib.error.URLError, OSError) as exc:
                raise PowerError(f"{self.describe()}: GET {address} failed: {exc}", "is the PDU on the network?") \
                    from None
        else:
            raise PowerError(f"unknown PDU protocol {self.protocol!r}", 'use protocol = "tcp" or "http"')
        self.state = on

    def get(self) -> bool | None:
        if self.protocol == "tcp" and self.status_command:
            line = self._line_exchange(self.status_command)
            if re.search(r"(?i)\bon\b", line):
                return True
            if re.search(r"(?i)\boff\b", line):
                return False
        return self.state


@dataclass
class QemuPower:
    """QEMU's own power: start it, or ask its monitor to quit."""

    board: Any  # a QemuBoard

    def describe(self) -> str:
        return "QEMU (start / monitor quit)"

    def set(self, on: bool) -> None:
        if on:
            self.board.power_on()
        else:
            self.board.power_off()

    def get(self) -> bool | None:
        return self.board.is_on()


class PowerDriver:
    """on / off / cycle on any switch; every failure is a PowerError."""

    def __init__(self, switch: PowerSwitch, *, off_time: float = 1.0,
                 on_change: Callable[[bool], None] | None = None) -> None:
        self.switch = switch
        self.off_time = off_time
        self.on_change = on_change

    def _set(self, on: bool) -> None:
        try:
            self.switch.set(on)
        except PowerError:
            raise
        except Exception as exc:
            raise PowerError(f"{self.switch.describe()}: switching {'on' if on else 'off'} failed: {exc}",
                             "check the switch") from None
        if self.on_change:
            self.on_change(on)

    def on(self) -> None:
        self._set(True)

    def off(self) -> None:
        self._set(False)

    def cycle(self) -> None:
        self.off()
        time.sleep(self.off_time)
        self.on()

    def get(self) -> bool | None:
        try:
            return self.switch.get()
        except PowerError:
            raise
        except Exception as exc:
            raise PowerError(f"{self.switch.describe()}: reading its state failed: {exc}", "check the switch") \
                from None


__all__ = ["ManualPower", "NetworkPDU", "NoPower", "PowerDriver", "PowerSwitch", "QemuPower", "USBRelay",
           "lcus_frame"]
