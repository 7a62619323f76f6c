"""The MantraFlash frame codec and payloads (docs/flash-protocol.md):
byte layouts checked against hand-packed bytes, the decoder's hunt through
noise and bad frames, and the strict payload checks."""

from __future__ import annotations

import hashlib
import random
import struct
import zlib

import pytest
from mantra.provision import frames as fr
from mantra.provision import messages as m
from mantra.provision.frames import Frame, FrameDecoder, FrameError, FrameType, encode_frame


def test_frame_layout_matches_the_doc():
    raw = encode_frame(FrameType.ACK, b"\x05\x00", seq=0x1234)
    body = b"MF" + bytes([0x81, 0]) + b"\x34\x12" + b"\x02\x00" + b"\x05\x00"
    assert raw == body + struct.pack("<I", zlib.crc32(body))
    assert len(raw) == fr.OVERHEAD + 2


def test_encode_refuses_long_payload_bad_seq_unknown_type():
    with pytest.raises(FrameError):
        encode_frame(FrameType.DATA, bytes(4097))
    encode_frame(FrameType.DATA, bytes(4096))
    with pytest.raises(FrameError):
        encode_frame(FrameType.DATA, b"", seq=65536)
    with pytest.raises(FrameError):
        encode_frame(0x42, b"")


def test_decoder_skips_console_text_and_splits_anywhere():
    stream = (
        b"MantraBoot: flash mode (protocol 1, board qemu-x86_64): waiting for the host\r\nM"
        + encode_frame(FrameType.OK, b"hello", 1)
        + b"noise MF"
        + encode_frame(FrameType.BUSY, bytes(8), 2)
    )
    for cut in range(1, len(stream)):
        dec = FrameDecoder()
        got = dec.feed(stream[:cut]) + dec.feed(stream[cut:])
        assert [(f.type, f.seq, f.payload) for f in got] == [
            (FrameType.OK, 1, b"hello"),
            (FrameType.BUSY, 2, bytes(8)),
        ], cut
    # byte by byte too
    dec = FrameDecoder()
    got = [f for b in stream for f in dec.feed(bytes([b]))]
    assert len(got) == 2
    assert b"waiting for the host" in dec.take_noise()


def test_decoder_drops_bad_crc_and_resyncs_after_the_magic():
    good = encode_frame(FrameType.ACK, b"\x01\x00", 7)
    bad = bytearray(encode_frame(FrameType.ACK, b"\x02\x00", 8))
    bad[-1] ^= 0x40
    dec = FrameDecoder()
    got = dec.feed(bytes(bad) + good)
    assert [f.seq for f in got] == [7]
    assert dec.dropped == 1


def test_decoder_finds_a_frame_hidden_inside_a_dropped_one():
    inner = encode_frame(FrameType.OK, b"x", 3)
    # a header that claims a payload containing a whole good frame, then a bad CRC
    outer_body = b"MF" + bytes([0x80, 0]) + b"\x00\x00" + struct.pack("<H", len(inner)) + inner
    outer = outer_body + b"\0\0\0\0"
    dec = FrameDecoder()
    got = dec.feed(outer)
    assert [(f.type, f.payload) for f in got] == [(FrameType.OK, b"x")]
    assert dec.dropped == 1


@pytest.mark.parametrize("mutate", ["length", "flags", "type"])
def test_decoder_drops_bad_headers(mutate):
    raw = bytearray(encode_frame(FrameType.OK, b"abc"))
    if mutate == "length":
        raw[6:8] = struct.pack("<H", 4097)
    elif mutate == "flags":
        raw[3] = 1
    else:
        raw[2] = 0x42
    good = encode_frame(FrameType.OK, b"z")
    dec = FrameDecoder()
    got = dec.feed(bytes(raw) + good)
    assert [f.payload for f in got] == [b"z"]
    assert dec.dropped == 1


