"""MantraBoot's flash mode end to end (docs/flash-protocol.md): QEMU boards
flashed over their console socket, then booted.

The host side is flash-host's mantra.provision (serial_flash: `flash()`,
what `./mantra flash` runs, and its `Session` for single commands; bmap:
the FAT block map). The only test seam is the transport: `Line` is the
board's console socket (bench.ConsoleTransport) and injects faults on the
wire -- a damaged DATA frame, a line cut before the n-th frame of a type.
Every test reads what the guest printed and what it left on its disk and in
its variable store.

`MANTRA_FLASH_KILL_POINTS` sets how many random kill points
test_killed_while_flashing_always_boots_a_valid_slot uses (default 5);
`-m flash_long` runs the 20-point version (about 6 minutes).
"""

from __future__ import annotations

import os
import random
import re
import time
from collections import Counter
from pathlib import Path

import pytest
from gpt_reader import read_gpt
from mantra.build import BuildResult
from mantra.provision import messages as m
from mantra.provision.bench import ConsoleTransport
from mantra.provision.bmap import block_map
from mantra.provision.frames import FrameType
from mantra.provision.serial_flash import ConnectionLost, DeviceError, Link, Session, flash, load_slot_image
from mantra.qemu import console_session
from mantra.workspace import Workspace
from test_boot_errors import SpoiledImage, tail
from uefi_vars import (BOOTSERVICE_ACCESS, NON_VOLATILE, RUNTIME_ACCESS, STATE_ACTIVE, STATE_FLASHING, add_variable,
                       parse_mantra_slots, read_variable)

pytestmark = pytest.mark.boot

BLOCK = 65536
BOARD = "qemu-x86_64"
ENTRY_LINE = re.compile(r"^MantraBoot: flash mode \(protocol 1, board (\S+)\): waiting for the host\r?$", re.M)
# The terminal driver, reconnected after flash mode, may put escape codes first.
ENDED = re.compile(
    r"MantraBoot: flash mode ended: (?P<blocks>\d+) blocks written \((?P<bytes>\d+) bytes received encoded, "
    r"(?P<naks>\d+) NAKs\); BEGIN envelope check (?P<begin>\d+) tsc, (?P<block>\d+) tsc per block \(decode, SHA-256, "
    r"write\), FINISH read-back (?P<readback>\d+) tsc, slot check (?P<check>\d+) tsc\r?$", re.M)
BOOTING = r"^MantraBoot: booting slot ([ab]) \((active|pending)[,)].*$"
BOOT_TIMEOUT = 240


class Line(ConsoleTransport):
    """flash-host's transport over the board's console socket, reading only
    what the board sends from now on, with faults on the wire: the DATA
    frames numbered in `corrupt` (from 0, resends included) get a damaged
    CRC, and `cut` = (frame type, n) loses the line instead of sending the
    n-th frame of that type (an OSError, as a pulled cable gives pyserial)."""

    def __init__(self, session, *, corrupt: tuple[int, ...] = (), cut: tuple[FrameType, int] | None = None) -> None:
        super().__init__(session)
        self.offset = len(session.raw())
        self.counts: Counter[int] = Counter()
        self.corrupt = set(corrupt)
        self.cut = cut
        self.corrupted = 0

    def write(self, data: bytes) -> None:
        if data[:2] == b"MF":
            ftype, n = data[2], self.counts[data[2]]
            self.counts[ftype] += 1
            if self.cut is not None and self.cut == (ftype, n):
                raise OSError(f"the line was cut before {FrameType(ftype).name} #{n}")
            if ftype == FrameType.DATA and n in self.corrupt:
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
                self.corrupted += 1
        super().write(data)


def session_on(line: Line, log: list[str]) -> Session:
    return Session(Link(line, line.console.url, time.monotonic, log.append))


def root(default_image: BuildResult) -> Path:
    assert default_image.keys is not None
    return default_image.keys / "root.pub"


def flash_to(session, source: SpoiledImage, default_image: BuildResult, log: list[str], **options):
    """`mantra flash` of source's slot a to the board on `session`."""
    line = options.pop("line", None) or Line(session)
    return flash(source.image, session.url, BOARD, transport=line, root=root(default_image), log=log.append,
                 wait=120, **options)


