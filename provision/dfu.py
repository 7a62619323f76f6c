"""`mantra flash --usb`: the host side of USB DFU 1.1 (the USB Device Firmware
Upgrade class, revision 1.1), on pyusb.

What is downloaded is one slot of a built, signed disk image: the bytes of
its slot partition (the same payload as serial flashing, docs/flash-protocol.md),
trailing zeros left off. MantraBoot's DFU function writes it into the
device's inactive slot, erasing that slot first, so the running slot is
never touched: a pulled cable leaves the board booting what it booted.

The steps, each in the order of the DFU 1.1 specification:

1. Before the device is touched: the image's slot is read and, with `root`,
   verified (as `mantra verify --slot`); an image for another board is refused.
2. Discovery (`usb.core.find(backend=...)`): a device with the board's USB IDs
   (board.toml [usb], or `--usb VID:PID`) and an interface of class 0xFE,
   subclass 0x01, protocol 1 (runtime) or 2 (DFU mode), whose DFU functional
   descriptor (type 0x21) gives bmAttributes, wDetachTimeOut, wTransferSize
   and bcdDFUVersion.
3. A runtime device gets DFU_DETACH; unless it detaches by itself
   (bitWillDetach) the host resets it within wDetachTimeOut; either way it
   re-enumerates in DFU mode and is found again by VID, PID and serial number.
4. The DFU-mode interface's alternate setting 1 is MantraBoot's device
   information (read with DFU_UPLOAD, format `DeviceInfo`): board, root
   public key, rollback minimum, target slot and its size. The image must
   verify against that root key, for that board, at or above that minimum,
   and fit the slot; otherwise nothing is written.
5. Alternate setting 0 is the inactive slot: DFU_DNLOAD blocks of
   wTransferSize bytes, each followed by DFU_GETSTATUS until dfuDNLOAD-IDLE,
   waiting bwPollTimeout between polls; then a zero-length DFU_DNLOAD,
   manifestation (polled until dfuIDLE, or until the device waits for the
   reset when it is not manifestation-tolerant), and a final USB reset: the
   board boots the new slot as pending (docs/boot-state.md).

Errors: a STALL (libusb's LIBUSB_ERROR_PIPE, errno EPIPE) is cleared with
DFU_CLRSTATUS and reported; a device in an unexpected state gets DFU_ABORT
and the download is retried once; an error status is named (errWRITE, ...)
with what to try; a device that goes away means "run the same command again".
"""

from __future__ import annotations

import errno
import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import usb.core
import usb.util

from mantra.board import Board, load_board
from mantra.errors import MantraError
from mantra.image import gpt
from mantra.provision.dfu_protocol import (
    AGAIN,
    ALT_INFO,
    ALT_SLOT,
    DFU_CLASS,
    DFU_SUBCLASS,
    PROTOCOL_DFU,
    PROTOCOL_RUNTIME,
    REQUEST_IN,
    REQUEST_OUT,
    DeviceInfo,
    DfuProtocolError,
    DfuStatus,
    FunctionalDescriptor,
    Request,
    State,
    Status,
)
from mantra.signing.encoding import DecodeError, Envelope, Manifest, key_id
from mantra.signing.image import MANIFEST_PATH, SLOTS, open_slot
from mantra.signing.keys import load_root_public
from mantra.signing.verify import DiskVerified, VerifyFailure, verify_disk
from mantra.workspace import Workspace

# What the host waits for: the device back in DFU mode after DETACH (on top
# of wDetachTimeOut), and one control transfer.
REENUMERATION_TIMEOUT_S = 10.0
REENUMERATION_POLL_S = 0.1
CONTROL_TIMEOUT_MS = 5000
# A device in dfuMANIFEST-WAIT-RESET need not answer: asked once, briefly.
WAIT_RESET_TIMEOUT_MS = 500
# bcdDFUVersion of the devices this host drives: DFU 1.1, and 1.0 (the same
# requests and states). Not DfuSe (0x011A), whose blocks 0 and 1 are commands.
SUPPORTED_VERSIONS = (0x0110, 0x0100)
# The longest poll timeout believed (bwPollTimeout is 24 bits of ms).
MAX_POLL_S = 60.0

UDEV_HINT = ('install the udev rule of README.md ("Flashing over USB (DFU)"): in /etc/udev/rules.d/70-mantra-dfu.rules '
             'SUBSYSTEM=="usb", ATTRS{{idVendor}}=="{vid:04x}", ATTRS{{idProduct}}=="{pid:04x}", MODE="0660", '
             'TAG+="uaccess"; then `sudo udevadm control --reload-rules` and replug the board')


# ---------------------------------------------------------------------------
# Errors


class _Gone(Exception):
    """The device is not there any more (unplugged, reset, re-enumerated)."""


class _Stalled(Exception):
    """The device stalled a request (EPIPE)."""


class _WrongState(Exception):
    """DFU_GETSTATUS answered a state the host did not expect there."""

    def __init__(self, status: DfuStatus, expected: str, what: str) -> None:
        super().__init__(f"{what}: the device is in state {status.state_label}, expected {expected}")
        self.status = status


class DfuError(MantraError):
    """A failed USB flash. `kind` is what went wrong: "not-found",
    "permission", "refused" (the image, before anything was written),
    "descriptor", "reenumeration", "stall", "state", "status", "gone",
    "protocol"; `status` and `state` the device's last DFU status and state
    when it gave them."""

    def __init__(self, kind: str, message: str, hint: str | None = None, *, status: int | None = None,
                 state: int | None = None, written: int = 0) -> None:
        super().__init__(message, hint)
        self.kind = kind
        self.status = status
        self.state = state
        self.written = written


