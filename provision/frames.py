"""MantraFlash frames (docs/flash-protocol.md, "Frames"): the codec both
sides of the serial flash protocol share.

A frame is

    magic "MF" | u8 type | u8 flags = 0 | u16 seq | u16 length N | N payload | u32 CRC-32

little-endian, the CRC (zlib.crc32) over everything before it. `encode_frame`
builds one; `FrameDecoder` is the incremental reader: it takes bytes as they
come off the line, hunts for the magic, and returns the good frames. A frame
with a bad CRC, a length above `max_payload`, a non-zero flags byte or an
unknown type is dropped (counted in `dropped`) and the hunt restarts at the
byte after the magic, so console text and line noise are skipped (counted in
`skipped`; the last `NOISE_KEEP` such bytes are kept in `noise` so a caller
can show what the board printed).

This module knows nothing about payloads (see `mantra.provision.messages`)
and does no I/O.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

MAGIC = b"MF"
HEADER = struct.Struct("<2sBBHH")
HEADER_SIZE = HEADER.size  # 8
CRC_SIZE = 4
OVERHEAD = HEADER_SIZE + CRC_SIZE  # bytes a frame adds to its payload
MAX_PAYLOAD = 4096  # version 1
NOISE_KEEP = 4096


class FrameType(IntEnum):
    """Every frame type of version 1: commands (host -> device) below 0x80,
    replies and device-only frames from 0x80."""

    HELLO = 0x01
    SET_BAUD = 0x02
    BEGIN = 0x03
    MAP = 0x04
    HAVE = 0x05
    DATA = 0x06
    FINISH = 0x07
    ACTIVATE = 0x08
    RESET = 0x09
    ABORT = 0x0A
    OK = 0x80
    ACK = 0x81
    NAK = 0x82
    BUSY = 0x83
    ERROR = 0xEE

    @property
    def is_command(self) -> bool:
        return self < 0x80


_KNOWN_TYPES = frozenset(int(t) for t in FrameType)


class FrameError(ValueError):
    """A frame that cannot be encoded (payload too long, bad seq or type)."""


@dataclass(frozen=True)
class Frame:
    """One decoded frame. `size` is its length on the line."""

    type: FrameType
    seq: int
    payload: bytes

    @property
    def size(self) -> int:
        return OVERHEAD + len(self.payload)

    def encode(self, max_payload: int = MAX_PAYLOAD) -> bytes:
        return encode_frame(self.type, self.payload, self.seq, max_payload)


def encode_frame(type: int, payload: bytes = b"", seq: int = 0, max_payload: int = MAX_PAYLOAD) -> bytes:
    """The bytes of one frame. Raises FrameError for a payload above
    `max_payload`, a seq outside u16 or a type that is not a FrameType."""
    if int(type) not in _KNOWN_TYPES:
        raise FrameError(f"unknown frame type {int(type):#04x}")
    if len(payload) > max_payload:
        raise FrameError(f"payload of {len(payload)} bytes exceeds max_payload {max_payload}")
    if not 0 <= seq <= 0xFFFF:
        raise FrameError(f"seq {seq} is not a u16")
    head = HEADER.pack(MAGIC, int(type), 0, seq, len(payload))
    body = head + bytes(payload)
    return body + struct.pack("<I", zlib.crc32(body))


class FrameDecoder:
    """Incremental frame reader. `feed(data)` returns the complete good
    frames found so far (in order) and keeps a partial frame for the next
    call.

    Counters: `dropped` counts frames refused after their magic was found
    (bad CRC, length above max_payload, flags not 0, unknown type);
    `skipped` counts bytes outside any good frame (console text, noise,
    the bytes of dropped frames up to their magic)."""

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self._buf = bytearray()
        self.dropped = 0
        self.skipped = 0
        self.noise = bytearray()

    def reset(self) -> None:
        """Forget a partial frame (e.g. after a baud switch)."""
        self._skip(len(self._buf))

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._buf)

    def _skip(self, n: int) -> None:
        if n <= 0:
            return
        self.skipped += n
        self.noise += self._buf[:n]
        if len(self.noise) > NOISE_KEEP:
            del self.noise[: len(self.noise) - NOISE_KEEP]
        del self._buf[:n]

    def take_noise(self) -> bytes:
        """The skipped bytes kept so far (at most NOISE_KEEP), then clears them."""
        data = bytes(self.noise)
        self.noise.clear()
        return data

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while True:
            start = self._buf.find(MAGIC)
            if start < 0:
                # keep a trailing "M": it may be the first half of a magic
                keep = 1 if self._buf.endswith(MAGIC[:1]) else 0
                self._skip(len(self._buf) - keep)
                return frames
            self._skip(start)
            if len(self._buf) < HEADER_SIZE:
                return frames
            _magic, ftype, flags, seq, length = HEADER.unpack_from(self._buf)
            if length > self.max_payload or flags != 0 or ftype not in _KNOWN_TYPES:
                self.dropped += 1
                self._skip(len(MAGIC))
                continue
            total = HEADER_SIZE + length + CRC_SIZE
            if len(self._buf) < total:
                return frames
            (crc,) = struct.unpack_from("<I", self._buf, HEADER_SIZE + length)
            if zlib.crc32(self._buf[: HEADER_SIZE + length]) != crc:
                self.dropped += 1
                self._skip(len(MAGIC))
                continue
            payload = bytes(self._buf[HEADER_SIZE : HEADER_SIZE + length])
            del self._buf[:total]
            frames.append(Frame(FrameType(ftype), seq, payload))
