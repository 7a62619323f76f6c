//! Host tests of flash mode: a session driven frame by frame against an
//! in-memory disk, with the signing test vector as the envelope
//! (tests/data/signing-vector.sig: root seed 0x01, board qemu-x86_64,
//! security counter 5).

extern crate std;

use std::string::String;
use std::vec;
use std::vec::Vec;

use super::frame::{self, ty, Decoder, Event, Frame};
use super::session::{code, nak, Action, Device, Failure, Session, SlotInfo, BLOCK_SIZE};
use super::LineWatch;
use crate::slots::{Rollback, Slot};
use mantra_signing::sha256;

const VECTOR: &[u8] = include_bytes!("../../../../tests/data/signing-vector.sig");
const ROOT: [u8; 32] = [
    0x8a, 0x88, 0xe3, 0xdd, 0x74, 0x09, 0xf1, 0x95, 0xfd, 0x52, 0xdb, 0x2d, 0x3c, 0xba, 0x5d, 0x72, 0xca, 0x67, 0x09,
    0xbf, 0x1d, 0x94, 0x12, 0x1b, 0xf3, 0x74, 0x88, 0x01, 0xb4, 0x0f, 0x6f, 0x5c,
];
const BS: usize = BLOCK_SIZE as usize;
const SLOT_BLOCKS: usize = 16;

struct Disk {
    slots: [Vec<u8>; 2],
    root: [u8; 32],
    board: &'static str,
    minimum: Rollback,
    target: Option<Slot>,
    flashing: Vec<(Slot, u64)>,
    activated: Option<(Slot, u64, [u8; 32])>,
    writes: usize,
    verify: Result<(), Failure>,
    /// Corrupts the disk after this many writes (a bad medium).
    corrupt_after: Option<usize>,
    busy: u32,
}

impl Disk {
    fn new() -> Self {
        Self {
            slots: [vec![0x5a; SLOT_BLOCKS * BS], vec![0xa5; SLOT_BLOCKS * BS]],
            root: ROOT,
            board: "qemu-x86_64",
            minimum: Rollback { security_counter: 0, revocations: 0 },
            target: Some(Slot::B),
            flashing: Vec::new(),
            activated: None,
            writes: 0,
            verify: Ok(()),
            corrupt_after: None,
            busy: 0,
        }
    }
}

impl Device for Disk {
    fn board(&self) -> &str {
        self.board
    }
    fn root_key(&self) -> &[u8; 32] {
        &self.root
    }
    fn minimum(&self) -> Rollback {
        self.minimum
    }
    fn slot_info(&self, slot: Slot) -> SlotInfo {
        SlotInfo {
            state: 1,
            tries: 0,
            protected: Some(slot) != self.target,
            size: (SLOT_BLOCKS * BS) as u64,
            security_counter: 0,
            version: String::from(if slot == Slot::A { "0.1.0" } else { "" }),
        }
    }
    fn target(&self) -> Option<Slot> {
        self.target
    }
    fn baud(&self) -> u32 {
        115200
    }
    fn baud_supported(&self, baud: u32) -> bool {
        115200 % baud == 0
    }
    fn mark_flashing(&mut self, slot: Slot, counter: u64, _hash: [u8; 32]) -> Result<(), Failure> {
        self.flashing.push((slot, counter));
        Ok(())
    }
    fn read_block(&mut self, slot: Slot, index: u32, buf: &mut [u8]) -> Result<(), Failure> {
        let at = index as usize * BS;
        buf.copy_from_slice(&self.slots[slot as usize][at..at + BS]);
        Ok(())
    }
    fn write_block(&mut self, slot: Slot, index: u32, data: &[u8]) -> Result<(), Failure> {
        assert_eq!(Some(slot), self.target, "wrote the protected slot");
        assert!(!self.flashing.is_empty(), "wrote before marking the slot flashing");
        let at = index as usize * BS;
        self.slots[slot as usize][at..at + BS].copy_from_slice(data);
        self.writes += 1;
        if self.corrupt_after == Some(self.writes) {
            self.slots[slot as usize][at] ^= 1;
        }
        Ok(())
    }
    fn flush(&mut self, _slot: Slot) -> Result<(), Failure> {
        Ok(())
    }
    fn verify_slot(&mut self, _slot: Slot, hash: &[u8; 32]) -> Result<(), Failure> {
        assert_eq!(*hash, sha256(VECTOR));
        self.verify.clone()
    }
    fn activate(&mut self, slot: Slot, counter: u64, hash: [u8; 32]) -> Result<(), Failure> {
        self.activated = Some((slot, counter, hash));
        Ok(())
    }
    fn busy(&mut self, _done: u32, _total: u32) {
        self.busy += 1;
    }
    fn now(&self) -> u64 {
        0
    }
}

