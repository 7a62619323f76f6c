"""MantraBoot's flash mode end to end (docs/flash-protocol.md): QEMU boards
flashed over their console socket, then booted.

The host side is mantra.provision's frame codec and messages (branch
flash-host). Until its session driver (`mantra flash`) lands, the tests
drive the board with `MiniFlasher` below: the smallest sender that uses
those messages (HELLO, BEGIN, MAP, HAVE, DATA with a window and go-back-N,
FINISH, ACTIVATE, RESET) and a test-only block map (the slot's FAT
metadata plus every non-zero block after it). Each test reads what the
guest printed and what it wrote (the disk image, the variable store).

`MANTRA_FLASH_KILL_POINTS` sets how many random kill points
test_killed_while_flashing_always_boots_a_valid_slot uses (default 5);
`-m flash_long` runs the 20-point version (about 6 minutes).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import struct
import subprocess
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from gpt_reader import read_gpt
from mantra.build import BuildResult
from mantra.provision import messages as m
from mantra.provision.frames import Frame, FrameDecoder, FrameType, encode_frame
from mantra.qemu import console_session
from mantra.workspace import Workspace
from test_boot_errors import SpoiledImage, tail
from uefi_vars import (BOOTSERVICE_ACCESS, NON_VOLATILE, RUNTIME_ACCESS, STATE_ACTIVE, STATE_FLASHING, add_variable,
                       parse_mantra_slots, read_variable)

pytestmark = pytest.mark.boot

BLOCK = 65536
ENTRY_LINE = re.compile(r"^MantraBoot: flash mode \(protocol 1, board (\S+)\): waiting for the host\r?$", re.M)
# The terminal driver, reconnected after flash mode, may put escape codes first.
ENDED = re.compile(
    r"MantraBoot: flash mode ended: (?P<blocks>\d+) blocks written \((?P<bytes>\d+) bytes received encoded, "
    r"(?P<naks>\d+) NAKs\); BEGIN envelope check (?P<begin>\d+) tsc, (?P<block>\d+) tsc per block \(decode, SHA-256, "
    r"write\), FINISH read-back (?P<readback>\d+) tsc, slot check (?P<check>\d+) tsc\r?$", re.M)
BOOT_TIMEOUT = 240


class FlashError(Exception):
    """The board answered ERROR: code and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"ERROR {code}: {message}")
        self.code = code
        self.message = message


def slot_partition(image: Path, slot: str) -> tuple[int, int]:
    """(byte offset, size) of slot-a / slot-b."""
    part = {p.name: p for p in read_gpt(image).partitions}[f"slot-{slot}"]
    return part.first_lba * 512, (part.last_lba - part.first_lba + 1) * 512


def read_slot(image: Path, slot: str) -> bytes:
    offset, size = slot_partition(image, slot)
    with image.open("rb") as f:
        f.seek(offset)
        return f.read(size)


