"""A simulated MantraBoot USB DFU 1.1 device, plugged into pyusb as a backend
(usb.backend.IBackend), for tests of mantra.provision.dfu: QEMU cannot
present a USB device to the host, so the host code runs unchanged against
this double.

The device has two faces, as a real one does:

- runtime mode (appIDLE): interface 0 a vendor-specific console, interface 1
  the DFU runtime interface (class 0xFE, subclass 0x01, protocol 1);
- DFU mode (after DFU_DETACH and a USB reset, or by itself with
  bitWillDetach): one interface (protocol 2) with alternate setting 0 (the
  inactive slot: DFU_DNLOAD) and 1 (MantraBoot's device information:
  DFU_UPLOAD). Each mode change re-enumerates: a new address, and handles
  of the old enumeration fail with LIBUSB_ERROR_NO_DEVICE.

It follows the DFU 1.1 state machine strictly (spec section 6 and appendix A):
a request its state does not allow is STALLed (usb.core.USBError with errno
EPIPE, as libusb reports a stall) and moves it to dfuERROR with
errSTALLEDPKT; so is any request before bwPollTimeout has passed in
dfuDNBUSY or dfuMANIFEST, a block number out of sequence and a block longer
than wTransferSize. DFU_DNLOAD blocks go into the target slot partition of
a disk image file; the slot is erased (zeroed) at the first block.
Manifestation verifies the written slot (mantra.signing, as MantraBoot would
at boot) and fails with errVERIFY if it does not.

Injectable faults: an error status at a block or at manifestation, a stall
of a block, an unplug at a block, a device found in another state at the
start, a device that loses the download (back to dfuIDLE) once.
Time is a simulated clock that the host's waits advance (`SimClock`).
"""

from __future__ import annotations

import array
import errno
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import usb.backend
import usb.core

from mantra.provision.dfu_protocol import (
    ALT_INFO,
    ALT_SLOT,
    DFU_CLASS,
    DFU_SUBCLASS,
    DFU_VERSION,
    PROTOCOL_DFU,
    PROTOCOL_RUNTIME,
    DeviceInfo,
    DfuStatus,
    FunctionalDescriptor,
    Request,
    State,
    Status,
)
from mantra.signing.image import open_slot
from mantra.signing.verify import VerifyFailure, verify_disk

MIB = 1024 * 1024


class SimClock:
    """Simulated time: `sleep` advances it; every wait is recorded."""

    def __init__(self) -> None:
        self.time = 1000.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.time

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.time += seconds


def _stall(why: str) -> usb.core.USBError:
    return usb.core.USBError(f"Pipe error ({why})", -9, errno.EPIPE)


def _no_device() -> usb.core.USBError:
    return usb.core.USBError("No such device (it may have been disconnected)", -4, errno.ENODEV)


def _not_found() -> usb.core.USBError:
    return usb.core.USBError("Entity not found", -5, errno.ENOENT)


STRINGS = {1: "MantraOS", 2: "MantraBoot", 4: "MantraBoot console", 5: "MantraBoot DFU runtime",
           6: "MantraBoot inactive slot", 7: "MantraBoot device information"}
VENDOR_STRING = 8


