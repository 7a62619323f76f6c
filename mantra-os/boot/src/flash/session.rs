//! The device side of a MantraFlash session (docs/flash-protocol.md):
//! every command checked field by field, the block map, resume, DATA with
//! go-back-N, FINISH's whole-slot check. Pure logic over a [`Device`] (the
//! slot's blocks, the firmware variables, the file-system check), so the
//! host tests drive it with an in-memory disk; `efi/flash.rs` is the UEFI
//! implementation.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use mantra_signing::{sha256, verify_envelope, Error as VerifyError, Policy, MAX_ENVELOPE};

use super::frame::{self, ty, Event, Frame};
use crate::slots::{Rollback, Slot};

pub const PROTOCOL_VERSION: u16 = 1;
pub const BLOCK_SIZE: u32 = 65536;
/// DATA frames the host may have unacknowledged.
pub const WINDOW: u16 = 8;
/// HELLO's compression bits: zlib only (no no_std zstd decoder is built in).
pub const COMPRESSION: u16 = 1;
/// Bytes of one block-map entry: u32 index ‖ SHA-256.
const MAP_ENTRY: usize = 36;

/// ERROR codes.
pub mod code {
    pub const BAD_REQUEST: u16 = 1;
    pub const VERSION: u16 = 2;
    pub const BOARD: u16 = 3;
    pub const KEY: u16 = 4;
    pub const SIGNATURE: u16 = 5;
    pub const ROLLBACK: u16 = 6;
    pub const WRONG_SLOT: u16 = 7;
    pub const NO_SESSION: u16 = 8;
    pub const TOO_LARGE: u16 = 9;
    pub const IO: u16 = 10;
    pub const WHOLE_SLOT: u16 = 11;
    pub const SLOT_VERIFY: u16 = 12;
    pub const UNSUPPORTED: u16 = 13;
}

/// NAK reasons.
pub mod nak {
    pub const DROPPED: u8 = 1;
    pub const SEQUENCE: u8 = 2;
    pub const HASH: u8 = 3;
    pub const DECOMPRESS: u8 = 4;
}

/// An ERROR reply: code and a message that says what failed and what to try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub code: u16,
    pub message: String,
}

impl Failure {
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// A slot as HELLO describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotInfo {
    /// docs/boot-state.md's state (4 = flashing).
    pub state: u8,
    pub tries: u8,
    /// The running/preferred slot: never written.
    pub protected: bool,
    /// The partition's size in bytes.
    pub size: u64,
    pub security_counter: u64,
    /// The manifest's version, empty when unknown.
    pub version: String,
}

/// What the session needs from the board.
pub trait Device {
    /// `manifest.json`'s board (the configuration's).
    fn board(&self) -> &str;
    /// MantraBoot's built-in root public key.
    fn root_key(&self) -> &[u8; 32];
    /// The rollback minimums in force.
    fn minimum(&self) -> Rollback;
    fn slot_info(&self, slot: Slot) -> SlotInfo;
    /// The slot BEGIN may write (the inactive one); `None`: none.
    fn target(&self) -> Option<Slot>;
    fn baud(&self) -> u32;
    fn baud_supported(&self, baud: u32) -> bool;
    /// Sets the slot's `MantraSlots` record to flashing (state 4).
    fn mark_flashing(&mut self, slot: Slot, security_counter: u64, envelope_hash: [u8; 32]) -> Result<(), Failure>;
    /// Block `index` (of [`BLOCK_SIZE`] bytes) of the slot's partition.
    fn read_block(&mut self, slot: Slot, index: u32, buf: &mut [u8]) -> Result<(), Failure>;
    fn write_block(&mut self, slot: Slot, index: u32, data: &[u8]) -> Result<(), Failure>;
    fn flush(&mut self, slot: Slot) -> Result<(), Failure>;
    /// Verifies the slot through its file system as boot does; its
    /// envelope must be the one with `envelope_hash`.
    fn verify_slot(&mut self, slot: Slot, envelope_hash: &[u8; 32]) -> Result<(), Failure>;
    /// Sets the slot's record to pending with the configured tries.
    fn activate(&mut self, slot: Slot, security_counter: u64, envelope_hash: [u8; 32]) -> Result<(), Failure>;
    /// Progress of a long check: the device sends BUSY keepalives.
    fn busy(&mut self, done: u32, total: u32);
    /// A monotonic counter (TSC: guest instructions under -icount), for
    /// the cost figures; 0 when unknown.
    fn now(&self) -> u64;
}