def _dispose(device: usb.core.Device) -> None:
    """Releases pyusb's claims and handle of a device that may be gone
    (libusb answers LIBUSB_ERROR_NO_DEVICE to releasing its interfaces)."""
    try:
        usb.util.dispose_resources(device)
    except usb.core.USBError:
        device._ctx.managed_close()


def _is_stall(exc: usb.core.USBError) -> bool:
    return exc.errno == errno.EPIPE


def _is_gone(exc: usb.core.USBError) -> bool:
    return isinstance(exc, usb.core.USBTimeoutError) or exc.errno in (errno.ENODEV, errno.ENOENT, errno.EIO,
                                                                       errno.ETIMEDOUT, errno.EPROTO, errno.ESHUTDOWN)


# ---------------------------------------------------------------------------
# Time


class Clock(Protocol):
    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


# ---------------------------------------------------------------------------
# Discovery


@dataclass
class Found:
    """A DFU interface of a USB device."""

    device: usb.core.Device
    interface: int
    alt_settings: tuple[int, ...]
    functional: FunctionalDescriptor
    protocol: int
    serial: str | None

    @property
    def in_dfu_mode(self) -> bool:
        return self.protocol == PROTOCOL_DFU

    @property
    def ids(self) -> str:
        return f"{self.device.idVendor:04x}:{self.device.idProduct:04x}"

    def describe(self) -> str:
        mode = "DFU mode" if self.in_dfu_mode else "runtime"
        serial = f" serial {self.serial}" if self.serial else ""
        return f"{self.ids}{serial} ({mode}, bus {self.device.bus} address {self.device.address})"


def parse_ids(text: str) -> tuple[int, int]:
    """"VID:PID" in hexadecimal (as lsusb prints it) -> (vid, pid)."""
    vid, sep, pid = text.partition(":")
    try:
        if not sep:
            raise ValueError
        ids = int(vid, 16), int(pid, 16)
    except ValueError:
        raise DfuError("usage", f"not a USB VID:PID: {text!r}", "give it as lsusb shows it, e.g. 1209:0001") from None
    if not all(0 <= v <= 0xFFFF for v in ids):
        raise DfuError("usage", f"not a USB VID:PID: {text!r} (16-bit hexadecimal numbers)", "e.g. 1209:0001")
    return ids


def _open_error(exc: usb.core.USBError, ids: str) -> DfuError:
    vid, pid = (int(v, 16) for v in ids.split(":"))
    if exc.errno == errno.EACCES:
        return DfuError("permission", f"no permission to open USB device {ids} ({exc.strerror})",
                        UDEV_HINT.format(vid=vid, pid=pid))
    if exc.errno == errno.EBUSY:
        return DfuError("permission", f"USB device {ids} is in use by another program or driver ({exc.strerror})",
                        "close the other program (dfu-util, a serial terminal on its CDC port) and try again")
    return DfuError("gone", f"USB device {ids} went away while it was being opened ({exc.strerror})",
                    f"reconnect the board and {AGAIN}")


def find_dfu(ids: list[tuple[int, int]], backend, *, serial: str | None = None) -> list[Found]:
    """Every DFU interface (class 0xFE, subclass 0x01) of the attached
    devices with one of `ids` (and `serial`, when given)."""
    found: list[Found] = []
    devices = usb.core.find(find_all=True, backend=backend,
                            custom_match=lambda d: (d.idVendor, d.idProduct) in ids)
    for device in devices:
        ident = f"{device.idVendor:04x}:{device.idProduct:04x}"
        try:
            interfaces = _dfu_interfaces(device)
            if not interfaces:
                continue
            number = device.iSerialNumber
            device_serial = usb.util.get_string(device, number) if number else None
        except usb.core.USBError as exc:
            _dispose(device)
            if _is_gone(exc):
                continue  # unplugged while being looked at
            raise _open_error(exc, ident) from None
        except ValueError:  # no language ids: no strings readable
            device_serial = None
        if serial is not None and device_serial != serial:
            _dispose(device)  # not ours: close what reading its serial number opened
            continue
        for number, (protocol, alts, functional) in sorted(interfaces.items()):
            found.append(Found(device, number, alts, functional, protocol, device_serial))
    return found


def _dfu_interfaces(device: usb.core.Device) -> dict[int, tuple[int, tuple[int, ...], FunctionalDescriptor]]:
    """Interface number -> (protocol, alternate settings, functional descriptor of the first)."""
    result: dict[int, tuple[int, tuple[int, ...], FunctionalDescriptor]] = {}
    for configuration in device:
        for interface in configuration:
            if (interface.bInterfaceClass, interface.bInterfaceSubClass) != (DFU_CLASS, DFU_SUBCLASS):
                continue
            if interface.bInterfaceProtocol not in (PROTOCOL_RUNTIME, PROTOCOL_DFU):
                continue
            number = interface.bInterfaceNumber
            if number in result:
                protocol, alts, functional = result[number]
                result[number] = (protocol, alts + (interface.bAlternateSetting,), functional)
                continue
            try:
                functional = FunctionalDescriptor.find(bytes(interface.extra_descriptors or b""),
                                                       bytes(configuration.extra_descriptors or b""))
            except DfuProtocolError as exc:
                raise DfuError("descriptor", f"USB device {device.idVendor:04x}:{device.idProduct:04x}: {exc}",
                               "the device's descriptors are broken: update its firmware") from None
            if functional is None:
                raise DfuError("descriptor", f"USB device {device.idVendor:04x}:{device.idProduct:04x}: DFU "
                               f"interface {number} has no DFU functional descriptor",
                               "the device's descriptors are broken: update its firmware")
            result[number] = (interface.bInterfaceProtocol, (interface.bAlternateSetting,), functional)
    return result