def test_random_bit_flips_never_yield_a_wrong_frame():
    rng = random.Random(1)
    frames = [encode_frame(FrameType.DATA, rng.randbytes(rng.randrange(1, 300)), i) for i in range(200)]
    stream = bytearray(b"".join(frames))
    flipped = set()
    for _ in range(40):
        pos = rng.randrange(len(stream))
        stream[pos] ^= 1 << rng.randrange(8)
        flipped.add(pos)
    dec = FrameDecoder()
    got = dec.feed(bytes(stream))
    originals = {f: i for i, f in enumerate(frames)}
    for f in got:
        assert f.encode() in originals  # every frame delivered is one that was sent, intact
    assert 150 < len(got) < 200
    assert dec.dropped > 0


def test_hello_reply_round_trip_and_layout():
    slots = (
        m.SlotInfo("a", m.SlotState.ACTIVE, 0, True, 64 << 20, 3, "0.1.0"),
        m.SlotInfo("b", m.SlotState.BAD, 0, False, 64 << 20, 0, ""),
    )
    reply = m.HelloReply(1, 4096, 8, 1, 65536, 115200, "qemu-x86_64", bytes(range(32)), 3, slots, 1)
    raw = reply.encode()
    assert raw[:16] == struct.pack("<HHHHII", 1, 4096, 8, 1, 65536, 115200)
    assert raw[16:18] == struct.pack("<H", 11) and raw[18:29] == b"qemu-x86_64"
    assert raw[-1] == 1
    slot_a = raw[29 + 32 + 9 : 29 + 32 + 9 + 20]
    assert slot_a == struct.pack("<BBBBQQ", ord("a"), 1, 0, 1, 64 << 20, 3)
    back = m.HelloReply.decode(raw)
    assert back == reply
    assert back.target.name == "b"
    assert back.supports(m.Compression.ZLIB) and not back.supports(m.Compression.ZSTD)
    with pytest.raises(m.MessageError):
        m.HelloReply.decode(raw + b"\0")
    with pytest.raises(m.MessageError):
        m.HelloReply.decode(raw[:-1])
    with pytest.raises(m.MessageError):
        m.HelloReply.decode(raw[:-1] + b"\x02")  # target slot out of range
    assert m.HelloReply.decode(raw[:-1] + b"\xff").target is None  # no slot can be written now


def test_begin_layout_and_checks():
    digest = hashlib.sha256(b"x").digest()
    begin = m.Begin(1, m.Compression.ZLIB, 65536, 65536 * 10, 4, digest, b"ENVELOPE")
    raw = begin.encode()
    assert raw[:20] == struct.pack("<BBHIQI", 1, 1, 0, 65536, 655360, 4)
    assert raw[20:52] == digest and raw[52:56] == struct.pack("<I", 8) and raw[56:] == b"ENVELOPE"
    assert m.Begin.decode(raw) == begin
    bad = bytearray(raw)
    bad[2] = 1  # reserved
    with pytest.raises(m.MessageError, match="reserved"):
        m.Begin.decode(bytes(bad))
    bad = bytearray(raw)
    bad[0] = 2  # slot
    with pytest.raises(m.MessageError):
        m.Begin.decode(bytes(bad))
    bad = bytearray(raw)
    bad[1] = 3  # compression
    with pytest.raises(m.MessageError):
        m.Begin.decode(bytes(bad))
    with pytest.raises(m.MessageError, match="multiple"):
        m.Begin.decode(m.Begin(0, m.Compression.NONE, 65536, 1000, 0, digest, b"").encode())
    with pytest.raises(m.MessageError):
        m.Begin.decode(raw + b"!")


def test_map_entries_digest_and_order():
    entries = [m.MapEntry(i * 3, hashlib.sha256(bytes([i])).digest()) for i in range(5)]
    msg = m.Map(10, tuple(entries))
    raw = msg.encode()
    assert raw[:4] == struct.pack("<I", 10) and len(raw) == 4 + 5 * 36
    assert m.Map.decode(raw) == msg
    packed = b"".join(struct.pack("<I", e.index) + e.hash for e in entries)
    assert m.image_digest(entries) == hashlib.sha256(packed).digest()
    swapped = m.Map(0, (entries[1], entries[0])).encode()
    with pytest.raises(m.MessageError, match="increasing"):
        m.Map.decode(swapped)
    with pytest.raises(m.MessageError):
        m.Map.decode(raw[:-1])
    assert m.map_entries_per_frame() == 113


