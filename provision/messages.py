"""MantraFlash payloads (docs/flash-protocol.md): one typed class per
command, reply and device-only frame, each with `encode() -> bytes` and a
strict `decode(payload)` that refuses short or long payloads, non-zero
reserved fields, values out of range and invalid UTF-8 (raising
`MessageError`, which a device answers with ERROR code 1, bad request).

Commands carry their frame type in `TYPE`; `decode_command(frame)` turns a
command frame into its message (device side), `decode_reply(command_type,
payload)` an OK payload into the reply message of that command (host side).
`ok_reply_type(command_type)` says which class that is.

All integers little-endian; strings are u16 length + UTF-8.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar

from mantra.provision.frames import MAX_PAYLOAD, Frame, FrameType, encode_frame

PROTOCOL_VERSION = 1
DEFAULT_WINDOW = 8
DEFAULT_BLOCK_SIZE = 65536
HASH_SIZE = 32
MAP_ENTRY_SIZE = 4 + HASH_SIZE  # u32 index + SHA-256
DATA_HEADER_SIZE = 16
SLOT_NAMES = ("a", "b")
NO_TARGET = 0xFF  # HELLO reply's target slot when no slot can be written now

# Rates a 16550 reaches from 115200 x 8 (divisor 1 = 921600) and the
# standard ones down to 9600 ("Baud switch").
SUPPORTED_BAUDS = (921600, 460800, 230400, 115200, 57600, 38400, 19200, 9600)


class MessageError(ValueError):
    """A payload that does not decode: wrong length, reserved field not
    zero, value out of range, bad UTF-8."""


class Compression(IntEnum):
    """BEGIN's compression and DATA's encoding."""

    NONE = 0
    ZLIB = 1
    ZSTD = 2


# HELLO reply's "compression supported" bits
COMPRESSION_BIT = {Compression.ZLIB: 1 << 0, Compression.ZSTD: 1 << 1}


class NakReason(IntEnum):
    BAD_FRAME = 1  # bad CRC / dropped frame
    OUT_OF_SEQUENCE = 2
    BLOCK_HASH = 3  # the whole block is resent
    DECOMPRESS = 4


class ErrorCode(IntEnum):
    BAD_REQUEST = 1
    PROTOCOL_VERSION = 2
    WRONG_BOARD = 3
    KEY = 4
    SIGNATURE = 5
    ROLLBACK = 6
    WRONG_SLOT = 7
    NO_SESSION = 8
    IMAGE_TOO_LARGE = 9
    BLOCK_IO = 10
    SLOT_CHECK = 11
    SLOT_VERIFY = 12
    UNSUPPORTED = 13


class SlotState(IntEnum):
    """boot-state.md's slot states plus the flash protocol's 4."""

    EMPTY = 0
    ACTIVE = 1
    PENDING = 2
    BAD = 3
    FLASHING = 4


# --- byte helpers ---------------------------------------------------------


class Reader:
    """Strict little-endian reader over one payload: every read checks the
    length, `end()` checks nothing is left over."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = bytes(data)
        self.pos = 0
        self.what = what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise MessageError(f"{self.what}: payload too short ({len(self.data)} bytes)")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def _unpack(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size))[0]

    def u8(self) -> int:
        return self._unpack("<B")

    def u16(self) -> int:
        return self._unpack("<H")

    def u32(self) -> int:
        return self._unpack("<I")

    def u64(self) -> int:
        return self._unpack("<Q")

    def string(self) -> str:
        raw = self.take(self.u16())
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MessageError(f"{self.what}: string is not UTF-8") from None

    def reserved(self, n: int) -> None:
        if any(self.take(n)):
            raise MessageError(f"{self.what}: reserved field is not zero")

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos)

    def end(self) -> None:
        if self.pos != len(self.data):
            raise MessageError(f"{self.what}: {len(self.data) - self.pos} unexpected trailing bytes")


def pack_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise MessageError(f"string of {len(raw)} bytes is too long")
    return struct.pack("<H", len(raw)) + raw


def _check_range(value: int, bits: int, what: str) -> None:
    if not 0 <= value < (1 << bits):
        raise MessageError(f"{what} {value} is not a u{bits}")


def _enum(cls, value: int, what: str):
    try:
        return cls(value)
    except ValueError:
        raise MessageError(f"{what}: unknown value {value}") from None


def _empty(payload: bytes, what: str) -> None:
    if payload:
        raise MessageError(f"{what}: payload must be empty, got {len(payload)} bytes")