def begin_of(source: SpoiledImage, target: int, envelope: bytes | None = None) -> tuple[m.Begin, int]:
    """BEGIN for source's slot a (and the number of mapped blocks)."""
    image = load_slot_image(source.image, "a")
    bmap = block_map(image.source, BLOCK)
    return m.Begin(target, m.Compression.ZLIB, BLOCK, bmap.image_size, len(bmap.entries), bmap.digest,
                   envelope if envelope is not None else image.envelope), len(bmap.entries)


def ended(session, start: int = 0) -> dict[str, int]:
    found = wait_line(session, ENDED.pattern, start, timeout=60)
    return {k: int(v) for k, v in found.groupdict().items()}


def wait_closed(session) -> None:
    """After RESET the board resets; the runner's QEMU has -no-reboot, so
    QEMU ends: the next boot is a new console session."""
    deadline = time.monotonic() + 60
    while not session.closed and time.monotonic() < deadline:
        time.sleep(0.1)
    assert session.closed, "QEMU did not end after RESET:\n" + tail(session.text)


def slot_partition(image: Path, slot: str) -> tuple[int, int]:
    """(byte offset, size) of slot-a / slot-b."""
    part = {p.name: p for p in read_gpt(image).partitions}[f"slot-{slot}"]
    return part.first_lba * 512, (part.last_lba - part.first_lba + 1) * 512


def read_slot(image: Path, slot: str) -> bytes:
    offset, size = slot_partition(image, slot)
    with image.open("rb") as f:
        f.seek(offset)
        return f.read(size)



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



def wait_line(session, pattern: str, start: int, timeout: float = BOOT_TIMEOUT) -> re.Match[str]:
    try:
        return session.wait_for(pattern, timeout=timeout, start=start)
    except Exception as exc:  # MantraError: show the console
        raise AssertionError(f"{exc}\n{tail(session.text)}") from None



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



def wipe(device: SpoiledImage, slot: str, size: int = 4 << 20) -> None:
    """Overwrites the start of a slot (its FAT metadata) with a pattern: the
    slot holds no file system, so every mapped block must be sent."""
    offset, _ = slot_partition(device.image, slot)
    with device.image.open("r+b") as f:
        f.seek(offset)
        f.write(bytes([0xA5]) * size)



def test_mantra_flash_then_boot_the_new_slot(default_image: BuildResult, device: SpoiledImage, tmp_path: Path,
                                             workspace: Workspace) -> None:
    """`mantra flash` (serial_flash.flash) of a new image into the wiped slot
    b of a fresh board: HELLO describes the board, nothing but frames follow
    the entry line, BUSY keepalives come during the checks; after RESET
    slot b boots as pending and MantraInit confirms it."""
    source = new_source(default_image, tmp_path / "source", counter=4)
    wipe(device, "b")
    log: list[str] = []
    busy: list[tuple[int, int]] = []
    with console_session(device.image, workspace=workspace) as session:
        hello = session_on(Line(session), log).sync(120)
        entry = ENTRY_LINE.search(session.text)
        assert entry and entry[1] == BOARD, tail(session.text)
        assert re.search(r"^MantraBoot: entering flash mode \(MANTRA-FLASH on the console\); slot a is kept, slot b "
                         r"can be written\r?$", session.text, re.M), tail(session.text)
        assert (hello.version, hello.max_payload, hello.window, hello.compression, hello.block_size, hello.baud) == \
            (1, 4096, 8, 1, BLOCK, 115200)
        assert hello.board == BOARD and hello.rollback_min == 0
        assert [(s.name, s.running) for s in hello.slots] == [("a", True), ("b", False)] and hello.target_slot == 1
        assert hello.slots[1].size == slot_partition(device.image, "b")[1]
        assert (hello.slots[0].state, hello.slots[0].version) == (m.SlotState.ACTIVE, "0.1.0")
        result = flash_to(session, source, default_image, log, busy=lambda done, total: busy.append((done, total)))
        assert result.activated and result.target_slot == "b", log
        assert result.sent_blocks == result.mapped_blocks - result.held_blocks > 0
        assert busy and all(done <= total for done, total in busy), busy
        wait_closed(session)
        figures = ended(session)
        assert figures["blocks"] == result.sent_blocks and figures["naks"] == 0
        # Only frames between the entry line and flash mode's last line.
        between = session.raw().split(b"waiting for the host", 1)[1].split(b"MantraBoot: flash mode ended", 1)[0]
        assert b"MantraBoot" not in between and b"BdsDxe" not in between
    print(f"mantra flash over QEMU's console: {result.mapped_blocks} mapped blocks, {result.sent_blocks} sent, "
          f"{result.tx_bytes} bytes on the line, effective throughput {result.effective:.1f} x line rate")
    # Booting b checks its envelope and every component's SHA-256.
    boot_new_slot(device, workspace, counter=4)
    preferred, records = slots_var(device)
    assert preferred == 1
    assert records[1][:3] == (STATE_ACTIVE, 0, 4) and records[0][0] == STATE_ACTIVE


