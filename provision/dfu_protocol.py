"""The USB DFU 1.1 protocol as MantraOS uses it (docs/dfu.md): the class
codes, requests, states and status codes of the USB Device Firmware Upgrade
specification, revision 1.1, the DFU functional descriptor and the
DFU_GETSTATUS record, and MantraBoot's device information record. Shared by
the host (mantra.provision.dfu) and the simulated device of the tests."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

# The DFU class (DFU 1.1, 4.2.1 and 4.2.3).
DFU_CLASS = 0xFE
DFU_SUBCLASS = 0x01
PROTOCOL_RUNTIME = 0x01
PROTOCOL_DFU = 0x02
FUNCTIONAL_DESCRIPTOR = 0x21
DFU_VERSION = 0x0110
# bmRequestType of the class requests to the interface: OUT 0x21, IN 0xA1.
REQUEST_OUT = 0x21
REQUEST_IN = 0xA1

# MantraBoot's DFU-mode alternate settings.
ALT_SLOT = 0
ALT_INFO = 1

# libusb refuses control transfers of more than 4096 bytes of data on Linux
# and Windows (MAX_CTRL_BUFFER_LENGTH, LIBUSB_ERROR_INVALID_PARAM): blocks are
# min(wTransferSize, this); DFU allows blocks shorter than wTransferSize.
MAX_CONTROL_DATA = 4096
# What most failures come down to for the user.
AGAIN = "run the same command again"


class Request(IntEnum):
    """DFU class requests (DFU 1.1, table 3.2)."""

    DETACH = 0
    DNLOAD = 1
    UPLOAD = 2
    GETSTATUS = 3
    CLRSTATUS = 4
    GETSTATE = 5
    ABORT = 6

    @property
    def label(self) -> str:
        return f"DFU_{self.name}"


class State(IntEnum):
    """Device states (DFU 1.1, 6.1.2)."""

    APP_IDLE = 0
    APP_DETACH = 1
    DFU_IDLE = 2
    DFU_DNLOAD_SYNC = 3
    DFU_DNBUSY = 4
    DFU_DNLOAD_IDLE = 5
    DFU_MANIFEST_SYNC = 6
    DFU_MANIFEST = 7
    DFU_MANIFEST_WAIT_RESET = 8
    DFU_UPLOAD_IDLE = 9
    DFU_ERROR = 10

    @property
    def label(self) -> str:
        return _STATE_LABELS[self]


_STATE_LABELS = {
    State.APP_IDLE: "appIDLE", State.APP_DETACH: "appDETACH", State.DFU_IDLE: "dfuIDLE",
    State.DFU_DNLOAD_SYNC: "dfuDNLOAD-SYNC", State.DFU_DNBUSY: "dfuDNBUSY", State.DFU_DNLOAD_IDLE: "dfuDNLOAD-IDLE",
    State.DFU_MANIFEST_SYNC: "dfuMANIFEST-SYNC", State.DFU_MANIFEST: "dfuMANIFEST",
    State.DFU_MANIFEST_WAIT_RESET: "dfuMANIFEST-WAIT-RESET", State.DFU_UPLOAD_IDLE: "dfuUPLOAD-IDLE",
    State.DFU_ERROR: "dfuERROR",
}


class Status(IntEnum):
    """bStatus of DFU_GETSTATUS (DFU 1.1, 6.1.2)."""

    OK = 0x00
    ERR_TARGET = 0x01
    ERR_FILE = 0x02
    ERR_WRITE = 0x03
    ERR_ERASE = 0x04
    ERR_CHECK_ERASED = 0x05
    ERR_PROG = 0x06
    ERR_VERIFY = 0x07
    ERR_ADDRESS = 0x08
    ERR_NOTDONE = 0x09
    ERR_FIRMWARE = 0x0A
    ERR_VENDOR = 0x0B
    ERR_USBR = 0x0C
    ERR_POR = 0x0D
    ERR_UNKNOWN = 0x0E
    ERR_STALLEDPKT = 0x0F

    @property
    def label(self) -> str:
        return _STATUS_TEXT[self][0]

    @property
    def meaning(self) -> str:
        return _STATUS_TEXT[self][1]

    @property
    def advice(self) -> str:
        return _STATUS_TEXT[self][2]


_STORAGE = f"{AGAIN}; if it fails again, the board's storage may be failing (flash another board to compare)"
_STATUS_TEXT = {
    Status.OK: ("OK", "no error", AGAIN),
    Status.ERR_TARGET: ("errTARGET", "the file is not targeted for use by this device",
                        "build the image for this board (-b BOARD) and flash that"),
    Status.ERR_FILE: ("errFILE", "the file is for this device but fails the device's verification",
                      "rebuild and sign the image (./mantra build), check it with ./mantra verify --slot, and flash "
                      "it again"),
    Status.ERR_WRITE: ("errWRITE", "the device cannot write its memory", _STORAGE),
    Status.ERR_ERASE: ("errERASE", "erasing the slot failed", _STORAGE),
    Status.ERR_CHECK_ERASED: ("errCHECK_ERASED", "the erased slot does not read back erased", _STORAGE),
    Status.ERR_PROG: ("errPROG", "programming the memory failed", _STORAGE),
    Status.ERR_VERIFY: ("errVERIFY", "the written slot failed the device's verification",
                        f"{AGAIN}; if it fails again, check the image with ./mantra verify --slot against the "
                        "product's root key, then the board's storage"),
    Status.ERR_ADDRESS: ("errADDRESS", "the download goes past the end of the device's slot",
                         "give the image a smaller slot or the board larger slots (board.toml [disk])"),
    Status.ERR_NOTDONE: ("errNOTDONE", "the download ended before the device had all the data",
                         f"{AGAIN} (the download was cut short)"),
    Status.ERR_FIRMWARE: ("errFIRMWARE", "the device's firmware is corrupt: it cannot return to run-time "
                          "operation", f"{AGAIN}: the device stays in DFU mode until an image is flashed"),
    Status.ERR_VENDOR: ("errVENDOR", "a MantraBoot-specific error", f"read the device's message; {AGAIN}"),
    Status.ERR_USBR: ("errUSBR", "the device saw an unexpected USB reset",
                      f"keep the board and its hub untouched while flashing; {AGAIN}"),
    Status.ERR_POR: ("errPOR", "the device saw an unexpected power-on reset",
                     f"check the board's power supply (a powered hub, a shorter cable); {AGAIN}"),
    Status.ERR_UNKNOWN: ("errUNKNOWN", "something went wrong, and the device does not know what", AGAIN),
    Status.ERR_STALLEDPKT: ("errSTALLEDPKT", "the device stalled an unexpected request",
                            f"{AGAIN}; if it stalls again, host and device disagree on the DFU state machine: "
                            "report it with the output of `./mantra -v`"),
}


# ---------------------------------------------------------------------------
# Descriptors and the status record


@dataclass(frozen=True)
class FunctionalDescriptor:
    """The DFU functional descriptor (DFU 1.1, 4.1.3): bmAttributes,
    wDetachTimeOut (ms), wTransferSize (bytes per DFU_DNLOAD), bcdDFUVersion."""

    attributes: int
    detach_timeout_ms: int
    transfer_size: int
    dfu_version: int

    CAN_DNLOAD = 0x01
    CAN_UPLOAD = 0x02
    MANIFESTATION_TOLERANT = 0x04
    WILL_DETACH = 0x08
    _FORMAT = struct.Struct("<BBBHHH")

    @property
    def can_download(self) -> bool:
        return bool(self.attributes & self.CAN_DNLOAD)

    @property
    def can_upload(self) -> bool:
        return bool(self.attributes & self.CAN_UPLOAD)

    @property
    def block_size(self) -> int:
        """Bytes per DFU_DNLOAD / DFU_UPLOAD: wTransferSize, at most what libusb moves in one control transfer."""
        return min(self.transfer_size, MAX_CONTROL_DATA)

    @property
    def manifestation_tolerant(self) -> bool:
        return bool(self.attributes & self.MANIFESTATION_TOLERANT)

    @property
    def will_detach(self) -> bool:
        return bool(self.attributes & self.WILL_DETACH)

    def encode(self) -> bytes:
        return self._FORMAT.pack(self._FORMAT.size, FUNCTIONAL_DESCRIPTOR, self.attributes, self.detach_timeout_ms,
                                 self.transfer_size, self.dfu_version)

    @classmethod
    def parse(cls, raw: bytes) -> FunctionalDescriptor:
        """One descriptor of type 0x21. DFU 1.0 devices may send 7 bytes
        (no bcdDFUVersion): read as version 1.0."""
        if len(raw) < 7 or raw[1] != FUNCTIONAL_DESCRIPTOR or raw[0] < 7 or raw[0] > len(raw):
            raise DfuProtocolError(f"malformed DFU functional descriptor {raw.hex()}")
        attributes, detach, transfer = struct.unpack_from("<BHH", raw, 2)
        version = struct.unpack_from("<H", raw, 7)[0] if raw[0] >= 9 else 0x0100
        return cls(attributes, detach, transfer, version)

    @classmethod
    def find(cls, *extras: bytes) -> FunctionalDescriptor | None:
        """The functional descriptor among class-specific descriptors (an
        interface's `extra`, then its configuration's, as libusb gives them)."""
        for extra in extras:
            position = 0
            while position + 2 <= len(extra):
                length = extra[position]
                if length < 2:
                    break
                if extra[position + 1] == FUNCTIONAL_DESCRIPTOR:
                    return cls.parse(extra[position:position + length])
                position += length
        return None

    def describe(self) -> str:
        flags = [name for name, bit in (("download", self.CAN_DNLOAD), ("upload", self.CAN_UPLOAD),
                                        ("manifestation-tolerant", self.MANIFESTATION_TOLERANT),
                                        ("will-detach", self.WILL_DETACH)) if self.attributes & bit]
        return (f"DFU {self.dfu_version >> 8}.{self.dfu_version & 0xFF:02x}, transfer size {self.transfer_size}, "
                f"detach timeout {self.detach_timeout_ms} ms, {', '.join(flags) or 'no capabilities'}")


@dataclass(frozen=True)
class DfuStatus:
    """The 6 bytes of DFU_GETSTATUS: bStatus, bwPollTimeout (24 bits, ms), bState, iString."""

    status: int
    poll_timeout_ms: int
    state: int
    string_index: int

    def encode(self) -> bytes:
        return bytes([self.status]) + self.poll_timeout_ms.to_bytes(3, "little") + bytes([self.state,
                                                                                          self.string_index])

    @classmethod
    def parse(cls, raw: bytes) -> DfuStatus:
        if len(raw) != 6:
            raise DfuProtocolError(f"DFU_GETSTATUS answered {len(raw)} bytes, not 6")
        return cls(raw[0], int.from_bytes(raw[1:4], "little"), raw[4], raw[5])

    @property
    def status_label(self) -> str:
        return Status(self.status).label if self.status in Status._value2member_map_ else f"status {self.status:#x}"

    @property
    def state_label(self) -> str:
        return State(self.state).label if self.state in State._value2member_map_ else f"state {self.state}"


INFO_MAGIC = b"MDFU"
INFO_VERSION = 1


@dataclass(frozen=True)
class DeviceInfo:
    """What MantraBoot's DFU alternate setting 1 uploads: the facts the
    host checks an image against before writing (as the serial protocol's
    HELLO reply). Little-endian: magic "MDFU", u16 version 1, u16 board
    length + UTF-8 board name, 32-byte root public key (Ed25519, raw), u64
    rollback minimum (security counter), u8 target slot ("a"/"b" in ASCII),
    u64 target slot size in bytes."""

    board: str
    root_public: bytes
    rollback_minimum: int
    target_slot: str
    slot_size: int

    def encode(self) -> bytes:
        board = self.board.encode()
        return (INFO_MAGIC + struct.pack("<HH", INFO_VERSION, len(board)) + board + self.root_public
                + struct.pack("<QcQ", self.rollback_minimum, self.target_slot.encode(), self.slot_size))

    @classmethod
    def parse(cls, raw: bytes) -> DeviceInfo:
        try:
            magic, version, length = struct.unpack_from("<4sHH", raw)
            if magic != INFO_MAGIC or version != INFO_VERSION:
                raise DfuProtocolError(f"device information: magic {magic!r} version {version}, expected "
                                       f"{INFO_MAGIC!r} version {INFO_VERSION}")
            board = raw[8:8 + length].decode()
            rest = raw[8 + length:]
            root_public = rest[:32]
            minimum, slot, size = struct.unpack_from("<QcQ", rest, 32)
            if len(rest) != 32 + 17:
                raise DfuProtocolError(f"device information is {len(raw)} bytes, expected {8 + length + 49}")
            return cls(board, bytes(root_public), minimum, slot.decode(), size)
        except (struct.error, UnicodeDecodeError) as exc:
            raise DfuProtocolError(f"malformed device information ({len(raw)} bytes): {exc}") from None


# ---------------------------------------------------------------------------
# Errors


class DfuProtocolError(Exception):
    """The device answered something DFU 1.1 does not allow."""
