"""mantra flash's serial session (mantra.provision.serial_flash) against the
MantraBoot flash-mode simulator (flash_device_sim.py) on a simulated clock:
a full flash, resume after a cut line, corrupted frames and blocks, the
checks before anything is written, ERROR replies, the dry run, the baud
switch and its revert, BUSY keepalives, sparse transfer and the bench
figure."""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

import pytest
from flash_device_sim import SimDevice, SimTransport
from flash_support import BOARD, device_disk, make_image, make_keyset
from mantra.provision import serial_flash as sf
from mantra.provision.bmap import SlotSource, block_map
from mantra.provision.frames import FrameDecoder, FrameType
from mantra.provision.messages import Compression, Data, SlotState
from mantra.signing.image import open_slot
from mantra.signing.verify import verify_disk

BLOCK = 65536


@pytest.fixture(scope="module")
def keyset(tmp_path_factory):
    return make_keyset(tmp_path_factory.mktemp("keys") / "product")


@pytest.fixture(scope="module")
def other_keyset(tmp_path_factory):
    return make_keyset(tmp_path_factory.mktemp("keys") / "other")


@pytest.fixture(scope="module")
def image(keyset, tmp_path_factory) -> Path:
    return make_image(tmp_path_factory.mktemp("image"), keyset)


@pytest.fixture
def disk(image, tmp_path) -> Path:
    return device_disk(image, tmp_path / "board" / "disk.img")


def device(disk: Path, keyset, **kw) -> SimDevice:
    return SimDevice(disk, board=kw.pop("board", BOARD), root_public=kw.pop("root", keyset.root_public), **kw)


def run(image: Path, dev: SimDevice, *, transport: SimTransport | None = None, **kw) -> sf.FlashResult:
    tr = transport or SimTransport(dev)
    return sf.flash(image, "sim://board", kw.pop("board", BOARD), transport=tr, clock=tr.clock, **kw)


def data_frames(writes: list[bytes]) -> list[tuple[int, Data]]:
    """(seq, DATA) of every DATA frame in what the host wrote."""
    dec = FrameDecoder()
    found = []
    for chunk in writes:
        for frame in dec.feed(chunk):
            if frame.type == FrameType.DATA:
                found.append((frame.seq, Data.decode(frame.payload)))
    return found


HELLO_FRAME = 14  # bytes of the HELLO the board answers, the first that counts


def session_bytes(tr: SimTransport) -> int:
    """What the host wrote from the answered HELLO on: everything but the
    probes sent while waiting for the board (each starts with MANTRA-FLASH)."""
    return sum(len(w) for w in tr.writes if not w.startswith(b"MANTRA-FLASH")) + HELLO_FRAME


def slot_bytes(path: Path, slot: str) -> bytes:
    part = open_slot(path, slot).partition
    with path.open("rb") as f:
        f.seek(part.offset)
        return f.read(part.size)


def mapped(image: Path) -> list[int]:
    part = open_slot(image, "a").partition
    return [e.index for e in block_map(SlotSource(image, part.offset, part.size), BLOCK).entries]


def assert_flashed(image: Path, disk: Path, keyset) -> None:
    """The board's slot b holds slot a of the image on every mapped block,
    and verifies as boot would check it."""
    src, dst = slot_bytes(image, "a"), slot_bytes(disk, "b")
    for index in mapped(image):
        assert src[index * BLOCK : (index + 1) * BLOCK] == dst[index * BLOCK : (index + 1) * BLOCK], index
    verify_disk(disk, keyset.root_public, slot="b", board=BOARD)