def test_wrong_board_and_wrong_key_are_refused_before_writing(default_image: BuildResult, device: SpoiledImage,
                                                              tmp_path: Path, workspace: Workspace) -> None:
    """BEGIN with an image signed for another board or with another key set,
    or for the protected slot, is refused by the board (the host's own
    checks bypassed: single commands of serial_flash.Session) and nothing
    is written; SET_BAUD switches to a rate the UART divides."""
    import dataclasses

    from mantra.signing import keys as signing_keys
    from mantra.signing.sign import ImageInfo, sign_image
    from support import mantra

    other_board = new_source(default_image, tmp_path / "other-board")
    keyset = signing_keys.load_keyset(other_board.keys)
    info = dataclasses.replace(ImageInfo.beside(other_board.image), built_components={}, board="qemu-aarch64")
    sign_image(other_board.image, keyset, signing_keys.passphrase_for(keyset.dir), info=info, slot="a")
    other_keys = tmp_path / "other-keys"
    os.environ.setdefault("MANTRA_KEY_PASSPHRASE", "another-key-set-passphrase")
    done = mantra("keys", "init", str(other_keys))
    assert done.returncode == 0, done.stdout + done.stderr
    wrong_key = new_source(default_image, tmp_path / "wrong-key")
    other = signing_keys.load_keyset(other_keys)
    info = dataclasses.replace(ImageInfo.beside(wrong_key.image), built_components={})
    sign_image(wrong_key.image, other, signing_keys.passphrase_for(other.dir), info=info, slot="a")
    good = new_source(default_image, tmp_path / "good")

    before = read_slot(device.image, "b")
    log: list[str] = []
    with console_session(device.image, workspace=workspace) as session:
        s = session_on(Line(session), log)
        hello = s.sync(120)
        for source, code, text in [(other_board, m.ErrorCode.WRONG_BOARD, "qemu-aarch64"),
                                   (wrong_key, m.ErrorCode.KEY, "key record")]:
            with pytest.raises(DeviceError) as refused:
                s.begin(begin_of(source, hello.target_slot)[0])
            assert refused.value.code == code, refused.value
            assert text in refused.value.device_message, refused.value
            assert "image refused before writing" in refused.value.device_message
        # No session was opened: MAP has nothing to add to.
        with pytest.raises(DeviceError) as refused:
            s.command(m.Map(0, (m.MapEntry(0, bytes(32)),)))
        assert refused.value.code == m.ErrorCode.NO_SESSION
        # The protected (preferred) slot a: ERROR 7.
        with pytest.raises(DeviceError) as refused:
            s.begin(begin_of(good, 0)[0])
        assert refused.value.code == m.ErrorCode.WRONG_SLOT and "never written" in refused.value.device_message
        # The baud switch: COM1's 1.8432 MHz clock makes 57600 but not 921600.
        with pytest.raises(DeviceError) as refused:
            s.command(m.SetBaud(921600))
        assert refused.value.code == m.ErrorCode.UNSUPPORTED
        assert s.set_baud(57600, 115200) and s.hello.baud == 57600
        assert s.set_baud(115200, 57600) and s.hello.baud == 115200
        mark = session.mark()
        s.abort()
        wait_line(session, r"MantraBoot: flash mode: aborted by the host; booting normally", mark, timeout=60)
        wait_line(session, r"^MantraBoot: booting slot a \(active, security counter 0\)\r?$", mark)
    assert read_slot(device.image, "b") == before
    assert [r[0] for r in slots_var(device)[1]] == [STATE_ACTIVE, STATE_ACTIVE]


