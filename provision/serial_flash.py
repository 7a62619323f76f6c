"""`mantra flash` over a serial line: the host side of MantraFlash 1
(docs/flash-protocol.md).

    result = flash(Path("build/qemu-x86_64/default/image.img"), "/dev/ttyUSB0", "qemu-x86_64")

Layers, bottom up:

- `Transport`: the seam around pyserial (`SerialTransport`, opened from any
  pyserial URL: a tty, a pty, `socket://HOST:PORT`, `rfc2217://...`); tests
  put a device simulator behind it.
- `Link`: frames over a transport (frames.py), counting every byte put on
  the line, with a clock.
- `Session`: the protocol's commands (sync/HELLO, SET_BAUD with its revert,
  BEGIN, MAP, HAVE, DATA with the window and go-back-N, FINISH with BUSY
  keepalives, ACTIVATE, RESET), retries and timeouts (`Timing`).
- `flash()`: the whole job. Before anything is sent it checks the image
  (its slot's signed manifest verifies with mantra.signing, it is for
  `board`) and, after HELLO, the device (its board, its root key, its
  rollback minimum, the target slot's size); then it maps the slot's FAT
  volume (bmap.py), sends only the blocks the device does not hold, checks
  the whole slot (FINISH), activates it and resets the board.

Every failure is a `FlashError` (a MantraError) saying what went wrong and
what to try; a lost connection says to run the same command again, which
resumes (HAVE: blocks the board holds are not sent again).
"""

from __future__ import annotations

import errno
import hashlib
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mantra.errors import MantraError
from mantra.provision import messages as msg
from mantra.provision.bmap import BlockMap, SlotSource, block_map
from mantra.provision.frames import Frame, FrameDecoder, FrameType, encode_frame
from mantra.provision.messages import Compression, ErrorCode, HelloReply, MessageError, NakReason

SYNC_LINE = b"MANTRA-FLASH\n"
FLASH_MODE_LINE = b"MantraBoot: flash mode (protocol"  # what MantraBoot prints on entering flash mode
DEFAULT_BAUD = 115200
DEFAULT_WAIT = 60.0

Progress = Callable[[int, int], None]
"""progress(bytes_done, bytes_total) of the slot image's blocks being sent
(the same shape as mantra.provision.dfu's)."""
Log = Callable[[str], None]
Clock = Callable[[], float]


@dataclass(frozen=True)
class Timing:
    """The protocol's timeouts (seconds) and retry counts; tests shorten none
    of them, they run on a simulated clock."""

    reply_timeout: float = 2.0  # a command's reply (extended by BUSY)
    retries: int = 5  # sends of one command
    ack_timeout: float = 2.0  # DATA: resend from the oldest unacknowledged frame
    data_stalls: int = 10  # consecutive ack timeouts (20 s of silence) before the link counts as lost
    sync_interval: float = 0.1  # the MANTRA-FLASH line while waiting for the board
    hello_interval: float = 1.0  # a HELLO frame while waiting (and at once when flash mode is announced)
    settle_quiet: float = 0.3  # after the HELLO reply: quiet this long ends the wait for late replies
    settle_max: float = 2.0
    baud_revert: float = 2.0  # no valid frame at the new rate: both sides go back
    block_retries: int = 3  # a block failing its hash check on the device this often is an error


# --- errors ---------------------------------------------------------------


class FlashError(MantraError):
    """A flash that cannot go on; `message` and `hint` as MantraError."""


class ConnectionLost(FlashError):
    """The line went away or the board stopped answering."""


class DeviceError(FlashError):
    """The board answered ERROR."""

    def __init__(self, command: str, error: msg.Error, port: str) -> None:
        self.command = command
        self.code = error.code
        self.device_message = error.message
        super().__init__(f"the board refused {command} ({error.code_name}): {error.message}",
                         _ERROR_HINTS.get(error.code, "see the board's message above; run the same command again "
                                          "once it is fixed").format(port=port))


_RESUME = "run the same command again to resume: blocks the board already holds are not sent again"
_ERROR_HINTS = {
    ErrorCode.BAD_REQUEST: "the board's MantraBoot and this mantra disagree on the protocol: update MantraBoot "
                           "(./mantra build, then flash the ESP another way) or this checkout",
    ErrorCode.PROTOCOL_VERSION: "the board speaks another MantraFlash version: update MantraBoot or this checkout",
    ErrorCode.WRONG_BOARD: "flash an image built for the board's type (./mantra build -b BOARD), with -b BOARD",
    ErrorCode.KEY: "flash an image signed with the keys of the product the board runs (its MantraBoot trusts one "
                   "root key; ./mantra build -p PRODUCT --keys DIR), or a signing key that is not revoked",
    ErrorCode.SIGNATURE: "the image's signed manifest is damaged or altered: rebuild and sign it again "
                         "(./mantra build, ./mantra sign IMAGE --keys DIR)",
    ErrorCode.ROLLBACK: "the board refuses older releases: flash a newer release (raise security_counter in "
                        "product.toml and rebuild)",
    ErrorCode.WRONG_SLOT: "the board's inactive slot changed (it rebooted?): run the same command again",
    ErrorCode.NO_SESSION: "the board lost the flash session (it rebooted?): " + _RESUME,
    ErrorCode.IMAGE_TOO_LARGE: "the image's slot is larger than the board's: build for this board "
                               "(./mantra build -b BOARD)",
    ErrorCode.BLOCK_IO: "the board's disk failed: power-cycle the board and " + _RESUME
                        + "; if it fails again the board's storage is failing",
    ErrorCode.SLOT_CHECK: "some blocks read back wrong on the board: " + _RESUME + " (wrong ones are sent again)",
    ErrorCode.SLOT_VERIFY: "the written slot does not verify on the board as boot would check it: rebuild and sign "
                           "the image, then flash it again; the board still boots its old slot",
    ErrorCode.UNSUPPORTED: "leave out --baud (or give a rate the board's UART has), and --no-compress if the board "
                           "lacks zlib",
}