# --- commands -------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    TYPE: ClassVar[FrameType] = FrameType.HELLO
    version: int = PROTOCOL_VERSION

    def encode(self) -> bytes:
        return struct.pack("<H", self.version)

    @classmethod
    def decode(cls, payload: bytes) -> Hello:
        r = Reader(payload, "HELLO")
        msg = cls(r.u16())
        r.end()
        return msg


@dataclass(frozen=True)
class SetBaud:
    TYPE: ClassVar[FrameType] = FrameType.SET_BAUD
    baud: int

    def encode(self) -> bytes:
        _check_range(self.baud, 32, "baud")
        return struct.pack("<I", self.baud)

    @classmethod
    def decode(cls, payload: bytes) -> SetBaud:
        r = Reader(payload, "SET_BAUD")
        msg = cls(r.u32())
        r.end()
        if msg.baud == 0:
            raise MessageError("SET_BAUD: baud 0")
        return msg


@dataclass(frozen=True)
class Begin:
    TYPE: ClassVar[FrameType] = FrameType.BEGIN
    slot: int  # 0 = a, 1 = b
    compression: Compression
    block_size: int
    image_size: int
    map_count: int
    image_digest: bytes
    envelope: bytes

    def encode(self) -> bytes:
        if self.slot not in (0, 1):
            raise MessageError(f"BEGIN: slot {self.slot} is not 0 or 1")
        if len(self.image_digest) != HASH_SIZE:
            raise MessageError("BEGIN: image digest must be 32 bytes")
        return (
            struct.pack("<BBHIQI", self.slot, int(self.compression), 0, self.block_size, self.image_size,
                        self.map_count)
            + bytes(self.image_digest)
            + struct.pack("<I", len(self.envelope))
            + bytes(self.envelope)
        )

    @classmethod
    def decode(cls, payload: bytes) -> Begin:
        r = Reader(payload, "BEGIN")
        slot = r.u8()
        if slot not in (0, 1):
            raise MessageError(f"BEGIN: slot {slot} is not 0 or 1")
        compression = _enum(Compression, r.u8(), "BEGIN compression")
        r.reserved(2)
        block_size, image_size, map_count = r.u32(), r.u64(), r.u32()
        digest = r.take(HASH_SIZE)
        envelope = r.take(r.u32())
        r.end()
        if block_size == 0 or image_size % block_size:
            raise MessageError(f"BEGIN: image size {image_size} is not a multiple of the block size {block_size}")
        if map_count > image_size // block_size:
            raise MessageError(f"BEGIN: {map_count} mapped blocks in an image of {image_size // block_size} blocks")
        return cls(slot, compression, block_size, image_size, map_count, digest, envelope)


@dataclass(frozen=True)
class MapEntry:
    index: int  # block index in the slot image
    hash: bytes  # SHA-256 of the block

    def encode(self) -> bytes:
        if len(self.hash) != HASH_SIZE:
            raise MessageError("map entry hash must be 32 bytes")
        return struct.pack("<I", self.index) + bytes(self.hash)


def image_digest(entries: list[MapEntry]) -> bytes:
    """BEGIN's image digest: SHA-256 over the entries (u32 index || hash)
    in map order."""
    h = hashlib.sha256()
    for entry in entries:
        h.update(entry.encode())
    return h.digest()


def map_entries_per_frame(max_payload: int = MAX_PAYLOAD) -> int:
    return (max_payload - 4) // MAP_ENTRY_SIZE


@dataclass(frozen=True)
class Map:
    TYPE: ClassVar[FrameType] = FrameType.MAP
    first: int  # first block-map index (entry number) carried
    entries: tuple[MapEntry, ...]

    def encode(self) -> bytes:
        return struct.pack("<I", self.first) + b"".join(e.encode() for e in self.entries)

    @classmethod
    def decode(cls, payload: bytes) -> Map:
        r = Reader(payload, "MAP")
        first = r.u32()
        body = r.rest()
        if not body or len(body) % MAP_ENTRY_SIZE:
            raise MessageError(f"MAP: {len(body)} bytes of entries is not a positive multiple of {MAP_ENTRY_SIZE}")
        entries = []
        for off in range(0, len(body), MAP_ENTRY_SIZE):
            (index,) = struct.unpack_from("<I", body, off)
            entries.append(MapEntry(index, body[off + 4 : off + MAP_ENTRY_SIZE]))
        for prev, cur in zip(entries, entries[1:]):
            if cur.index <= prev.index:
                raise MessageError(f"MAP: block indices not strictly increasing ({prev.index}, {cur.index})")
        return cls(first, tuple(entries))