def block_map(slot_image: bytes) -> list[m.MapEntry]:
    """Test-only block map: every block up to the end of the FAT32
    metadata (boot sector, reserved sectors, both FATs), then every block
    that is not all zeros. (`mantra flash` maps the allocated clusters.)"""
    sector, = struct.unpack_from("<H", slot_image, 11)
    reserved, = struct.unpack_from("<H", slot_image, 14)
    fats = slot_image[16]
    fat_sectors, = struct.unpack_from("<I", slot_image, 36)
    metadata_end = (reserved + fats * fat_sectors) * sector
    zero = bytes(BLOCK)
    entries = []
    for index in range(len(slot_image) // BLOCK):
        block = slot_image[index * BLOCK:(index + 1) * BLOCK]
        if index * BLOCK < metadata_end or block != zero:
            entries.append(m.MapEntry(index, hashlib.sha256(block).digest()))
    return entries


@dataclass
class Link:
    """The board's console socket as a frame link."""

    session: object
    pos: int = 0
    decoder: FrameDecoder = field(default_factory=FrameDecoder)
    frames: list[Frame] = field(default_factory=list)
    sent_bytes: int = 0
    corrupt_next: int = 0  # corrupt the CRC of this many DATA frames
    busy: int = 0  # BUSY keepalives seen

    def send(self, ftype: int, payload: bytes, seq: int = 0) -> None:
        data = encode_frame(ftype, payload, seq)
        if ftype == FrameType.DATA and self.corrupt_next:
            self.corrupt_next -= 1
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        self.sent_bytes += len(data)
        self.session.send_bytes(data)

    def recv(self, timeout: float) -> Frame | None:
        deadline = time.monotonic() + timeout
        while not self.frames:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            data = self.session.wait_raw(self.pos, min(remaining, 0.5))
            if not data and self.session.closed:
                return None
            self.pos += len(data)
            self.frames.extend(self.decoder.feed(data))
        return self.frames.pop(0)

    def command(self, msg, timeout: float = 2.0, retries: int = 5) -> bytes:
        """Sends a command, waits for its OK (BUSY extends the wait),
        resending up to `retries` times; ERROR raises FlashError."""
        for _ in range(retries + 1):
            self.send(msg.TYPE, msg.encode())
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                frame = self.recv(left)
                if frame is None:
                    break
                if frame.type == FrameType.BUSY:
                    self.busy += 1
                    done, total = struct.unpack("<II", frame.payload)
                    assert done <= total, frame
                    deadline = time.monotonic() + timeout
                elif frame.type == FrameType.OK:
                    return frame.payload
                elif frame.type == FrameType.ERROR:
                    code, length = struct.unpack_from("<HH", frame.payload)
                    raise FlashError(code, frame.payload[4:4 + length].decode())
        raise AssertionError(f"no reply to {msg.TYPE.name} after {retries + 1} tries")


@dataclass
class MiniFlasher:
    link: Link
    slot_image: bytes
    envelope: bytes
    hello: m.HelloReply | None = None
    entries: list[m.MapEntry] = field(default_factory=list)
    naks: int = 0
    resent: int = 0

    def start(self) -> list[bool]:
        """HELLO, BEGIN, MAP, HAVE: which entries the board holds."""
        self.hello = m.HelloReply.decode(self.link.command(m.Hello()))
        self.entries = block_map(self.slot_image)
        begin = m.Begin(self.hello.target_slot, m.Compression.ZLIB, BLOCK, len(self.slot_image), len(self.entries),
                        m.image_digest(self.entries), self.envelope)
        self.link.command(begin, timeout=10)
        per = m.map_entries_per_frame()
        for first in range(0, len(self.entries), per):
            received = self.link.command(m.Map(first, tuple(self.entries[first:first + per])), timeout=10)
            assert struct.unpack("<I", received)[0] == min(first + per, len(self.entries))
        count = len(self.entries)
        return list(m.HaveReply.decode(self.link.command(m.Have(0, count)), count).held)

    def data_frames(self, held: list[bool]) -> list[bytes]:
        frames = []
        room = m.data_chunk_size()
        for n, entry in enumerate(self.entries):
            if held[n]:
                continue
            block = self.slot_image[entry.index * BLOCK:(entry.index + 1) * BLOCK]
            packed = zlib.compress(block, 6)
            encoding, body = (m.Compression.ZLIB, packed) if len(packed) < len(block) else (m.Compression.NONE, block)
            for off in range(0, len(body), room):
                frames.append(m.Data(n, len(body), off, encoding, body[off:off + room]).encode())
        return frames

    def send_data(self, frames: list[bytes], stop_after: int | None = None) -> None:
        """Go-back-N with the board's window; `stop_after`: return once that
        many frames are acknowledged (a cut cable)."""
        window = self.hello.window
        base = nxt = 0
        while base < len(frames):
            if stop_after is not None and base >= stop_after:
                return
            while nxt < len(frames) and nxt < base + window:
                self.link.send(FrameType.DATA, frames[nxt], nxt & 0xFFFF)
                nxt += 1
            frame = self.link.recv(2.0)
            if frame is None:  # no ACK for 2 s: resend from the oldest
                self.resent += nxt - base
                nxt = base
                continue
            if frame.type in (FrameType.ACK, FrameType.NAK):
                seq, = struct.unpack_from("<H", frame.payload)
                # Unwrap: the board's seq is within the window of base.
                acked = base + ((seq - base) & 0xFFFF)
                if frame.type == FrameType.NAK:
                    self.naks += 1
                    self.resent += nxt - acked
                    base = nxt = acked
                else:
                    base = max(base, acked)
            elif frame.type == FrameType.ERROR:
                code, length = struct.unpack_from("<HH", frame.payload)
                raise FlashError(code, frame.payload[4:4 + length].decode())

    def finish(self) -> int:
        return struct.unpack("<Q", self.link.command(m.Finish(), timeout=10))[0]


def enter_flash_mode(session, timeout: float = 120) -> re.Match[str]:
    """Sends MANTRA-FLASH every 100 ms (as `mantra flash` does) until the
    board's entry line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        session.send_bytes(b"MANTRA-FLASH\r\n")
        found = ENTRY_LINE.search(session.text)
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("no flash mode entry line:\n" + tail(session.text))


def new_source(default_image: BuildResult, directory: Path, counter: int = 1) -> SpoiledImage:
    """A signed slot image that differs from the factory one: slot a of a
    copy, re-signed with security counter `counter`."""
    directory.mkdir()
    source = SpoiledImage(default_image, directory, slots=("a",))
    source.resign(security_counter=counter)
    return source


def slots_var(device: SpoiledImage) -> tuple[int, list[tuple[int, int, int, bytes]]]:
    found = read_variable(device.image.parent / "firmware-vars.fd", "MantraSlots")
    assert found is not None, "no MantraSlots variable"
    return parse_mantra_slots(found[1])


def mapped_blocks_equal(device: Path, slot: str, source: bytes, entries: list[m.MapEntry]) -> bool:
    written = read_slot(device, slot)
    return all(written[e.index * BLOCK:(e.index + 1) * BLOCK] == source[e.index * BLOCK:(e.index + 1) * BLOCK]
               for e in entries)


def wait_line(session, pattern: str, start: int, timeout: float = BOOT_TIMEOUT) -> re.Match[str]:
    try:
        return session.wait_for(pattern, timeout=timeout, start=start)
    except Exception as exc:  # MantraError: show the console
        raise AssertionError(f"{exc}\n{tail(session.text)}") from None


def reset(link: Link, session) -> None:
    """RESET: OK, then the board resets (the runner's QEMU has -no-reboot,
    so QEMU ends: the next boot is a new console session)."""
    link.command(m.Reset())
    deadline = time.monotonic() + 60
    while not session.closed and time.monotonic() < deadline:
        time.sleep(0.1)
    assert session.closed, "QEMU did not end after RESET:\n" + tail(session.text)


def boot_new_slot(device: SpoiledImage, workspace: Workspace, counter: int) -> str:
    """Boots the device after ACTIVATE: slot b boots as pending and init confirms it."""
    with console_session(device.image, workspace=workspace) as session:
        booted = wait_line(session, rf"^MantraBoot: booting slot b \(pending, 2 tries left, security counter {counter}\)\r?$",
                           0)
        assert re.search(rf"^MantraBoot: slot b: verified \(key \w+, security counter {counter},", session.text, re.M)
        wait_line(session, rf"init: boot confirmed: slot b \(security counter {counter}\)\r?$", booted.end())
        return session.text


@pytest.fixture
def device(default_image: BuildResult, tmp_path: Path) -> SpoiledImage:
    """A fresh copy of the default image: a new device, both slots factory."""
    (tmp_path / "device").mkdir()
    return SpoiledImage(default_image, tmp_path / "device", slots=())


def test_mantra_flash_then_boot_the_new_slot(default_image: BuildResult, device: SpoiledImage, tmp_path: Path,
                                            workspace: Workspace) -> None:
    """flash-host's `mantra.provision.serial_flash.flash` (what `./mantra
    flash` runs) against the QEMU board's console socket, then the boot."""
    from mantra.provision.bench import ConsoleTransport
    from mantra.provision.serial_flash import flash

    source = new_source(default_image, tmp_path / "source", counter=4)
    wipe(device, "b")
    log: list[str] = []
    with console_session(device.image, workspace=workspace) as session:
        result = flash(source.image, session.url, "qemu-x86_64", transport=ConsoleTransport(session),
                       root=default_image.keys / "root.pub", log=log.append, wait=120)
        assert result.activated and result.target_slot == "b", log
        ended = wait_line(session, ENDED.pattern, 0, timeout=60)
        assert int(ended["blocks"]) == result.sent_blocks, (ended.group(0), log)
    print(f"mantra flash over QEMU's console: {result.mapped_blocks} mapped blocks, {result.sent_blocks} sent, "
          f"{result.tx_bytes} bytes on the line, effective throughput {result.effective:.1f} x line rate")
    # Booting b checks its envelope and every component's SHA-256.
    boot_new_slot(device, workspace, counter=4)


def test_flash_then_boot_the_new_slot(default_image: BuildResult, device: SpoiledImage, tmp_path: Path,
                                      workspace: Workspace) -> None:
    source = new_source(default_image, tmp_path / "source")
    slot_image = read_slot(source.image, "a")
    envelope = source.read("MANTRA/MANIFEST.SIG")
    with console_session(device.image, workspace=workspace) as session:
        entry = enter_flash_mode(session)
        assert entry[1] == "qemu-x86_64"
        # Nothing but frames after the entry line.
        link = Link(session, pos=len(session.raw()))
        flasher = MiniFlasher(link, slot_image, envelope)
        held = flasher.start()
        assert link.busy >= 1  # MAP's hashing of what the slot holds
        hello = flasher.hello
        assert (hello.version, hello.max_payload, hello.window, hello.compression, hello.block_size) == \
            (1, 4096, 8, 1, BLOCK)
        assert hello.board == "qemu-x86_64" and hello.baud == 115200
        assert [s.name for s in hello.slots] == ["a", "b"] and hello.target_slot == 1
        assert hello.slots[0].running and not hello.slots[1].running
        assert hello.slots[1].size == slot_partition(device.image, "b")[1]
        assert hello.slots[0].version == "0.1.0" and hello.slots[0].state == m.SlotState.ACTIVE
        # Factory contents differ from the new image only in the envelope's blocks.
        assert 0 < held.count(False) < len(held)
        flasher.send_data(flasher.data_frames(held))
        busy = link.busy
        flasher.finish()
        assert link.busy > busy  # FINISH's read-back
        link.command(m.Activate())
        flash_text_end = len(session.raw())
        reset(link, session)
        ended = wait_line(session, ENDED.pattern, 0, timeout=30)
        assert int(ended["blocks"]) == held.count(False)
        assert int(ended["naks"]) == 0
        # Only frames between the entry line and the end line.
        between = session.raw()[:flash_text_end].split(b"waiting for the host", 1)[1]
        assert b"MantraBoot" not in between and b"BdsDxe" not in between
    boot_new_slot(device, workspace, counter=1)
    assert mapped_blocks_equal(device.image, "b", slot_image, flasher.entries)
    preferred, records = slots_var(device)
    assert preferred == 1
    assert records[1][:3] == (STATE_ACTIVE, 0, 1)
    assert records[1][3] == hashlib.sha256(envelope).digest()
    assert records[0][0] == STATE_ACTIVE


def test_wrong_board_and_wrong_key_are_refused_before_writing(default_image: BuildResult, device: SpoiledImage,
                                                              tmp_path: Path, workspace: Workspace) -> None:
    from mantra.signing import keys as signing_keys
    from mantra.signing.sign import sign_image

    # Signed for another board: re-sign slot a of a copy with a board name changed in its manifest.
    other_board = new_source(default_image, tmp_path / "other-board")
    import dataclasses
    from mantra.signing.sign import ImageInfo
    keyset = signing_keys.load_keyset(other_board.keys)
    info = dataclasses.replace(ImageInfo.beside(other_board.image), built_components={}, board="qemu-aarch64")
    sign_image(other_board.image, keyset, signing_keys.passphrase_for(keyset.dir), info=info, slot="a")
    # Signed with another key set.
    other_keys = tmp_path / "other-keys"
    os.environ.setdefault("MANTRA_KEY_PASSPHRASE", "another-key-set-passphrase")
    from support import mantra
    done = mantra("keys", "init", str(other_keys))
    assert done.returncode == 0, done.stdout + done.stderr
    wrong_key = new_source(default_image, tmp_path / "wrong-key")
    other = signing_keys.load_keyset(other_keys)
    info = dataclasses.replace(ImageInfo.beside(wrong_key.image), built_components={})
    sign_image(wrong_key.image, other, signing_keys.passphrase_for(other.dir), info=info, slot="a")

    before = read_slot(device.image, "b")
    with console_session(device.image, workspace=workspace) as session:
        enter_flash_mode(session)
        link = Link(session, pos=len(session.raw()))
        for source, code, text in [(other_board, m.ErrorCode.WRONG_BOARD, "qemu-aarch64"),
                                   (wrong_key, m.ErrorCode.KEY, "key record")]:
            flasher = MiniFlasher(link, read_slot(source.image, "a"), source.read("MANTRA/MANIFEST.SIG"))
            with pytest.raises(FlashError) as refused:
                flasher.start()
            assert refused.value.code == code, refused.value
            assert text in refused.value.message and "image refused before writing" in refused.value.message
        # The baud switch: a rate the UART's clock divides, then HELLO at it
        # (QEMU's UART takes any divisor); 921600 needs a faster clock than
        # COM1's 1.8432 MHz: unsupported.
        with pytest.raises(FlashError) as refused:
            link.command(m.SetBaud(921600))
        assert refused.value.code == m.ErrorCode.UNSUPPORTED
        link.command(m.SetBaud(57600))
        assert m.HelloReply.decode(link.command(m.Hello())).baud == 57600
        link.command(m.SetBaud(115200))
        assert m.HelloReply.decode(link.command(m.Hello())).baud == 115200
        # The protected slot: ERROR 7.
        good = new_source(default_image, tmp_path / "good")
        envelope = good.read("MANTRA/MANIFEST.SIG")
        entries = block_map(read_slot(good.image, "a"))
        with pytest.raises(FlashError) as refused:
            link.command(m.Begin(0, m.Compression.ZLIB, BLOCK, len(before), len(entries), m.image_digest(entries),
                                 envelope))
        assert refused.value.code == m.ErrorCode.WRONG_SLOT
        mark = session.mark()
        link.command(m.Abort())
        wait_line(session, r"^MantraBoot: booting slot a \(active, security counter 0\)\r?$", mark)
    # Nothing written, slot b not marked flashing.
    assert read_slot(device.image, "b") == before
    _, records = slots_var(device)
    assert [r[0] for r in records] == [STATE_ACTIVE, STATE_ACTIVE]


def test_resume_after_a_cut_and_a_corrupted_frame_is_resent(default_image: BuildResult, device: SpoiledImage,
                                                            tmp_path: Path, workspace: Workspace) -> None:
    source = new_source(default_image, tmp_path / "source", counter=2)
    slot_image = read_slot(source.image, "a")
    envelope = source.read("MANTRA/MANIFEST.SIG")
    wipe(device, "b")  # a first flash: every mapped block is sent
    with console_session(device.image, workspace=workspace) as session:
        enter_flash_mode(session)
        link = Link(session, pos=len(session.raw()))
        flasher = MiniFlasher(link, slot_image, envelope)
        held = flasher.start()
        frames = flasher.data_frames(held)
        assert len(frames) >= 2
        # A corrupted DATA frame: the board NAKs (bad CRC) and the host resends.
        link.corrupt_next = 1
        cut = max(1, len(frames) // 2)
        flasher.send_data(frames, stop_after=cut)
        assert flasher.naks >= 1
        # The cable is cut here: the host starts over with HELLO; the board
        # keeps what it received and HAVE says so.
        link.frames.clear()
        time.sleep(2.5)  # let the board's partial frame time out
        link.pos = len(session.raw())
        link.decoder = FrameDecoder()
        flasher2 = MiniFlasher(link, slot_image, envelope)
        held2 = flasher2.start()
        assert held2.count(True) > held.count(True), (held, held2)
        flasher2.send_data(flasher2.data_frames(held2))
        flasher2.finish()
        link.command(m.Activate())
        mark = session.mark()
        reset(link, session)
        ended = wait_line(session, ENDED.pattern, mark, timeout=30)
        assert int(ended["naks"]) >= 1
    boot_new_slot(device, workspace, counter=2)
    assert mapped_blocks_equal(device.image, "b", slot_image, flasher.entries)


def kill_points() -> int:
    return int(os.environ.get("MANTRA_FLASH_KILL_POINTS", "5"))


def wipe(device: SpoiledImage, slot: str, size: int = 4 << 20) -> None:
    """Overwrites the start of a slot (its FAT metadata) with a pattern: the
    slot holds no file system, so every mapped block must be sent."""
    offset, _ = slot_partition(device.image, slot)
    with device.image.open("r+b") as f:
        f.seek(offset)
        f.write(bytes([0xA5]) * size)


BOOTING = r"^MantraBoot: booting slot ([ab]) \((active|pending)[,)].*$"


def test_killed_while_flashing_always_boots_a_valid_slot(default_image: BuildResult, device: SpoiledImage,
                                                         tmp_path: Path, workspace: Workspace) -> None:
    """5 kill points (about 1.5 minutes; MANTRA_FLASH_KILL_POINTS changes it)."""
    kill_while_flashing(default_image, device, tmp_path, workspace, kill_points())


@pytest.mark.flash_long
def test_killed_at_20_points_always_boots_a_valid_slot(default_image: BuildResult, device: SpoiledImage,
                                                       tmp_path: Path, workspace: Workspace,
                                                       request: pytest.FixtureRequest) -> None:
    """The long version, 20 kill points (about 6 minutes): runs only when
    selected with `-m flash_long`."""
    if "flash_long" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("the 20-point kill test runs with -m flash_long")
    kill_while_flashing(default_image, device, tmp_path, workspace, 20, seed=7)


def kill_while_flashing(default_image: BuildResult, device: SpoiledImage, tmp_path: Path, workspace: Workspace,
                        points: int, seed: int = 20261127) -> None:
    """QEMU is killed (SIGTERM, no guest shutdown) at seeded random points of
    a flash into a wiped slot b: after BEGIN, in the middle of the block
    map, at a random DATA frame, after FINISH or after ACTIVATE. Every
    restart must boot a slot that verified: the factory slot while the
    other one is flashing, or the new image once it was activated."""
    source = new_source(default_image, tmp_path / "source", counter=3)
    slot_image = read_slot(source.image, "a")
    envelope = source.read("MANTRA/MANIFEST.SIG")
    new_hash = hashlib.sha256(envelope).hexdigest()
    wipe(device, "b")
    rng = random.Random(seed)
    outcomes = []
    # Every kind of point once (seeded order), then random ones, mostly in DATA.
    kinds = ["begin", "map", "data", "finish", "activate"]
    rng.shuffle(kinds)
    stages = kinds + [rng.choice(["begin", "map", "data", "data", "data", "data", "finish", "activate"])
                      for _ in range(max(0, points - len(kinds)))]
    for stage in stages[:points]:
        with console_session(device.image, workspace=workspace) as session:
            enter_flash_mode(session)
            link = Link(session, pos=len(session.raw()))
            flasher = MiniFlasher(link, slot_image, envelope)
            flasher.hello = m.HelloReply.decode(link.command(m.Hello()))
            flasher.entries = block_map(slot_image)
            entries = flasher.entries
            link.command(m.Begin(flasher.hello.target_slot, m.Compression.ZLIB, BLOCK, len(slot_image), len(entries),
                                 m.image_digest(entries), envelope), timeout=10)
            target = flasher.hello.target.name
            _, records = slots_var(device)
            assert records["ab".index(target)][0] == STATE_FLASHING
            if stage != "begin":
                per = m.map_entries_per_frame()
                firsts = list(range(0, len(entries), per))
                if stage == "map":
                    firsts = firsts[:rng.randrange(len(firsts))]
                for first in firsts:
                    link.command(m.Map(first, tuple(entries[first:first + per])), timeout=10)
            if stage in ("data", "finish", "activate"):
                held = list(m.HaveReply.decode(link.command(m.Have(0, len(entries))), len(entries)).held)
                frames = flasher.data_frames(held)
                flasher.send_data(frames, stop_after=rng.randrange(len(frames) + 1) if stage == "data" else None)
                if stage != "data":
                    flasher.finish()
                if stage == "activate":
                    link.command(m.Activate())
            # Leaving the block kills QEMU here.
        with console_session(device.image, workspace=workspace) as session:
            booted = wait_line(session, BOOTING, 0)
            text = session.text
            assert "MantraBoot: error" not in text, tail(text)
            slot, state = booted[1], booted[2]
            assert re.search(rf"^MantraBoot: slot {slot}: verified \(", text, re.M), tail(text)
            other = "b" if slot == "a" else "a"
            if stage != "activate":
                # The flashed slot is flashing: kept, not read, not booted.
                assert re.search(rf"^MantraBoot: slot {target}: flashing \(", text, re.M), tail(text)
                assert slot != target
            else:
                assert (slot, state) == (target, "pending"), tail(text)
            wait_line(session, r"MantraBoot: exiting boot services", booted.end(), timeout=60)
        outcomes.append((stage, slot, state, other))
    # The last boot runs to the services' health check: the slot is usable.
    with console_session(device.image, workspace=workspace) as session:
        booted = wait_line(session, BOOTING, 0)
        wait_line(session, r"init: (all services healthy|boot confirmed)", booted.end())
    print(f"kill points (stage, booted slot, state): {outcomes}; new envelope {new_hash[:16]}")


def slots_var_live(device: SpoiledImage):
    found = read_variable(device.image.parent / "firmware-vars.fd", "MantraSlots")
    return parse_mantra_slots(found[1]) if found else (0, [])


def test_no_bootable_slot_enters_flash_mode(default_image: BuildResult, device: SpoiledImage, tmp_path: Path,
                                            workspace: Workspace) -> None:
    """Both slots wiped: MantraBoot says why nothing boots, then waits in
    flash mode (no MANTRA-FLASH needed); a flash makes the device boot."""
    source = new_source(default_image, tmp_path / "source", counter=1)
    wipe(device, "a")
    wipe(device, "b")
    with console_session(device.image, workspace=workspace) as session:
        entry = wait_line(session, ENTRY_LINE.pattern, 0, timeout=120)
        error = re.search(r"^MantraBoot: error: no bootable slot: slot a (.*)$", session.text[:entry.start()], re.M)
        assert error, tail(session.text)
        link = Link(session, pos=len(session.raw()))
        flasher = MiniFlasher(link, read_slot(source.image, "a"), source.read("MANTRA/MANIFEST.SIG"))
        held = flasher.start()
        assert flasher.hello.target_slot == 1
        assert [slot.state for slot in flasher.hello.slots] == [m.SlotState.EMPTY, m.SlotState.EMPTY]
        # After BEGIN the target is flashing (state 4), in HELLO and in MantraSlots.
        again = m.HelloReply.decode(link.command(m.Hello()))
        assert [slot.state for slot in again.slots] == [m.SlotState.EMPTY, m.SlotState.FLASHING]
        assert [r[0] for r in slots_var(device)[1]] == [0, STATE_FLASHING]
        flasher.send_data(flasher.data_frames(held))
        flasher.finish()
        link.command(m.Activate())
        reset(link, session)
    boot_new_slot(device, workspace, counter=1)


def test_flash_costs_under_icount(default_image: BuildResult, device: SpoiledImage, tmp_path: Path,
                                  workspace: Workspace) -> None:
    """A whole flash of the default image into a wiped slot under -icount
    shift=0 (TSC ticks = guest instructions): the figures MantraBoot prints."""
    source = new_source(default_image, tmp_path / "source", counter=1)
    slot_image = read_slot(source.image, "a")
    wipe(device, "b")
    with console_session(device.image, workspace=workspace, icount=True) as session:
        enter_flash_mode(session, timeout=300)
        link = Link(session, pos=len(session.raw()))
        flasher = MiniFlasher(link, slot_image, source.read("MANTRA/MANIFEST.SIG"))
        started = time.monotonic()
        held = flasher.start()
        flasher.send_data(flasher.data_frames(held))
        finish_reply = flasher.finish()
        seconds = time.monotonic() - started
        link.command(m.Abort())
        ended = wait_line(session, ENDED.pattern, 0, timeout=60)
    figures = {k: int(v) for k, v in ended.groupdict().items()}
    image_bytes = sum(BLOCK for _ in flasher.entries)
    print(f"flash costs (guest instructions, -icount shift=0): {figures}; FINISH reply {finish_reply}; "
          f"{len(flasher.entries)} mapped blocks ({image_bytes} bytes), {link.sent_bytes} bytes on the line "
          f"(effective {image_bytes / link.sent_bytes:.1f} x line rate), {seconds:.1f} s wall clock")
    assert figures["blocks"] == held.count(False) == len(flasher.entries) - held.count(True)
    assert 0 < figures["begin"] < 100_000_000
    assert 0 < figures["block"] < 100_000_000
    assert finish_reply == figures["readback"] + figures["check"]


def test_mantra_flash_mode_variable_is_a_one_shot_request(default_image: BuildResult, device: SpoiledImage,
                                                          workspace: Workspace) -> None:
    """MantraFlashMode = 1 (written into the variable store while the board
    is off) enters flash mode without MANTRA-FLASH; MantraBoot deletes it,
    so after ABORT, and on the next boot, the device boots normally."""
    store = device.image.parent / "firmware-vars.fd"
    with console_session(device.image, workspace=workspace) as session:
        wait_line(session, BOOTING, 0)  # the runner makes its store copy
    add_variable(store, "MantraFlashMode", b"\x01", NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS)
    assert read_variable(store, "MantraFlashMode") is not None
    with console_session(device.image, workspace=workspace) as session:
        entry = wait_line(session, ENTRY_LINE.pattern, 0, timeout=120)
        link = Link(session, pos=len(session.raw()))
        hello = m.HelloReply.decode(link.command(m.Hello()))
        assert hello.target_slot == 1
        link.command(m.Abort())
        wait_line(session, r"MantraBoot: flash mode: aborted by the host; booting normally", entry.end(), timeout=60)
        wait_line(session, r"^MantraBoot: booting slot a \(active, security counter 0\)\r?$", entry.end())
    assert read_variable(store, "MantraFlashMode") is None
    with console_session(device.image, workspace=workspace) as session:
        booted = wait_line(session, BOOTING, 0)
        assert not ENTRY_LINE.search(session.text[:booted.start()]), tail(session.text)
