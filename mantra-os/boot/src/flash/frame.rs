//! MantraFlash frames (docs/flash-protocol.md, "Frames"): `MF`, type,
//! flags = 0, seq, payload length, payload, CRC-32 (IEEE, as zlib.crc32)
//! of everything before it. [`Decoder`] hunts for the magic in a byte
//! stream and drops anything that is not a whole, well-formed frame.

use alloc::vec::Vec;

pub const MAGIC: [u8; 2] = *b"MF";
/// Largest payload in version 1.
pub const MAX_PAYLOAD: usize = 4096;
pub const HEADER: usize = 8;
pub const TRAILER: usize = 4;

/// Frame types (host commands, then device replies).
pub mod ty {
    pub const HELLO: u8 = 0x01;
    pub const SET_BAUD: u8 = 0x02;
    pub const BEGIN: u8 = 0x03;
    pub const MAP: u8 = 0x04;
    pub const HAVE: u8 = 0x05;
    pub const DATA: u8 = 0x06;
    pub const FINISH: u8 = 0x07;
    pub const ACTIVATE: u8 = 0x08;
    pub const RESET: u8 = 0x09;
    pub const ABORT: u8 = 0x0A;
    pub const OK: u8 = 0x80;
    pub const ACK: u8 = 0x81;
    pub const NAK: u8 = 0x82;
    pub const BUSY: u8 = 0x83;
    pub const ERROR: u8 = 0xEE;

    /// Every type a version 1 frame may carry.
    pub fn known(t: u8) -> bool {
        matches!(t, 0x01..=0x0A | 0x80..=0x83 | 0xEE)
    }
}

/// CRC-32 (IEEE 802.3, reflected, init and final xor 0xFFFFFFFF).
pub fn crc32(data: &[u8]) -> u32 {
    crc32_update(0, data)
}

/// Continues a CRC-32: `crc32_update(crc32(a), b) == crc32(a ‖ b)`.
pub fn crc32_update(crc: u32, data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut c = !crc;
    for &b in data {
        c = TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

/// One frame's bytes. `payload` must be at most [`MAX_PAYLOAD`] bytes (the
/// device only ever encodes its own replies, which are).
pub fn encode(frame_type: u8, seq: u16, payload: &[u8]) -> Vec<u8> {
    debug_assert!(payload.len() <= MAX_PAYLOAD);
    let mut out = Vec::with_capacity(HEADER + payload.len() + TRAILER);
    out.extend_from_slice(&MAGIC);
    out.push(frame_type);
    out.push(0);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A received frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub frame_type: u8,
    pub seq: u16,
    pub payload: Vec<u8>,
}

/// What the decoder found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Frame(Frame),
    /// Something that started with the magic was not a frame (bad CRC,
    /// length above the maximum, unknown type, nonzero flags): the sender
    /// may have lost a frame (the session NAKs a DATA stream once).
    Dropped,
}

/// Stream decoder: feed it bytes, take frames.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn new() -> Self {
        Self { buf: Vec::with_capacity(2 * (HEADER + MAX_PAYLOAD + TRAILER)) }
    }

    /// Bytes held that are not a whole frame yet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Forgets a partial frame (e.g. after a baud change or a long silence).
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next event, or `None` when more bytes are needed.
    pub fn next_event(&mut self) -> Option<Event> {
        // Hunt: drop everything before the magic (a lone trailing `M` may
        // be the start of one).
        match self.buf.windows(2).position(|w| w == MAGIC) {
            Some(0) => {}
            Some(at) => {
                self.buf.drain(..at);
            }
            None => {
                let keep = usize::from(self.buf.last() == Some(&MAGIC[0]));
                let len = self.buf.len();
                self.buf.drain(..len - keep);
                return None;
            }
        }
        if self.buf.len() < HEADER {
            return None;
        }
        let frame_type = self.buf[2];
        let flags = self.buf[3];
        let len = usize::from(u16::from_le_bytes([self.buf[6], self.buf[7]]));
        if len > MAX_PAYLOAD || flags != 0 || !ty::known(frame_type) {
            self.buf.drain(..MAGIC.len());
            return Some(Event::Dropped);
        }
        let total = HEADER + len + TRAILER;
        if self.buf.len() < total {
            return None;
        }
        let crc = u32::from_le_bytes([
            self.buf[total - 4],
            self.buf[total - 3],
            self.buf[total - 2],
            self.buf[total - 1],
        ]);
        if crc32(&self.buf[..total - TRAILER]) != crc {
            self.buf.drain(..MAGIC.len());
            return Some(Event::Dropped);
        }
        let frame = Frame {
            frame_type,
            seq: u16::from_le_bytes([self.buf[4], self.buf[5]]),
            payload: self.buf[HEADER..HEADER + len].to_vec(),
        };
        self.buf.drain(..total);
        Some(Event::Frame(frame))
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;

    fn all(d: &mut Decoder) -> Vec<Event> {
        core::iter::from_fn(|| d.next_event()).collect()
    }

    #[test]
    fn crc_is_zlibs() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32_update(crc32(b"1234"), b"56789"), 0xCBF4_3926);
    }

    #[test]
    fn frames_round_trip_through_noise_and_byte_at_a_time() {
        let a = encode(ty::HELLO, 7, &[1, 0]);
        assert_eq!(&a[..8], &[b'M', b'F', 1, 0, 7, 0, 2, 0]);
        let b = encode(ty::DATA, 65535, &[0xAB; MAX_PAYLOAD]);
        let mut stream = b"MantraBoot: flash mode\r\nMANTRA-FLASH\r\nM".to_vec();
        stream.extend_from_slice(&a);
        stream.extend_from_slice(b"MM");
        stream.extend_from_slice(&b);
        let mut d = Decoder::new();
        let mut got = vec![];
        for byte in &stream {
            d.push(&[*byte]);
            got.extend(all(&mut d));
        }
        assert_eq!(
            got,
            vec![
                Event::Frame(Frame { frame_type: ty::HELLO, seq: 7, payload: vec![1, 0] }),
                Event::Frame(Frame { frame_type: ty::DATA, seq: 65535, payload: vec![0xAB; MAX_PAYLOAD] }),
            ]
        );
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn damaged_frames_are_dropped_and_the_next_one_is_found() {
        let good = encode(ty::FINISH, 1, &[]);
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x20;
            let mut d = Decoder::new();
            d.push(&bad);
            d.push(&good);
            // A damaged length may wait for more bytes: the line goes on.
            d.push(&[0; 64]);
            let events = all(&mut d);
            assert_eq!(events.last(), Some(&Event::Frame(Frame { frame_type: ty::FINISH, seq: 1, payload: vec![] })), "byte {at}");
            assert!(events.len() <= 2, "byte {at}: {events:?}");
        }
        // A length above the maximum, an unknown type, nonzero flags.
        for (at, value) in [(7usize, 0x11u8), (2, 0x42), (3, 1)] {
            let mut bad = good.clone();
            bad[at] = value;
            let mut d = Decoder::new();
            d.push(&bad);
            assert_eq!(d.next_event(), Some(Event::Dropped));
        }
        // A corrupted length that swallows the next frame: found once the
        // bytes to check the CRC are in.
        let mut long = encode(ty::MAP, 2, &[0; 8]);
        long[6] = 40;
        let mut d = Decoder::new();
        d.push(&long);
        d.push(&good);
        assert_eq!(d.next_event(), None);
        d.push(&[0; 40]);
        let events = all(&mut d);
        assert_eq!(events, vec![Event::Dropped, Event::Frame(Frame { frame_type: ty::FINISH, seq: 1, payload: vec![] })]);
    }
}