/// The image: 10 blocks, 6 of them mapped (some compressible, some not).
fn image() -> (Vec<u8>, Vec<(u32, [u8; 32])>) {
    let mut img = vec![0u8; 10 * BS];
    let mut x = 0x1234_5678u32;
    for (i, b) in img.iter_mut().enumerate() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        // Blocks 3 and 7 are noise; the others are text-like.
        *b = if (3 * BS..4 * BS).contains(&i) || (7 * BS..8 * BS).contains(&i) { x as u8 } else { (i % 61) as u8 };
    }
    let map = [0u32, 1, 3, 4, 7, 9]
        .iter()
        .map(|&i| (i, sha256(&img[i as usize * BS..(i as usize + 1) * BS])))
        .collect();
    (img, map)
}

fn digest(map: &[(u32, [u8; 32])]) -> [u8; 32] {
    let mut all = Vec::new();
    for (i, h) in map {
        all.extend_from_slice(&i.to_le_bytes());
        all.extend_from_slice(h);
    }
    sha256(&all)
}

fn begin_payload(slot: u8, compression: u8, size: u64, map: &[(u32, [u8; 32])], envelope: &[u8]) -> Vec<u8> {
    let mut p = vec![slot, compression, 0, 0];
    p.extend_from_slice(&BLOCK_SIZE.to_le_bytes());
    p.extend_from_slice(&size.to_le_bytes());
    p.extend_from_slice(&(map.len() as u32).to_le_bytes());
    p.extend_from_slice(&digest(map));
    p.extend_from_slice(&(envelope.len() as u32).to_le_bytes());
    p.extend_from_slice(envelope);
    p
}

fn map_payload(first: u32, entries: &[(u32, [u8; 32])]) -> Vec<u8> {
    let mut p = first.to_le_bytes().to_vec();
    for (i, h) in entries {
        p.extend_from_slice(&i.to_le_bytes());
        p.extend_from_slice(h);
    }
    p
}

/// DATA payloads of one block (zlib when it shrinks), chunked.
fn data_chunks(entry: u32, block: &[u8], zlib: bool) -> Vec<Vec<u8>> {
    let z = miniz_oxide::deflate::compress_to_vec_zlib(block, 6);
    let (encoding, bytes) = if zlib && z.len() < block.len() { (1u8, z) } else { (0u8, block.to_vec()) };
    let room = frame::MAX_PAYLOAD - 16;
    bytes
        .chunks(room)
        .enumerate()
        .map(|(n, c)| {
            let mut p = entry.to_le_bytes().to_vec();
            p.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            p.extend_from_slice(&((n * room) as u32).to_le_bytes());
            p.extend_from_slice(&[encoding, 0, 0, 0]);
            p.extend_from_slice(c);
            p
        })
        .collect()
}

/// Sends one frame through the wire encoding and back; the reply frames.
fn send(s: &mut Session, d: &mut Disk, t: u8, seq: u16, payload: &[u8]) -> (Vec<Frame>, Action) {
    let mut dec = Decoder::new();
    dec.push(&frame::encode(t, seq, payload));
    let Some(Event::Frame(f)) = dec.next_event() else { panic!("the encoder's frame does not decode") };
    let out = s.handle(d, Event::Frame(f));
    (decode_all(&out.frames), out.action)
}

fn decode_all(frames: &[Vec<u8>]) -> Vec<Frame> {
    let mut dec = Decoder::new();
    for f in frames {
        dec.push(f);
    }
    core::iter::from_fn(|| dec.next_event())
        .map(|e| match e {
            Event::Frame(f) => f,
            Event::Dropped => panic!("the device sent a bad frame"),
        })
        .collect()
}