def test_resume_after_a_cut_and_a_damaged_frame_is_resent(default_image: BuildResult, device: SpoiledImage,
                                                          tmp_path: Path, workspace: Workspace) -> None:
    """A DATA frame damaged on the wire is NAKed and resent; the line is then
    cut part-way; `mantra flash` run again resumes (the board holds what it
    acknowledged) and the new slot boots."""
    source = new_source(default_image, tmp_path / "source", counter=2)
    wipe(device, "b")  # a first flash: every mapped block is sent
    log: list[str] = []
    with console_session(device.image, workspace=workspace) as session:
        cut = Line(session, corrupt=(2,), cut=(FrameType.DATA, 40))
        with pytest.raises(ConnectionLost):
            flash_to(session, source, default_image, log, line=cut)
        assert cut.corrupted == 1 and cut.counts[FrameType.DATA] == 41
        assert any("NAK (bad frame)" in line for line in log), log
        result = flash_to(session, source, default_image, log)
        assert 0 < result.held_blocks < result.mapped_blocks, log
        assert result.sent_blocks == result.mapped_blocks - result.held_blocks
        wait_closed(session)
        figures = ended(session)
        assert figures["naks"] >= 1
        # Over both runs each block was written once (those the wipe left as
        # they should be were never sent).
        assert result.sent_blocks <= figures["blocks"] <= result.mapped_blocks
    boot_new_slot(device, workspace, counter=2)


def kill_points() -> int:
    return int(os.environ.get("MANTRA_FLASH_KILL_POINTS", "5"))


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
    """QEMU is killed (SIGTERM: no guest shutdown) at seeded random points of
    `mantra flash` into slot b, wiped before each flash: after BEGIN, after the block map, at
    a random DATA frame, after FINISH or after ACTIVATE. Every restart must
    boot a slot that verified: the factory slot a while b is flashing, or
    b (pending) once it was activated."""
    source = new_source(default_image, tmp_path / "source", counter=3)
    rng = random.Random(seed)
    kinds = ["begin", "map", "data", "finish", "activate"]
    rng.shuffle(kinds)  # every kind once, then random ones, mostly in DATA
    stages = kinds + [rng.choice(["begin", "map", "data", "data", "data", "data", "finish", "activate"])
                      for _ in range(max(0, points - len(kinds)))]
    outcomes = []
    for stage in stages[:points]:
        # Each flash is a whole one (slot b wiped while the board is off),
        # so a DATA point falls within the blocks.
        wipe(device, "b")
        log: list[str] = []
        options: dict = {"activate": stage == "activate", "reset": False}
        if stage == "begin":
            options["line_cut"] = (FrameType.MAP, 0)
        elif stage == "map":
            options["line_cut"] = (FrameType.HAVE, 0)
        elif stage == "data":
            options["line_cut"] = (FrameType.DATA, rng.randrange(1, 80))
        with console_session(device.image, workspace=workspace) as session:
            line = Line(session, cut=options.pop("line_cut", None))
            try:
                flash_to(session, source, default_image, log, line=line, **options)
                reached = "activate" if stage == "activate" else "finish"
            except ConnectionLost:
                reached = stage
            state = slots_var(device)[1][1][0]
            assert state == (m.SlotState.PENDING if reached == "activate" else STATE_FLASHING), (stage, log)
            # Leaving the block kills QEMU here.
        with console_session(device.image, workspace=workspace) as session:
            booted = wait_line(session, BOOTING, 0)
            text = session.text
            assert "MantraBoot: error" not in text, tail(text)
            slot, kind = booted[1], booted[2]
            assert re.search(rf"^MantraBoot: slot {slot}: verified \(", text, re.M), tail(text)
            if reached != "activate":
                assert re.search(r"^MantraBoot: slot b: flashing \(", text, re.M), tail(text)
                assert (slot, kind) == ("a", "active"), tail(text)
            else:
                assert (slot, kind) == ("b", "pending"), tail(text)
            wait_line(session, r"MantraBoot: exiting boot services", booted.end(), timeout=60)
        outcomes.append((stage, reached, slot, kind))
    # The last boot runs to the services' health check: the slot is usable.
    with console_session(device.image, workspace=workspace) as session:
        booted = wait_line(session, BOOTING, 0)
        wait_line(session, r"init: (all services healthy|boot confirmed)", booted.end())
    print(f"kill points (stage, reached, booted slot, state): {outcomes}")