@dataclass(frozen=True)
class Have:
    TYPE: ClassVar[FrameType] = FrameType.HAVE
    first: int
    count: int

    def encode(self) -> bytes:
        return struct.pack("<II", self.first, self.count)

    @classmethod
    def decode(cls, payload: bytes) -> Have:
        r = Reader(payload, "HAVE")
        msg = cls(r.u32(), r.u32())
        r.end()
        return msg


@dataclass(frozen=True)
class Data:
    TYPE: ClassVar[FrameType] = FrameType.DATA
    entry: int  # map entry number, not the block index
    encoded_length: int  # of the whole encoded block
    offset: int  # of this chunk in the encoded block
    encoding: Compression
    chunk: bytes

    def encode(self) -> bytes:
        head = struct.pack("<IIIB3x", self.entry, self.encoded_length, self.offset, int(self.encoding))
        return head + bytes(self.chunk)

    @classmethod
    def decode(cls, payload: bytes) -> Data:
        r = Reader(payload, "DATA")
        entry, length, offset = r.u32(), r.u32(), r.u32()
        encoding = _enum(Compression, r.u8(), "DATA encoding")
        r.reserved(3)
        chunk = r.rest()
        if not chunk or length == 0:
            raise MessageError("DATA: empty chunk")
        if offset + len(chunk) > length:
            raise MessageError(f"DATA: chunk {offset}+{len(chunk)} runs past the encoded length {length}")
        return cls(entry, length, offset, encoding, chunk)

    @property
    def last(self) -> bool:
        return self.offset + len(self.chunk) == self.encoded_length


def data_chunk_size(max_payload: int = MAX_PAYLOAD) -> int:
    return max_payload - DATA_HEADER_SIZE


@dataclass(frozen=True)
class _Empty:
    def encode(self) -> bytes:
        return b""

    @classmethod
    def decode(cls, payload: bytes):
        _empty(payload, cls.TYPE.name)  # type: ignore[attr-defined]
        return cls()


@dataclass(frozen=True)
class Finish(_Empty):
    TYPE: ClassVar[FrameType] = FrameType.FINISH


@dataclass(frozen=True)
class Activate(_Empty):
    TYPE: ClassVar[FrameType] = FrameType.ACTIVATE


@dataclass(frozen=True)
class Reset(_Empty):
    TYPE: ClassVar[FrameType] = FrameType.RESET


@dataclass(frozen=True)
class Abort(_Empty):
    TYPE: ClassVar[FrameType] = FrameType.ABORT


COMMANDS: dict[FrameType, type] = {
    cls.TYPE: cls for cls in (Hello, SetBaud, Begin, Map, Have, Data, Finish, Activate, Reset, Abort)
}

Command = Hello | SetBaud | Begin | Map | Have | Data | Finish | Activate | Reset | Abort


def decode_command(frame: Frame) -> Command:
    """The message of a command frame; MessageError when it is not a command
    or its payload does not decode."""
    cls = COMMANDS.get(frame.type)
    if cls is None:
        raise MessageError(f"frame type {frame.type.name} is not a command")
    return cls.decode(frame.payload)


def to_frame(msg, seq: int = 0, max_payload: int = MAX_PAYLOAD) -> bytes:
    """The frame bytes of a message that has a TYPE (commands, ACK, NAK,
    BUSY, ERROR, Ok)."""
    return encode_frame(msg.TYPE, msg.encode(), seq, max_payload)


def ok_frame(reply, seq: int = 0, max_payload: int = MAX_PAYLOAD) -> bytes:
    """An OK frame carrying `reply` (any reply message)."""
    return encode_frame(FrameType.OK, reply.encode(), seq, max_payload)


# --- replies --------------------------------------------------------------


@dataclass(frozen=True)
class SlotInfo:
    name: str  # "a" / "b"
    state: SlotState
    tries: int
    running: bool  # running / preferred: never written
    size: int  # bytes
    security_counter: int
    version: str = ""

    def encode(self) -> bytes:
        if len(self.name) != 1 or not self.name.isascii():
            raise MessageError(f"slot name {self.name!r} is not one ASCII letter")
        return (
            struct.pack("<BBBBQQ", ord(self.name), int(self.state), self.tries, int(self.running), self.size,
                        self.security_counter)
            + pack_string(self.version)
        )

    @classmethod
    def read(cls, r: Reader) -> SlotInfo:
        name = chr(r.u8())
        if name not in SLOT_NAMES:
            raise MessageError(f"HELLO reply: slot name {name!r}")
        state = _enum(SlotState, r.u8(), "HELLO reply slot state")
        tries = r.u8()
        running = r.u8()
        if running not in (0, 1):
            raise MessageError(f"HELLO reply: running flag {running}")
        size, counter = r.u64(), r.u64()
        return cls(name, state, tries, bool(running), size, counter, r.string())