@dataclass
class SimDevice:
    """One simulated board. `disk` is its disk image; DFU writes `target_slot`."""

    disk: Path
    board: str
    root_public: bytes
    vid: int = 0x1209
    pid: int = 0x0001
    dfu_pid: int = 0x0001
    serial: str | None = "MANTRA-0001"
    target_slot: str = "b"
    rollback_minimum: int = 0
    transfer_size: int = 4096
    detach_timeout_ms: int = 1000
    will_detach: bool = False
    manifestation_tolerant: bool = True
    can_download: bool = True
    poll_timeout_ms: int = 5  # dfuDNBUSY per block
    erase_poll_ms: int = 300  # dfuDNBUSY of block 0 (the slot is erased first)
    manifest_poll_ms: int = 200  # dfuMANIFEST
    reenumerate_ms: int = 400  # gone from the bus after a detach or reset
    dfu_version: int = DFU_VERSION
    verify_on_manifest: bool = True
    info_alt: bool = True  # False: a DFU device that is not MantraBoot's (one alternate setting)
    # Faults.
    status_at_block: dict[int, Status] = field(default_factory=dict)
    status_at_manifest: Status | None = None
    vendor_message: str = "MantraBoot: slot b: block I/O error at LBA 4242"
    stall_at_block: int | None = None
    unplug_at_block: int | None = None
    lose_session_at: list[int] = field(default_factory=list)  # blocks after which it drops back to dfuIDLE
    start_state: State | None = None  # DFU mode entered in this state (a session left over)
    start_status: Status = Status.OK
    start_in_dfu_mode: bool = False
    ignore_reset_in_detach: bool = False  # a device that never comes back in DFU mode

    # What happened.
    mode: str = "runtime"  # runtime | dfu | gone
    state: State = State.APP_IDLE
    status: Status = Status.OK
    generation: int = 1
    present_from: float = 0.0
    alt: int = 0
    dnload_sizes: list[int] = field(default_factory=list)
    dnload_blocks: list[int] = field(default_factory=list)
    requests: list[tuple[float, str, str]] = field(default_factory=list)  # (time, request, state before)
    answers: list[str] = field(default_factory=list)  # the state each DFU_GETSTATUS reported
    stalls: list[str] = field(default_factory=list)
    poll_violations: int = 0
    timeouts: int = 0  # requests left unanswered (dfuMANIFEST-WAIT-RESET)
    detaches: int = 0
    resets: int = 0
    erases: int = 0
    manifestations: int = 0
    booted: list[str] = field(default_factory=list)  # what the board booted after each reset out of DFU mode
    unplugged: bool = False

    def __post_init__(self) -> None:
        self.partition = open_slot(self.disk, self.target_slot).partition
        self.slot_size = self.partition.size
        self._busy_until = 0.0
        self._detach_deadline = 0.0
        self._next_block: int | None = None
        self._received = 0
        self._pending_block: tuple[int, bytes] | None = None
        self._manifested = False
        self._upload: bytes | None = None
        self._ready = False
        if self.start_in_dfu_mode:
            self._enter_dfu(0.0, delay_ms=0)

    # -- the bus --------------------------------------------------------------

    def present(self, now: float) -> bool:
        return self.mode != "gone" and now >= self.present_from

    def _reenumerate(self, mode: str, now: float, delay_ms: int | None = None) -> None:
        self.mode = mode
        self.generation += 1
        self.present_from = now + (self.reenumerate_ms if delay_ms is None else delay_ms) / 1000
        self.alt = 0

    def _enter_dfu(self, now: float, delay_ms: int | None = None) -> None:
        """MantraBoot starts its DFU mode: on the bus after `delay_ms` (default reenumerate_ms)."""
        self._reenumerate("dfu", now, delay_ms)
        self.state = self.start_state if self.start_state is not None else State.DFU_IDLE
        self.status = self.start_status
        self._reset_session()  # a new boot of MantraBoot: nothing of an earlier session in RAM
        if self.start_state in (State.DFU_DNLOAD_IDLE,):
            self._next_block = 7  # a session of an earlier run, cut off
        self.start_state = None
        self.start_status = Status.OK

    def unplug(self) -> None:
        self.mode = "gone"
        self.unplugged = True
        self.generation += 1

    def replug(self, now: float) -> None:
        """Power comes back: MantraBoot boots the slot it booted before (runtime mode)."""
        self.unplugged = False
        self._reset_session()
        self._reenumerate("runtime", now, 0)
        self.state = State.APP_IDLE
        self.status = Status.OK
        self.booted.append("previous slot (power cycle)")

    @property
    def product_id(self) -> int:
        return self.dfu_pid if self.mode == "dfu" else self.pid

    # -- descriptors -----------------------------------------------------------

    def functional(self, *, info: bool = False) -> FunctionalDescriptor:
        attributes = 0
        if info:
            attributes = FunctionalDescriptor.CAN_UPLOAD
        elif self.can_download:
            attributes = FunctionalDescriptor.CAN_DNLOAD
        if self.manifestation_tolerant:
            attributes |= FunctionalDescriptor.MANIFESTATION_TOLERANT
        if self.will_detach:
            attributes |= FunctionalDescriptor.WILL_DETACH
        return FunctionalDescriptor(attributes, self.detach_timeout_ms, self.transfer_size, self.dfu_version)

    def interfaces(self) -> list[list[SimpleNamespace]]:
        """Interface index -> its alternate settings."""
        def interface(number: int, alt: int, cls: int, sub: int, proto: int, string: int, extra: bytes):
            return SimpleNamespace(bLength=9, bDescriptorType=4, bInterfaceNumber=number, bAlternateSetting=alt,
                                   bNumEndpoints=0, bInterfaceClass=cls, bInterfaceSubClass=sub,
                                   bInterfaceProtocol=proto, iInterface=string, extra_descriptors=list(extra))
        if self.mode == "dfu":
            slot = interface(0, ALT_SLOT, DFU_CLASS, DFU_SUBCLASS, PROTOCOL_DFU, 6, self.functional().encode())
            info = interface(0, ALT_INFO, DFU_CLASS, DFU_SUBCLASS, PROTOCOL_DFU, 7, self.functional(info=True).encode())
            return [[slot, info] if self.info_alt else [slot]]
        return [[interface(0, 0, 0xFF, 0, 0, 4, b"")],
                [interface(1, 0, DFU_CLASS, DFU_SUBCLASS, PROTOCOL_RUNTIME, 5, self.functional().encode())]]

    @property
    def dfu_interface(self) -> int:
        return 0 if self.mode == "dfu" else 1

    def info(self) -> bytes:
        return DeviceInfo(self.board, self.root_public, self.rollback_minimum, self.target_slot,
                          self.slot_size).encode()

    # -- requests ---------------------------------------------------------------

    def _error(self, why: str) -> usb.core.USBError:
        """A STALL: dfuERROR with errSTALLEDPKT (in DFU mode)."""
        self.stalls.append(why)
        if self.mode == "dfu":
            self.state = State.DFU_ERROR
            self.status = Status.ERR_STALLEDPKT
        return _stall(why)

    def _fail(self, status: Status) -> None:
        self.state = State.DFU_ERROR
        self.status = status

    def _advance(self, now: float, request: Request) -> None:
        """The device's own transitions: the end of dfuDNBUSY or dfuMANIFEST
        (after bwPollTimeout), of appDETACH (after wDetachTimeOut)."""
        if self.state == State.APP_DETACH and now > self._detach_deadline:
            self.state = State.APP_IDLE  # no reset in time: back to the application
        if self.state in (State.DFU_DNBUSY, State.DFU_MANIFEST) and now < self._busy_until:
            self.poll_violations += 1
            raise self._error(f"{request.name} {(self._busy_until - now) * 1000:.1f} ms before bwPollTimeout "
                              f"elapsed in {self.state.label}")
        if self.state == State.DFU_DNBUSY:
            self._write_pending()
        elif self.state == State.DFU_MANIFEST:
            self._manifest()

    def _write_pending(self) -> None:
        assert self._pending_block is not None
        block, data = self._pending_block
        self._pending_block = None
        self.state = State.DFU_DNLOAD_SYNC
        if block in self.status_at_block:
            self._fail(self.status_at_block.pop(block))
            return
        if self._received + len(data) > self.slot_size:
            self._fail(Status.ERR_ADDRESS)
            return
        with self.disk.open("r+b") as disk:
            if self._received == 0:  # erase the slot first
                self.erases += 1
                self._ready = False
                disk.seek(self.partition.offset)
                for _ in range(self.slot_size // MIB):
                    disk.write(bytes(MIB))
                disk.write(bytes(self.slot_size % MIB))
            disk.seek(self.partition.offset + self._received)
            disk.write(data)
        self._received += len(data)

    def _manifest(self) -> None:
        self.manifestations += 1
        if self.status_at_manifest is not None:
            self._fail(self.status_at_manifest)
            self.status_at_manifest = None
            return
        if self.verify_on_manifest:
            try:
                verify_disk(self.disk, self.root_public, board=self.board, slot=self.target_slot,
                            min_counter=self.rollback_minimum)
            except VerifyFailure:
                self._fail(Status.ERR_VERIFY)
                return
        self._manifested = True
        self._ready = True  # MantraBoot boots it as pending after the reset
        self.state = State.DFU_MANIFEST_SYNC if self.manifestation_tolerant else State.DFU_MANIFEST_WAIT_RESET

    def control(self, now: float, request_type: int, request: int, value: int, index: int, data: bytes,
                length: int) -> bytes | int:
        """A class request to the DFU interface; returns the IN data or the OUT byte count."""
        try:
            req = Request(request)
        except ValueError:
            raise self._error(f"unknown request {request}") from None
        self.requests.append((now, req.name, self.state.label))
        if index != self.dfu_interface:
            raise self._error(f"{req.name} to interface {index}")
        self._advance(now, req)
        if self.state == State.DFU_MANIFEST_WAIT_RESET:  # listens for nothing but a USB reset
            self.timeouts += 1
            raise usb.core.USBTimeoutError("Operation timed out (dfuMANIFEST-WAIT-RESET: waiting for a USB reset)",
                                           -7, errno.ETIMEDOUT)
        if self.mode == "runtime":
            return self._runtime(now, req, value)
        state = self.state
        if req == Request.GETSTATUS:
            return self._get_status(now)
        if req == Request.GETSTATE:
            return bytes([state])
        if req == Request.CLRSTATUS:
            if state != State.DFU_ERROR:
                raise self._error(f"DFU_CLRSTATUS in {state.label}")
            self.state, self.status = State.DFU_IDLE, Status.OK
            self._reset_session()
            return 0
        if req == Request.ABORT:
            if state not in (State.DFU_IDLE, State.DFU_DNLOAD_IDLE, State.DFU_UPLOAD_IDLE):
                raise self._error(f"DFU_ABORT in {state.label}")
            self.state = State.DFU_IDLE
            self._reset_session()
            return 0
        if req == Request.DNLOAD:
            return self._dnload(now, value, data)
        if req == Request.UPLOAD:
            return self._upload_block(value, length)
        raise self._error(f"{req.label} in {state.label}")

    def _runtime(self, now: float, req: Request, value: int) -> bytes | int:
        if req == Request.GETSTATUS:
            return DfuStatus(Status.OK, 0, self.state, 0).encode()
        if req == Request.GETSTATE:
            return bytes([self.state])
        if req == Request.DETACH and self.state == State.APP_IDLE:
            self.detaches += 1
            if self.will_detach:
                self._enter_dfu(now)  # detaches from the bus and comes back in DFU mode
            else:
                self.state = State.APP_DETACH
                self._detach_deadline = now + min(value, self.detach_timeout_ms) / 1000
            return 0
        raise self._error(f"{req.label} in {self.state.label}")

    def _reset_session(self) -> None:
        self._next_block = None
        self._received = 0
        self._pending_block = None
        self._manifested = False
        self._upload = None

    def _get_status(self, now: float) -> bytes:
        state = self.state
        poll = 0
        if state == State.DFU_DNLOAD_SYNC:
            if self._pending_block is not None:
                poll = self.erase_poll_ms if self._received == 0 else self.poll_timeout_ms
                self.state = State.DFU_DNBUSY
            else:
                self.state = State.DFU_DNLOAD_IDLE
                if self._lost_now():
                    self.state = State.DFU_IDLE
        elif state == State.DFU_MANIFEST_SYNC:
            if self._manifested:
                self.state = State.DFU_IDLE
                self._reset_session()
            else:
                poll = self.manifest_poll_ms
                self.state = State.DFU_MANIFEST
        self._busy_until = now + poll / 1000
        string = VENDOR_STRING if self.status == Status.ERR_VENDOR else 0
        self.answers.append(self.state.label)
        return DfuStatus(self.status, poll, self.state, string).encode()

    def _lost_now(self) -> bool:
        """The injected fault: the device forgets the download (once per entry)."""
        if self.lose_session_at and self._next_block == self.lose_session_at[0] + 1:
            self.lose_session_at.pop(0)
            self._reset_session()
            return True
        return False

    def _dnload(self, now: float, block: int, data: bytes) -> int:
        state = self.state
        if state not in (State.DFU_IDLE, State.DFU_DNLOAD_IDLE) or (state == State.DFU_IDLE and not data):
            raise self._error(f"DFU_DNLOAD of {len(data)} bytes in {state.label}")
        if self.alt != ALT_SLOT:
            raise self._error(f"DFU_DNLOAD to alternate setting {self.alt} (read-only)")
        if len(data) > self.transfer_size:
            raise self._error(f"DFU_DNLOAD of {len(data)} bytes, more than wTransferSize {self.transfer_size}")
        if self._next_block is not None and block != self._next_block:
            raise self._error(f"DFU_DNLOAD block {block}, expected {self._next_block}")
        self.dnload_sizes.append(len(data))
        self.dnload_blocks.append(block)
        if self.unplug_at_block is not None and block == self.unplug_at_block and data:
            self.unplug_at_block = None
            self.unplug()
            raise _no_device()
        if self.stall_at_block is not None and block == self.stall_at_block and data:
            self.stall_at_block = None
            raise self._error(f"injected stall of block {block}")
        self._next_block = (block + 1) & 0xFFFF
        if not data:  # the end: manifestation
            if self._received == 0:
                self._fail(Status.ERR_NOTDONE)
                raise _stall("zero-length DFU_DNLOAD before any data")
            self.state = State.DFU_MANIFEST_SYNC
            return 0
        self._pending_block = (block, bytes(data))
        self.state = State.DFU_DNLOAD_SYNC
        return len(data)

    def _upload_block(self, block: int, length: int) -> bytes:
        if self.state not in (State.DFU_IDLE, State.DFU_UPLOAD_IDLE) or self.alt != ALT_INFO:
            raise self._error(f"DFU_UPLOAD in {self.state.label} on alternate setting {self.alt}")
        if self._upload is None:
            self._upload = self.info()
        chunk, self._upload = self._upload[:length], self._upload[length:]
        if len(chunk) < length:  # a short frame ends the upload
            self.state = State.DFU_IDLE
            self._upload = None
        else:
            self.state = State.DFU_UPLOAD_IDLE
        return chunk

    def set_alt(self, interface: int, alt: int) -> None:
        if self.mode != "dfu" or interface != 0 or alt not in (ALT_SLOT, ALT_INFO):
            raise _stall(f"SET_INTERFACE {interface} alt {alt}")
        if self.state not in (State.DFU_IDLE, State.DFU_ERROR):
            raise _stall(f"SET_INTERFACE in {self.state.label}")
        self.alt = alt

    def usb_reset(self, now: float) -> None:
        """A USB reset (libusb_reset_device): what the device does depends on its state."""
        self.resets += 1
        if self.mode == "runtime":
            if self.state == State.APP_DETACH and now <= self._detach_deadline and not self.ignore_reset_in_detach:
                self._enter_dfu(now)
                raise _not_found()  # re-enumerated with other descriptors
            self.state = State.APP_IDLE
            return
        # DFU mode: MantraBoot boots; the new slot if it was manifested, else the one it booted before.
        self.booted.append(f"slot {self.target_slot} (pending)" if self._ready else "previous slot")
        self._ready = False
        self._reset_session()
        self._reenumerate("runtime", now)
        self.state = State.APP_IDLE
        self.status = Status.OK
        raise _not_found()


@dataclass
class _Handle:
    device: SimDevice
    generation: int


class SimBackend(usb.backend.IBackend):
    """A pyusb backend whose bus holds the simulated devices."""

    def __init__(self, *devices: SimDevice, clock: SimClock | None = None) -> None:
        self.devices = list(devices)
        self.clock = clock or SimClock()
        self._addresses: dict[int, tuple[int, int]] = {}
        self._last_address = 0

    def _check(self, handle: _Handle) -> SimDevice:
        device = handle.device
        if handle.generation != device.generation or not device.present(self.clock.now()):
            raise _no_device()
        return device

    def enumerate_devices(self):
        now = self.clock.now()
        for device in self.devices:  # each enumeration gets a new bus address, as on a real bus
            if self._addresses.get(id(device), (None, 0))[0] != device.generation:
                self._last_address = self._last_address % 127 + 1
                self._addresses[id(device)] = (device.generation, self._last_address)
        return [_Handle(d, d.generation) for d in self.devices if d.present(now)]

    def address(self, device: SimDevice) -> int:
        return self._addresses[id(device)][1]

    def get_device_descriptor(self, dev: _Handle):
        d = dev.device
        return SimpleNamespace(
            bLength=18, bDescriptorType=1, bcdUSB=0x0200, bDeviceClass=0, bDeviceSubClass=0, bDeviceProtocol=0,
            bMaxPacketSize0=64, idVendor=d.vid, idProduct=d.product_id, bcdDevice=0x0100, iManufacturer=1,
            iProduct=2, iSerialNumber=3 if d.serial is not None else 0, bNumConfigurations=1,
            address=self.address(d), bus=1, port_number=2, port_numbers=(2,), speed=2)

    def get_configuration_descriptor(self, dev: _Handle, config: int):
        if config != 0:
            raise IndexError(f"Invalid configuration index {config}")
        interfaces = dev.device.interfaces()
        return SimpleNamespace(bLength=9, bDescriptorType=2, wTotalLength=9 + 9 * sum(map(len, interfaces)),
                               bNumInterfaces=len(interfaces), bConfigurationValue=1, iConfiguration=0,
                               bmAttributes=0x80, bMaxPower=250, extra_descriptors=[])

    def get_interface_descriptor(self, dev: _Handle, intf: int, alt: int, config: int):
        interfaces = dev.device.interfaces()
        if config != 0 or intf >= len(interfaces) or alt >= len(interfaces[intf]):
            raise IndexError(f"Invalid interface {intf} alternate setting {alt}")
        return interfaces[intf][alt]

    def get_endpoint_descriptor(self, dev, ep, intf, alt, config):
        raise IndexError("no endpoints")

    def open_device(self, dev: _Handle) -> _Handle:
        self._check(dev)
        return _Handle(dev.device, dev.generation)

    def close_device(self, dev_handle: _Handle) -> None:
        pass

    def set_configuration(self, dev_handle: _Handle, config_value: int) -> None:
        self._check(dev_handle)

    def get_configuration(self, dev_handle: _Handle) -> int:
        self._check(dev_handle)
        return 1

    def set_interface_altsetting(self, dev_handle: _Handle, intf: int, altsetting: int) -> None:
        self._check(dev_handle).set_alt(intf, altsetting)

    def claim_interface(self, dev_handle: _Handle, intf: int) -> None:
        device = self._check(dev_handle)
        if intf >= len(device.interfaces()):
            raise usb.core.USBError("Entity not found", -5, errno.ENOENT)

    def release_interface(self, dev_handle: _Handle, intf: int) -> None:
        self._check(dev_handle)  # LIBUSB_ERROR_NO_DEVICE once the device is gone

    def ctrl_transfer(self, dev_handle: _Handle, bmRequestType, bRequest, wValue, wIndex, data, timeout):
        device = self._check(dev_handle)
        if bmRequestType == 0x80 and bRequest == 6:  # GET_DESCRIPTOR
            return self._descriptor(device, wValue, data)
        if bmRequestType & 0x60 != 0x20 or bmRequestType & 0x1F != 1:  # class request to an interface
            raise _stall(f"request type {bmRequestType:#x} request {bRequest}")
        if len(data) > 4096:  # libusb's MAX_CTRL_BUFFER_LENGTH (Linux, Windows)
            raise usb.core.USBError("Invalid parameter", -2, errno.EINVAL)
        now = self.clock.now()
        if bmRequestType & 0x80:
            answer = device.control(now, bmRequestType, bRequest, wValue, wIndex, b"", len(data))
            assert isinstance(answer, bytes)
            answer = answer[:len(data)]
            data[:len(answer)] = array.array("B", answer)
            return len(answer)
        return device.control(now, bmRequestType, bRequest, wValue, wIndex, bytes(data), len(data))

    def _descriptor(self, device: SimDevice, value: int, data) -> int:
        kind, index = value >> 8, value & 0xFF
        if kind != 3:
            raise _stall(f"GET_DESCRIPTOR type {kind}")
        if index == 0:
            raw = bytes([4, 3, 0x09, 0x04])
        else:
            strings = {**STRINGS, 3: device.serial, VENDOR_STRING: device.vendor_message}
            text = strings.get(index)
            if text is None:
                raise _stall(f"no string {index}")
            encoded = text.encode("utf-16-le")
            raw = bytes([2 + len(encoded), 3]) + encoded
        raw = raw[:len(data)]
        for i, byte in enumerate(raw):
            data[i] = byte
        return len(raw)

    def clear_halt(self, dev_handle, ep) -> None:
        self._check(dev_handle)

    def reset_device(self, dev_handle: _Handle) -> None:
        self._check(dev_handle).usb_reset(self.clock.now())

    def is_kernel_driver_active(self, dev_handle, intf) -> bool:
        return False

    def detach_kernel_driver(self, dev_handle, intf) -> None:
        pass

    def attach_kernel_driver(self, dev_handle, intf) -> None:
        pass