fn ok(s: &mut Session, d: &mut Disk, t: u8, payload: &[u8]) -> Vec<u8> {
    let (replies, _) = send(s, d, t, 0, payload);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].frame_type, ty::OK, "{}", error_text(&replies[0]));
    replies[0].payload.clone()
}

fn error_text(f: &Frame) -> String {
    if f.frame_type != ty::ERROR {
        return String::new();
    }
    String::from_utf8_lossy(&f.payload[4..]).into_owned()
}

fn error(s: &mut Session, d: &mut Disk, t: u8, payload: &[u8]) -> (u16, String) {
    let (replies, _) = send(s, d, t, 0, payload);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].frame_type, ty::ERROR);
    let p = &replies[0].payload;
    let len = u16::from_le_bytes([p[2], p[3]]) as usize;
    assert_eq!(p.len(), 4 + len, "ERROR payload is u16 code + string");
    (u16::from_le_bytes([p[0], p[1]]), error_text(&replies[0]))
}

/// BEGIN + MAP (two frames); returns HAVE's bitmap.
fn begin_and_map(s: &mut Session, d: &mut Disk, map: &[(u32, [u8; 32])], size: u64) -> (u32, Vec<u8>) {
    let held = ok(s, d, ty::BEGIN, &begin_payload(1, 1, size, map, VECTOR));
    assert_eq!(ok(s, d, ty::MAP, &map_payload(0, &map[..2])), 2u32.to_le_bytes());
    // Resent MAP frames are answered again, unchanged.
    assert_eq!(ok(s, d, ty::MAP, &map_payload(0, &map[..2])), 2u32.to_le_bytes());
    assert_eq!(ok(s, d, ty::MAP, &map_payload(2, &map[2..])), (map.len() as u32).to_le_bytes());
    let mut have = 0u32.to_le_bytes().to_vec();
    have.extend_from_slice(&(map.len() as u32).to_le_bytes());
    (u32::from_le_bytes(held.try_into().unwrap()), ok(s, d, ty::HAVE, &have))
}

/// Sends the blocks of `entries` in sequence from `seq`; checks each ACK.
fn send_blocks(s: &mut Session, d: &mut Disk, img: &[u8], map: &[(u32, [u8; 32])], entries: &[usize], seq: &mut u16) {
    for &e in entries {
        let i = map[e].0 as usize;
        for chunk in data_chunks(e as u32, &img[i * BS..(i + 1) * BS], true) {
            let (replies, _) = send(s, d, ty::DATA, *seq, &chunk);
            *seq = seq.wrapping_add(1);
            assert_eq!(replies.len(), 1);
            assert_eq!(replies[0].frame_type, ty::ACK, "{}", error_text(&replies[0]));
            assert_eq!(replies[0].payload, seq.to_le_bytes());
        }
    }
}

#[test]
fn hello_describes_the_board_and_the_target_slot() {
    let (mut s, mut d) = (Session::new(), Disk::new());
    let p = ok(&mut s, &mut d, ty::HELLO, &1u16.to_le_bytes());
    let mut expected = Vec::new();
    expected.extend_from_slice(&[1, 0, 0x00, 0x10, 8, 0, 1, 0]);
    expected.extend_from_slice(&65536u32.to_le_bytes());
    expected.extend_from_slice(&115200u32.to_le_bytes());
    expected.extend_from_slice(&[11, 0]);
    expected.extend_from_slice(b"qemu-x86_64");
    expected.extend_from_slice(&sha256(&ROOT));
    expected.extend_from_slice(&0u64.to_le_bytes());
    expected.push(2);
    for (name, protected, version) in [(b'a', 1u8, &b"0.1.0"[..]), (b'b', 0, b"")] {
        expected.extend_from_slice(&[name, 1, 0, protected]);
        expected.extend_from_slice(&((SLOT_BLOCKS * BS) as u64).to_le_bytes());
        expected.extend_from_slice(&0u64.to_le_bytes());
        expected.extend_from_slice(&(version.len() as u16).to_le_bytes());
        expected.extend_from_slice(version);
    }
    expected.push(1);
    assert_eq!(p, expected);
    assert_eq!(error(&mut s, &mut d, ty::HELLO, &2u16.to_le_bytes()).0, code::VERSION);
    assert_eq!(error(&mut s, &mut d, ty::HELLO, &[1]).0, code::BAD_REQUEST);
    assert_eq!(error(&mut s, &mut d, ty::HELLO, &[1, 0, 0]).0, code::BAD_REQUEST);
}