# --- the transport seam -----------------------------------------------------


class Transport(Protocol):
    """What the session needs of a serial port. pyserial's exceptions
    (SerialException, an OSError) mean the line is gone."""

    def write(self, data: bytes) -> None: ...

    def read(self, timeout: float) -> bytes:
        """What has arrived, waiting up to `timeout` s for the first byte; b"" when nothing came."""
        ...

    def flush(self) -> None:
        """Wait until everything written has left the transmitter."""
        ...

    def set_baud(self, baud: int) -> None: ...

    def close(self) -> None: ...


class SerialTransport:
    """A pyserial port from a URL (`serial_for_url`): a tty, a pty,
    `socket://HOST:PORT`, `rfc2217://HOST:PORT`, `loop://`."""

    def __init__(self, port) -> None:
        self.port = port

    @classmethod
    def open(cls, url: str, baud: int = DEFAULT_BAUD) -> SerialTransport:
        import serial

        try:
            port = serial.serial_for_url(url, baudrate=baud, timeout=0, write_timeout=10, do_not_open=True,
                                         exclusive=True)
        except ValueError:  # a URL handler without `exclusive`
            port = serial.serial_for_url(url, baudrate=baud, timeout=0, write_timeout=10, do_not_open=True)
        except (serial.SerialException, OSError) as exc:
            raise _open_error(url, exc) from None
        try:
            port.open()
        except (serial.SerialException, OSError) as exc:
            raise _open_error(url, exc) from None
        return cls(port)

    def write(self, data: bytes) -> None:
        self.port.write(data)

    def read(self, timeout: float) -> bytes:
        self._timeout(max(0.0, timeout))
        first = self.port.read(1)
        if not first:
            return b""
        self._timeout(0)  # then whatever else has arrived, without waiting
        return first + self.port.read(1 << 16)

    def _timeout(self, value: float) -> None:
        if self.port.timeout != value:  # setting it reconfigures a tty
            self.port.timeout = value

    def flush(self) -> None:
        self.port.flush()

    def set_baud(self, baud: int) -> None:
        self.port.baudrate = baud

    def close(self) -> None:
        self.port.close()


def _open_error(url: str, exc: Exception) -> FlashError:
    text = str(exc)
    code = getattr(exc, "errno", None)
    if code == errno.EBUSY or "exclusively lock" in text or "Resource busy" in text:
        return FlashError(f"device busy: another program has {url} open ({text})",
                          f"close it (a terminal such as screen, minicom, picocom, or ModemManager: "
                          f"`fuser {url}` names it), then run the same command again")
    if code in (errno.EACCES, errno.EPERM) or "Permission denied" in text:
        return FlashError(f"no permission to open {url} ({text})",
                          "add yourself to the group that owns it (Debian: sudo adduser $USER dialout, then log in "
                          "again)")
    if code == errno.ENOENT or "No such file" in text or "could not open port" in text:
        return FlashError(f"cannot open {url}: {text}",
                          "check the cable and the port name (ls /dev/serial/by-id/), or give a pyserial URL such as "
                          "socket://127.0.0.1:PORT")
    return FlashError(f"cannot open {url}: {text}", "check the port name and that the board is connected")


def _is_link_error(exc: BaseException) -> bool:
    try:
        import serial

        if isinstance(exc, serial.SerialException):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, OSError)


# --- frames over the transport ------------------------------------------


class Link:
    """Frames over a transport; counts what goes on the line."""

    def __init__(self, transport: Transport, port: str, clock: Clock, log: Log, baud: int = DEFAULT_BAUD) -> None:
        self.transport = transport
        self.port = port
        self.clock = clock
        self.log = log
        self.baud = baud  # the line rate: how long written bytes take to leave
        self.tx_done = 0.0  # when what was written has left the transmitter (estimated)
        self.decoder = FrameDecoder()
        self.tx_bytes = 0
        self.rx_bytes = 0
        self.max_payload = msg.MAX_PAYLOAD

    def lost(self, exc: BaseException | None, doing: str) -> ConnectionLost:
        detail = f": {exc}" if exc is not None else ""
        return ConnectionLost(f"lost the connection to the board on {self.port} while {doing}{detail} "
                              "(cable pulled, board reset or powered off?)",
                              f"check the cable and the board's power, then {_RESUME}")

    def write(self, data: bytes, doing: str) -> None:
        try:
            self.transport.write(data)
        except Exception as exc:
            if _is_link_error(exc):
                raise self.lost(exc, doing) from None
            raise
        self.tx_bytes += len(data)
        self.tx_done = max(self.tx_done, self.clock()) + len(data) * 10 / self.baud

    def on_line(self) -> float:
        """When everything written so far will have reached the other end:
        timeouts for an answer count from then (at 9600 baud a 4 KiB frame
        takes 4 s)."""
        return max(self.tx_done, self.clock())

    def send(self, ftype: FrameType, payload: bytes, seq: int, doing: str) -> None:
        self.write(encode_frame(ftype, payload, seq, self.max_payload), doing)

    def receive(self, timeout: float, doing: str) -> list[Frame]:
        try:
            data = self.transport.read(max(0.0, timeout))
        except Exception as exc:
            if _is_link_error(exc):
                raise self.lost(exc, doing) from None
            raise
        self.rx_bytes += len(data)
        return self.decoder.feed(data) if data else []

    def wait(self, seconds: float, doing: str) -> list[Frame]:
        """Everything that arrives in the next `seconds`."""
        end = self.clock() + seconds
        frames: list[Frame] = []
        while (left := end - self.clock()) > 0:
            frames += self.receive(left, doing)
        return frames

    def set_baud(self, baud: int) -> None:
        self.transport.set_baud(baud)
        self.baud = baud
        self.decoder.reset()

    def flush(self) -> None:
        try:
            self.transport.flush()
        except Exception as exc:
            if _is_link_error(exc):
                raise self.lost(exc, "switching the baud rate") from None
            raise