def test_have_bitmap_lsb_first_and_padding():
    bits = (True, False, True, True, False, False, False, False, True, False)
    raw = m.HaveReply(bits).encode()
    assert raw == bytes([0b00001101, 0b00000001])
    assert m.HaveReply.decode(raw, 10).held == bits
    with pytest.raises(m.MessageError, match="padding"):
        m.HaveReply.decode(bytes([0, 0b100]), 10)
    with pytest.raises(m.MessageError):
        m.HaveReply.decode(raw, 17)
    assert m.decode_reply(FrameType.HAVE, raw, have_count=10).held == bits


def test_data_layout_and_checks():
    d = m.Data(5, 100, 40, m.Compression.ZLIB, b"chunk")
    raw = d.encode()
    assert raw == struct.pack("<IIIB", 5, 100, 40, 1) + b"\0\0\0" + b"chunk"
    assert m.Data.decode(raw) == d and not d.last
    assert m.Data(0, 5, 0, m.Compression.NONE, b"chunk").last
    with pytest.raises(m.MessageError, match="past"):
        m.Data.decode(m.Data(0, 10, 8, m.Compression.NONE, b"abc").encode())
    with pytest.raises(m.MessageError, match="reserved"):
        m.Data.decode(raw[:13] + b"\x01" + raw[14:])
    with pytest.raises(m.MessageError):
        m.Data.decode(raw[:16])  # empty chunk
    assert m.data_chunk_size() == 4080


def test_device_frames_and_errors():
    assert m.Ack.decode(m.Ack(65535).encode()).next_seq == 65535
    nak = m.Nak(3, m.NakReason.BLOCK_HASH)
    assert nak.encode() == b"\x03\x00\x03" and m.Nak.decode(nak.encode()) == nak
    with pytest.raises(m.MessageError):
        m.Nak.decode(b"\x03\x00\x09")
    assert m.Busy.decode(m.Busy(1, 2).encode()) == m.Busy(1, 2)
    err = m.Error(m.ErrorCode.WRONG_BOARD, "board is rpi4")
    assert err.encode() == b"\x03\x00" + b"\x0d\x00" + b"board is rpi4"
    assert m.Error.decode(err.encode()) == err and err.code_name == "wrong board"
    with pytest.raises(m.MessageError):
        m.Error.decode(b"\x03\x00\x02\x00\xff\xfe")  # bad UTF-8
    frame = FrameDecoder().feed(m.to_frame(err))[0]
    assert m.decode_device_frame(frame) == err
    ok = FrameDecoder().feed(m.ok_frame(m.BeginReply(7)))[0]
    assert m.decode_reply(FrameType.BEGIN, m.decode_device_frame(ok).payload).held == 7


def test_commands_decode_by_type_and_refuse_junk():
    for msg in (m.Hello(), m.SetBaud(921600), m.Have(0, 9), m.Finish(), m.Activate(), m.Reset(), m.Abort()):
        frame = Frame(msg.TYPE, 0, msg.encode())
        assert m.decode_command(frame) == msg
    with pytest.raises(m.MessageError):
        m.decode_command(Frame(FrameType.FINISH, 0, b"\0"))
    with pytest.raises(m.MessageError):
        m.decode_command(Frame(FrameType.ACK, 0, b"\0\0"))
    with pytest.raises(m.MessageError):
        m.decode_command(Frame(FrameType.HELLO, 0, b"\x01"))
    assert m.decode_reply(FrameType.FINISH, struct.pack("<Q", 99)).instructions == 99
    with pytest.raises(m.MessageError):
        m.decode_reply(FrameType.ACTIVATE, b"\0")