#[test]
fn a_whole_flash_writes_only_the_mapped_blocks_of_the_target() {
    let (mut s, mut d) = (Session::new(), Disk::new());
    let (img, map) = image();
    let (held, have) = begin_and_map(&mut s, &mut d, &map, img.len() as u64);
    assert_eq!((held, have), (0, vec![0]));
    assert_eq!(d.flashing, vec![(Slot::B, 5)]);
    // FINISH and ACTIVATE refuse an unfinished flash.
    let (c, msg) = error(&mut s, &mut d, ty::FINISH, &[]);
    assert_eq!(c, code::WHOLE_SLOT);
    assert!(msg.contains("6 of 6 blocks not received"), "{msg}");
    assert_eq!(error(&mut s, &mut d, ty::ACTIVATE, &[]).0, code::NO_SESSION);
    let mut seq = 0;
    send_blocks(&mut s, &mut d, &img, &map, &[0, 1, 2, 3, 4, 5], &mut seq);
    assert_eq!(d.writes, 6);
    assert_eq!(s.stats.blocks_written, 6);
    assert!(s.stats.encoded_bytes < (3 * BS) as u64, "zlib shrank the text blocks: {}", s.stats.encoded_bytes);
    assert_eq!(ok(&mut s, &mut d, ty::FINISH, &[]).len(), 8);
    assert!(d.busy >= 6, "keepalives during the checks");
    assert_eq!(ok(&mut s, &mut d, ty::ACTIVATE, &[]), Vec::<u8>::new());
    assert_eq!(d.activated, Some((Slot::B, 5, sha256(VECTOR))));
    for block in 0..SLOT_BLOCKS {
        let got = &d.slots[1][block * BS..(block + 1) * BS];
        if map.iter().any(|&(i, _)| i as usize == block) {
            assert_eq!(got, &img[block * BS..(block + 1) * BS], "block {block}");
        } else {
            assert!(got.iter().all(|&b| b == 0xa5), "unmapped block {block} was written");
        }
    }
    assert!(d.slots[0].iter().all(|&b| b == 0x5a), "slot a was written");
    let (_, action) = send(&mut s, &mut d, ty::RESET, 0, &[]);
    assert_eq!(action, Action::Reset);
    let (_, action) = send(&mut s, &mut d, ty::ABORT, 0, &[]);
    assert_eq!(action, Action::Abort);
}

#[test]
fn begin_refuses_before_anything_is_written() {
    let (img, map) = image();
    let size = img.len() as u64;
    let cases: Vec<(fn(&mut Disk), Vec<u8>, u16, &str)> = vec![
        (|d| d.board = "other-board", begin_payload(1, 1, size, &map, VECTOR), code::BOARD, "board"),
        (|d| d.root = [7; 32], begin_payload(1, 1, size, &map, VECTOR), code::KEY, "key record"),
        (|d| d.minimum.security_counter = 6, begin_payload(1, 1, size, &map, VECTOR), code::ROLLBACK, "security counter 5"),
        (|d| d.minimum.revocations = 3, begin_payload(1, 1, size, &map, VECTOR), code::ROLLBACK, "revocation list"),
        (|_| {}, begin_payload(0, 1, size, &map, VECTOR), code::WRONG_SLOT, "slot a is the running"),
        (|d| d.target = None, begin_payload(1, 1, size, &map, VECTOR), code::WRONG_SLOT, "no slot"),
        (|_| {}, begin_payload(1, 2, size, &map, VECTOR), code::UNSUPPORTED, "zstd"),
        (|_| {}, begin_payload(1, 1, (SLOT_BLOCKS as u64 + 1) * BLOCK_SIZE as u64, &map, VECTOR), code::TOO_LARGE, "larger"),
        (|_| {}, begin_payload(1, 1, size - 1, &map, VECTOR), code::BAD_REQUEST, "multiple"),
        (|_| {}, begin_payload(1, 1, size, &map, &VECTOR[..700]), code::BAD_REQUEST, "malformed"),
    ];
    for (setup, payload, want, text) in cases {
        let (mut s, mut d) = (Session::new(), Disk::new());
        setup(&mut d);
        let (c, msg) = error(&mut s, &mut d, ty::BEGIN, &payload);
        assert_eq!(c, want, "{text}: {msg}");
        assert!(msg.contains(text), "{text}: {msg}");
        assert!(d.flashing.is_empty() && d.writes == 0);
        // ... and no session: MAP has nothing to add to.
        assert_eq!(error(&mut s, &mut d, ty::MAP, &map_payload(0, &map)).0, code::NO_SESSION);
    }
    // Every byte of the envelope is covered: a flipped bit is refused.
    for at in (0..VECTOR.len()).step_by(7) {
        let mut env = VECTOR.to_vec();
        env[at] ^= 0x01;
        let (mut s, mut d) = (Session::new(), Disk::new());
        let (c, _) = error(&mut s, &mut d, ty::BEGIN, &begin_payload(1, 1, size, &map, &env));
        assert!(c != 0, "byte {at}");
        assert!(d.flashing.is_empty());
    }
}

