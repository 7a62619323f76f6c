"""Resources: what exists on a bench, described, not acted on (drivers act).

Each place of a bench file has some of these. Drivers only depend on the
small interfaces at the top (ConsolePort, PowerSwitch), so a QEMU board and
a real board share the console, power and boot drivers:

| resource | console (ConsolePort) | power (PowerSwitch) |
| --- | --- | --- |
| QemuBoard | its TCP console socket (pyserial `socket://`) | QemuPower: start / quit QEMU |
| SerialPort | a tty, pty or any pyserial URL | |
| USBSerialPort | the tty of the adapter with this VID:PID and serial number, looked up at every open | |
| | | NoPower, ManualPower, USBRelay, NetworkPDU (power.py) |

USBDFUDevice names a board's DFU interface (found with pyusb when used);
the TPM is swtpm for QEMU boards (QemuBoard(tpm=True)) or the board's own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from mantra.hil.errors import ConsoleError, NoSuchResource

DEFAULT_BAUD = 115200


class SerialLike(Protocol):
    """What the console driver needs of an open port (a pyserial Serial)."""

    def read(self, size: int = 1) -> bytes: ...
    def write(self, data: bytes) -> int | None: ...
    def close(self) -> None: ...


class ConsolePort(Protocol):
    """A resource a console can be opened on."""

    #: Whether the port exists only while the board is powered (a QEMU board's socket).
    needs_power: bool

    def describe(self) -> str: ...
    def open(self, timeout: float) -> SerialLike: ...
    def gone_reason(self) -> tuple[str, bool] | None:
        """After the port closed: (why, whether the bench is to blame) or None if unknown."""
        ...


def open_serial_url(url: str, baud: int, **kwargs: Any) -> SerialLike:
    """pyserial's serial_for_url, its errors as ConsoleError. The one seam
    for opening ports (tests replace it).

    pyserial's open() ends with reset_input_buffer(), which for socket://
    reads and throws away whatever the board already sent (QEMU starts the
    guest as soon as the connection is accepted, so its first lines can be
    there): the port is opened without that reset, so the log has everything."""
    import serial

    try:
        port = serial.serial_for_url(url, baudrate=baud, timeout=0.2, write_timeout=10, do_not_open=True, **kwargs)
        port.reset_input_buffer = lambda: None  # type: ignore[method-assign]
        try:
            port.open()
        finally:
            del port.reset_input_buffer
        return port
    except (serial.SerialException, ValueError, OSError) as exc:
        raise ConsoleError(f"cannot open the console {url}: {exc}",
                           "check that the port exists and that no other program holds it "
                           "(mantra hil never shares a port: one console driver per place)") from None


@dataclass
class SerialPort:
    """A console on a fixed port: /dev/ttyS0, a pty, socket://HOST:PORT, rfc2217://..."""

    url: str
    baud: int = DEFAULT_BAUD
    needs_power = False

    def describe(self) -> str:
        return f"serial {self.url} at {self.baud} baud"

    def open(self, timeout: float) -> SerialLike:
        return open_serial_url(self.url, self.baud)

    def gone_reason(self) -> tuple[str, bool] | None:
        return (f"the serial port {self.url} closed", True)


def list_serial_ports() -> list[Any]:
    """pyserial's list_ports (sysfs on Linux): the seam tests mock."""
    from serial.tools import list_ports

    return list(list_ports.comports())


def _hex_id(value: int | str | None) -> int | None:
    if value is None or isinstance(value, int):
        return value
    return int(str(value).removeprefix("0x"), 16)