/// What the caller does after sending the replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    None,
    /// Drain the transmitter, then switch the UART to this rate.
    SetBaud(u32),
    Reset,
    Abort,
}

/// Frames to send, then an action.
#[derive(Debug, PartialEq, Eq)]
pub struct Output {
    pub frames: Vec<Vec<u8>>,
    pub action: Action,
}

/// Cost figures (in [`Device::now`] units), for the console and the docs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// BEGIN's envelope verification, the last one.
    pub begin_verify: u64,
    /// Blocks written, and the time from a block's last chunk to its ACK
    /// (decode, hash, write), summed.
    pub blocks_written: u32,
    pub block_time: u64,
    /// Bytes of DATA chunks received (encoded) and decoded.
    pub encoded_bytes: u64,
    /// FINISH: flush, read-back and hashes, then the file-system check.
    pub finish_readback: u64,
    pub finish_verify: u64,
    /// DATA frames NAKed.
    pub naks: u32,
}

struct Partial {
    entry: u32,
    encoding: u8,
    total: u32,
    first_seq: u16,
    data: Vec<u8>,
}

struct Flash {
    slot: Slot,
    compression: u8,
    image_size: u64,
    count: u32,
    digest: [u8; 32],
    envelope_hash: [u8; 32],
    security_counter: u64,
    map: Vec<(u32, [u8; 32])>,
    have: Vec<bool>,
    mapped: bool,
    next_seq: u16,
    nak_sent: bool,
    partial: Option<Partial>,
    finished: bool,
}

/// One flash-mode session (the device's state across commands).
#[derive(Default)]
pub struct Session {
    flash: Option<Flash>,
    tx_seq: u16,
    pub stats: Stats,
}

/// A strict little-endian reader of a payload.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], Failure> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or_else(|| short(self.data.len()))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, Failure> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Failure> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, Failure> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, Failure> {
        let mut v = [0u8; 8];
        v.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(v))
    }
    fn hash(&mut self) -> Result<[u8; 32], Failure> {
        let mut v = [0u8; 32];
        v.copy_from_slice(self.take(32)?);
        Ok(v)
    }
    fn rest(&mut self) -> &'a [u8] {
        let s = &self.data[self.pos..];
        self.pos = self.data.len();
        s
    }
    fn finish(&self, what: &str) -> Result<(), Failure> {
        if self.pos == self.data.len() {
            Ok(())
        } else {
            Err(bad(format!("{what}: {} bytes after the last field", self.data.len() - self.pos)))
        }
    }
}

fn short(len: usize) -> Failure {
    bad(format!("payload of {len} bytes is too short"))
}

fn bad(message: String) -> Failure {
    Failure::new(code::BAD_REQUEST, format!("bad request: {message}; check that the host speaks MantraFlash 1"))
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(255)];
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