#[test]
fn go_back_n_on_lost_reordered_and_damaged_frames() {
    let (mut s, mut d) = (Session::new(), Disk::new());
    let (img, map) = image();
    begin_and_map(&mut s, &mut d, &map, img.len() as u64);
    let i = map[2].0 as usize; // a noise block: raw, 17 chunks
    let chunks = data_chunks(2, &img[i * BS..(i + 1) * BS], true);
    assert!(chunks.len() > 2);
    let (r, _) = send(&mut s, &mut d, ty::DATA, 0, &chunks[0]);
    assert_eq!((r[0].frame_type, r[0].payload.clone()), (ty::ACK, 1u16.to_le_bytes().to_vec()));
    // Frame 1 is lost: 2 and 3 get one NAK (expected 1, out of sequence).
    let (r, _) = send(&mut s, &mut d, ty::DATA, 2, &chunks[2]);
    assert_eq!((r[0].frame_type, r[0].payload.clone()), (ty::NAK, vec![1, 0, nak::SEQUENCE]));
    let (r, _) = send(&mut s, &mut d, ty::DATA, 3, &chunks[3]);
    assert!(r.is_empty());
    // A damaged frame after the resend starts: one NAK with reason 1.
    let (r, _) = send(&mut s, &mut d, ty::DATA, 1, &chunks[1]);
    assert_eq!(r[0].frame_type, ty::ACK);
    let out = s.handle(&mut d, Event::Dropped);
    assert_eq!(decode_all(&out.frames)[0].payload, vec![2, 0, nak::DROPPED]);
    assert!(s.handle(&mut d, Event::Dropped).frames.is_empty());
    let mut seq = 2u16;
    for chunk in &chunks[2..] {
        let (r, _) = send(&mut s, &mut d, ty::DATA, seq, chunk);
        seq += 1;
        assert_eq!((r[0].frame_type, r[0].payload.clone()), (ty::ACK, seq.to_le_bytes().to_vec()));
    }
    assert_eq!(d.writes, 1);
    assert_eq!(s.stats.naks, 2);
}

#[test]
fn a_block_that_does_not_match_the_map_is_resent_whole() {
    let (mut s, mut d) = (Session::new(), Disk::new());
    let (img, map) = image();
    begin_and_map(&mut s, &mut d, &map, img.len() as u64);
    // Block 0 with one byte changed (the host read the wrong data).
    let mut wrong = img[..BS].to_vec();
    wrong[100] ^= 1;
    let chunks = data_chunks(0, &wrong, true);
    let mut seq = 0u16;
    for (n, chunk) in chunks.iter().enumerate() {
        let (r, _) = send(&mut s, &mut d, ty::DATA, seq, chunk);
        seq += 1;
        if n + 1 == chunks.len() {
            assert_eq!((r[0].frame_type, r[0].payload.clone()), (ty::NAK, vec![0, 0, nak::HASH]));
        }
    }
    assert_eq!(d.writes, 0);
    // Broken zlib: NAK 4, from the block's first frame.
    let mut bad = data_chunks(0, &img[..BS], true);
    assert_eq!(bad.len(), 1);
    let last = bad[0].len() - 3;
    bad[0][last] ^= 0xff;
    let (r, _) = send(&mut s, &mut d, ty::DATA, 0, &bad[0]);
    assert_eq!((r[0].frame_type, r[0].payload.clone()), (ty::NAK, vec![0, 0, nak::DECOMPRESS]));
    // The right block from seq 0.
    let mut seq = 0;
    send_blocks(&mut s, &mut d, &img, &map, &[0], &mut seq);
    assert_eq!(d.writes, 1);
}

