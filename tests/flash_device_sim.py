"""A MantraBoot flash-mode simulator: the device side of docs/flash-protocol.md
over a disk image file (a copy of a built image: the device's disk), for
the host tests. It is a test double at the serial seam:

- `SimDevice`: the device's logic. `receive(bytes, now)` takes what the
  host put on the line and returns what the device sends back; `tick(now)`
  runs its timers (the baud revert, FINISH's BUSY keepalives). It watches
  the console for the MANTRA-FLASH line first (boot), then speaks frames:
  strict payload checks (mantra.provision.messages), strict command
  sequence (ERROR no session / bad request), the envelope check at BEGIN
  with mantra.signing as boot does, the block map and its digest, resume
  state by hashing its slot, go-back-N with one NAK per gap, a NAK and
  rewind to the block's first frame on a hash or decompression failure,
  an ACK per accepted DATA frame, FINISH re-reading every mapped block and
  verifying the slot through its file system, ACTIVATE only after FINISH.
- `SimTransport`: an in-memory serial port (the Transport of
  mantra.provision.serial_flash) on a simulated clock: bytes cost line time
  at the baud rate, a read with nothing to deliver advances the clock.
  Host and device bauds must match (and not exceed `max_line_baud`) or the
  bytes arrive garbled. Hooks cut the line or flip bits.
- `serve_tcp(device)`: the device behind a local TCP socket, for pyserial's
  socket:// URL.
"""

from __future__ import annotations

import hashlib
import random
import socket
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import serial
from mantra.provision import messages as m
from mantra.provision.frames import Frame, FrameDecoder, FrameType, encode_frame
from mantra.signing.image import open_slot
from mantra.signing.verify import VerifyFailure, _verify_files, check_envelope

BOOT_LINE = "MantraBoot: flash mode (protocol 1, board {board}): waiting for the host\r\n"


@dataclass
class SlotRecord:
    state: m.SlotState = m.SlotState.ACTIVE
    tries: int = 0
    security_counter: int = 0
    version: str = ""


@dataclass
class Stats:
    frames: dict = field(default_factory=dict)  # command type name -> frames received
    dropped: int = 0  # frames the decoder dropped
    data_bytes: int = 0  # chunk bytes of in-sequence DATA frames
    data_frames_accepted: int = 0
    writes: dict = field(default_factory=dict)  # block index -> times written
    naks: list = field(default_factory=list)  # (seq, reason)
    errors: list = field(default_factory=list)  # (command, code, message)
    busy: int = 0
    resets: int = 0
    begin_count: int = 0