# ---------------------------------------------------------------------------
# Requests


class DfuInterface:
    """The DFU requests to one interface of one device. Translates libusb's
    errors: a STALL (EPIPE) raises _Stalled, a vanished device _Gone."""

    def __init__(self, found: Found, clock: Clock, log: Callable[[str], None]) -> None:
        self.found = found
        self.device = found.device
        self.interface = found.interface
        self.clock = clock
        self.log = log
        self.requests: dict[Request, int] = {r: 0 for r in Request}

    def _control(self, request: Request, value: int, data_or_length, *, out: bool,
                 timeout_ms: int = CONTROL_TIMEOUT_MS):
        self.requests[request] += 1
        try:
            return self.device.ctrl_transfer(REQUEST_OUT if out else REQUEST_IN, int(request), value,
                                             self.interface, data_or_length, timeout_ms)
        except usb.core.USBError as exc:
            if _is_stall(exc):
                raise _Stalled(f"{request.label} stalled") from None
            if _is_gone(exc):
                raise _Gone(f"{request.label}: {exc.strerror or exc}") from None
            raise DfuProtocolError(f"{request.label} failed: {exc.strerror or exc}") from None

    def claim(self, alt: int | None) -> None:
        try:
            usb.util.claim_interface(self.device, self.interface)
            if alt is not None:
                self.device.set_interface_altsetting(self.interface, alt)
        except usb.core.USBError as exc:
            if _is_stall(exc):
                raise _Stalled(f"SET_INTERFACE {alt} stalled") from None
            if _is_gone(exc):
                raise _Gone(f"claiming interface {self.interface}: {exc.strerror}") from None
            raise _open_error(exc, self.found.ids) from None

    def detach(self, timeout_ms: int) -> None:
        self._control(Request.DETACH, timeout_ms, None, out=True)

    def dnload(self, block: int, data: bytes) -> None:
        written = self._control(Request.DNLOAD, block & 0xFFFF, data, out=True)
        if written != len(data):
            raise DfuProtocolError(f"DFU_DNLOAD of block {block} moved {written} of {len(data)} bytes")

    def upload(self, block: int, length: int) -> bytes:
        return bytes(self._control(Request.UPLOAD, block & 0xFFFF, length, out=False))

    def get_status(self, timeout_ms: int = CONTROL_TIMEOUT_MS) -> DfuStatus:
        return DfuStatus.parse(bytes(self._control(Request.GETSTATUS, 0, 6, out=False, timeout_ms=timeout_ms)))

    def clear_status(self) -> None:
        self._control(Request.CLRSTATUS, 0, None, out=True)

    def get_state(self) -> int:
        raw = bytes(self._control(Request.GETSTATE, 0, 1, out=False))
        if len(raw) != 1:
            raise DfuProtocolError(f"DFU_GETSTATE answered {len(raw)} bytes, not 1")
        return raw[0]

    def abort(self) -> None:
        self._control(Request.ABORT, 0, None, out=True)

    def string(self, index: int) -> str | None:
        if not index:
            return None
        try:
            return usb.util.get_string(self.device, index)
        except (usb.core.USBError, ValueError):
            return None

    def wait(self, poll_timeout_ms: int) -> None:
        """Honours bwPollTimeout: no request before it has passed."""
        if poll_timeout_ms:
            self.clock.sleep(min(poll_timeout_ms / 1000, MAX_POLL_S))


# ---------------------------------------------------------------------------
# The host's state machine


@dataclass(frozen=True)
class Payload:
    """The slot partition's bytes of a built image, trailing zeros left off
    (in whole 4 KiB pages); the device erases its slot before writing."""

    image: Path
    slot: str
    data: bytes
    partition_size: int
    manifest: Manifest
    sha256: str


PAGE = 4096
_READ_CHUNK = 1 << 20