def test_full_flash(image, disk, keyset):
    dev = device(disk, keyset)
    tr = SimTransport(dev)
    lines = []
    progress = []
    result = run(image, dev, transport=tr, log=lines.append, progress=lambda d, t: progress.append((d, t)))
    assert_flashed(image, disk, keyset)
    blocks = mapped(image)
    # sparse: only mapped blocks were written, each once; zero blocks the board held are not sent
    assert set(dev.stats.writes) <= set(blocks) and all(n == 1 for n in dev.stats.writes.values())
    assert result.mapped_blocks == len(blocks) and result.sent_blocks + result.held_blocks == len(blocks)
    assert result.sent_blocks == len(dev.stats.writes) > 0
    assert dev.records["b"].state == SlotState.PENDING and dev.records["b"].tries == 3
    assert dev.records["a"].state == SlotState.ACTIVE
    assert dev.stats.resets == 1 and dev.mode == "reset"
    assert dev.stats.frames["FINISH"] == 1 and dev.stats.frames["ACTIVATE"] == 1
    # the figures are counted, not assumed
    assert result.tx_bytes == tr.written
    assert result.line_bytes == session_bytes(tr) < tr.written
    assert result.effective == pytest.approx(8 * 1024 * 1024 / session_bytes(tr))
    assert result.compression == Compression.ZLIB
    assert result.encoded_bytes == dev.stats.data_bytes  # no resends: every chunk byte once
    assert progress[-1] == (result.sent_blocks * BLOCK, result.sent_blocks * BLOCK)
    assert any("holds 0 of" in line for line in lines)
    assert not dev.stats.naks and not dev.stats.errors