def test_no_bootable_slot_enters_flash_mode(default_image: BuildResult, device: SpoiledImage, tmp_path: Path,
                                            workspace: Workspace) -> None:
    """Both slots wiped: MantraBoot says why nothing boots, then waits in
    flash mode (no MANTRA-FLASH needed); HELLO and MantraSlots show the
    target flashing (state 4) after BEGIN; the flash makes the device boot."""
    source = new_source(default_image, tmp_path / "source", counter=1)
    wipe(device, "a")
    wipe(device, "b")
    log: list[str] = []
    with console_session(device.image, workspace=workspace) as session:
        entry = wait_line(session, ENTRY_LINE.pattern, 0, timeout=120)
        before = session.text[:entry.start()]
        assert re.search(r"^MantraBoot: error: no bootable slot: slot a empty \(no file system\), slot b empty",
                         before, re.M), tail(before)
        assert "entering flash mode (no bootable slot)" in before
        s = session_on(Line(session), log)
        hello = s.say_hello()
        assert hello.target_slot == 1
        assert [slot.state for slot in hello.slots] == [m.SlotState.EMPTY, m.SlotState.EMPTY]
        s.begin(begin_of(source, 1)[0])
        assert [slot.state for slot in s.say_hello().slots] == [m.SlotState.EMPTY, m.SlotState.FLASHING]
        assert [r[0] for r in slots_var(device)[1]] == [0, STATE_FLASHING]
        result = flash_to(session, source, default_image, log)
        assert result.activated
        wait_closed(session)
    boot_new_slot(device, workspace, counter=1)


def test_flash_costs_under_icount(default_image: BuildResult, device: SpoiledImage, tmp_path: Path,
                                  workspace: Workspace) -> None:
    """A whole flash of the default image into a wiped slot under -icount
    shift=0 (TSC ticks = guest instructions): the figures MantraBoot prints."""
    source = new_source(default_image, tmp_path / "source", counter=1)
    wipe(device, "b")
    log: list[str] = []
    with console_session(device.image, workspace=workspace, icount=True) as session:
        result = flash_to(session, source, default_image, log, activate=False, reset=False)
        s = session_on(Line(session), log)
        s.say_hello()
        s.abort()
        figures = ended(session)
    print(f"flash costs (guest instructions, -icount shift=0): {figures}; FINISH reply {result.finish_instructions}; "
          f"{result.mapped_blocks} mapped blocks, {result.sent_blocks} sent, {result.tx_bytes} bytes on the line, "
          f"effective throughput {result.effective:.1f} x line rate, {result.seconds:.1f} s wall clock")
    assert figures["blocks"] == result.sent_blocks > 0
    assert 0 < figures["begin"] < 100_000_000
    assert 0 < figures["block"] < 100_000_000
    assert result.finish_instructions == figures["readback"] + figures["check"]


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
    log: list[str] = []
    with console_session(device.image, workspace=workspace) as session:
        entry = wait_line(session, ENTRY_LINE.pattern, 0, timeout=120)
        assert "entering flash mode (the MantraFlashMode variable)" in session.text[:entry.start()]
        s = session_on(Line(session), log)
        assert s.say_hello().target_slot == 1
        s.abort()
        wait_line(session, r"MantraBoot: flash mode: aborted by the host; booting normally", entry.end(), timeout=60)
        wait_line(session, r"^MantraBoot: booting slot a \(active, security counter 0\)\r?$", entry.end())
    assert read_variable(store, "MantraFlashMode") is None
    with console_session(device.image, workspace=workspace) as session:
        booted = wait_line(session, BOOTING, 0)
        assert not ENTRY_LINE.search(session.text[:booted.start()]), tail(session.text)