#[test]
fn resume_after_a_cut_sends_only_the_rest() {
    let (img, map) = image();
    let mut d = Disk::new();
    let mut s = Session::new();
    begin_and_map(&mut s, &mut d, &map, img.len() as u64);
    let mut seq = 0;
    send_blocks(&mut s, &mut d, &img, &map, &[0, 1, 3], &mut seq);
    // Same session (the cable was pulled): BEGIN again keeps the map.
    assert_eq!(ok(&mut s, &mut d, ty::BEGIN, &begin_payload(1, 1, img.len() as u64, &map, VECTOR)), 3u32.to_le_bytes());
    // Power cut: a new session finds the blocks on the disk.
    let mut s = Session::new();
    let (held, have) = begin_and_map(&mut s, &mut d, &map, img.len() as u64);
    assert_eq!((held, have), (0, vec![0b0000_1011]));
    let mut seq = 0;
    send_blocks(&mut s, &mut d, &img, &map, &[2, 4, 5], &mut seq);
    ok(&mut s, &mut d, ty::FINISH, &[]);
    ok(&mut s, &mut d, ty::ACTIVATE, &[]);
    assert_eq!(d.writes, 6);
}

#[test]
fn finish_reads_back_and_verifies_the_slot() {
    let (img, map) = image();
    let (mut s, mut d) = (Session::new(), Disk::new());
    d.corrupt_after = Some(4);
    begin_and_map(&mut s, &mut d, &map, img.len() as u64);
    let mut seq = 0;
    send_blocks(&mut s, &mut d, &img, &map, &[0, 1, 2, 3, 4, 5], &mut seq);
    let (c, msg) = error(&mut s, &mut d, ty::FINISH, &[]);
    assert_eq!(c, code::WHOLE_SLOT);
    assert!(msg.contains("block 4 (map entry 3)"), "{msg}");
    // HAVE now shows the block missing; resent, FINISH passes.
    let mut have = 0u32.to_le_bytes().to_vec();
    have.extend_from_slice(&6u32.to_le_bytes());
    assert_eq!(ok(&mut s, &mut d, ty::HAVE, &have), vec![0b0011_0111]);
    send_blocks(&mut s, &mut d, &img, &map, &[3], &mut seq);
    ok(&mut s, &mut d, ty::FINISH, &[]);
    // The file-system check can still refuse it.
    d.verify = Err(Failure::new(code::SLOT_VERIFY, "slot b: kernel hash differs"));
    let (c, msg) = error(&mut s, &mut d, ty::FINISH, &[]);
    assert_eq!((c, msg.as_str()), (code::SLOT_VERIFY, "slot b: kernel hash differs"));
    assert_eq!(error(&mut s, &mut d, ty::ACTIVATE, &[]).0, code::NO_SESSION);
}