# --- the protocol session ---------------------------------------------------


@dataclass
class DataStats:
    frames: int = 0  # DATA frames sent, resends included
    resent: int = 0  # of those, resends (go-back-N, timeouts, whole blocks)
    naks: int = 0
    timeouts: int = 0
    encoded_bytes: int = 0  # chunk bytes of the blocks, once each
    blocks: int = 0  # blocks the device acknowledged as written


@dataclass
class _Block:
    entry: int  # map entry number
    encoding: Compression
    data: bytes  # the encoded block
    first: int  # position of its first frame
    chunks: int


class Session:
    """One conversation with MantraBoot's flash mode over a Link."""

    def __init__(self, link: Link, timing: Timing = Timing(), *, busy: Callable[[int, int], None] | None = None
                 ) -> None:
        self.link = link
        self.timing = timing
        self.hello: HelloReply | None = None
        self.busy = busy or (lambda done, total: None)
        self.data_stats = DataStats()
        self.data_seq = 0  # the next DATA seq of this BEGIN
        self.busy_total = 0
        self.wait_bytes = 0  # written while waiting for the board (sync)
        self.finish_instructions = 0

    @property
    def clock(self) -> Clock:
        return self.link.clock

    # -- commands ---------------------------------------------------------

    def _drain(self) -> None:
        stale = self.link.receive(0.0, "waiting for the board")
        if stale:
            self.link.log(f"dropped {_count(len(stale), 'late frame')} "
                          f"({', '.join(sorted({f.type.name for f in stale}))})")

    def command(self, command, *, have_count: int | None = None, timeout: float | None = None,
                retries: int | None = None):
        """Sends `command` (retrying after `timeout` without a reply, up to
        `retries` sends) and returns its decoded OK reply; ERROR raises
        DeviceError, BUSY extends the wait. A reply that does not decode as
        this command's (a late reply to an earlier one) is skipped."""
        name = command.TYPE.name
        timeout = self.timing.reply_timeout if timeout is None else timeout
        retries = self.timing.retries if retries is None else retries
        payload = command.encode()
        self._drain()
        undecodable = None
        skipped = 0
        for _attempt in range(retries):
            self.link.send(command.TYPE, payload, 0, f"sending {name}")
            deadline = self.link.on_line() + timeout
            while (left := deadline - self.clock()) > 0:
                for frame in self.link.receive(left, f"waiting for the reply to {name}"):
                    if frame.type == FrameType.OK:
                        try:
                            reply = msg.decode_reply(command.TYPE, frame.payload, have_count=have_count)
                        except MessageError as exc:
                            undecodable = exc
                            skipped += 1
                            continue
                        if skipped:
                            self.link.log(f"skipped {_count(skipped, 'late reply', 'late replies')} that "
                                          f"{'is' if skipped == 1 else 'are'} not {name}'s ({undecodable})")
                        return reply
                    elif frame.type == FrameType.ERROR:
                        try:
                            error = msg.Error.decode(frame.payload)
                        except MessageError as exc:
                            error = msg.Error(ErrorCode.BAD_REQUEST, f"(malformed ERROR frame: {exc})")
                        raise DeviceError(name, error, self.link.port)
                    elif frame.type == FrameType.BUSY:
                        try:
                            busy = msg.Busy.decode(frame.payload)
                            self.busy(busy.done, busy.total)
                            self.busy_total = busy.total
                        except MessageError:
                            pass
                        deadline = self.clock() + timeout
            self.link.log(f"no reply to {name} within {timeout:g} s")
        detail = f" (the replies did not decode: {undecodable})" if undecodable else ""
        raise ConnectionLost(f"the board on {self.link.port} did not answer {name} after {retries} tries{detail}",
                             f"check the cable and the board's power, then {_RESUME}")

    def sync(self, wait: float) -> HelloReply:
        """Waits up to `wait` s for MantraBoot's flash mode: sends the line
        MANTRA-FLASH (which MantraBoot polls for at boot) and a HELLO frame
        every sync_interval until a HELLO reply comes."""
        hello = encode_frame(FrameType.HELLO, msg.Hello().encode())
        deadline = self.clock() + wait
        malformed = None
        next_hello = self.clock()
        announced = False
        while (now := self.clock()) < deadline:
            # The line for MantraBoot's boot-time poll; a HELLO now and then
            # for a board already in flash mode, and at once when it
            # announces flash mode (a board that buffered many would answer
            # each, late).
            probe = SYNC_LINE
            if now >= next_hello:
                probe += hello + b"\n"  # the newline ends the frame's bytes as a console line
                next_hello = now + self.timing.hello_interval
            self.link.write(probe, "waiting for the board")
            until = min(now + self.timing.sync_interval, deadline)
            while (left := until - self.clock()) > 0:
                frames = self.link.receive(left, "waiting for the board")
                if not announced and FLASH_MODE_LINE in self.link.decoder.noise:
                    announced = True
                    next_hello = self.clock()
                    until = next_hello  # send the HELLO now (after looking at what came)
                for n, frame in enumerate(frames):
                    if frame.type == FrameType.OK:
                        try:
                            reply = HelloReply.decode(frame.payload)
                        except MessageError as exc:
                            # a late reply from an earlier session once; twice the same is the board's
                            if str(exc) == malformed:
                                raise FlashError(f"the board on {self.link.port} sends a malformed HELLO reply: {exc}",
                                                 "the board's MantraBoot and this mantra disagree on the protocol: "
                                                 "update one of them") from None
                            malformed = str(exc)
                            self.link.log(f"skipped a reply that is not a HELLO reply: {exc}")
                            continue
                        self.wait_bytes = self.link.tx_bytes - len(hello)  # the answered HELLO counts
                        self._settle(len(frames) - n - 1)
                        return self._hello(reply)
                    if frame.type == FrameType.ERROR:
                        raise DeviceError("HELLO", msg.Error.decode(frame.payload), self.link.port)
        noise = bytes(self.link.decoder.take_noise()).decode("utf-8", "replace").strip()
        seen = f"; it printed: {noise[-300:]!r}" if noise else "; nothing came back"
        raise FlashError(f"no MantraBoot flash mode on {self.link.port} within {wait:g} s{seen}",
                         "reset or power the board now and run the same command (it waits --wait seconds; "
                         "MantraBoot listens for MANTRA-FLASH at boot), or set the UEFI variable MantraFlashMode")

    def _settle(self, late: int = 0) -> None:
        """Lets late answers to earlier HELLOs arrive and drops them: waits
        until the line is quiet for settle_quiet s (at most settle_max s).
        `late`: such frames already received."""
        end = self.clock() + self.timing.settle_max
        while (left := end - self.clock()) > 0:
            frames = self.link.receive(min(left, self.timing.settle_quiet), "waiting for the board")
            if not frames:
                break
            late += len(frames)
        if late:
            self.link.log(f"dropped {_count(late, 'late reply', 'late replies')} to earlier HELLOs")

    def _hello(self, reply: HelloReply) -> HelloReply:
        if reply.version != msg.PROTOCOL_VERSION:
            raise FlashError(f"the board speaks MantraFlash {reply.version}, this mantra {msg.PROTOCOL_VERSION}",
                             "update this checkout or the board's MantraBoot")
        self.hello = reply
        self.link.max_payload = min(reply.max_payload, msg.MAX_PAYLOAD)
        self.link.decoder.max_payload = self.link.max_payload
        return reply

    def say_hello(self) -> HelloReply:
        return self._hello(self.command(msg.Hello()))

    def set_baud(self, baud: int, current: int) -> bool:
        """SET_BAUD: True when both sides now run at `baud`, False when the
        board did not answer at the new rate and both went back to
        `current` (the doc's revert path)."""
        self.command(msg.SetBaud(baud))
        self.link.flush()
        self.link.set_baud(baud)
        switched = self.clock()
        try:
            self.say_hello_at_new_rate()
            return True
        except ConnectionLost:
            pass
        self.link.set_baud(current)
        # the board goes back once it has heard no valid frame for baud_revert s
        margin = switched + self.timing.baud_revert * 1.25 - self.clock()
        if margin > 0:
            self.link.wait(margin, "waiting for the board to return to the old baud rate")
        self.say_hello()
        return False

    def say_hello_at_new_rate(self) -> HelloReply:
        tries = 4
        return self._hello(self.command(msg.Hello(), timeout=self.timing.baud_revert / tries, retries=tries))

    def begin(self, begin: msg.Begin) -> int:
        held = self.command(begin).held
        self.data_seq = 0
        return held

    def send_map(self, entries: tuple[msg.MapEntry, ...]) -> None:
        """MAP frames with consecutive entries; stops early when the board
        says it has them all (a resumed session)."""
        per = msg.map_entries_per_frame(self.link.max_payload)
        for first in range(0, len(entries), per):
            received = self.command(msg.Map(first, entries[first : first + per])).received
            if received >= len(entries):
                return
            if received != first + len(entries[first : first + per]):
                raise FlashError(f"the board says it holds {received} map entries after entry "
                                 f"{first + per - 1}", "reset the board, then run the same command again")
        raise FlashError("the board did not take the whole block map",
                         "reset the board, then run the same command again")

    def have(self, count: int) -> list[bool]:
        per = 8 * self.link.max_payload
        held: list[bool] = []
        for first in range(0, count, per):
            n = min(per, count - first)
            held += self.command(msg.Have(first, n), have_count=n).held
        return held

    def finish(self) -> int:
        self.busy_total = 0
        self.finish_instructions = self.command(msg.Finish()).instructions
        if self.busy_total:
            self.busy(self.busy_total, self.busy_total)  # the check is done
        return self.finish_instructions

    def activate(self) -> None:
        self.command(msg.Activate())

    def reset(self) -> None:
        self.command(msg.Reset())

    def abort(self) -> None:
        self.command(msg.Abort())

    # -- DATA ---------------------------------------------------------------

    def send_blocks(self, blocks, compression: Compression, block_size: int,
                    progress: Progress | None = None) -> DataStats:
        """Sends each (map entry, block bytes) of `blocks` (a sized iterable)
        as DATA frames: each block encoded on its own and chunked, at most
        `window` frames unacknowledged. An ACK or NAK carries the board's
        next expected seq, so it acknowledges every frame before it (a lost
        ACK costs nothing); a NAK for a bad or out-of-sequence frame resends
        from its seq (go-back-N), one for a block that failed its hash or
        decompression from that block's first frame; after ack_timeout
        without an ACK everything from the oldest unacknowledged frame is
        resent."""
        hello = self.hello
        assert hello is not None, "sync() first"
        window = max(1, hello.window)
        chunk_size = msg.data_chunk_size(self.link.max_payload)
        stats = self.data_stats
        total = len(blocks) * block_size
        progress = progress or (lambda done, total: None)
        progress(0, total)

        schedule: list[tuple[_Block, int]] = []  # position -> (block, chunk number)
        seq0 = self.data_seq  # DATA seq counts from 0 after BEGIN, across rounds: seq = seq0 + position
        pending = iter(blocks)
        failures: dict[int, int] = {}
        state = {"base": 0, "nxt": 0, "sent_max": 0, "done": 0, "last": self.clock(), "stalls": 0}

        def extend() -> bool:
            try:
                entry, data = next(pending)
            except StopIteration:
                return False
            encoding, encoded = encode_block(data, compression)
            block = _Block(entry, encoding, encoded, len(schedule), -(-len(encoded) // chunk_size))
            stats.encoded_bytes += len(encoded)
            schedule.extend((block, i) for i in range(block.chunks))
            return True

        def position(seq: int) -> int:
            """The position of `seq` at or before the furthest frame sent
            (the board cannot expect a later one)."""
            return state["sent_max"] - ((seq0 + state["sent_max"] - seq) & 0xFFFF)

        def acknowledge(p: int) -> None:
            """Every frame before position p reached the board."""
            for q in range(state["base"], p):
                block, chunk = schedule[q]
                if chunk == block.chunks - 1:
                    state["done"] += 1
                    stats.blocks += 1
                    progress(state["done"] * block_size, total)
            state["base"] = p
            state["stalls"] = 0
            state["last"] = self.clock()

        def rewind_block(p: int, reason: NakReason) -> None:
            """The block starting at position p failed on the board: send it again."""
            block, chunk = schedule[p]
            if chunk != 0 or p + block.chunks <= state["base"]:
                self.link.log(f"ignored a NAK ({reason.name.lower()}) for seq {(seq0 + p) & 0xFFFF}, not a block "
                              "in flight")
                return
            failures[block.entry] = failures.get(block.entry, 0) + 1
            what = "hash check" if reason == NakReason.BLOCK_HASH else "decompression"
            self.link.log(f"the block of map entry {block.entry} failed its {what} on the board: resending it")
            if failures[block.entry] > self.timing.block_retries:
                raise FlashError(f"the block of map entry {block.entry} keeps failing its {what} on the board "
                                 f"({failures[block.entry]} times)",
                                 "the image file may have changed while flashing (rebuild, then run the command "
                                 "again); otherwise try --no-compress or a lower --baud")
            if p > state["base"]:
                acknowledge(p)  # the board expects p: all before it arrived (their ACKs were lost)
            state["base"] = p  # the block's chunks before the last were acknowledged: take them back
            state["nxt"] = p

        while True:
            while state["nxt"] < state["base"] + window and (state["nxt"] < len(schedule) or extend()):
                p = state["nxt"]
                block, chunk = schedule[p]
                piece = block.data[chunk * chunk_size : (chunk + 1) * chunk_size]
                payload = msg.Data(block.entry, len(block.data), chunk * chunk_size, block.encoding, piece).encode()
                self.link.send(FrameType.DATA, payload, (seq0 + p) & 0xFFFF, "sending data")
                stats.frames += 1
                if p < state["sent_max"]:
                    stats.resent += 1
                state["nxt"] = p + 1
                state["sent_max"] = max(state["sent_max"], p + 1)
                state["last"] = self.clock()  # the ACK timer runs from the last frame on the line
            if state["base"] >= len(schedule) and not extend():
                break
            left = max(state["last"], self.link.tx_done) + self.timing.ack_timeout - self.clock()
            frames = self.link.receive(max(0.0, left), "sending data")
            if not frames and left <= 0:
                stats.timeouts += 1
                state["stalls"] += 1
                if state["stalls"] >= self.timing.data_stalls:
                    raise ConnectionLost(
                        f"the board on {self.link.port} stopped acknowledging data ({state['done']} of {len(blocks)} "
                        f"blocks written)", f"check the cable and the board's power, then {_RESUME}")
                self.link.log(f"no ACK within {self.timing.ack_timeout:g} s: resending from seq "
                              f"{(seq0 + state['base']) & 0xFFFF}")
                state["nxt"] = state["base"]
                state["last"] = self.clock()
                continue
            for frame in frames:
                if frame.type in (FrameType.ACK, FrameType.NAK):
                    try:
                        reply = (msg.Ack if frame.type == FrameType.ACK else msg.Nak).decode(frame.payload)
                    except MessageError as exc:
                        self.link.log(f"skipped a malformed {frame.type.name}: {exc}")
                        continue
                    p = position(reply.next_seq)
                    if p < 0:
                        self.link.log(f"skipped a {frame.type.name} for seq {reply.next_seq}, before this round")
                        continue
                    if frame.type == FrameType.NAK:
                        stats.naks += 1
                        if reply.reason in (NakReason.BLOCK_HASH, NakReason.DECOMPRESS):
                            rewind_block(p, reply.reason)
                            state["last"] = self.clock()
                            continue
                        self.link.log(f"NAK ({reply.reason.name.lower().replace('_', ' ')}): resending from seq "
                                      f"{reply.next_seq}")
                    if p > state["base"]:
                        acknowledge(p)
                    if frame.type == FrameType.NAK and p >= state["base"]:
                        state["nxt"] = p
                        state["last"] = self.clock()
                elif frame.type == FrameType.ERROR:
                    raise DeviceError("DATA", msg.Error.decode(frame.payload), self.link.port)
                elif frame.type == FrameType.BUSY:
                    state["last"] = self.clock()
        self.data_seq = (seq0 + len(schedule)) & 0xFFFF
        return stats

def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def encode_block(data: bytes, compression: Compression) -> tuple[Compression, bytes]:
    """One block as DATA sends it: zlib when that makes it smaller (and the
    session uses zlib), raw otherwise."""
    if compression == Compression.ZLIB:
        packed = zlib.compress(data, 6)
        if len(packed) < len(data):
            return Compression.ZLIB, packed
    return Compression.NONE, bytes(data)


# --- the image ----------------------------------------------------------------


@dataclass(frozen=True)
class SlotImage:
    """One slot of a signed disk image, as flash sends it."""

    image: Path
    slot: str
    source: SlotSource  # the partition's bytes
    envelope: bytes  # MANTRA/MANIFEST.SIG
    manifest: object  # mantra.signing.encoding.Manifest (decoded, not yet verified)
    issuer: bytes  # the key record's root key id (16 bytes)


def load_slot_image(image: Path, slot: str = "a") -> SlotImage:
    """Slot `slot` of a disk image from ./mantra build: its partition, its
    signed manifest (decoded for the checks; verified by verify_slot_image)."""
    from mantra.image import gpt
    from mantra.signing.encoding import DecodeError, Envelope, KeyRecord, Manifest
    from mantra.signing.image import MANIFEST_PATH, open_slot

    if slot not in msg.SLOT_NAMES:
        raise FlashError(f"no slot {slot!r}", "--from-slot a or --from-slot b")
    try:
        files = open_slot(image, slot)
    except gpt.GptError as exc:
        raise FlashError(f"{image} is not a disk image of ./mantra build: {exc}",
                         "give the image.img of a build (build/BOARD/PRODUCT/image.img)") from None
    if not files.has_filesystem():
        raise FlashError(f"{image}: slot {slot} is empty (no file system)",
                         "flash a slot that holds an image (--from-slot), or install one first "
                         "(./mantra slot install)")
    paths = {p.upper(): p for p in files.paths()}
    if MANIFEST_PATH not in paths:
        raise FlashError(f"{image}: slot {slot} has no {MANIFEST_PATH}: the image is not signed",
                         "sign it first: ./mantra sign IMAGE --keys DIR")
    envelope = files.read(paths[MANIFEST_PATH])
    try:
        decoded = Envelope.decode(envelope)
        manifest = Manifest.decode(decoded.manifest.body)
        record = KeyRecord.decode(decoded.key_record.body)
    except DecodeError as exc:
        raise FlashError(f"{image}: slot {slot}'s signed manifest is malformed: {exc}",
                         "rebuild and sign the image (./mantra build)") from None
    source = SlotSource(image, files.partition.offset, files.partition.size)
    return SlotImage(image, slot, source, envelope, manifest, record.issuer)


def find_root(image: Path, product: str | None, explicit: Path | None = None,
              workspace_root: Path | None = None) -> tuple[bytes, str] | None:
    """The root public key to verify `image` with, and where it came from:
    `explicit` (--root), else the key the build embedded in this image's
    MantraBoot (config/root_key.bin beside it), else the product's key set
    (MANTRA_KEYS, or the development keys build/keys/PRODUCT)."""
    from mantra.signing.keys import ROOT_PUB, load_root_public

    if explicit is not None:
        return load_root_public(explicit), str(explicit)
    candidates = [image.parent / "config" / "root_key.bin"]
    if os.environ.get("MANTRA_KEYS"):
        candidates.append(Path(os.environ["MANTRA_KEYS"]) / ROOT_PUB)
    if workspace_root is not None and product:
        candidates.append(workspace_root / "build" / "keys" / product / ROOT_PUB)
    for path in candidates:
        if path.is_file():
            return load_root_public(path), str(path)
    return None


def verify_slot_image(slot_image: SlotImage, board: str, root_public: bytes) -> None:
    """The slot verifies as MantraBoot checks it (mantra.signing): envelope,
    key record against the root, revocations, signature, board, every
    component's hash."""
    from mantra.signing.verify import VerifyFailure, verify_disk

    try:
        verify_disk(slot_image.image, root_public, slot=slot_image.slot, board=board)
    except VerifyFailure as failure:
        raise FlashError(f"{slot_image.image}: slot {slot_image.slot} does not verify: {'; '.join(failure.reasons)}",
                         "flash only images built and signed for this board with the product's keys "
                         "(./mantra verify IMAGE --root PUB shows every check)") from None


def check_image(slot_image: SlotImage, board: str) -> None:
    built_for = slot_image.manifest.board
    if built_for != board:
        raise FlashError(f"wrong board: {slot_image.image} (slot {slot_image.slot}) is built for {built_for}, "
                         f"not {board}; nothing was sent",
                         f"build the image for {board} (./mantra build -b {board}), or flash it to a {built_for} "
                         f"with -b {built_for}")


def check_device(slot_image: SlotImage, hello: HelloReply, board: str, port: str,
                 root: tuple[bytes, str] | None) -> None:
    """Refuses, before anything is written, an image the board would refuse."""
    from mantra.signing.encoding import key_id

    manifest = slot_image.manifest
    if hello.board != board:
        raise FlashError(f"wrong board: the board on {port} is a {hello.board}, not {board}; nothing was written",
                         f"check which board is connected, or flash an image built for {hello.board} with "
                         f"-b {hello.board}")
    device_root_id = hello.root_key_hash[:16]
    if slot_image.issuer != device_root_id:
        raise FlashError(f"image signed with another product's key: {slot_image.image} is signed under root key "
                         f"{slot_image.issuer.hex()[:8]}, the board on {port} trusts root key "
                         f"{device_root_id.hex()[:8]}; nothing was written",
                         "flash an image built with the key set of the product the board runs "
                         "(./mantra build -p PRODUCT --keys DIR)")
    if root is not None and hashlib.sha256(root[0]).digest() != hello.root_key_hash:
        raise FlashError(f"image signed with another product's key: the image verifies with root key "
                         f"{key_id(root[0]).hex()[:8]} ({root[1]}), the board on {port} trusts root key "
                         f"{device_root_id.hex()[:8]}; nothing was written",
                         "flash an image built with the key set of the product the board runs, or give that "
                         "product's root key with --root PUB")
    if manifest.security_counter < hello.rollback_min:
        raise FlashError(f"rollback refused: the image's security counter {manifest.security_counter} is below "
                         f"the board's minimum {hello.rollback_min}; nothing was written",
                         "flash a newer release (raise security_counter in product.toml and rebuild)")
    target = hello.target
    if target is None:
        raise FlashError(f"the board on {port} has no slot it can write now; nothing was written",
                         "let the board boot and confirm its running slot, then run the same command again")
    if target.running:
        raise FlashError(f"the board offers its running slot {target.name} as the target; refusing to write it",
                         "update MantraBoot: flash mode must never offer the running slot")
    if slot_image.source.size > target.size:
        raise FlashError(f"the image's slot ({slot_image.source.size} bytes) is larger than the board's slot "
                         f"{target.name} ({target.size} bytes); nothing was written",
                         "build the image for this board (./mantra build -b BOARD)")


# --- the whole job ------------------------------------------------------------


@dataclass
class FlashResult:
    port: str
    board: str
    target_slot: str  # on the device
    image_size: int  # bytes of the slot image
    block_size: int
    mapped_blocks: int
    held_blocks: int  # already on the device (resume, or identical)
    sent_blocks: int
    tx_bytes: int  # everything the host put on the line, waiting for the board included
    rx_bytes: int
    seconds: float
    baud: int
    compression: Compression
    dry_run: bool = False
    wait_bytes: int = 0  # of tx_bytes, what went out while waiting for the board (MANTRA-FLASH, unanswered HELLOs)
    encoded_bytes: int = 0  # the blocks' encoded bytes, once each
    data: DataStats = field(default_factory=DataStats)
    baud_reverted: bool = False
    finish_instructions: int = 0
    activated: bool = False

    @property
    def line_bytes(self) -> int:
        """The frames put on the line from the HELLO the board answered on,
        resends included: what the flash cost. Waiting for the board is left
        out (it depends on when the board was reset), so the figure is the
        same on every run."""
        return self.tx_bytes - self.wait_bytes

    @property
    def effective(self) -> float:
        """docs/flash-protocol.md's effective throughput: slot image bytes
        delivered ÷ bytes put on the line."""
        return effective_throughput(self.image_size, self.line_bytes)


def effective_throughput(image_bytes: int, line_bytes: int) -> float:
    if line_bytes <= 0:
        raise ValueError("nothing was put on the line")
    return image_bytes / line_bytes


def bench_line(result: FlashResult) -> str:
    """`effective throughput: N.N x line rate` (the --bench figure)."""
    return f"effective throughput: {result.effective:.1f} x line rate"


def flash(image: Path, port: str | None, board: str, *, from_slot: str = "a", baud: int | None = None,
          wait: float = DEFAULT_WAIT, root: Path | None = None, compress: bool = True, dry_run: bool = False,
          activate: bool = True, reset: bool = True, progress: Progress | None = None, log: Log | None = None,
          busy: Callable[[int, int], None] | None = None, transport: Transport | None = None,
          clock: Clock = time.monotonic, timing: Timing = Timing(), workspace_root: Path | None = None,
          initial_baud: int = DEFAULT_BAUD) -> FlashResult:
    """Flashes slot `from_slot` of the signed disk image `image` into the
    inactive slot of the board on `port` (a pyserial URL), then activates it
    and resets the board. `transport` replaces opening `port` (tests); `log`
    receives one line per step. With `dry_run`, stops after the checks and
    the plan: nothing is written. Raises FlashError."""
    log = log or (lambda line: None)
    slot_image = load_slot_image(image, from_slot)
    check_image(slot_image, board)
    found = find_root(image, slot_image.manifest.product, root, workspace_root)
    if found is None:
        raise FlashError(f"no root public key to verify {image} with (not --root, not config/root_key.bin beside "
                         "the image, not the product's key set)",
                         "give the product's root public key with --root PUB (DIR/root.pub of its key set)")
    verify_slot_image(slot_image, board, found[0])
    log(f"image: slot {from_slot} of {image}: {slot_image.manifest.product} {slot_image.manifest.version} for "
        f"{board}, security counter {slot_image.manifest.security_counter}, verified with {found[1]}")

    start = clock()
    if dry_run and transport is None and port is None:  # no board: the plan from the image alone
        bmap = block_map(slot_image.source, msg.DEFAULT_BLOCK_SIZE)
        compression = Compression.ZLIB if compress else Compression.NONE
        result = FlashResult("(no port)", board, "?", bmap.image_size, bmap.block_size, len(bmap.entries), 0, 0,
                             0, 0, 0.0, initial_baud, compression, dry_run=True)
        result.encoded_bytes, result.tx_bytes = plan(bmap, slot_image.source, compression,
                                                     envelope=len(slot_image.envelope))
        return result
    own = transport is None
    if own:
        transport = SerialTransport.open(port, initial_baud)
    link = Link(transport, port, clock, log, initial_baud)
    session = Session(link, timing, busy=busy)
    try:
        hello = session.sync(wait)
        target = hello.target
        if target is None:
            raise FlashError(f"the board on {port} has no slot it can write now (it offers none as the target)",
                             "let the board boot and confirm its running slot, then run the same command again")
        link.baud = hello.baud or initial_baud
        log(f"board: {hello.board} on {port}, MantraFlash {hello.version}, block size {hello.block_size}, window "
            f"{hello.window}, {hello.baud} baud; slot {target.name} is the target ({target.size} bytes)")
        check_device(slot_image, hello, board, port, found)
        bmap = block_map(slot_image.source, hello.block_size)
        log(f"map: {len(bmap.entries)} of {bmap.block_count} blocks used ({bmap.layout.fat_bits}-bit FAT)")
        compression = Compression.ZLIB if compress and hello.supports(Compression.ZLIB) else Compression.NONE
        result = FlashResult(port, board, target.name, bmap.image_size, bmap.block_size, len(bmap.entries), 0, 0,
                             0, 0, 0.0, hello.baud, compression, dry_run=dry_run)
        begin = msg.Begin(0 if target.name == "a" else 1, compression, bmap.block_size, bmap.image_size,
                          len(bmap.entries), bmap.digest, slot_image.envelope)
        if len(begin.encode()) > link.max_payload:
            raise FlashError(f"the slot's signed manifest ({len(slot_image.envelope)} bytes) does not fit a BEGIN "
                             f"frame (at most {link.max_payload} bytes of payload); nothing was written",
                             "sign with fewer revoked keys or a shorter manifest (docs/signing.md)")
        if dry_run:
            result.encoded_bytes, result.tx_bytes = plan(bmap, slot_image.source, compression, link.max_payload,
                                                         envelope=len(slot_image.envelope))
            result.seconds = clock() - start
            return result

        line_baud = hello.baud
        if baud is not None and baud != hello.baud:
            if session.set_baud(baud, hello.baud):
                line_baud = baud
                log(f"baud: switched to {baud}")
            else:
                result.baud_reverted = True
                log(f"baud: the board did not answer at {baud}; both went back to {hello.baud}")
        result.baud = line_baud

        session.begin(begin)
        session.send_map(bmap.entries)
        held = session.have(len(bmap.entries))
        result.held_blocks = sum(held)
        todo = [i for i, h in enumerate(held) if not h]
        log(f"have: the board holds {result.held_blocks} of {len(bmap.entries)} blocks; sending {len(todo)}")
        result.sent_blocks = _send(session, slot_image.source, bmap, todo, compression, progress)
        for attempt in range(FINISH_ROUNDS):
            try:
                session.finish()
                break
            except DeviceError as error:
                # A block that read back wrong is no longer held: HAVE says which, send those again.
                if error.code != ErrorCode.SLOT_CHECK or attempt == FINISH_ROUNDS - 1:
                    raise
                held = session.have(len(bmap.entries))
                todo = [i for i, h in enumerate(held) if not h]
                if not todo:
                    raise
                log(f"finish: {error.device_message}; sending the {len(todo)} blocks the board lacks again")
                result.sent_blocks += _send(session, slot_image.source, bmap, todo, compression, progress)
        log("finish: the board checked the whole slot")
        if activate:
            session.activate()
            result.activated = True
            log(f"activate: slot {target.name} is pending; it boots next")
        if reset:
            session.reset()
            log("reset: the board restarts")
        return _finish_result(result, link, session, clock, start)
    finally:
        if own:
            try:
                transport.close()
            except Exception:  # closing a port that went away
                pass


def plan(bmap: BlockMap, source: SlotSource, compression: Compression, max_payload: int = msg.MAX_PAYLOAD,
         envelope: int = 0) -> tuple[int, int]:
    """What a flash of every mapped block would cost: (encoded bytes of the
    blocks, bytes on the line for BEGIN with an `envelope`-byte signed
    manifest, MAP, HAVE, DATA, FINISH, ACTIVATE and RESET, without resends).
    A dry run reports it; blocks the board already holds lower it."""
    from mantra.provision.frames import OVERHEAD

    chunk = msg.data_chunk_size(max_payload)
    encoded = line = 0
    for entry in bmap.entries:
        _encoding, data = encode_block(source.read(entry.index * bmap.block_size, bmap.block_size), compression)
        encoded += len(data)
        frames = -(-len(data) // chunk)
        line += len(data) + frames * (OVERHEAD + msg.DATA_HEADER_SIZE)
    per = msg.map_entries_per_frame(max_payload)
    map_frames = -(-len(bmap.entries) // per)
    line += len(bmap.entries) * msg.MAP_ENTRY_SIZE + map_frames * (OVERHEAD + 4)
    have_frames = -(-len(bmap.entries) // (8 * max_payload))
    line += OVERHEAD + 60 + envelope  # BEGIN
    line += have_frames * (OVERHEAD + 8) + 3 * OVERHEAD  # HAVE, FINISH, ACTIVATE, RESET
    return encoded, line


FINISH_ROUNDS = 3  # FINISH, and again after resending blocks that read back wrong


def _send(session: Session, source: SlotSource, bmap: BlockMap, todo: list[int], compression: Compression,
          progress: Progress | None) -> int:
    blocks = ((i, source.read(bmap.entries[i].index * bmap.block_size, bmap.block_size)) for i in todo)
    session.send_blocks(_Sized(blocks, len(todo)), compression, bmap.block_size, progress)
    return len(todo)


class _Sized:
    """An iterator with a length (send_blocks' progress total)."""

    def __init__(self, items, n: int) -> None:
        self._items = iter(items)
        self._n = n

    def __iter__(self):
        return self._items

    def __len__(self) -> int:
        return self._n


def _finish_result(result: FlashResult, link: Link, session: Session, clock: Clock, start: float) -> FlashResult:
    result.tx_bytes = link.tx_bytes
    result.wait_bytes = session.wait_bytes
    result.rx_bytes = link.rx_bytes
    result.seconds = clock() - start
    result.data = session.data_stats
    result.encoded_bytes = session.data_stats.encoded_bytes
    result.finish_instructions = session.finish_instructions
    return result


__all__ = ["ConnectionLost", "DataStats", "DeviceError", "FlashError", "FlashResult", "Link", "Progress",
           "SYNC_LINE", "SerialTransport", "Session", "SlotImage", "Timing", "Transport", "bench_line", "check_device",
           "check_image", "effective_throughput", "encode_block", "find_root", "flash", "load_slot_image", "plan",
           "verify_slot_image"]
