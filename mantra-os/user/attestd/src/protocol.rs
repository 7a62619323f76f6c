//! The attestation console protocol (docs/boot-state.md, "Attestation
//! console protocol"): the request line, the blob and the answer lines.
//!
//! Request: `MANTRA-ATTEST-REQUEST <nonce: 64 hex digits>`. Answer:
//! `MANTRA-ATTEST-BEGIN <nonce hex> <blob length>`, then
//! `MANTRA-ATTEST-DATA <seq from 0> <base64 of at most 72 bytes>` lines,
//! then `MANTRA-ATTEST-END <SHA-256 hex of the blob>`; or
//! `MANTRA-ATTEST-ERROR <message>`.
//!
//! The blob: magic `MTRA-ATQ`, version 1 (u16), section count (u16), total
//! length (u32), then sections: tag (u16), reserved 0 (u16), length (u32),
//! value; little-endian. Tags: 1 event log, 2 the AK's TPM2B_PUBLIC, 3 the
//! quote's TPM2B_ATTEST, 4 its TPMT_SIGNATURE.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use sha2::{Digest, Sha256};

pub const REQUEST: &str = "MANTRA-ATTEST-REQUEST";
pub const BEGIN: &str = "MANTRA-ATTEST-BEGIN";
pub const DATA: &str = "MANTRA-ATTEST-DATA";
pub const END: &str = "MANTRA-ATTEST-END";
pub const ERROR: &str = "MANTRA-ATTEST-ERROR";

pub const MAGIC: &[u8; 8] = b"MTRA-ATQ";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 16;
pub const SECTION_HEADER_LEN: usize = 8;
/// Bytes of blob per DATA line.
pub const DATA_CHUNK: usize = 72;

pub const TAG_EVENT_LOG: u16 = 1;
pub const TAG_AK_PUBLIC: u16 = 2;
pub const TAG_ATTEST: u16 = 3;
pub const TAG_SIGNATURE: u16 = 4;

/// What a console line asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    /// A well-formed request.
    Request([u8; 32]),
    /// A request marker with a bad argument: why.
    BadRequest(&'static str),
    /// Anything else (ignored).
    Other,
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Classifies one console line (without its line end). The marker may be
/// preceded by other text (a terminal's leftovers); after it come exactly
/// one blank and 64 hex digits, then nothing but blanks.
pub fn parse_line(line: &[u8]) -> Line {
    let marker = REQUEST.as_bytes();
    let Some(at) = line.windows(marker.len()).position(|w| w == marker) else {
        return Line::Other;
    };
    let rest = &line[at + marker.len()..];
    let Some(rest) = rest.strip_prefix(b" ") else {
        return Line::BadRequest("no nonce after the marker");
    };
    let end = rest.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |p| p + 1);
    let nonce = &rest[..end];
    if nonce.len() != 64 {
        return Line::BadRequest("the nonce is not 64 hex digits");
    }
    let mut out = [0u8; 32];
    for (i, pair) in nonce.chunks(2).enumerate() {
        match (hex_digit(pair[0]), hex_digit(pair[1])) {
            (Some(hi), Some(lo)) => out[i] = hi << 4 | lo,
            _ => return Line::BadRequest("the nonce has a character that is not a hex digit"),
        }
    }
    Line::Request(out)
}

/// Splits console input into lines: bytes go in, whole lines come out.
/// Lines longer than the limit are dropped whole (their tail too).
pub struct LineBuffer {
    line: Vec<u8>,
    overflow: bool,
}

/// Longest line kept (a request is 86 bytes).
pub const MAX_LINE: usize = 512;

impl Default for LineBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl LineBuffer {
    pub const fn new() -> Self {
        Self { line: Vec::new(), overflow: false }
    }