def test_sparse_free_space_is_never_sent(image, tmp_path, keyset):
    """Random bytes in the slot's free clusters (a deleted file's leftovers)
    stay on the host: the board's slot keeps zeros there, and still verifies."""
    noisy = tmp_path / "img" / "image.img"
    device_disk(image, noisy)
    for name in ("manifest.json",):
        (noisy.parent / name).write_bytes((image.parent / name).read_bytes())
    (noisy.parent / "config").mkdir()
    (noisy.parent / "config" / "root_key.bin").write_bytes(keyset.root_public)
    part = open_slot(noisy, "a").partition
    blocks = set(mapped(noisy))
    free = [i for i in range(part.size // BLOCK) if i not in blocks]
    assert len(free) > 10
    noise = random.Random(3).randbytes(BLOCK)
    with noisy.open("r+b") as f:
        for i in free:
            f.seek(part.offset + i * BLOCK)
            f.write(noise)
    disk = device_disk(image, tmp_path / "board" / "disk.img")
    dev = device(disk, keyset)
    tr = SimTransport(dev)
    result = run(noisy, dev, transport=tr)
    assert set(mapped(noisy)) == blocks  # the noise did not change the map
    assert not set(dev.stats.writes) & set(free)
    sent = {d.entry for _seq, d in data_frames(tr.writes)}
    assert len(sent) == result.sent_blocks
    assert tr.written < len(free) * BLOCK // 10  # incompressible noise was never on the line
    dst = slot_bytes(disk, "b")
    assert all(dst[i * BLOCK : (i + 1) * BLOCK] == bytes(BLOCK) for i in free)
    verify_disk(disk, keyset.root_public, slot="b", board=BOARD)


def _cut_after(n: int):
    count = {"data": 0}

    def cut(data: bytes) -> bool:
        if len(data) > 2 and data[:2] == b"MF" and data[2] == FrameType.DATA:
            count["data"] += 1
            return count["data"] > n
        return False

    return cut


@pytest.mark.parametrize("power_cut", [False, True], ids=["cable", "power"])
def test_resume_after_a_cut_sends_nothing_good_twice(image, disk, keyset, power_cut):
    dev = device(disk, keyset)
    first = SimTransport(dev)
    first.cut = _cut_after(25)
    with pytest.raises(sf.ConnectionLost) as lost:
        run(image, dev, transport=first)
    assert "run the same command again to resume" in str(lost.value)
    written_before = dict(dev.stats.writes)
    assert 0 < len(written_before) < len(mapped(image))
    if power_cut:
        dev.power_cycle()  # the session is gone; the board re-hashes its slot
    second = SimTransport(dev)
    result = run(image, dev, transport=second)
    assert_flashed(image, disk, keyset)
    # every block written exactly once over both runs
    assert all(n == 1 for n in dev.stats.writes.values())
    assert result.held_blocks >= len(written_before)
    # nothing the board held was on the line again
    held_entries = {i for i, e in enumerate(block_map_of(image).entries) if e.index in written_before}
    resent = {d.entry for _seq, d in data_frames(second.writes)}
    assert not resent & held_entries
    # bytes: the second run sent exactly the encoded blocks it had to, once
    expected = sum(len(sf.encode_block(block_of(image, e.index), Compression.ZLIB)[1])
                   for i, e in enumerate(block_map_of(image).entries) if i in resent)
    assert sum(len(d.chunk) for _s, d in data_frames(second.writes)) == expected


def block_map_of(image: Path):
    part = open_slot(image, "a").partition
    return block_map(SlotSource(image, part.offset, part.size), BLOCK)


def block_of(image: Path, index: int) -> bytes:
    part = open_slot(image, "a").partition
    return SlotSource(image, part.offset, part.size).read(index * BLOCK, BLOCK)


def test_corrupted_frames_are_resent(image, disk, keyset):
    dev = device(disk, keyset)
    tr = SimTransport(dev)
    flipped = []

    def mangle(data: bytes) -> bytes:
        """A bit flip in the first transmission of DATA seq 3, 11, 12 and 30
        (a resend that is damaged again would wait for the ACK timeout: the
        board NAKs a gap once)."""
        if data[:2] == b"MF" and data[2] == FrameType.DATA:
            seq = int.from_bytes(data[4:6], "little")
            if seq in (3, 11, 12, 30) and seq not in flipped:
                pos = random.Random(seq).randrange(8, len(data))
                flipped.append(seq)
                return data[:pos] + bytes([data[pos] ^ 0x10]) + data[pos + 1 :]
        return data

    tr.mangle = mangle
    result = run(image, dev, transport=tr)
    assert len(flipped) == 4
    assert dev.stats.dropped >= 4
    assert any(reason == 1 for _seq, reason in dev.stats.naks)  # NAK: bad frame
    assert result.data.naks >= 1 and result.data.resent > 0
    assert result.data.timeouts == 0  # go-back-N from the NAK, not a wait for the ACK timeout
    assert all(n == 1 for n in dev.stats.writes.values())
    assert_flashed(image, disk, keyset)


def test_block_hash_mismatch_resends_the_whole_block(image, disk, keyset):
    dev = device(disk, keyset)
    dev.corrupt_block_once = {1, 3}
    tr = SimTransport(dev)
    lines = []
    result = run(image, dev, transport=tr, log=lines.append)
    assert [r for _s, r in dev.stats.naks].count(3) == 2
    assert sum("failed its hash check" in line for line in lines) == 2
    frames = data_frames(tr.writes)
    # entry 1's first chunk went out twice, with the same seq both times
    firsts = [seq for seq, d in frames if d.entry == 1 and d.offset == 0]
    assert len(firsts) == 2 and firsts[0] == firsts[1]
    assert result.data.resent > 0 and result.data.timeouts == 0
    assert_flashed(image, disk, keyset)


def test_seq_wraps_at_65536(image, disk, keyset, monkeypatch):
    """Both sides start DATA near the end of the u16 seq range (as after
    65 000 frames); a NAK and a corrupted block across the wrap still resend
    the right frames."""
    start = 65530
    original_device_begin = SimDevice._cmd_begin
    original_host_begin = sf.Session.begin

    def device_begin(self, *args):
        original_device_begin(self, *args)
        if self.session:
            self.session["next_seq"] = start

    def host_begin(self, begin):
        held = original_host_begin(self, begin)
        self.data_seq = start
        return held

    monkeypatch.setattr(SimDevice, "_cmd_begin", device_begin)
    monkeypatch.setattr(sf.Session, "begin", host_begin)
    dev = device(disk, keyset)
    dev.corrupt_block_once = {1}
    tr = SimTransport(dev)
    count = {"n": 0}

    def mangle(data: bytes) -> bytes:
        if data[:2] == b"MF" and data[2] == FrameType.DATA:
            count["n"] += 1
            if count["n"] == 5:  # seq 65534
                return data[:-1] + bytes([data[-1] ^ 1])
        return data

    tr.mangle = mangle
    result = run(image, dev, transport=tr)
    seqs = [seq for seq, _d in data_frames(tr.writes)]
    assert seqs[0] == start and 0 in seqs and 65535 in seqs
    assert result.data.timeouts == 0 and result.data.naks >= 2
    assert all(n == 1 for n in dev.stats.writes.values())
    assert_flashed(image, disk, keyset)


def test_lost_frames_time_out_and_resend(image, disk, keyset):
    """A DATA frame that vanishes (no NAK: nothing after it arrives) is
    resent after the ACK timeout."""
    dev = device(disk, keyset)
    tr = SimTransport(dev)
    state = {"n": 0}

    def mangle(data: bytes) -> bytes:
        if data[:2] == b"MF" and data[2] == FrameType.DATA:
            state["n"] += 1
            if state["n"] == 6:
                return b""
        return data

    tr.mangle = mangle
    result = run(image, dev, transport=tr)
    assert result.data.resent >= 1
    assert_flashed(image, disk, keyset)


def test_lost_acks_cost_nothing(image, disk, keyset):
    """ACKs and NAKs carry the next expected seq: a later one acknowledges
    what a lost one would have, so lost ACKs cause no resend and no wait."""
    dev = device(disk, keyset)
    dev.corrupt_block_once = {2}
    tr = SimTransport(dev)
    state = {"acks": 0, "lost": 0}

    def mangle_rx(data: bytes) -> bytes:
        dec = FrameDecoder()
        frames = dec.feed(data)
        if len(frames) == 1 and frames[0].type == FrameType.ACK:
            state["acks"] += 1
            if state["acks"] % 3 == 0:
                state["lost"] += 1
                return data[:-1] + bytes([data[-1] ^ 0xFF])  # bad CRC: the host drops it
        return data

    tr.mangle_rx = mangle_rx
    result = run(image, dev, transport=tr)
    assert state["lost"] > 10
    assert result.data.timeouts == 0
    assert all(n == 1 for n in dev.stats.writes.values())
    assert_flashed(image, disk, keyset)
    # the same flash with every ACK arriving resends exactly as much (the bad block and what followed it)
    clean = device(device_disk(image, disk.parent / "clean.img"), keyset)
    clean.corrupt_block_once = {2}
    clean_result = run(image, clean)
    assert result.data.resent == clean_result.data.resent > 0
    assert result.tx_bytes == clean_result.tx_bytes


def test_wrong_board_in_the_command_is_refused_before_the_port(image, disk, keyset):
    dev = device(disk, keyset)
    tr = SimTransport(dev)
    with pytest.raises(sf.FlashError, match="wrong board: .* is built for qemu-x86_64, not rpi4") as err:
        sf.flash(image, "sim", "rpi4", transport=tr, clock=tr.clock)
    assert "./mantra build -b rpi4" in err.value.hint
    assert tr.written == 0


def test_wrong_board_on_the_line_is_refused_before_begin(image, disk, keyset):
    dev = device(disk, keyset, board="qemu-aarch64")
    with pytest.raises(sf.FlashError, match="the board on sim://board is a qemu-aarch64, not qemu-x86_64"):
        run(image, dev)
    assert set(dev.stats.frames) == {"HELLO"}
    assert not dev.stats.writes and dev.records["b"].state == SlotState.ACTIVE


def test_image_of_another_product_is_refused_before_begin(keyset, other_keyset, disk, tmp_path):
    foreign = make_image(tmp_path / "foreign", other_keyset, seed=9)
    dev = device(disk, keyset)
    with pytest.raises(sf.FlashError, match="another product's key") as err:
        run(foreign, dev)
    assert "key set of the product" in err.value.hint
    assert set(dev.stats.frames) == {"HELLO"} and not dev.stats.writes


def test_image_that_does_not_verify_is_refused_before_the_port(keyset, other_keyset, image, disk, tmp_path):
    """--root of another product: the offline verification (mantra.signing) fails."""
    other_root = tmp_path / "root.pub"
    other_root.write_bytes(other_keyset.root_public)
    dev = device(disk, keyset)
    tr = SimTransport(dev)
    with pytest.raises(sf.FlashError, match="does not verify: key record"):
        sf.flash(image, "sim", BOARD, transport=tr, clock=tr.clock, root=other_root)
    assert tr.written == 0


def test_rollback_refused_before_begin(image, disk, keyset):
    dev = device(disk, keyset, rollback_min=4)
    with pytest.raises(sf.FlashError, match="security counter 0 is below the board's minimum 4") as err:
        run(image, dev)
    assert "newer release" in err.value.hint
    assert set(dev.stats.frames) == {"HELLO"}


def test_device_error_replies_are_surfaced(image, disk, keyset, monkeypatch):
    """The board's own refusal (here: rollback at BEGIN, with the host's
    check skipped) comes back as the board's message and a hint."""
    monkeypatch.setattr(sf, "check_device", lambda *a, **k: None)
    dev = device(disk, keyset, rollback_min=4)
    with pytest.raises(sf.DeviceError) as err:
        run(image, dev)
    assert err.value.code == 6 and "refused BEGIN (rollback)" in err.value.message
    assert "security counter 0 is lower than the minimum 4" in err.value.message
    assert "newer release" in err.value.hint
    assert not dev.stats.writes


def test_block_io_error_says_power_cycle_and_resume(image, disk, keyset):
    dev = device(disk, keyset)
    dev.fail_write = {4}
    with pytest.raises(sf.DeviceError) as err:
        run(image, dev)
    assert "refused DATA (block io)" in err.value.message and "WriteBlocks" in err.value.message
    assert "power-cycle" in err.value.hint and "resume" in err.value.hint
    assert dev.records["b"].state == SlotState.FLASHING  # never activated


def test_slot_verification_failure_at_finish_is_surfaced_and_not_activated(image, disk, keyset):
    dev = device(disk, keyset)
    dev.finish_fail = "slot"
    with pytest.raises(sf.DeviceError, match="refused FINISH .slot verify.: slot verification failed"):
        run(image, dev)
    assert "ACTIVATE" not in dev.stats.frames and dev.records["b"].state != SlotState.PENDING


def test_finish_readback_failure_resends_what_the_board_lacks(image, disk, keyset):
    """FINISH finds a block that reads back wrong: the board forgets it,
    HAVE says so, the host sends that block again and FINISHes."""
    dev = device(disk, keyset)
    dev.damage_once = {5}
    lines = []
    result = run(image, dev, log=lines.append)
    assert dev.stats.frames["FINISH"] == 2
    assert any(e[0] == "FINISH" and e[1] == 11 for e in dev.stats.errors)
    assert any("sending the 1 blocks the board lacks again" in line for line in lines)
    index = block_map_of(image).entries[5].index
    assert dev.stats.writes[index] == 2 and sum(dev.stats.writes.values()) == len(dev.stats.writes) + 1
    assert result.sent_blocks == len(dev.stats.writes) + 1
    assert dev.records["b"].state == SlotState.PENDING
    assert_flashed(image, disk, keyset)


def test_dry_run_writes_nothing(image, disk, keyset):
    before = slot_bytes(disk, "b")
    dev = device(disk, keyset)
    tr = SimTransport(dev)
    result = run(image, dev, transport=tr, dry_run=True)
    assert result.dry_run and result.sent_blocks == 0
    assert set(dev.stats.frames) == {"HELLO"}
    assert slot_bytes(disk, "b") == before and dev.records["b"].state == SlotState.ACTIVE
    # the plan: every mapped block's encoding, counted
    bm = block_map_of(image)
    assert result.mapped_blocks == len(bm.entries)
    assert result.encoded_bytes == sum(len(sf.encode_block(block_of(image, e.index), Compression.ZLIB)[1])
                                       for e in bm.entries)
    assert result.tx_bytes > result.encoded_bytes
    # the estimate is what a real flash of every mapped block puts on the line, sync aside
    real_dev = device(device_disk(image, disk.parent / "real.img"), keyset)
    real_dev.root_public = keyset.root_public
    real_tr = SimTransport(real_dev)
    real = run(image, real_dev, transport=real_tr, compress=True)
    zero = hashlib.sha256(bytes(BLOCK)).digest()
    held_bytes = sum(len(sf.encode_block(bytes(BLOCK), Compression.ZLIB)[1]) + 28
                     for e in bm.entries if e.hash == zero)
    sync_bytes = sum(len(w) for w in real_tr.writes if w.startswith(b"MANTRA-FLASH"))
    assert abs((real.tx_bytes - sync_bytes) - (result.tx_bytes - held_bytes)) < 200
    assert real.line_bytes == session_bytes(real_tr)


def test_dry_run_without_a_board(image):
    result = sf.flash(image, None, BOARD, dry_run=True)
    assert result.dry_run and result.mapped_blocks == len(block_map_of(image).entries)


def test_baud_switch(image, disk, keyset):
    dev = device(disk, keyset)
    tr = SimTransport(dev)
    slow = device(device_disk(image, disk.parent / "slow.img"), keyset)
    tr_slow = SimTransport(slow)
    fast_result = run(image, dev, transport=tr, baud=921600)
    slow_result = run(image, slow, transport=tr_slow)
    assert fast_result.baud == 921600 and not fast_result.baud_reverted
    assert dev.stats.frames["SET_BAUD"] == 1 and tr.baud == 921600
    assert fast_result.seconds < slow_result.seconds / 4  # the line time went down eightfold
    assert_flashed(image, disk, keyset)


def test_slow_line_has_no_spurious_resends(image, disk, keyset):
    """At 9600 baud one 4 KiB frame is 4.3 s on the line and the window 36 s:
    the 2 s timeouts count from when the bytes have left, so nothing is
    resent and nothing times out."""
    dev = device(disk, keyset, baud=9600)
    tr = SimTransport(dev, baud=9600)
    result = run(image, dev, transport=tr, initial_baud=9600)
    assert result.baud == 9600
    assert result.data.timeouts == 0 and result.data.resent == 0
    assert all(dev.stats.frames[c] == 1 for c in ("BEGIN", "MAP", "HAVE", "FINISH", "ACTIVATE", "RESET"))
    assert tr.now > result.tx_bytes * 10 / 9600  # it did take the line time
    assert_flashed(image, disk, keyset)


def test_baud_switch_reverts_when_the_line_cannot_do_it(image, disk, keyset):
    dev = device(disk, keyset)
    tr = SimTransport(dev, max_line_baud=460800)
    lines = []
    result = run(image, dev, transport=tr, baud=921600, log=lines.append)
    assert result.baud_reverted and result.baud == 115200
    assert tr.baud == 115200 and dev.baud == 115200
    assert any("went back to 115200" in line for line in lines)
    assert_flashed(image, disk, keyset)


def test_baud_the_board_lacks_is_an_error(image, disk, keyset):
    dev = device(disk, keyset, bauds=(115200,))
    with pytest.raises(sf.DeviceError, match="refused SET_BAUD .unsupported.") as err:
        run(image, dev, baud=921600)
    assert "--baud" in err.value.hint
    assert not dev.stats.writes


def test_busy_keepalives_extend_finish(image, disk, keyset):
    dev = device(disk, keyset, finish_seconds=7.0)  # longer than the 2 s reply timeout
    busy = []
    run(image, dev, busy=lambda d, t: busy.append((d, t)))
    assert dev.stats.frames["FINISH"] == 1  # never resent: BUSY kept it alive
    assert dev.stats.busy >= 10 and len(busy) == dev.stats.busy + 1  # each BUSY, then "done"
    total = busy[0][1]
    assert busy[-1] == (total, total) and all(d < total for d, _t in busy[:-1])
    assert dev.records["b"].state == SlotState.PENDING


def test_sync_through_console_text_from_boot(image, disk, keyset):
    """The board is still booting: console text, then it sees MANTRA-FLASH."""
    dev = device(disk, keyset, console=b"MantraBoot 0.1 (qemu-x86_64)\r\nMantraBoot: slot a: verified\r\n")
    assert dev.mode == "boot"
    result = run(image, dev)
    assert result.sent_blocks > 0 and dev.stats.resets == 1


def test_a_board_that_read_nothing_while_booting(image, disk, keyset):
    """Input queues up while the firmware starts (QEMU's socket, a UART's
    buffers): MantraBoot then reads every queued line and HELLO at once and
    answers each HELLO. The host sends HELLO rarely while waiting, drops
    the late replies, and every command goes out once."""
    dev = device(disk, keyset)
    dev.boot_until = 8.0
    lines = []
    result = run(image, dev, log=lines.append)
    assert result.sent_blocks > 0
    assert 5 <= dev.stats.frames["HELLO"] <= 12  # 1 a second, not 10
    assert dev.stats.frames["BEGIN"] == 1 and dev.stats.frames["FINISH"] == 1
    assert any(re.search(r"dropped \d+ late repl(y|ies) to earlier HELLOs", line) for line in lines)


def test_no_writable_slot(image, disk, keyset):
    dev = device(disk, keyset)
    dev.no_target = True
    with pytest.raises(sf.FlashError, match="has no slot it can write now"):
        run(image, dev)
    assert set(dev.stats.frames) == {"HELLO"}


def test_malformed_hello_reply_is_named(image, disk, keyset):
    dev = device(disk, keyset)
    dev.hello_extra = b"\0\0"
    tr = SimTransport(dev)
    with pytest.raises(sf.FlashError, match="sends a malformed HELLO reply: HELLO reply: 2 unexpected trailing bytes"):
        run(image, dev, transport=tr)
    assert tr.now < 1  # named at once, not after --wait


def test_no_flash_mode_times_out_with_advice(image, disk, keyset):
    dev = device(disk, keyset)
    dev.mode = "booted"  # it never enters flash mode
    tr = SimTransport(dev)
    with pytest.raises(sf.FlashError, match="no MantraBoot flash mode on sim://board within 5 s") as err:
        run(image, dev, transport=tr, wait=5)
    assert "reset or power the board" in err.value.hint
    assert 5 <= tr.now < 6


def test_unplugged_while_waiting_for_a_reply(image, disk, keyset):
    dev = device(disk, keyset)
    tr = SimTransport(dev)
    tr.cut = lambda data: data[:2] == b"MF" and data[2] == FrameType.BEGIN
    with pytest.raises(sf.ConnectionLost, match="lost the connection to the board on sim://board while sending BEGIN"):
        run(image, dev, transport=tr)


def test_silent_board_mid_transfer(image, disk, keyset):
    """The board stops answering (no ACK, no NAK): resent from the oldest
    frame a few times, then the advice to resume."""
    dev = device(disk, keyset)
    tr = SimTransport(dev)
    state = {"n": 0}

    def mangle(data: bytes) -> bytes:
        if data[:2] == b"MF" and data[2] == FrameType.DATA:
            state["n"] += 1
            if state["n"] > 20:
                return b""
        return data

    tr.mangle = mangle
    with pytest.raises(sf.ConnectionLost, match="stopped acknowledging data") as err:
        run(image, dev, transport=tr)
    assert "resume" in err.value.hint


def test_bench_figure(image, tmp_path, keyset):
    """bench(): a fresh board (target slot wiped) from the image, the figure
    is slot image bytes over bytes on the line, printed with one decimal."""
    from contextlib import contextmanager

    from mantra.provision.bench import bench

    boards = []

    @contextmanager
    def sim_board(disk: Path):
        dev = device(disk, keyset)
        tr = SimTransport(dev)
        boards.append((dev, tr))
        yield tr, "sim://bench"

    result = bench(image, BOARD, tmp_path / "bench", board_factory=sim_board)
    dev, tr = boards[0]
    assert result.image_size == 8 * 1024 * 1024
    assert result.tx_bytes == tr.written and result.line_bytes == session_bytes(tr)
    figure = result.image_size / session_bytes(tr)
    assert sf.bench_line(result) == f"effective throughput: {figure:.1f} x line rate"
    assert figure >= 3
    # the board's slot b was wiped first: every mapped block that is not all zeros was sent
    zero = hashlib.sha256(bytes(BLOCK)).digest()
    assert result.sent_blocks == sum(e.hash != zero for e in block_map_of(image).entries)
    assert dev.records["b"].state == SlotState.PENDING


def test_bench_figure_is_the_ratio():
    r = sf.FlashResult("p", BOARD, "b", 128 << 20, BLOCK, 40, 0, 40, 10_000_000, 0, 1.0, 115200, Compression.ZLIB)
    assert sf.bench_line(r) == "effective throughput: 13.4 x line rate"
    r.wait_bytes = 1_000_000  # waiting for the board is not part of the figure
    assert r.line_bytes == 9_000_000 and sf.bench_line(r) == "effective throughput: 14.9 x line rate"
    with pytest.raises(ValueError):
        sf.effective_throughput(1, 0)