fn hex8(h: &[u8; 32]) -> String {
    let mut s = String::new();
    for b in &h[..8] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The ERROR code for an envelope BEGIN refuses.
pub fn envelope_code(error: &VerifyError<'_>) -> u16 {
    match error {
        VerifyError::Malformed(_) => code::BAD_REQUEST,
        VerifyError::KeyRecordSignature { .. }
        | VerifyError::KeyRecordIssuer { .. }
        | VerifyError::RevocationsSignature { .. }
        | VerifyError::RevocationsIssuer { .. }
        | VerifyError::KeyRevoked { .. }
        | VerifyError::KeyExpired { .. }
        | VerifyError::KeyNotYetValid { .. } => code::KEY,
        VerifyError::ManifestSignature { .. } | VerifyError::ManifestSigningKey { .. } => code::SIGNATURE,
        VerifyError::Downgrade { .. } | VerifyError::RevocationsRollback { .. } => code::ROLLBACK,
        VerifyError::Board { .. } => code::BOARD,
        _ => code::SLOT_VERIFY,
    }
}

/// The baud rates version 1 names: 115200 × 1, 2, 4, 8 and the standard
/// rates down to 9600. A device supports those its UART clock divides.
pub fn standard_baud(baud: u32) -> bool {
    matches!(baud, 9600 | 19200 | 38400 | 57600 | 115200 | 230400 | 460800 | 921600)
}

impl Session {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a flash has begun (for the console after flash mode).
    pub fn slot(&self) -> Option<Slot> {
        self.flash.as_ref().map(|f| f.slot)
    }

    fn frame(&mut self, frame_type: u8, payload: &[u8]) -> Vec<u8> {
        let seq = self.tx_seq;
        self.tx_seq = self.tx_seq.wrapping_add(1);
        frame::encode(frame_type, seq, payload)
    }

    fn ok(&mut self, payload: &[u8]) -> Output {
        Output { frames: vec![self.frame(ty::OK, payload)], action: Action::None }
    }

    fn error(&mut self, failure: &Failure) -> Output {
        let mut payload = Vec::with_capacity(4 + failure.message.len());
        payload.extend_from_slice(&failure.code.to_le_bytes());
        // Printable ASCII only, at most what a frame carries.
        let text: String = failure.message.chars().map(|c| if (' '..='~').contains(&c) { c } else { '?' }).take(1000).collect();
        put_str(&mut payload, &text);
        Output { frames: vec![self.frame(ty::ERROR, &payload)], action: Action::None }
    }

    fn ack(&mut self, seq: u16) -> Vec<u8> {
        self.frame(ty::ACK, &seq.to_le_bytes())
    }

    fn nak(&mut self, seq: u16, reason: u8) -> Vec<u8> {
        self.stats.naks += 1;
        let mut p = [0u8; 3];
        p[..2].copy_from_slice(&seq.to_le_bytes());
        p[2] = reason;
        self.frame(ty::NAK, &p)
    }

    /// What to send for one decoder event.
    pub fn handle(&mut self, device: &mut dyn Device, event: Event) -> Output {
        let frame = match event {
            Event::Frame(frame) => frame,
            Event::Dropped => {
                // A damaged frame while DATA flows: one NAK until the
                // expected frame arrives (go-back-N).
                let mut frames = Vec::new();
                if let Some(f) = self.flash.as_mut().filter(|f| f.mapped && !f.nak_sent) {
                    f.nak_sent = true;
                    let seq = f.next_seq;
                    frames.push(self.nak(seq, nak::DROPPED));
                }
                return Output { frames, action: Action::None };
            }
        };
        if frame.frame_type == ty::DATA {
            return self.data(device, &frame);
        }
        let result = match frame.frame_type {
            ty::HELLO => self.hello(device, &frame.payload).map(|p| (p, Action::None)),
            ty::SET_BAUD => self.set_baud(device, &frame.payload),
            ty::BEGIN => self.begin(device, &frame.payload).map(|p| (p, Action::None)),
            ty::MAP => self.map(device, &frame.payload).map(|p| (p, Action::None)),
            ty::HAVE => self.have(&frame.payload).map(|p| (p, Action::None)),
            ty::FINISH => self.finish(device, &frame.payload).map(|p| (p, Action::None)),
            ty::ACTIVATE => self.activate(device, &frame.payload).map(|p| (p, Action::None)),
            ty::RESET => empty(&frame.payload, "RESET").map(|()| (Vec::new(), Action::Reset)),
            ty::ABORT => empty(&frame.payload, "ABORT").map(|()| (Vec::new(), Action::Abort)),
            // Device-only types from the host: not a command.
            _ => return Output { frames: Vec::new(), action: Action::None },
        };
        match result {
            Ok((payload, action)) => {
                let mut out = self.ok(&payload);
                out.action = action;
                out
            }
            Err(failure) => self.error(&failure),
        }
    }

    fn hello(&mut self, device: &mut dyn Device, payload: &[u8]) -> Result<Vec<u8>, Failure> {
        let mut r = Reader::new(payload);
        let version = r.u16()?;
        r.finish("HELLO")?;
        if version != PROTOCOL_VERSION {
            return Err(Failure::new(
                code::VERSION,
                format!("protocol version {version} is not supported: this MantraBoot speaks version {PROTOCOL_VERSION}; use a matching mantra flash"),
            ));
        }
        let mut out = Vec::new();
        out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        out.extend_from_slice(&(frame::MAX_PAYLOAD as u16).to_le_bytes());
        out.extend_from_slice(&WINDOW.to_le_bytes());
        out.extend_from_slice(&COMPRESSION.to_le_bytes());
        out.extend_from_slice(&BLOCK_SIZE.to_le_bytes());
        out.extend_from_slice(&device.baud().to_le_bytes());
        put_str(&mut out, device.board());
        out.extend_from_slice(&sha256(device.root_key()));
        out.extend_from_slice(&device.minimum().security_counter.to_le_bytes());
        out.push(2);
        for slot in Slot::ALL {
            let info = device.slot_info(slot);
            out.push(slot.name() as u8);
            out.push(info.state);
            out.push(info.tries);
            out.push(u8::from(info.protected));
            out.extend_from_slice(&info.size.to_le_bytes());
            out.extend_from_slice(&info.security_counter.to_le_bytes());
            put_str(&mut out, &info.version);
        }
        // No writable slot: 0xFF, and BEGIN refuses every slot.
        out.push(device.target().map_or(0xFF, |s| s as u8));
        Ok(out)
    }

    fn set_baud(&mut self, device: &mut dyn Device, payload: &[u8]) -> Result<(Vec<u8>, Action), Failure> {
        let mut r = Reader::new(payload);
        let baud = r.u32()?;
        r.finish("SET_BAUD")?;
        if !standard_baud(baud) || !device.baud_supported(baud) {
            return Err(Failure::new(
                code::UNSUPPORTED,
                format!("baud rate {baud} is not supported by this board's UART; try 115200 or a rate it divides"),
            ));
        }
        Ok((Vec::new(), Action::SetBaud(baud)))
    }

    fn begin(&mut self, device: &mut dyn Device, payload: &[u8]) -> Result<Vec<u8>, Failure> {
        let mut r = Reader::new(payload);
        let slot = r.u8()?;
        let compression = r.u8()?;
        let reserved = r.u16()?;
        let block_size = r.u32()?;
        let image_size = r.u64()?;
        let count = r.u32()?;
        let digest = r.hash()?;
        let envelope_len = r.u32()? as usize;
        let envelope = r.take(envelope_len)?;
        r.finish("BEGIN")?;
        let slot = Slot::from_u8(slot).ok_or_else(|| bad(format!("BEGIN: slot {slot} (0 = a, 1 = b)")))?;
        match device.target() {
            Some(target) if target == slot => {}
            Some(target) => {
                return Err(Failure::new(
                    code::WRONG_SLOT,
                    format!(
                        "slot {} is the running/preferred slot and is never written; flash slot {} (HELLO's target)",
                        slot.name(),
                        target.name()
                    ),
                ))
            }
            None => return Err(Failure::new(code::WRONG_SLOT, "no slot can be written now")),
        }
        match compression {
            0 | 1 => {}
            2 => return Err(Failure::new(code::UNSUPPORTED, "zstd is not supported by this MantraBoot; use zlib (compression 1)")),
            c => return Err(bad(format!("BEGIN: compression {c}"))),
        }
        if reserved != 0 {
            return Err(bad(format!("BEGIN: reserved field {reserved:#x}")));
        }
        if block_size != BLOCK_SIZE {
            return Err(bad(format!("BEGIN: block size {block_size}, the device's is {BLOCK_SIZE}")));
        }
        let slot_size = device.slot_info(slot).size;
        if image_size == 0 || !image_size.is_multiple_of(u64::from(BLOCK_SIZE)) {
            return Err(bad(format!("BEGIN: image size {image_size} is not a positive multiple of {BLOCK_SIZE}")));
        }
        if image_size > slot_size {
            return Err(Failure::new(
                code::TOO_LARGE,
                format!("the image ({image_size} bytes) is larger than slot {} ({slot_size} bytes); build for this board", slot.name()),
            ));
        }
        let blocks = image_size / u64::from(BLOCK_SIZE);
        if count == 0 || u64::from(count) > blocks {
            return Err(bad(format!("BEGIN: {count} mapped blocks in an image of {blocks}")));
        }
        if envelope.len() > MAX_ENVELOPE {
            return Err(bad(format!("BEGIN: signed manifest of {} bytes (at most {MAX_ENVELOPE})", envelope.len())));
        }

        // The envelope, exactly as boot checks it, before anything is written.
        let start = device.now();
        let minimum = device.minimum();
        let board = String::from(device.board());
        let policy = Policy {
            board: Some(&board),
            min_security_counter: Some(minimum.security_counter),
            min_revocations: Some(minimum.revocations),
        };
        let verified = verify_envelope(envelope, device.root_key(), &policy).map_err(|e| {
            Failure::new(
                envelope_code(&e),
                format!("image refused before writing: {e}; flash an image signed for this board with the product's keys"),
            )
        })?;
        self.stats.begin_verify = device.now().wrapping_sub(start);
        let security_counter = verified.manifest.security_counter;
        let envelope_hash = sha256(envelope);

        let resume = self.flash.as_ref().is_some_and(|f| {
            f.slot == slot
                && f.digest == digest
                && f.envelope_hash == envelope_hash
                && f.count == count
                && f.image_size == image_size
                && f.compression == compression
        });
        device.mark_flashing(slot, security_counter, envelope_hash)?;
        if resume {
            let f = self.flash.as_mut().expect("resume checked a session");
            f.next_seq = 0;
            f.nak_sent = false;
            f.partial = None;
            let held = f.have.iter().filter(|&&h| h).count() as u32;
            return Ok(held.to_le_bytes().to_vec());
        }
        self.flash = Some(Flash {
            slot,
            compression,
            image_size,
            count,
            digest,
            envelope_hash,
            security_counter,
            map: Vec::with_capacity(count as usize),
            have: Vec::new(),
            mapped: false,
            next_seq: 0,
            nak_sent: false,
            partial: None,
            finished: false,
        });
        Ok(0u32.to_le_bytes().to_vec())
    }

    fn session(&mut self) -> Result<&mut Flash, Failure> {
        self.flash.as_mut().ok_or_else(|| Failure::new(code::NO_SESSION, "no flash session: send BEGIN first"))
    }

    fn map(&mut self, device: &mut dyn Device, payload: &[u8]) -> Result<Vec<u8>, Failure> {
        let f = self.session()?;
        let mut r = Reader::new(payload);
        let first = r.u32()? as usize;
        let rest = r.rest();
        if !rest.len().is_multiple_of(MAP_ENTRY) || rest.is_empty() {
            return Err(bad(format!("MAP: {} bytes of entries (36 each)", rest.len())));
        }
        let blocks = f.image_size / u64::from(BLOCK_SIZE);
        let entries: Vec<(u32, [u8; 32])> = rest
            .chunks_exact(MAP_ENTRY)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(&c[4..]);
                (u32::from_le_bytes([c[0], c[1], c[2], c[3]]), h)
            })
            .collect();
        let end = first.checked_add(entries.len()).filter(|&e| e <= f.count as usize);
        let Some(end) = end else {
            return Err(bad(format!("MAP: entries {first}.. run past the {} of BEGIN", f.count)));
        };
        if first < f.map.len() {
            // A resent MAP: fine if it says the same.
            let known = end.min(f.map.len());
            if f.map[first..known] != entries[..known - first] {
                return Err(bad(format!("MAP: entries from {first} differ from those received")));
            }
            if end <= f.map.len() {
                return Ok((f.map.len() as u32).to_le_bytes().to_vec());
            }
        } else if first > f.map.len() {
            return Err(bad(format!("MAP: entry {first} after {} received: send them in order", f.map.len())));
        }
        // All checked before any is kept: a refused MAP changes nothing.
        let skip = f.map.len() - first;
        let mut last = f.map.last().map(|&(index, _)| index);
        for &(index, _) in &entries[skip..] {
            if u64::from(index) >= blocks {
                return Err(bad(format!("MAP: block {index} is past the image's {blocks} blocks")));
            }
            if last.is_some_and(|last| index <= last) {
                return Err(bad(format!("MAP: block {index} is not after the previous entry")));
            }
            last = Some(index);
        }
        f.map.extend_from_slice(&entries[skip..]);
        if f.map.len() == f.count as usize && !f.mapped {
            let mut all = Vec::with_capacity(f.map.len() * MAP_ENTRY);
            for (index, hash) in &f.map {
                all.extend_from_slice(&index.to_le_bytes());
                all.extend_from_slice(hash);
            }
            if sha256(&all) != f.digest {
                let got = sha256(&all);
                let want = f.digest;
                self.flash = None;
                return Err(Failure::new(
                    code::WHOLE_SLOT,
                    format!("the block map's digest {}… is not BEGIN's {}…: send BEGIN and the map again", hex8(&got), hex8(&want)),
                ));
            }
            // What the slot already holds (resume after a cut).
            let (slot, map) = (f.slot, f.map.clone());
            let mut have = vec![false; map.len()];
            let mut buf = vec![0u8; BLOCK_SIZE as usize];
            for (i, (index, hash)) in map.iter().enumerate() {
                device.busy(i as u32, map.len() as u32);
                if device.read_block(slot, *index, &mut buf).is_ok() {
                    have[i] = sha256(&buf) == *hash;
                }
            }
            let f = self.session()?;
            f.have = have;
            f.mapped = true;
        }
        let f = self.session()?;
        Ok((f.map.len() as u32).to_le_bytes().to_vec())
    }

    fn have(&mut self, payload: &[u8]) -> Result<Vec<u8>, Failure> {
        let f = self.session()?;
        let mut r = Reader::new(payload);
        let first = r.u32()? as usize;
        let count = r.u32()? as usize;
        r.finish("HAVE")?;
        if !f.mapped {
            return Err(bad(format!("HAVE before the whole block map ({} of {} entries)", f.map.len(), f.count)));
        }
        if first.checked_add(count).is_none_or(|e| e > f.have.len()) || count > frame::MAX_PAYLOAD * 8 {
            return Err(bad(format!("HAVE: entries {first}+{count} of {}", f.have.len())));
        }
        let mut out = vec![0u8; count.div_ceil(8)];
        for i in 0..count {
            if f.have[first + i] {
                out[i / 8] |= 1 << (i % 8);
            }
        }
        Ok(out)
    }

    fn data(&mut self, device: &mut dyn Device, frame: &Frame) -> Output {
        let Some(f) = self.flash.as_mut() else {
            return self.error(&Failure::new(code::NO_SESSION, "no flash session: send BEGIN first"));
        };
        if !f.mapped {
            let msg = format!("DATA before the whole block map ({} of {} entries)", f.map.len(), f.count);
            return self.error(&bad(msg));
        }
        if frame.seq != f.next_seq {
            let mut frames = Vec::new();
            if !f.nak_sent {
                f.nak_sent = true;
                let seq = f.next_seq;
                frames.push(self.nak(seq, nak::SEQUENCE));
            }
            return Output { frames, action: Action::None };
        }
        match self.accept(device, frame) {
            Ok(reply) => Output { frames: vec![reply], action: Action::None },
            Err(failure) => {
                // The frame was in sequence but wrong: the session stays
                // where it was (the host may resend from there).
                self.error(&failure)
            }
        }
    }

    /// An in-sequence DATA frame: its chunk, and the block when complete.
    fn accept(&mut self, device: &mut dyn Device, frame: &Frame) -> Result<Vec<u8>, Failure> {
        let f = self.flash.as_mut().expect("data() checked the session");
        let mut r = Reader::new(&frame.payload);
        let entry = r.u32()?;
        let total = r.u32()?;
        let offset = r.u32()?;
        let encoding = r.u8()?;
        let reserved = r.take(3)?;
        let chunk = r.rest();
        if reserved != [0, 0, 0] {
            return Err(bad(String::from("DATA: reserved bytes are not zero")));
        }
        if entry >= f.count {
            return Err(bad(format!("DATA: map entry {entry} of {}", f.count)));
        }
        match encoding {
            0 if total == BLOCK_SIZE => {}
            0 => return Err(bad(format!("DATA: a raw block of {total} bytes (the block size is {BLOCK_SIZE})"))),
            1 if f.compression == 1 => {
                if total == 0 || total > BLOCK_SIZE {
                    return Err(bad(format!("DATA: a zlib block of {total} bytes")));
                }
            }
            1 => return Err(bad(String::from("DATA: zlib, but BEGIN announced no compression"))),
            2 => return Err(Failure::new(code::UNSUPPORTED, "DATA: zstd is not supported; use zlib")),
            e => return Err(bad(format!("DATA: encoding {e}"))),
        }
        if chunk.is_empty() {
            return Err(bad(String::from("DATA: an empty chunk")));
        }
        let partial = match f.partial.take() {
            Some(p) if offset != 0 => {
                if p.entry != entry || p.total != total || p.encoding != encoding || p.data.len() != offset as usize {
                    return Err(bad(format!(
                        "DATA: chunk at {offset} of entry {entry} does not continue entry {} at {}",
                        p.entry,
                        p.data.len()
                    )));
                }
                p
            }
            None if offset != 0 => return Err(bad(format!("DATA: entry {entry} starts at offset {offset}, not 0"))),
            _ => Partial { entry, encoding, total, first_seq: frame.seq, data: Vec::with_capacity(total as usize) },
        };
        let mut partial = partial;
        if partial.data.len() + chunk.len() > total as usize {
            return Err(bad(format!("DATA: chunks of entry {entry} run past its {total} bytes")));
        }
        partial.data.extend_from_slice(chunk);
        self.stats.encoded_bytes += chunk.len() as u64;
        f.next_seq = f.next_seq.wrapping_add(1);
        f.nak_sent = false;
        if partial.data.len() < total as usize {
            f.partial = Some(partial);
            let seq = f.next_seq;
            return Ok(self.ack(seq));
        }

        // The whole block: decode, check, write, then ACK.
        let start = device.now();
        let (slot, index, expected) = (f.slot, f.map[entry as usize].0, f.map[entry as usize].1);
        let block = match partial.encoding {
            0 => Ok(partial.data),
            _ => miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(&partial.data, BLOCK_SIZE as usize)
                .ok()
                .filter(|d| d.len() == BLOCK_SIZE as usize)
                .ok_or(nak::DECOMPRESS),
        };
        let block = block.and_then(|b| if sha256(&b) == expected { Ok(b) } else { Err(nak::HASH) });
        let block = match block {
            Ok(b) => b,
            Err(reason) => {
                // The whole block again, from its first chunk.
                f.next_seq = partial.first_seq;
                f.nak_sent = true;
                let seq = f.next_seq;
                return Ok(self.nak(seq, reason));
            }
        };
        if let Err(e) = device.write_block(slot, index, &block) {
            let f = self.flash.as_mut().expect("session");
            f.next_seq = partial.first_seq;
            return Err(e);
        }
        let f = self.flash.as_mut().expect("session");
        f.have[entry as usize] = true;
        f.finished = false;
        let seq = f.next_seq;
        self.stats.blocks_written += 1;
        self.stats.block_time += device.now().wrapping_sub(start);
        Ok(self.ack(seq))
    }

    fn finish(&mut self, device: &mut dyn Device, payload: &[u8]) -> Result<Vec<u8>, Failure> {
        empty(payload, "FINISH")?;
        let f = self.session()?;
        // Only a FINISH that passes allows ACTIVATE.
        f.finished = false;
        if !f.mapped {
            return Err(Failure::new(
                code::WHOLE_SLOT,
                format!("whole-slot check failed: the block map is incomplete ({} of {} entries); send MAP", f.map.len(), f.count),
            ));
        }
        let missing = f.have.iter().filter(|&&h| !h).count();
        if missing > 0 {
            return Err(Failure::new(
                code::WHOLE_SLOT,
                format!("whole-slot check failed: {missing} of {} blocks not received; send HAVE and the missing blocks", f.count),
            ));
        }
        let (slot, map, digest, envelope_hash) = (f.slot, f.map.clone(), f.digest, f.envelope_hash);
        let start = device.now();
        device.flush(slot)?;
        let mut buf = vec![0u8; BLOCK_SIZE as usize];
        let mut all = Vec::with_capacity(map.len() * MAP_ENTRY);
        for (i, (index, hash)) in map.iter().enumerate() {
            device.busy(i as u32, map.len() as u32);
            device.read_block(slot, *index, &mut buf)?;
            let got = sha256(&buf);
            if got != *hash {
                // Write it again: the host resends what HAVE says is missing.
                self.session()?.have[i] = false;
                return Err(Failure::new(
                    code::WHOLE_SLOT,
                    format!(
                        "whole-slot check failed: block {index} (map entry {i}) reads back as {}…, the map says {}…; send HAVE and the missing blocks again",
                        hex8(&got),
                        hex8(hash)
                    ),
                ));
            }
            all.extend_from_slice(&index.to_le_bytes());
            all.extend_from_slice(&got);
        }
        if sha256(&all) != digest {
            return Err(Failure::new(code::WHOLE_SLOT, "whole-slot check failed: the image digest differs from BEGIN's"));
        }
        let readback = device.now().wrapping_sub(start);
        let start = device.now();
        device.verify_slot(slot, &envelope_hash)?;
        self.stats.finish_readback = readback;
        self.stats.finish_verify = device.now().wrapping_sub(start);
        self.session()?.finished = true;
        Ok((readback + self.stats.finish_verify).to_le_bytes().to_vec())
    }

    fn activate(&mut self, device: &mut dyn Device, payload: &[u8]) -> Result<Vec<u8>, Failure> {
        empty(payload, "ACTIVATE")?;
        let f = self.session()?;
        if !f.finished {
            return Err(Failure::new(code::NO_SESSION, "ACTIVATE before a successful FINISH of this session: send FINISH"));
        }
        let (slot, counter, hash) = (f.slot, f.security_counter, f.envelope_hash);
        device.activate(slot, counter, hash)?;
        Ok(Vec::new())
    }
}

fn empty(payload: &[u8], what: &str) -> Result<(), Failure> {
    if payload.is_empty() {
        Ok(())
    } else {
        Err(bad(format!("{what} carries {} bytes, expected none", payload.len())))
    }
}