    /// Feeds bytes; calls `on_line` with each completed line (CR or LF ends one).
    pub fn feed(&mut self, bytes: &[u8], mut on_line: impl FnMut(&[u8])) {
        for &b in bytes {
            if b == b'\n' || b == b'\r' {
                if !self.overflow && !self.line.is_empty() {
                    on_line(&self.line);
                }
                self.line.clear();
                self.overflow = false;
            } else if self.line.len() == MAX_LINE {
                self.overflow = true;
            } else {
                self.line.push(b);
            }
        }
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648, section 4).
pub fn base64(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(BASE64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Encodes the blob from its sections (tag, value) in order.
pub fn encode_blob(sections: &[(u16, &[u8])]) -> Result<Vec<u8>, &'static str> {
    let total = HEADER_LEN + sections.iter().map(|(_, v)| SECTION_HEADER_LEN + v.len()).sum::<usize>();
    let total_u32 = u32::try_from(total).map_err(|_| "the blob is larger than 4 GiB")?;
    let count = u16::try_from(sections.len()).map_err(|_| "too many sections")?;
    let mut blob = Vec::with_capacity(total);
    blob.extend_from_slice(MAGIC);
    blob.extend_from_slice(&VERSION.to_le_bytes());
    blob.extend_from_slice(&count.to_le_bytes());
    blob.extend_from_slice(&total_u32.to_le_bytes());
    for (tag, value) in sections {
        blob.extend_from_slice(&tag.to_le_bytes());
        blob.extend_from_slice(&0u16.to_le_bytes());
        blob.extend_from_slice(&(value.len() as u32).to_le_bytes());
        blob.extend_from_slice(value);
    }
    Ok(blob)
}

/// Parses a blob strictly (magic, version, lengths, reserved fields) into
/// its sections, for tests and self-checks.
pub fn decode_blob(blob: &[u8]) -> Result<Vec<(u16, &[u8])>, &'static str> {
    if blob.len() < HEADER_LEN || &blob[..8] != MAGIC {
        return Err("no MTRA-ATQ header");
    }
    if u16::from_le_bytes([blob[8], blob[9]]) != VERSION {
        return Err("unknown version");
    }
    let count = u16::from_le_bytes([blob[10], blob[11]]) as usize;
    if u32::from_le_bytes([blob[12], blob[13], blob[14], blob[15]]) as usize != blob.len() {
        return Err("total length differs from the blob's");
    }
    let mut at = HEADER_LEN;
    let mut out = Vec::new();
    for _ in 0..count {
        let head = blob.get(at..at + SECTION_HEADER_LEN).ok_or("section header past the end")?;
        let tag = u16::from_le_bytes([head[0], head[1]]);
        if head[2] != 0 || head[3] != 0 {
            return Err("reserved field is not 0");
        }
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        let value = blob.get(at + SECTION_HEADER_LEN..at + SECTION_HEADER_LEN + len).ok_or("section past the end")?;
        out.push((tag, value));
        at += SECTION_HEADER_LEN + len;
    }
    if at != blob.len() {
        return Err("bytes after the last section");
    }
    Ok(out)
}

/// The answer lines for `blob` (each ends with a line end).
pub fn answer_lines(nonce: &[u8; 32], blob: &[u8]) -> Vec<String> {
    let mut lines = Vec::with_capacity(blob.len() / DATA_CHUNK + 3);
    lines.push(format!("{BEGIN} {} {}\n", hex(nonce), blob.len()));
    for (seq, chunk) in blob.chunks(DATA_CHUNK).enumerate() {
        lines.push(format!("{DATA} {seq} {}\n", base64(chunk)));
    }
    lines.push(format!("{END} {}\n", hex(&Sha256::digest(blob))));
    lines
}

/// An error line: the message made printable, on one line.
pub fn error_line(message: &str) -> String {
    let clean: String = message.chars().map(|c| if (' '..='~').contains(&c) { c } else { '?' }).collect();
    format!("{ERROR} {clean}\n")
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;

    #[test]
    fn parses_requests() {
        let nonce = "00112233445566778899aabbccddeeffFFEEDDCCBBAA99887766554433221100";
        let line = format!("{REQUEST} {nonce}");
        let Line::Request(bytes) = parse_line(line.as_bytes()) else { panic!() };
        assert_eq!(bytes[0..3], [0x00, 0x11, 0x22]);
        assert_eq!(bytes[16], 0xFF);
        assert_eq!(parse_line(format!("garbage {line}  ").as_bytes()), Line::Request(bytes));
        assert_eq!(parse_line(b"hello"), Line::Other);
        assert_eq!(parse_line(REQUEST.as_bytes()), Line::BadRequest("no nonce after the marker"));
        assert_eq!(parse_line(format!("{REQUEST} abcd").as_bytes()), Line::BadRequest("the nonce is not 64 hex digits"));
        let bad = format!("{REQUEST} {}", "g".repeat(64));
        assert!(matches!(parse_line(bad.as_bytes()), Line::BadRequest(_)));
        let long = format!("{REQUEST} {nonce}0");
        assert!(matches!(parse_line(long.as_bytes()), Line::BadRequest(_)));
    }

    #[test]
    fn splits_lines_and_drops_overlong_ones() {
        let mut buffer = LineBuffer::new();
        let mut lines = vec![];
        buffer.feed(b"one\r\ntw", |l| lines.push(l.to_vec()));
        buffer.feed(b"o\n", |l| lines.push(l.to_vec()));
        buffer.feed(&[b'x'; MAX_LINE + 10], |l| lines.push(l.to_vec()));
        buffer.feed(b"\nthree\n", |l| lines.push(l.to_vec()));
        assert_eq!(lines, vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]);
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, out) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64(input.as_bytes()), out);
        }
        assert_eq!(base64(&[0xFF, 0xFE, 0xFD]), "//79");
    }

    #[test]
    fn blob_bytes_and_round_trip() {
        let blob = encode_blob(&[(TAG_EVENT_LOG, b"log"), (TAG_AK_PUBLIC, b""), (TAG_ATTEST, b"at"), (TAG_SIGNATURE, b"s")]).unwrap();
        let mut expected = b"MTRA-ATQ".to_vec();
        expected.extend_from_slice(&[1, 0, 4, 0, 54, 0, 0, 0]);
        expected.extend_from_slice(&[1, 0, 0, 0, 3, 0, 0, 0]);
        expected.extend_from_slice(b"log");
        expected.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend_from_slice(&[3, 0, 0, 0, 2, 0, 0, 0]);
        expected.extend_from_slice(b"at");
        expected.extend_from_slice(&[4, 0, 0, 0, 1, 0, 0, 0]);
        expected.extend_from_slice(b"s");
        assert_eq!(blob, expected);
        let sections = decode_blob(&blob).unwrap();
        assert_eq!(sections[0], (TAG_EVENT_LOG, &b"log"[..]));
        assert_eq!(sections.len(), 4);
        for n in 0..blob.len() {
            assert!(decode_blob(&blob[..n]).is_err());
        }
    }

    #[test]
    fn answer_lines_frame_the_blob() {
        let blob: Vec<u8> = (0..=200u8).collect();
        let lines = answer_lines(&[0xAB; 32], &blob);
        assert_eq!(lines.len(), 1 + 3 + 1);
        assert_eq!(lines[0], format!("{BEGIN} {} 201\n", "ab".repeat(32)));
        assert!(lines[1].starts_with("MANTRA-ATTEST-DATA 0 AAECAwQF"));
        assert_eq!(lines[1].len(), "MANTRA-ATTEST-DATA 0 ".len() + 96 + 1);
        assert!(lines[3].starts_with("MANTRA-ATTEST-DATA 2 "));
        // SHA-256 of bytes 0..=200.
        assert_eq!(lines[4], format!("{END} {}\n", hex(&Sha256::digest(&blob))));
        assert_eq!(error_line("no TPM\n\u{7}"), "MANTRA-ATTEST-ERROR no TPM??\n");
        assert_eq!(hex(&Sha256::digest(b"abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