@dataclass(frozen=True)
class HelloReply:
    version: int
    max_payload: int
    window: int
    compression: int  # bit 0 zlib, bit 1 zstd
    block_size: int
    baud: int
    board: str
    root_key_hash: bytes  # SHA-256 of the 32 raw bytes of the built-in root key
    rollback_min: int
    slots: tuple[SlotInfo, ...]
    target_slot: int  # index into slots: the one BEGIN writes; NO_TARGET (0xFF) when none can be written

    def encode(self) -> bytes:
        if len(self.root_key_hash) != HASH_SIZE:
            raise MessageError("HELLO reply: root key hash must be 32 bytes")
        return (
            struct.pack("<HHHHII", self.version, self.max_payload, self.window, self.compression, self.block_size,
                        self.baud)
            + pack_string(self.board)
            + bytes(self.root_key_hash)
            + struct.pack("<QB", self.rollback_min, len(self.slots))
            + b"".join(s.encode() for s in self.slots)
            + struct.pack("<B", self.target_slot)
        )

    @classmethod
    def decode(cls, payload: bytes) -> HelloReply:
        r = Reader(payload, "HELLO reply")
        version, max_payload, window, compression = r.u16(), r.u16(), r.u16(), r.u16()
        block_size, baud = r.u32(), r.u32()
        board = r.string()
        root = r.take(HASH_SIZE)
        rollback = r.u64()
        slots = tuple(SlotInfo.read(r) for _ in range(r.u8()))
        target = r.u8()
        r.end()
        if max_payload < DATA_HEADER_SIZE + 1 or window == 0 or block_size == 0:
            raise MessageError(f"HELLO reply: max_payload {max_payload}, window {window}, block size {block_size}")
        if compression & ~0b11:
            raise MessageError(f"HELLO reply: unknown compression bits {compression:#x}")
        if target >= len(slots) and target != NO_TARGET:
            raise MessageError(f"HELLO reply: target slot {target} of {len(slots)} slots")
        return cls(version, max_payload, window, compression, block_size, baud, board, root, rollback, slots, target)

    @property
    def target(self) -> SlotInfo | None:
        """The slot BEGIN may write; None when the board has none (0xFF)."""
        return None if self.target_slot == NO_TARGET else self.slots[self.target_slot]

    def supports(self, compression: Compression) -> bool:
        return compression == Compression.NONE or bool(self.compression & COMPRESSION_BIT[compression])


@dataclass(frozen=True)
class EmptyReply:
    """The OK payload of SET_BAUD, ACTIVATE, RESET, ABORT."""

    def encode(self) -> bytes:
        return b""

    @classmethod
    def decode(cls, payload: bytes) -> EmptyReply:
        _empty(payload, "OK")
        return cls()


@dataclass(frozen=True)
class _U32Reply:
    value: int

    def encode(self) -> bytes:
        return struct.pack("<I", self.value)

    @classmethod
    def decode(cls, payload: bytes):
        r = Reader(payload, cls.__name__)
        msg = cls(r.u32())
        r.end()
        return msg


@dataclass(frozen=True)
class BeginReply(_U32Reply):
    """u32 blocks already held (count)."""

    @property
    def held(self) -> int:
        return self.value


@dataclass(frozen=True)
class MapReply(_U32Reply):
    """u32 entries received so far."""

    @property
    def received(self) -> int:
        return self.value