def read_payload(image: Path, slot: str) -> Payload:
    """The download of slot `slot` of `image`, and its signed manifest
    (decoded, not yet verified)."""
    if slot not in SLOTS:
        raise DfuError("usage", f"no slot {slot!r}", "--from-slot a or --from-slot b")
    try:
        files = open_slot(image, slot)
    except gpt.GptError as exc:
        raise DfuError("refused", f"{image}: {exc}", "give a disk image written by ./mantra build") from None
    if not files.has_filesystem():
        raise DfuError("refused", f"{image}: slot {slot} is empty: nothing to flash",
                       "flash a built image (./mantra build), or give --from-slot")
    stored = {p.upper(): p for p in files.paths()}
    if MANIFEST_PATH not in stored:
        raise DfuError("refused", f"{image}: slot {slot} has no {MANIFEST_PATH} (an unsigned image)",
                       "sign it first: ./mantra sign IMAGE --keys DIR")
    try:
        manifest = Manifest.decode(Envelope.decode(files.read(stored[MANIFEST_PATH])).manifest.body)
    except DecodeError as exc:
        raise DfuError("refused", f"{image}: slot {slot}: the signed manifest is malformed: {exc}",
                       "sign the image again: ./mantra sign IMAGE --keys DIR") from None
    partition = files.partition
    with image.open("rb") as disk:
        end = partition.size
        while end > 0:  # the last nonzero byte, read backwards a chunk at a time
            start = max(0, end - _READ_CHUNK)
            disk.seek(partition.offset + start)
            chunk = disk.read(end - start)
            stripped = chunk.rstrip(b"\0")
            if stripped:
                end = start + len(stripped)
                break
            end = start
        end = min(partition.size, -(-end // PAGE) * PAGE)
        disk.seek(partition.offset)
        data = disk.read(end)
    if len(data) != end:
        raise DfuError("refused", f"{image} is truncated: slot {slot} ends past the end of the file",
                       "rebuild the image")
    return Payload(image, slot, data, partition.size, manifest, hashlib.sha256(data).hexdigest())


@dataclass(frozen=True)
class DfuResult:
    """What flash_usb did."""

    image: Path
    source_slot: str
    device: str  # "vid:pid" in DFU mode
    serial: str | None
    board: str
    target_slot: str
    product: str
    version: str
    security_counter: int
    key_id: str
    bytes: int  # bytes downloaded (the slot's contents up to its last nonzero page)
    slot_size: int
    transfer_size: int  # bytes per DFU_DNLOAD: wTransferSize, at most 4096 (libusb's limit)
    device_transfer_size: int  # the device's wTransferSize
    transfers: int  # DFU_DNLOAD requests with data (the last one may be short)
    status_polls: int  # DFU_GETSTATUS requests
    detached: bool  # the device was in runtime mode and was detached first
    manifestation_tolerant: bool
    retries: int  # downloads restarted after DFU_ABORT
    seconds: float  # from the first DFU_DNLOAD to the end of manifestation
    sha256: str  # of the bytes downloaded

    @property
    def throughput(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else float("inf")


Progress = Callable[[int, int], None]
"""progress(bytes_done, bytes_total), after every block."""


def flash_usb(image: Path, vid_pid: str | None, board: str, progress: Progress | None = None, *, backend=None,
              from_slot: str = "a", root: Path | str | bytes | None = None, serial: str | None = None,
              workspace: Workspace | None = None, clock: Clock | None = None,
              log: Callable[[str], None] | None = None) -> DfuResult:
    """Flashes slot `from_slot` of the signed disk image `image` into the
    inactive slot of the board `board` attached over USB, by DFU 1.1.

    `vid_pid` ("1209:0001") selects the device, default the board's IDs
    (board.toml [usb]); `serial` picks one of several. `root` (a root.pub
    path or the 32 raw bytes) must be the key the device trusts; the image
    is checked against the device's own root key, board and rollback
    minimum in any case, and nothing is written unless it verifies.
    `backend` is the pyusb backend (default: libusb 1.0); `clock` its time
    (tests pass a simulated one); `log` receives one line per step.
    Raises DfuError (a MantraError) with what to try."""
    clock = clock or SystemClock()
    log = log or (lambda line: None)
    board_data = load_board(workspace or Workspace.locate(), board)
    ids = _ids(vid_pid, board_data)
    root_public = load_root_public(Path(root)) if isinstance(root, (str, Path)) else root

    # 1. The image, before the device is touched.
    payload = read_payload(image, from_slot)
    if payload.manifest.board != board:
        raise DfuError("refused", f"{image}: slot {from_slot} is built for board {payload.manifest.board}, not "
                       f"{board}: nothing was written", f"build the image for {board}: ./mantra build -b {board}")
    if root_public is not None:
        _verify(image, from_slot, root_public, board=board, min_counter=None)

    # 2. Discovery, 3. detach into DFU mode.
    backend = backend if backend is not None else _libusb()
    found = _find_one(ids, backend, serial, board_data)
    log(f"found {found.describe()}: {found.functional.describe()}")
    detached = False
    if not found.in_dfu_mode:
        found = _detach(found, ids, backend, clock, log)
        detached = True
    dfu = DfuInterface(found, clock, log)
    functional = found.functional
    if not functional.can_download:
        raise DfuError("descriptor", f"USB device {found.describe()} does not accept downloads (bitCanDnload is "
                       "clear)", "the device's DFU function is read-only: flash it another way (serial)")
    if functional.dfu_version not in SUPPORTED_VERSIONS:
        raise DfuError("descriptor", f"USB device {found.describe()} speaks DFU version "
                       f"{functional.dfu_version >> 8}.{functional.dfu_version & 0xFF:02x}"
                       + (" (ST's DfuSe, whose DFU_DNLOAD blocks 0 and 1 are commands)"
                          if functional.dfu_version == 0x011A else "") + ", not DFU 1.1: nothing was written",
                       "flash MantraBoot boards only; check --usb VID:PID (docs/dfu.md)")
    if functional.transfer_size == 0:
        raise DfuError("descriptor", f"USB device {found.describe()} gives wTransferSize 0",
                       "the device's descriptors are broken: update its firmware")

    session = _Session(dfu, payload, progress, log, clock)
    try:
        # 4. What the device accepts, before anything is written.
        info = session.read_info()
        verified = _check_against_device(payload, info, board, root_public)
        log(f"device: board {info.board}, root key {key_id(info.root_public).hex()}, rollback minimum "
            f"{info.rollback_minimum}, writing its slot {info.target_slot} ({info.slot_size} bytes)")
        # 5. Download, manifestation, reset.
        session.download()
        session.manifest()
    except _Gone as exc:
        raise session.gone(str(exc)) from None
    except _Stalled as exc:
        raise session.stalled(str(exc)) from None
    except _WrongState as exc:
        raise DfuError("state", f"{exc}", f"reset the board (power cycle) and {AGAIN}", status=exc.status.status,
                       state=exc.status.state, written=session.written) from None
    except DfuProtocolError as exc:
        raise DfuError("protocol", f"USB device {found.describe()}: {exc}",
                       f"{AGAIN}; if it repeats, the device's DFU function is broken: update its firmware",
                       written=session.written) from None
    slot = verified.slots[from_slot]
    return DfuResult(
        image=image, source_slot=from_slot, device=found.ids, serial=found.serial, board=info.board,
        target_slot=info.target_slot, product=slot.manifest.product, version=slot.manifest.version,
        security_counter=slot.manifest.security_counter, key_id=slot.key.key_id.hex(), bytes=len(payload.data),
        slot_size=info.slot_size, transfer_size=functional.block_size,
        device_transfer_size=functional.transfer_size, transfers=session.transfers,
        status_polls=dfu.requests[Request.GETSTATUS], detached=detached,
        manifestation_tolerant=functional.manifestation_tolerant, retries=session.retries,
        seconds=session.seconds, sha256=payload.sha256)


def _libusb():
    import usb.backend.libusb1

    backend = usb.backend.libusb1.get_backend()
    if backend is None:
        raise DfuError("not-found", "libusb 1.0 is not installed (pyusb found no backend)",
                       "sudo apt install libusb-1.0-0")
    return backend


def _ids(vid_pid: str | None, board: Board) -> list[tuple[int, int]]:
    """The (vid, pid) pairs to look for: runtime and DFU mode."""
    if vid_pid is not None:
        vid, pid = parse_ids(vid_pid)
        ids = [(vid, pid)]
        if board.usb is not None and board.usb.vid == vid and board.usb.pid == pid:
            ids.append((vid, board.usb.dfu_pid))
        return list(dict.fromkeys(ids))
    if board.usb is None:
        raise DfuError("usage", f"board {board.name} has no USB IDs (no [usb] table in its board.toml)",
                       f"give them: --usb VID:PID, or add [usb] vid/pid to {board.data_file}")
    return list(dict.fromkeys([(board.usb.vid, board.usb.pid), (board.usb.vid, board.usb.dfu_pid)]))


def _ids_text(ids: list[tuple[int, int]]) -> str:
    return " or ".join(f"{v:04x}:{p:04x}" for v, p in ids)


def _find_one(ids: list[tuple[int, int]], backend, serial: str | None, board: Board) -> Found:
    try:
        found = find_dfu(ids, backend, serial=serial)
    except usb.core.NoBackendError:
        raise DfuError("not-found", "libusb 1.0 is not installed (pyusb found no backend)",
                       "sudo apt install libusb-1.0-0") from None
    except usb.core.USBError as exc:
        raise DfuError("not-found", f"cannot list the USB devices: {exc.strerror or exc}",
                       "check that /dev/bus/usb exists (in a container: pass the USB bus through)") from None
    if not found:
        vid, pid = ids[0]
        which = f"USB DFU device {_ids_text(ids)}" + (f" with serial number {serial}" if serial else "")
        raise DfuError("not-found", f"no {which} found (board {board.name})",
                       "connect the board's USB device port and power it; if `lsusb` lists it, the user may lack "
                       "permission to open it: " + UDEV_HINT.format(vid=vid, pid=pid))
    devices = {(f.device.bus, f.device.address) for f in found}
    if len(devices) > 1:
        raise DfuError("usage", f"{len(devices)} USB DFU devices {_ids_text(ids)} are attached: "
                       + ", ".join(f.describe() for f in found), "pick one with its serial number")
    return found[0]


def _detach(found: Found, ids: list[tuple[int, int]], backend, clock: Clock, log: Callable[[str], None]) -> Found:
    """DFU_DETACH, then a USB reset unless the device detaches by itself
    (bitWillDetach), then waits for it in DFU mode (same serial number)."""
    functional = found.functional
    runtime = DfuInterface(found, clock, log)
    try:
        runtime.claim(None)
        try:
            state = runtime.get_status().state
        except (_Stalled, DfuProtocolError):
            state = State.APP_IDLE  # GETSTATUS is optional in runtime mode
        if state != State.APP_IDLE:
            log(f"runtime interface in state {State(state).label if state in State._value2member_map_ else state}")
        runtime.detach(functional.detach_timeout_ms)
        log(f"DFU_DETACH sent (wDetachTimeOut {functional.detach_timeout_ms} ms)")
        if not functional.will_detach:
            try:
                found.device.reset()
            except usb.core.USBError as exc:
                if not _is_gone(exc):
                    raise
            log("USB reset: the device re-enumerates in DFU mode")
    except _Stalled:
        raise DfuError("stall", f"USB device {found.describe()} stalled DFU_DETACH",
                       f"reset the board (power cycle) and {AGAIN}") from None
    except (_Gone, usb.core.USBError) as exc:
        raise DfuError("gone", f"USB device {found.describe()} went away while being detached into DFU mode ({exc})",
                       f"reconnect the board and {AGAIN}") from None
    except DfuProtocolError as exc:
        raise DfuError("protocol", f"USB device {found.describe()}: {exc}",
                       f"reset the board (power cycle) and {AGAIN}") from None
    _dispose(found.device)
    deadline = clock.now() + functional.detach_timeout_ms / 1000 + REENUMERATION_TIMEOUT_S
    while True:
        candidates = [f for f in find_dfu(ids, backend, serial=found.serial) if f.in_dfu_mode]
        if len(candidates) >= 1 and (found.serial is not None or len(candidates) == 1):
            log(f"back in DFU mode: {candidates[0].describe()}")
            return candidates[0]
        if clock.now() >= deadline:
            break
        clock.sleep(REENUMERATION_POLL_S)
    serial = f" with serial number {found.serial}" if found.serial else ""
    raise DfuError("reenumeration", f"USB device {found.ids}{serial} did not come back in DFU mode within "
                   f"{functional.detach_timeout_ms / 1000 + REENUMERATION_TIMEOUT_S:.1f} s after DFU_DETACH",
                   f"check that the udev rule also covers the DFU-mode IDs ({_ids_text(ids)}); replug the board "
                   f"and {AGAIN}")


def _verify(image: Path, slot: str, root_public: bytes, *, board: str, min_counter: int | None) -> DiskVerified:
    try:
        return verify_disk(image, root_public, board=board, slot=slot, min_counter=min_counter)
    except VerifyFailure as failure:
        raise DfuError("refused", f"{image}: slot {slot} does not verify: {'; '.join(failure.reasons)}: nothing "
                       "was written", "flash only images signed with the product's keys, for this board "
                       "(./mantra verify IMAGE --root ROOT.pub --slot " + slot + ")") from None


def _check_against_device(payload: Payload, info: DeviceInfo, board: str, root_public: bytes | None) -> DiskVerified:
    """The image against what the device trusts, before any DFU_DNLOAD."""
    if info.board != board:
        raise DfuError("refused", f"the USB device is a {info.board} board, not {board}: nothing was written",
                       f"flash it with an image built for {info.board} (-b {info.board}), or attach the {board} "
                       "board")
    if root_public is not None and root_public != info.root_public:
        raise DfuError("refused", f"the device trusts root key {key_id(info.root_public).hex()}, not the given "
                       f"{key_id(root_public).hex()} (a device of another product): nothing was written",
                       "flash it with an image of its own product, signed with that product's keys")
    verified = _verify(payload.image, payload.slot, info.root_public, board=info.board,
                       min_counter=info.rollback_minimum)
    if hashlib.sha256(read_payload(payload.image, payload.slot).data).hexdigest() != payload.sha256:
        raise DfuError("refused", f"{payload.image} changed while it was being verified: nothing was written",
                       f"{AGAIN} once nothing writes the image")
    if len(payload.data) > info.slot_size:
        raise DfuError("refused", f"slot {payload.slot} of {payload.image} holds {len(payload.data)} bytes, more "
                       f"than the device's slot {info.target_slot} ({info.slot_size} bytes): nothing was written",
                       "build the image for this board (its board.toml [disk] slot size)")
    return verified


class _Session:
    """One DFU-mode session: device information, download, manifestation."""

    def __init__(self, dfu: DfuInterface, payload: Payload, progress: Progress | None, log: Callable[[str], None],
                 clock: Clock) -> None:
        self.dfu = dfu
        self.payload = payload
        self.progress = progress
        self.log = log
        self.clock = clock
        self.transfers = 0
        self.written = 0
        self.block = 0
        self.retries = 0
        self.seconds = 0.0
        self.phase = "reading the device information"
        self.last_status: DfuStatus | None = None

    # -- errors -------------------------------------------------------------

    def gone(self, detail: str) -> DfuError:
        total = len(self.payload.data)
        at = (f" at block {self.block} ({self.written} of {total} bytes written to the inactive slot)"
              if self.written or self.phase == "downloading" else "")
        return DfuError("gone", f"the USB device went away while {self.phase}{at}: the cable was pulled or the "
                        f"board reset ({detail}); its running slot was not touched",
                        f"reconnect the board and {AGAIN}", written=self.written)

    def stalled(self, detail: str) -> DfuError:
        """After a STALL: DFU_GETSTATUS says why (dfuERROR, errSTALLEDPKT),
        DFU_CLRSTATUS takes the device back to dfuIDLE."""
        try:
            status = self.dfu.get_status()
            if status.state == State.DFU_ERROR:
                self.dfu.clear_status()
        except (_Gone, _Stalled, DfuProtocolError):
            status = None
        said = (f"; it reports state {status.state_label}, status {status.status_label}"
                + (f" ({Status(status.status).meaning})" if status.status in Status._value2member_map_ else "")
                if status else "")
        block = f" (block {self.block})" if self.phase == "downloading" else ""
        advice = Status.ERR_STALLEDPKT.advice
        return DfuError("stall", f"the USB device stalled {detail.removesuffix(' stalled')} while {self.phase}"
                        f"{block}{said}; the error was cleared (DFU_CLRSTATUS)", advice,
                        status=status.status if status else None, state=status.state if status else None,
                        written=self.written)

    def status_error(self, status: DfuStatus) -> DfuError:
        """An error status: named, cleared, and what to try."""
        message = self.dfu.string(status.string_index)
        cleared = False
        if status.state == State.DFU_ERROR:
            try:
                self.dfu.clear_status()
                cleared = True
            except (_Gone, _Stalled):
                pass
        known = status.status in Status._value2member_map_
        meaning = Status(status.status).meaning if known else "a status DFU 1.1 does not define"
        device_says = f" (the device says: {message})" if message else ""
        block = f" at block {self.block}" if self.phase == "downloading" else ""
        return DfuError("status", f"the USB device reports {status.status_label} while {self.phase}{block}: "
                        f"{meaning}{device_says}; state {status.state_label}"
                        + (", cleared with DFU_CLRSTATUS" if cleared else ""),
                        Status(status.status).advice if known else AGAIN, status=status.status,
                        state=status.state, written=self.written)

    # -- state machine ------------------------------------------------------

    def _poll(self, until: set[State], busy: set[State], what: str) -> DfuStatus:
        """DFU_GETSTATUS, waiting bwPollTimeout each time, while the device
        is busy; returns once it is in one of `until`."""
        while True:
            status = self.dfu.get_status()
            self.last_status = status
            if status.status != Status.OK:
                raise self.status_error(status)
            if status.state in until:
                self.dfu.wait(status.poll_timeout_ms)
                return status
            if status.state in busy:
                self.dfu.wait(status.poll_timeout_ms)
                continue
            raise _WrongState(status, " or ".join(s.label for s in until), what)

    def to_idle(self) -> None:
        """Brings the device to dfuIDLE (a run cut short may have left it
        elsewhere): DFU_CLRSTATUS from dfuERROR, DFU_ABORT from
        dfuDNLOAD-IDLE / dfuUPLOAD-IDLE, polling through the busy states; a
        request stalled on the way is cleared in the next round."""
        for _ in range(4):
            status = self.dfu.get_status()
            self.last_status = status
            state = status.state
            if state == State.DFU_IDLE:
                if status.status != Status.OK:
                    raise self.status_error(status)
                return
            self.dfu.wait(status.poll_timeout_ms)
            if state == State.DFU_ERROR:
                action, name = self.dfu.clear_status, "DFU_CLRSTATUS"
            elif state in (State.DFU_DNLOAD_IDLE, State.DFU_UPLOAD_IDLE):
                action, name = self.dfu.abort, "DFU_ABORT"
            elif state in (State.DFU_DNLOAD_SYNC, State.DFU_DNBUSY, State.DFU_MANIFEST_SYNC, State.DFU_MANIFEST):
                continue  # DFU_GETSTATUS moves these on
            else:
                break
            self.log(f"device in state {status.state_label} (status {status.status_label}): {name}")
            try:
                action()
            except _Stalled:
                continue
        status = self.last_status
        raise DfuError("state", f"the USB device stays in state {status.state_label} (status {status.status_label}), "
                       "not dfuIDLE, after DFU_ABORT and DFU_CLRSTATUS", f"reset the board (power cycle) and {AGAIN}",
                       status=status.status, state=status.state)

    def read_info(self) -> DeviceInfo:
        found = self.dfu.found
        if ALT_INFO not in found.alt_settings or ALT_SLOT not in found.alt_settings:
            raise DfuError("descriptor", f"USB device {found.describe()} is not MantraBoot's DFU function: its DFU "
                           f"interface has alternate settings {list(found.alt_settings)}, not {ALT_SLOT} (the slot) "
                           f"and {ALT_INFO} (the device information the image is checked against): nothing was "
                           "written", "flash MantraBoot boards only; check --usb VID:PID (docs/dfu.md)")
        self.dfu.claim(None)
        self.to_idle()  # before SET_INTERFACE, which a device allows in dfuIDLE
        self.dfu.claim(ALT_INFO)
        size = self.dfu.found.functional.block_size
        data = b""
        block = 0
        while True:
            chunk = self.dfu.upload(block, size)
            data += chunk
            block += 1
            if len(chunk) < size:  # a short frame ends the upload (device back in dfuIDLE)
                break
            if len(data) > 64 * 1024:
                raise DfuProtocolError("device information longer than 64 KiB")
        info = DeviceInfo.parse(data)
        if info.target_slot not in SLOTS:
            raise DfuProtocolError(f"device information names slot {info.target_slot!r}")
        self.dfu.claim(ALT_SLOT)
        return info

    def download(self) -> None:
        """Every block, then the zero-length DFU_DNLOAD; on an unexpected
        state, DFU_ABORT and the whole download once more."""
        while True:
            try:
                self._download_once()
                return
            except KeyboardInterrupt:
                self._abort_quietly()
                raise
            except _WrongState as exc:
                if self.retries >= 1:
                    raise DfuError("state", f"{exc} (again after DFU_ABORT and a new download)",
                                   f"reset the board (power cycle) and {AGAIN}", status=exc.status.status,
                                   state=exc.status.state, written=self.written) from None
                self.retries += 1
                self.log(f"{exc}: DFU_ABORT, then the download again from block 0")
                self.dfu.wait(exc.status.poll_timeout_ms)
                try:
                    if exc.status.state == State.DFU_ERROR:
                        self.dfu.clear_status()
                    else:
                        self.dfu.abort()
                except _Stalled:
                    pass  # not abortable there: the next to_idle() clears the error

    def _abort_quietly(self) -> None:
        """Interrupted (Ctrl-C): leaves the device in dfuIDLE if it can, so
        that it keeps nothing half-received (the next run would ABORT anyway)."""
        try:
            status = self.dfu.get_status()
            self.dfu.wait(status.poll_timeout_ms)
            if status.state == State.DFU_ERROR:
                self.dfu.clear_status()
            elif status.state in (State.DFU_DNLOAD_IDLE, State.DFU_UPLOAD_IDLE):
                self.dfu.abort()
        except (_Gone, _Stalled, DfuProtocolError):
            pass

    def _download_once(self) -> None:
        self.phase = "preparing the download"
        self.to_idle()
        data = self.payload.data
        size = self.dfu.found.functional.block_size
        total = len(data)
        self.phase = "downloading"
        self.written = 0
        started = self.clock.now()
        if self.progress:
            self.progress(0, total)
        for self.block, offset in enumerate(range(0, total, size)):
            chunk = data[offset:offset + size]
            self.dfu.dnload(self.block, chunk)
            self.transfers += 1
            self._poll({State.DFU_DNLOAD_IDLE}, {State.DFU_DNLOAD_SYNC, State.DFU_DNBUSY},
                       f"after DFU_DNLOAD of block {self.block}")
            self.written = offset + len(chunk)
            if self.progress:
                self.progress(self.written, total)
        self.block = -(-total // size)
        self.phase = "ending the download"
        self.dfu.dnload(self.block, b"")
        self.seconds = self.clock.now() - started

    def manifest(self) -> None:
        """Manifestation: a manifestation-tolerant device goes back to
        dfuIDLE and is reset; the others wait for the reset in
        dfuMANIFEST-WAIT-RESET (or reset by themselves, bitWillDetach)."""
        functional = self.dfu.found.functional
        self.phase = "manifesting (the device checks and activates the slot)"
        started = self.clock.now() - self.seconds
        if functional.manifestation_tolerant:
            self._poll({State.DFU_IDLE}, {State.DFU_MANIFEST_SYNC, State.DFU_MANIFEST}, "after manifestation")
        else:
            status = self.dfu.get_status()  # dfuMANIFEST-SYNC -> dfuMANIFEST, with the time it takes
            self.last_status = status
            if status.status != Status.OK:
                raise self.status_error(status)
            if status.state not in (State.DFU_MANIFEST, State.DFU_MANIFEST_SYNC, State.DFU_MANIFEST_WAIT_RESET):
                raise DfuError("state", f"after the download the USB device is in state {status.state_label}, "
                               "not dfuMANIFEST", f"{AGAIN}", status=status.status, state=status.state,
                               written=self.written)
            self.dfu.wait(status.poll_timeout_ms)
            try:  # a device in dfuMANIFEST-WAIT-RESET may answer, or not at all
                status = self.dfu.get_status(WAIT_RESET_TIMEOUT_MS)
                if status.status != Status.OK:
                    raise self.status_error(status)
            except (_Stalled, _Gone):
                pass
        self.seconds = self.clock.now() - started
        self.phase = "resetting the device into the new slot"
        try:
            self.dfu.device.reset()
        except usb.core.USBError as exc:
            if not _is_gone(exc):  # a device that reset itself is gone already: that is fine
                raise _Gone(f"USB reset: {exc.strerror}") from None
        _dispose(self.dfu.device)
        self.log("USB reset: the device boots the new slot")


# ---------------------------------------------------------------------------
# Presentation


def format_result(result: DfuResult) -> str:
    """The lines the CLI prints after a successful flash_usb."""
    serial = f" serial {result.serial}" if result.serial else ""
    rate = result.throughput
    rate_text = f"{rate / 1024:.0f} KiB/s" if rate != float("inf") else "instantly"
    return "\n".join([
        f"flashed slot {result.source_slot} of {result.image} ({result.product} {result.version}, security counter "
        f"{result.security_counter}, key {result.key_id}) into slot {result.target_slot} of the {result.board} "
        f"board at USB {result.device}{serial} (DFU 1.1)",
        f"{result.bytes} bytes ({result.bytes * 100 // result.slot_size if result.slot_size else 100}% of the "
        f"{result.slot_size}-byte slot) in {result.transfers} transfers of up to {result.transfer_size} bytes"
        + (f" (wTransferSize {result.device_transfer_size}, above libusb's 4096)"
           if result.device_transfer_size != result.transfer_size else "") + ", "
        f"{result.status_polls} status polls, {result.seconds:.1f} s ({rate_text})"
        + (", after detaching it into DFU mode" if result.detached else "")
        + (f", {result.retries} restart after DFU_ABORT" if result.retries else ""),
        f"sha256 of the download {result.sha256}",
        f"the device was reset: it boots slot {result.target_slot} as pending; MantraInit confirms it once healthy, "
        "otherwise MantraBoot falls back to the other slot",
    ])


@contextmanager
def rich_progress(console=None) -> Iterator[Progress]:
    """A rich progress bar (bytes, throughput, time left) as a flash_usb
    progress callback; it appears with the first block, not before (the
    checks before the download print nothing)."""
    from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeRemainingColumn, TransferSpeedColumn
    from rich.progress import Progress as Bar

    from mantra.console import err

    bar: Bar | None = None
    task = None

    def update(done: int, total: int) -> None:
        nonlocal bar, task
        if bar is None:
            bar = Bar(TextColumn("[bold cyan]DFU download"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      TimeRemainingColumn(), console=console or err)
            bar.start()
            task = bar.add_task("download", total=total)
        bar.update(task, completed=done, total=total)

    try:
        yield update
    finally:
        if bar is not None:
            bar.stop()


__all__ = ["DeviceInfo", "DfuError", "DfuProtocolError", "DfuResult", "DfuStatus", "FunctionalDescriptor", "Request",
           "State", "Status", "find_dfu", "flash_usb", "format_result", "parse_ids", "read_payload", "rich_progress"]