class SimDevice:
    def __init__(self, disk: Path, *, board: str, root_public: bytes, rollback_min: int = 0, running: str = "a",
                 window: int = 8, block_size: int = 65536, max_payload: int = 4096, baud: int = 115200,
                 bauds: tuple[int, ...] = m.SUPPORTED_BAUDS, compression_bits: int = 1, finish_seconds: float = 0.0,
                 in_flash_mode: bool = False, console: bytes = b"") -> None:
        self.disk = disk
        self.board = board
        self.root_public = root_public
        self.rollback_min = rollback_min
        self.running = running
        self.window = window
        self.block_size = block_size
        self.max_payload = max_payload
        self.baud = baud
        self.bauds = bauds
        self.compression_bits = compression_bits
        self.finish_seconds = finish_seconds
        self.records = {"a": SlotRecord(), "b": SlotRecord(state=m.SlotState.ACTIVE)}
        self.stats = Stats()
        self.console = console
        # fault injection
        self.corrupt_block_once: set[int] = set()  # map entries whose decoded block is damaged once (hash NAK)
        self.fail_write: set[int] = set()  # map entries whose write fails (ERROR block I/O)
        self.damage_once: set[int] = set()  # map entries written wrong once (the disk's fault)
        self.finish_fail: str | None = None  # "slot": FINISH fails the file-system check
        self.no_target = False  # HELLO offers no writable slot
        self.boot_until = 0.0  # before this time (s) the booting board reads nothing: input queues up
        self.unread = bytearray()
        self.hello_extra = b""  # bytes appended to the HELLO reply (a malformed reply)
        self.power_cycle(in_flash_mode)

    # -- state --------------------------------------------------------------

    def power_cycle(self, in_flash_mode: bool = False) -> None:
        """A reset or power cut: the session and the line state are gone,
        the disk stays."""
        self.mode = "flash" if in_flash_mode else "boot"
        self.decoder = FrameDecoder(self.max_payload)
        self.line = bytearray()
        self.session: dict | None = None
        self.pending_baud: int | None = None
        self.baud_switched_at: float | None = None
        self.old_baud: int | None = None
        self.finishing: dict | None = None
        self.tx_seq = 0
        self.out = bytearray()

    @property
    def target(self) -> str:
        return "b" if self.running == "a" else "a"

    def partition(self, slot: str):
        return open_slot(self.disk, slot).partition

    def read_block(self, slot: str, index: int) -> bytes:
        part = self.partition(slot)
        with self.disk.open("rb") as f:
            f.seek(part.offset + index * self.block_size)
            return f.read(self.block_size)

    def write_block(self, slot: str, index: int, data: bytes) -> None:
        part = self.partition(slot)
        assert len(data) == self.block_size and (index + 1) * self.block_size <= part.size
        with self.disk.open("r+b") as f:
            f.seek(part.offset + index * self.block_size)
            f.write(data)
        self.stats.writes[index] = self.stats.writes.get(index, 0) + 1

    # -- the line -----------------------------------------------------------

    def _send(self, ftype: FrameType, payload: bytes = b"") -> None:
        self.out += encode_frame(ftype, payload, self.tx_seq, self.max_payload)
        self.tx_seq = (self.tx_seq + 1) & 0xFFFF

    def _ok(self, reply=None) -> None:
        self._send(FrameType.OK, b"" if reply is None else reply.encode())

    def _error(self, command: str, code: m.ErrorCode, text: str) -> None:
        self.stats.errors.append((command, int(code), text))
        self._send(FrameType.ERROR, m.Error(code, text).encode())

    def take_output(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data

    def receive(self, data: bytes, now: float) -> bytes:
        """Bytes from the host (at the right baud); returns the device's answer."""
        if self.mode == "boot" and now < self.boot_until:
            self.unread += data  # the firmware is still starting: input waits in the line's buffers
            return b""
        if self.unread:
            data, self.unread = bytes(self.unread) + data, bytearray()
        if self.mode == "boot":
            for i, byte in enumerate(data):
                if byte in b"\r\n":
                    if self.line.strip(b" ") == b"MANTRA-FLASH":
                        self.mode = "flash"
                        self.out += BOOT_LINE.format(board=self.board).encode()
                        self.line.clear()
                        return self.take_output() + self.receive(data[i + 1 :], now)
                    self.line.clear()
                elif len(self.line) < 64:
                    self.line.append(byte)
            return self.take_output()
        if self.mode != "flash":
            return b""
        before = self.decoder.dropped
        frames = self.decoder.feed(data)
        dropped = self.decoder.dropped - before
        self.stats.dropped += dropped
        if dropped:
            s = self.session
            if s and s["mapped"] and not s["nak_sent"]:
                s["nak_sent"] = True
                self._nak(s["next_seq"], m.NakReason.BAD_FRAME)
        for frame in frames:
            if self.baud_switched_at is not None:
                self.baud_switched_at = None  # a valid frame at the new rate: keep it
                self.old_baud = None
            self._frame(frame, now)
            if self.mode != "flash":
                break
        return self.take_output()

    def tick(self, now: float) -> bytes:
        """Timers: the baud revert, FINISH's BUSY keepalives and reply."""
        if self.baud_switched_at is not None and now - self.baud_switched_at >= 2.0:
            self.baud = self.old_baud
            self.baud_switched_at = None
            self.old_baud = None
        if self.finishing is not None:
            f = self.finishing
            while f["next_busy"] <= min(now, f["done_at"]):
                self.stats.busy += 1
                done = int(f["total"] * (f["next_busy"] - f["start"]) / max(1e-9, f["done_at"] - f["start"]))
                self._send(FrameType.BUSY, m.Busy(min(done, f["total"]), f["total"]).encode())
                f["next_busy"] += 0.4
            if now >= f["done_at"]:
                self.finishing = None
                self._finish_now()
        return self.take_output()

    def next_event(self) -> float | None:
        """When tick() has something to do next."""
        times = []
        if self.baud_switched_at is not None:
            times.append(self.baud_switched_at + 2.0)
        if self.finishing is not None:
            times.append(min(self.finishing["next_busy"], self.finishing["done_at"]))
        return min(times) if times else None

    def apply_pending_baud(self, now: float) -> None:
        """After the OK of SET_BAUD left the transmitter."""
        if self.pending_baud is not None:
            self.old_baud, self.baud = self.baud, self.pending_baud
            self.pending_baud = None
            self.baud_switched_at = now

    # -- commands -------------------------------------------------------------

    def _nak(self, seq: int, reason: m.NakReason) -> None:
        self.stats.naks.append((seq, int(reason)))
        self._send(FrameType.NAK, m.Nak(seq, reason).encode())

    def _frame(self, frame: Frame, now: float) -> None:
        name = frame.type.name
        self.stats.frames[name] = self.stats.frames.get(name, 0) + 1
        if not frame.type.is_command:
            return self._error(name, m.ErrorCode.BAD_REQUEST, f"{name} is not a command")
        if self.finishing is not None:
            return  # busy checking: commands wait (the host retries)
        try:
            command = m.decode_command(frame)
        except m.MessageError as exc:
            if frame.type == FrameType.DATA and self.session and self.session["mapped"]:
                return self._error(name, m.ErrorCode.BAD_REQUEST, f"bad request: {exc}")
            return self._error(name, m.ErrorCode.BAD_REQUEST, f"bad request: {exc}")
        handler = getattr(self, f"_cmd_{name.lower()}")
        handler(command, frame, now)

    def _need_session(self, name: str) -> dict | None:
        if self.session is None:
            self._error(name, m.ErrorCode.NO_SESSION, "no flash session: send BEGIN first")
        return self.session

    def _cmd_hello(self, command: m.Hello, frame: Frame, now: float) -> None:
        if command.version != m.PROTOCOL_VERSION:
            return self._error("HELLO", m.ErrorCode.PROTOCOL_VERSION, f"protocol {command.version} not spoken")
        slots = []
        for name in ("a", "b"):
            rec = self.records[name]
            state = m.SlotState.FLASHING if self.session and name == self.target else rec.state
            slots.append(m.SlotInfo(name, state, rec.tries, name == self.running, self.partition(name).size,
                                    rec.security_counter, rec.version))
        target = m.NO_TARGET if self.no_target else 0 if self.target == "a" else 1
        reply = m.HelloReply(m.PROTOCOL_VERSION, self.max_payload, self.window, self.compression_bits,
                             self.block_size, self.baud, self.board, hashlib.sha256(self.root_public).digest(),
                             self.rollback_min, tuple(slots), target)
        if self.hello_extra:  # a device that speaks the layout wrong
            return self._send(FrameType.OK, reply.encode() + self.hello_extra)
        self._ok(reply)

    def _cmd_set_baud(self, command: m.SetBaud, frame: Frame, now: float) -> None:
        if command.baud not in self.bauds:
            return self._error("SET_BAUD", m.ErrorCode.UNSUPPORTED, f"baud rate {command.baud} is not supported")
        self._ok()
        self.pending_baud = command.baud

    def _cmd_begin(self, command: m.Begin, frame: Frame, now: float) -> None:
        self.stats.begin_count += 1
        slot = "ab"[command.slot]
        if slot != self.target:
            return self._error("BEGIN", m.ErrorCode.WRONG_SLOT, f"slot {slot} is the running slot")
        if command.compression == m.Compression.ZSTD or (
                command.compression == m.Compression.ZLIB and not self.compression_bits & 1):
            return self._error("BEGIN", m.ErrorCode.UNSUPPORTED, "compression not supported")
        if command.block_size != self.block_size:
            return self._error("BEGIN", m.ErrorCode.BAD_REQUEST, "block size differs")
        if command.image_size > self.partition(slot).size:
            return self._error("BEGIN", m.ErrorCode.IMAGE_TOO_LARGE, "image larger than the slot")
        if command.map_count == 0:
            return self._error("BEGIN", m.ErrorCode.BAD_REQUEST, "empty map")
        try:
            verified = check_envelope(command.envelope, self.root_public, board=self.board,
                                      min_counter=self.rollback_min)
        except VerifyFailure as failure:
            text = "; ".join(failure.reasons)
            code = (m.ErrorCode.WRONG_BOARD if "board" in text else m.ErrorCode.ROLLBACK if "counter" in text
                    else m.ErrorCode.KEY if ("key record" in text or "revocation" in text)
                    else m.ErrorCode.SIGNATURE)
            return self._error("BEGIN", code, f"image refused before writing: {text}")
        key = (slot, command.compression, command.image_size, command.map_count, command.image_digest,
               hashlib.sha256(command.envelope).digest())
        self.records[slot].state = m.SlotState.FLASHING
        if self.session is not None and self.session["key"] == key:
            s = self.session
            s.update(next_seq=0, nak_sent=False, partial=None, finished=False)
            return self._ok(m.BeginReply(sum(s["have"]) if s["mapped"] else 0))
        self.session = dict(key=key, slot=slot, begin=command, counter=verified.manifest.security_counter,
                            version=verified.manifest.version, map=[], have=[], mapped=False, next_seq=0,
                            nak_sent=False, partial=None, finished=False)
        self._ok(m.BeginReply(0))

    def _cmd_map(self, command: m.Map, frame: Frame, now: float) -> None:
        s = self._need_session("MAP")
        if s is None:
            return
        count = s["begin"].map_count
        known = s["map"]
        end = command.first + len(command.entries)
        if end > count:
            return self._error("MAP", m.ErrorCode.BAD_REQUEST, "entries past BEGIN's count")
        if command.first > len(known):
            return self._error("MAP", m.ErrorCode.BAD_REQUEST, "entries out of order")
        overlap = known[command.first : end]
        if list(command.entries[: len(overlap)]) != overlap:
            return self._error("MAP", m.ErrorCode.BAD_REQUEST, "entries differ from those received")
        new = list(command.entries[len(overlap) :])
        blocks = s["begin"].image_size // self.block_size
        last = known[-1].index if known else -1
        for e in new:
            if e.index >= blocks or e.index <= last:
                return self._error("MAP", m.ErrorCode.BAD_REQUEST, f"bad block index {e.index}")
            last = e.index
        known.extend(new)
        if len(known) == count and not s["mapped"]:
            if m.image_digest(known) != s["begin"].image_digest:
                self.session = None
                return self._error("MAP", m.ErrorCode.SLOT_CHECK, "the block map's digest is not BEGIN's")
            s["have"] = [hashlib.sha256(self.read_block(s["slot"], e.index)).digest() == e.hash for e in known]
            s["mapped"] = True
        self._ok(m.MapReply(len(known)))

    def _cmd_have(self, command: m.Have, frame: Frame, now: float) -> None:
        s = self._need_session("HAVE")
        if s is None:
            return
        if not s["mapped"]:
            return self._error("HAVE", m.ErrorCode.BAD_REQUEST, "HAVE before the whole map")
        if command.first + command.count > len(s["have"]):
            return self._error("HAVE", m.ErrorCode.BAD_REQUEST, "HAVE past the map")
        self._ok(m.HaveReply(tuple(s["have"][command.first : command.first + command.count])))

    def _cmd_data(self, command: m.Data, frame: Frame, now: float) -> None:
        s = self._need_session("DATA")
        if s is None:
            return
        if not s["mapped"]:
            return self._error("DATA", m.ErrorCode.BAD_REQUEST, "DATA before the whole map")
        if frame.seq != s["next_seq"]:
            if not s["nak_sent"]:
                s["nak_sent"] = True
                self._nak(s["next_seq"], m.NakReason.OUT_OF_SEQUENCE)
            return
        if command.entry >= len(s["map"]):
            return self._error("DATA", m.ErrorCode.BAD_REQUEST, "entry past the map")
        if command.encoding == m.Compression.NONE and command.encoded_length != self.block_size:
            return self._error("DATA", m.ErrorCode.BAD_REQUEST, "raw block of the wrong size")
        if command.encoding == m.Compression.ZLIB and s["begin"].compression != m.Compression.ZLIB:
            return self._error("DATA", m.ErrorCode.BAD_REQUEST, "zlib block without zlib in BEGIN")
        if command.encoding == m.Compression.ZSTD:
            return self._error("DATA", m.ErrorCode.UNSUPPORTED, "zstd")
        p = s["partial"]
        if command.offset == 0:
            p = dict(entry=command.entry, length=command.encoded_length, encoding=command.encoding,
                     first_seq=frame.seq, data=bytearray())
        elif p is None or (p["entry"], p["length"], p["encoding"], len(p["data"])) != (
                command.entry, command.encoded_length, command.encoding, command.offset):
            return self._error("DATA", m.ErrorCode.BAD_REQUEST, "chunk does not continue the block")
        p["data"] += command.chunk
        s["partial"] = p
        s["next_seq"] = (s["next_seq"] + 1) & 0xFFFF
        s["nak_sent"] = False
        self.stats.data_bytes += len(command.chunk)
        self.stats.data_frames_accepted += 1
        if not command.last:
            return self._send(FrameType.ACK, m.Ack(s["next_seq"]).encode())
        s["partial"] = None
        entry = s["map"][command.entry]
        reason = None
        block = bytes(p["data"])
        if p["encoding"] == m.Compression.ZLIB:
            try:
                block = zlib.decompress(block)
            except zlib.error:
                reason = m.NakReason.DECOMPRESS
        if reason is None and command.entry in self.corrupt_block_once:
            self.corrupt_block_once.discard(command.entry)
            block = bytes([block[0] ^ 1]) + block[1:]
        if reason is None and (len(block) != self.block_size or hashlib.sha256(block).digest() != entry.hash):
            reason = m.NakReason.BLOCK_HASH
        if reason is not None:
            s["next_seq"] = p["first_seq"]
            s["nak_sent"] = True
            return self._nak(s["next_seq"], reason)
        if command.entry in self.fail_write:
            s["next_seq"] = p["first_seq"]
            return self._error("DATA", m.ErrorCode.BLOCK_IO, f"WriteBlocks of block {entry.index} failed")
        if command.entry in self.damage_once:  # the disk keeps a wrong byte: FINISH's read-back finds it
            self.damage_once.discard(command.entry)
            block = bytes([block[0] ^ 0x80]) + block[1:]
        self.write_block(s["slot"], entry.index, block)
        s["have"][command.entry] = True
        s["finished"] = False
        self._send(FrameType.ACK, m.Ack(s["next_seq"]).encode())

    def _cmd_finish(self, command, frame: Frame, now: float) -> None:
        s = self._need_session("FINISH")
        if s is None:
            return
        s["finished"] = False
        if self.finish_seconds > 0:
            self.finishing = dict(start=now, done_at=now + self.finish_seconds, next_busy=now + 0.4,
                                  total=len(s["map"]))
            return
        self._finish_now()

    def _finish_now(self) -> None:
        s = self.session
        if not s["mapped"]:
            return self._error("FINISH", m.ErrorCode.SLOT_CHECK, "whole-slot check failed: the map is incomplete")
        for i, e in enumerate(s["map"]):
            if hashlib.sha256(self.read_block(s["slot"], e.index)).digest() != e.hash:
                s["have"][i] = False  # written again once the host has asked HAVE
                return self._error("FINISH", m.ErrorCode.SLOT_CHECK,
                                   f"whole-slot check failed: block {e.index} (map entry {i}) reads back wrong")
        if m.image_digest(s["map"]) != s["begin"].image_digest:
            return self._error("FINISH", m.ErrorCode.SLOT_CHECK, "whole-slot check failed: image digest")
        try:
            if self.finish_fail == "slot":
                raise VerifyFailure("component MANTRA/KERNEL.ELF: sha256 mismatch")
            _verify_files(open_slot(self.disk, s["slot"]), self.root_public, min_counter=self.rollback_min,
                          min_revocations=None, board=self.board, now=None, report=lambda line: None)
        except VerifyFailure as failure:
            return self._error("FINISH", m.ErrorCode.SLOT_VERIFY,
                               f"slot verification failed: {'; '.join(failure.reasons)}")
        s["finished"] = True
        self._ok(m.FinishReply(12345))

    def _cmd_activate(self, command, frame: Frame, now: float) -> None:
        s = self._need_session("ACTIVATE")
        if s is None:
            return
        if not s["finished"]:
            return self._error("ACTIVATE", m.ErrorCode.NO_SESSION, "ACTIVATE before a successful FINISH")
        self.records[s["slot"]] = SlotRecord(m.SlotState.PENDING, 3, s["counter"], s["version"])
        self._ok()

    def _cmd_reset(self, command, frame: Frame, now: float) -> None:
        self._ok()
        self.stats.resets += 1
        out = self.take_output()
        self.power_cycle()
        self.mode = "reset"
        self.out += out

    def _cmd_abort(self, command, frame: Frame, now: float) -> None:
        self._ok()
        out = self.take_output()
        self.power_cycle()
        self.mode = "booted"
        self.out += out


class SimTransport:
    """An in-memory serial port to a SimDevice on a simulated clock. What the
    host writes leaves its transmitter at the baud rate (10 bits a byte) and
    reaches the device when its last byte has gone over the line; a write
    returns at once (the OS buffers it), flush() waits for the transmitter.
    The device's answers reach the host at once."""

    def __init__(self, device: SimDevice, *, baud: int = 115200, max_line_baud: int = 10**9, seed: int = 0) -> None:
        self.device = device
        self.baud = baud
        self.max_line_baud = max_line_baud
        self.now = 0.0
        self.inbox = bytearray()  # device -> host, already at the host
        self.line: deque[tuple[float, bytes]] = deque()  # host -> device: (arrival time, bytes)
        self.tx_free = 0.0  # when the host's transmitter has sent everything written
        self.rng = random.Random(seed)
        self.written = 0
        self.mangle = None  # callable(bytes) -> bytes applied to each host write (bit flips)
        self.mangle_rx = None  # the same for what the device sends
        self.cut = None  # callable(bytes) -> bool: True makes this write fail as a pulled cable
        self.closed = False
        self.writes: list[bytes] = []
        if device.console:
            self.inbox += device.console

    def clock(self) -> float:
        return self.now

    def _line_ok(self) -> bool:
        return self.baud == self.device.baud and self.baud <= self.max_line_baud

    def _garble(self, data: bytes) -> bytes:
        return bytes(self.rng.randrange(256) for _ in data)

    def _deliver(self, out: bytes) -> None:
        if out and self.mangle_rx is not None:
            out = self.mangle_rx(out)
        if out:
            self.inbox += out if self._line_ok() else self._garble(out)
            self.device.apply_pending_baud(self.now)

    def _pump(self) -> None:
        """Hands the device what has arrived by now, runs its timers."""
        while self.line and self.line[0][0] <= self.now:
            _arrival, data = self.line.popleft()
            self._deliver(self.device.receive(data, self.now))
        self._deliver(self.device.tick(self.now))

    def write(self, data: bytes) -> None:
        if self.closed:
            raise serial.SerialException("port closed")
        if self.cut is not None and self.cut(data):
            self.closed = True
            raise serial.SerialException("write failed: [Errno 5] Input/output error")
        self.written += len(data)
        self.writes.append(bytes(data))
        line_time = len(data) * 10 / self.baud
        if self.mangle is not None:
            data = self.mangle(data)
        if not self._line_ok():
            data = self._garble(data)
        self.tx_free = max(self.tx_free, self.now) + line_time
        self.line.append((self.tx_free, data))
        self._pump()

    def read(self, timeout: float) -> bytes:
        if self.closed:
            raise serial.SerialException("port closed")
        self._pump()
        end = self.now + timeout
        while not self.inbox and self.now < end:
            times = [end]
            if self.line:
                times.append(self.line[0][0])
            event = self.device.next_event()
            if event is not None:
                times.append(event)
            self.now = max(self.now, min(times))
            self._pump()
        data = bytes(self.inbox)
        self.inbox.clear()
        return data

    def flush(self) -> None:
        self.now = max(self.now, self.tx_free)
        self._pump()

    def set_baud(self, baud: int) -> None:
        self.flush()
        self.baud = baud

    def close(self) -> None:
        self.closed = True


class TcpDevice:
    """The device behind 127.0.0.1:port (pyserial socket://), one connection
    at a time, on the real clock."""

    def __init__(self, device: SimDevice, *, cut_after: int | None = None) -> None:
        self.device = device
        self.cut_after = cut_after  # close the first connection after this many bytes from the host
        self.connections = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    def _run(self) -> None:
        self.server.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            self.connections += 1
            received = 0
            with conn:
                conn.settimeout(0.02)
                start = time.monotonic()
                if self.device.console:
                    conn.sendall(self.device.console)
                while not self.stop.is_set():
                    try:
                        data = conn.recv(65536)
                        if not data:
                            break
                    except TimeoutError:
                        data = b""
                    except OSError:
                        break
                    received += len(data)
                    if self.cut_after is not None and self.connections == 1 and received > self.cut_after:
                        break  # the cable is pulled
                    now = time.monotonic() - start
                    out = self.device.receive(data, now) if data else b""
                    out += self.device.tick(now)
                    if out:
                        try:
                            conn.sendall(out)
                        except OSError:
                            break
                    self.device.apply_pending_baud(now)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.server.close()


class PtyDevice:
    """The device behind a pseudo-terminal: the host opens `path` (a real
    tty device node) with pyserial; a thread serves the master side."""

    def __init__(self, device: SimDevice) -> None:
        import os
        import tty

        self.device = device
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import os
        import select

        start = time.monotonic()
        while not self.stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.02)
            data = b""
            if ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:
                    break
            now = time.monotonic() - start
            out = (self.device.receive(data, now) if data else b"") + self.device.tick(now)
            if out:
                os.write(self.master, out)
            self.device.apply_pending_baud(now)

    def close(self) -> None:
        import os

        self.stop.set()
        self.thread.join(timeout=5)
        os.close(self.master)
        os.close(self.slave)