@dataclass(frozen=True)
class HaveReply:
    """1 bit per entry, LSB first, 1 = already held."""

    held: tuple[bool, ...]

    def encode(self) -> bytes:
        out = bytearray((len(self.held) + 7) // 8)
        for i, bit in enumerate(self.held):
            if bit:
                out[i // 8] |= 1 << (i % 8)
        return bytes(out)

    @classmethod
    def decode(cls, payload: bytes, count: int) -> HaveReply:
        if len(payload) != (count + 7) // 8:
            raise MessageError(f"HAVE reply: {len(payload)} bytes for {count} entries")
        bits = tuple(bool(payload[i // 8] >> (i % 8) & 1) for i in range(count))
        if count % 8 and payload[-1] >> (count % 8):
            raise MessageError("HAVE reply: padding bits are not zero")
        return cls(bits)


@dataclass(frozen=True)
class FinishReply:
    instructions: int = 0  # spent checking, informational

    def encode(self) -> bytes:
        return struct.pack("<Q", self.instructions)

    @classmethod
    def decode(cls, payload: bytes) -> FinishReply:
        r = Reader(payload, "FINISH reply")
        msg = cls(r.u64())
        r.end()
        return msg


_OK_REPLIES: dict[FrameType, type] = {
    FrameType.HELLO: HelloReply,
    FrameType.SET_BAUD: EmptyReply,
    FrameType.BEGIN: BeginReply,
    FrameType.MAP: MapReply,
    FrameType.FINISH: FinishReply,
    FrameType.ACTIVATE: EmptyReply,
    FrameType.RESET: EmptyReply,
    FrameType.ABORT: EmptyReply,
}


def ok_reply_type(command: FrameType) -> type:
    """The class of the OK payload of `command` (HAVE: HaveReply, whose
    decode needs the count)."""
    if command == FrameType.HAVE:
        return HaveReply
    if command not in _OK_REPLIES:
        raise MessageError(f"{command.name} has no OK reply")
    return _OK_REPLIES[command]


def decode_reply(command: FrameType, payload: bytes, have_count: int | None = None):
    """Decode the OK payload of `command`; HAVE needs `have_count`."""
    cls = ok_reply_type(command)
    if cls is HaveReply:
        if have_count is None:
            raise MessageError("HAVE reply: decode needs the entry count")
        return HaveReply.decode(payload, have_count)
    return cls.decode(payload)


# --- device-only frames ---------------------------------------------------


@dataclass(frozen=True)
class Ack:
    TYPE: ClassVar[FrameType] = FrameType.ACK
    next_seq: int

    def encode(self) -> bytes:
        return struct.pack("<H", self.next_seq)

    @classmethod
    def decode(cls, payload: bytes) -> Ack:
        r = Reader(payload, "ACK")
        msg = cls(r.u16())
        r.end()
        return msg


@dataclass(frozen=True)
class Nak:
    TYPE: ClassVar[FrameType] = FrameType.NAK
    next_seq: int
    reason: NakReason

    def encode(self) -> bytes:
        return struct.pack("<HB", self.next_seq, int(self.reason))

    @classmethod
    def decode(cls, payload: bytes) -> Nak:
        r = Reader(payload, "NAK")
        seq = r.u16()
        reason = _enum(NakReason, r.u8(), "NAK reason")
        r.end()
        return cls(seq, reason)


@dataclass(frozen=True)
class Busy:
    TYPE: ClassVar[FrameType] = FrameType.BUSY
    done: int
    total: int

    def encode(self) -> bytes:
        return struct.pack("<II", self.done, self.total)

    @classmethod
    def decode(cls, payload: bytes) -> Busy:
        r = Reader(payload, "BUSY")
        msg = cls(r.u32(), r.u32())
        r.end()
        return msg


@dataclass(frozen=True)
class Error:
    TYPE: ClassVar[FrameType] = FrameType.ERROR
    code: int  # an ErrorCode; unknown codes are kept, not refused, so a newer device's message still shows
    message: str = field(default="")

    def encode(self) -> bytes:
        return struct.pack("<H", int(self.code)) + pack_string(self.message)

    @classmethod
    def decode(cls, payload: bytes) -> Error:
        r = Reader(payload, "ERROR")
        code = r.u16()
        message = r.string()
        r.end()
        return cls(code, message)

    @property
    def code_name(self) -> str:
        try:
            return ErrorCode(self.code).name.lower().replace("_", " ")
        except ValueError:
            return f"code {self.code}"


@dataclass(frozen=True)
class Ok:
    """An OK frame with its raw payload (decode it with `decode_reply`)."""

    TYPE: ClassVar[FrameType] = FrameType.OK
    payload: bytes = b""

    def encode(self) -> bytes:
        return bytes(self.payload)


DEVICE_FRAMES: dict[FrameType, type] = {Ack.TYPE: Ack, Nak.TYPE: Nak, Busy.TYPE: Busy, Error.TYPE: Error}


def decode_device_frame(frame: Frame):
    """ACK / NAK / BUSY / ERROR decoded, OK as `Ok(payload)`; MessageError
    for a command frame or a payload that does not decode."""
    if frame.type == FrameType.OK:
        return Ok(frame.payload)
    cls = DEVICE_FRAMES.get(frame.type)
    if cls is None:
        raise MessageError(f"frame type {frame.type.name} is not a device frame")
    return cls.decode(frame.payload)