@dataclass
class USBMatch:
    """A USB device by vendor and product id, and serial number (and the
    interface number, for adapters with several ports). Whatever path
    the kernel gives it after re-enumeration, the same device matches."""

    vid: int
    pid: int
    serial: str | None = None
    interface: int | None = None

    @classmethod
    def from_config(cls, data: dict[str, Any]) -> USBMatch:
        return cls(_hex_id(data["vid"]), _hex_id(data["pid"]), data.get("serial"), data.get("interface"))  # type: ignore[arg-type]

    def describe(self) -> str:
        text = f"USB {self.vid:04x}:{self.pid:04x}"
        if self.serial:
            text += f" serial {self.serial}"
        if self.interface is not None:
            text += f" interface {self.interface}"
        return text

    def matches_port(self, port: Any) -> bool:
        if port.vid != self.vid or port.pid != self.pid:
            return False
        if self.serial is not None and port.serial_number != self.serial:
            return False
        if self.interface is not None:
            # pyserial: location "1-1.4:1.0" ends in config.interface
            location = getattr(port, "location", None) or ""
            if not location.endswith(f".{self.interface}"):
                return False
        return True


@dataclass
class USBSerialPort:
    """A USB serial adapter matched by VID/PID/serial number, resolved to
    its tty at every open (so it survives re-enumeration: /dev/ttyUSB0
    today, /dev/ttyUSB3 after a replug)."""

    match: USBMatch
    baud: int = DEFAULT_BAUD
    needs_power = False
    last_device: str | None = field(default=None, init=False)

    def describe(self) -> str:
        where = f" (last seen at {self.last_device})" if self.last_device else ""
        return f"{self.match.describe()}{where} at {self.baud} baud"

    def resolve(self) -> str:
        """The adapter's device path now; NoSuchResource if absent or ambiguous."""
        ports = list_serial_ports()
        found = [port for port in ports if self.match.matches_port(port)]
        if not found:
            seen = ", ".join(f"{p.device} ({p.vid or 0:04x}:{p.pid or 0:04x} {p.serial_number or '-'})"
                             for p in ports if p.vid is not None) or "none"
            raise NoSuchResource(f"no serial adapter {self.match.describe()} (USB serial ports now: {seen})",
                                 "plug it in, or fix vid/pid/serial in the bench file (`mantra hil places -v` "
                                 "lists what is connected)")
        if len(found) > 1:
            raise NoSuchResource(f"{len(found)} serial adapters match {self.match.describe()}: "
                                 f"{', '.join(p.device for p in found)}",
                                 "give the serial number (and interface) in the bench file")
        self.last_device = found[0].device
        return found[0].device

    def open(self, timeout: float) -> SerialLike:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return open_serial_url(self.resolve(), self.baud)
            except (NoSuchResource, ConsoleError):
                # Re-enumerating after a power cycle takes a moment.
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)

    def gone_reason(self) -> tuple[str, bool] | None:
        return (f"the serial adapter {self.describe()} went away (unplugged or re-enumerated)", True)


@dataclass
class USBDFUDevice:
    """A board's USB DFU interface, by VID/PID/serial (found with pyusb when used)."""

    match: USBMatch

    def describe(self) -> str:
        return f"DFU {self.match.describe()}"

    def find(self) -> Any:
        try:
            import usb.core
        except ImportError as exc:  # pragma: no cover - pinned in pyproject
            raise NoSuchResource(f"pyusb is missing: {exc}", "./mantra reinstalls the virtualenv") from None
        try:
            devices = list(usb.core.find(find_all=True, idVendor=self.match.vid, idProduct=self.match.pid))
        except usb.core.NoBackendError:
            raise NoSuchResource("no USB backend (libusb) for pyusb", "apt-get install libusb-1.0-0") from None
        if self.match.serial is not None:
            devices = [d for d in devices if _usb_serial(d) == self.match.serial]
        if len(devices) != 1:
            raise NoSuchResource(f"{len(devices)} USB devices match {self.describe()}",
                                 "put the board in DFU mode, or fix the bench file")
        return devices[0]


def _usb_serial(device: Any) -> str | None:
    try:
        return device.serial_number
    except (ValueError, Exception):  # no permission to read string descriptors
        return None


@dataclass
class HardwareTPM:
    """The board has its own TPM (the attestation driver talks to it through the board)."""

    def describe(self) -> str:
        return "TPM 2.0 on the board"