#[test]
fn map_and_data_are_checked_field_by_field() {
    let (img, map) = image();
    let (mut s, mut d) = (Session::new(), Disk::new());
    assert_eq!(error(&mut s, &mut d, ty::DATA, &[0; 20]).0, code::NO_SESSION);
    ok(&mut s, &mut d, ty::BEGIN, &begin_payload(1, 1, img.len() as u64, &map, VECTOR));
    assert_eq!(error(&mut s, &mut d, ty::DATA, &data_chunks(0, &img[..BS], true)[0]).0, code::BAD_REQUEST);
    let mut unsorted = map.clone();
    unsorted.swap(1, 2);
    assert_eq!(error(&mut s, &mut d, ty::MAP, &map_payload(0, &unsorted)).0, code::BAD_REQUEST);
    assert_eq!(error(&mut s, &mut d, ty::MAP, &map_payload(3, &map[3..])).0, code::BAD_REQUEST);
    let mut past = map.clone();
    past[5].0 = 10;
    assert_eq!(error(&mut s, &mut d, ty::MAP, &map_payload(0, &past)).0, code::BAD_REQUEST);
    // A map that is not BEGIN's digest ends the session.
    let mut other = map.clone();
    other[5].1[0] ^= 1;
    let (c, msg) = error(&mut s, &mut d, ty::MAP, &map_payload(0, &other));
    assert_eq!(c, code::WHOLE_SLOT, "{msg}");
    assert_eq!(error(&mut s, &mut d, ty::HAVE, &[0; 8]).0, code::NO_SESSION);
    begin_and_map(&mut s, &mut d, &map, img.len() as u64);
    let good = data_chunks(0, &img[..BS], true).remove(0);
    for (at, value) in [(0usize, 6u8), (4, 0), (6, 2), (8, 1), (12, 2), (12, 3), (13, 1)] {
        let mut p = good.clone();
        p[at] = value;
        let (c, msg) = error(&mut s, &mut d, ty::DATA, &p);
        assert!(c == code::BAD_REQUEST || c == code::UNSUPPORTED, "byte {at}: {msg}");
    }
    assert_eq!(error(&mut s, &mut d, ty::DATA, &good[..16]).0, code::BAD_REQUEST);
    assert_eq!(error(&mut s, &mut d, ty::SET_BAUD, &921600u32.to_le_bytes()).0, code::UNSUPPORTED);
    assert_eq!(error(&mut s, &mut d, ty::SET_BAUD, &12345u32.to_le_bytes()).0, code::UNSUPPORTED);
    let (r, action) = send(&mut s, &mut d, ty::SET_BAUD, 0, &57600u32.to_le_bytes());
    assert_eq!((r[0].frame_type, action), (ty::OK, Action::SetBaud(57600)));
    assert_eq!(error(&mut s, &mut d, ty::FINISH, &[0]).0, code::BAD_REQUEST);
    // The session is still where it was: block 0 goes in at seq 0.
    let mut seq = 0;
    send_blocks(&mut s, &mut d, &img, &map, &[0], &mut seq);
}

#[test]
fn random_input_never_panics() {
    let (img, map) = image();
    let valid = [
        begin_payload(1, 1, img.len() as u64, &map, VECTOR),
        map_payload(0, &map),
        data_chunks(0, &img[..BS], true).remove(0),
        vec![0, 0, 0, 0, 6, 0, 0, 0],
    ];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut s, mut d) = (Session::new(), Disk::new());
    let mut dec = Decoder::new();
    for _ in 0..20_000 {
        let t = (rnd() % 12) as u8;
        let t = if t == 11 { 0x80 } else { t };
        let mut p = if rnd() % 2 == 0 { valid[(rnd() % 4) as usize].clone() } else { vec![0; (rnd() % 64) as usize] };
        for _ in 0..(rnd() % 4) {
            if !p.is_empty() {
                let at = (rnd() as usize) % p.len();
                p[at] = rnd() as u8;
            }
        }
        let mut wire = frame::encode(t, (rnd() % 4) as u16, &p);
        if rnd() % 8 == 0 {
            let at = (rnd() as usize) % wire.len();
            wire[at] ^= 1 << (rnd() % 8);
        }
        dec.push(&wire);
        while let Some(e) = dec.next_event() {
            let out = s.handle(&mut d, e);
            decode_all(&out.frames);
        }
    }
}

#[test]
fn the_console_request_is_one_whole_line() {
    let mut w = LineWatch::new();
    let feed = |w: &mut LineWatch, s: &[u8]| s.iter().map(|&c| w.push(c)).filter(|&h| h).count();
    assert_eq!(feed(&mut w, b"MANTRA-FLASH\r\n"), 1);
    assert_eq!(feed(&mut w, b"noise\nMANTRA-FLASH\nMANTRA-FLASH\r"), 2);
    assert_eq!(feed(&mut w, b"  MANTRA-FLASH \n"), 1);
    assert_eq!(feed(&mut w, b"xMANTRA-FLASH\nMANTRA-FLASHy\nmantra-flash\n"), 0);
    assert_eq!(feed(&mut w, b"0123456789012345678901234567890123456789MANTRA-FLASH\n"), 0);
}
