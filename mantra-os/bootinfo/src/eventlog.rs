//! The TCG event log in the crypto-agile format (TCG PC Client Platform
//! Firmware Profile, section 10): sizing entries so MantraBoot can copy the
//! firmware's log (GetEventLog gives its start and the start of its last
//! entry, not its length) and append the entries of the
//! EFI_TCG2_FINAL_EVENTS_TABLE after ExitBootServices.
//!
//! The log starts with one `TCG_PCR_EVENT` (SHA-1 format) whose data is the
//! `TCG_EfiSpecIDEvent` (`Spec ID Event03`): it lists the digest algorithms
//! and their sizes. Every later entry is a `TCG_PCR_EVENT2`: PCR index
//! (u32), event type (u32), `TPML_DIGEST_VALUES` (count u32, then per digest
//! an algorithm id u16 and the digest), event size (u32), event data.
//!
//! Everything is bounds-checked: a short slice answers
//! [`Error::Truncated`] with the length needed so a caller reading firmware
//! memory can grow its view and retry; anything malformed is an error,
//! never a panic.

/// Signature of the crypto-agile Spec ID event.
pub const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";
/// Event type of the Spec ID event.
pub const EV_NO_ACTION: u32 = 3;
/// Most digest algorithms a Spec ID event may list.
pub const MAX_ALGORITHMS: usize = 8;
/// Largest digest (SHA-512).
pub const MAX_DIGEST: u16 = 64;
/// Largest event data MantraBoot accepts in one entry.
pub const MAX_EVENT_DATA: u32 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The slice is too short: this many bytes from the entry's start are needed.
    Truncated { needed: usize },
    /// The first entry is not a crypto-agile Spec ID event.
    NotCryptoAgile,
    /// The Spec ID event lists no, too many, or oversized algorithms.
    BadAlgorithms,
    /// An entry names a digest algorithm the Spec ID event does not list,
    /// or has more digests than it lists.
    UnknownAlgorithm(u16),
    /// An entry's event data is larger than [`MAX_EVENT_DATA`].
    EventTooLarge(u32),
    /// Non-zero bytes after the log's padding started.
    Garbage,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Truncated { needed } => write!(f, "entry truncated ({needed} bytes needed)"),
            Error::NotCryptoAgile => write!(f, "not a crypto-agile log (no Spec ID Event03 first)"),
            Error::BadAlgorithms => write!(f, "the Spec ID event's algorithm list is malformed"),
            Error::UnknownAlgorithm(alg) => write!(f, "an entry has a digest of algorithm {alg:#06x}, not in the Spec ID event"),
            Error::EventTooLarge(n) => write!(f, "an entry's event data is {n} bytes"),
            Error::Garbage => write!(f, "non-zero bytes after the end of the log"),
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, Error> {
    b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]])).ok_or(Error::Truncated { needed: at + 2 })
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, Error> {
    b.get(at..at + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]])).ok_or(Error::Truncated { needed: at + 4 })
}

/// The digest algorithms of a log (from its Spec ID event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Algorithms {
    list: [(u16, u16); MAX_ALGORITHMS],
    count: usize,
}

impl Algorithms {
    fn size_of(&self, alg: u16) -> Option<u16> {
        self.list[..self.count].iter().find(|(id, _)| *id == alg).map(|(_, size)| *size)
    }
    pub fn count(&self) -> usize {
        self.count
    }
}

/// Size of the `TCG_PCR_EVENT` header (PCR, type, SHA-1 digest, event size).
const PCR_EVENT_FIXED: usize = 4 + 4 + 20 + 4;

/// Parses the log's first entry, the Spec ID event. Returns its size and the
/// algorithms it lists.
pub fn parse_header(b: &[u8]) -> Result<(usize, Algorithms), Error> {
    let event_type = u32_at(b, 4)?;
    let data_size = u32_at(b, 28)?;
    if data_size > MAX_EVENT_DATA {
        return Err(Error::EventTooLarge(data_size));
    }
    let size = PCR_EVENT_FIXED + data_size as usize;
    if b.len() < size {
        return Err(Error::Truncated { needed: size });
    }
    let data = &b[PCR_EVENT_FIXED..size];
    // signature 16, platformClass 4, versions and uintnSize 4, numberOfAlgorithms 4
    if event_type != EV_NO_ACTION || data.len() < 28 || &data[..16] != SPEC_ID_SIGNATURE {
        return Err(Error::NotCryptoAgile);
    }
    let count = u32_at(data, 24).map_err(|_| Error::NotCryptoAgile)? as usize;
    if count == 0 || count > MAX_ALGORITHMS || data.len() < 28 + count * 4 {
        return Err(Error::BadAlgorithms);
    }
    let mut algs = Algorithms { list: [(0, 0); MAX_ALGORITHMS], count };
    for i in 0..count {
        let id = u16_at(data, 28 + 4 * i).map_err(|_| Error::BadAlgorithms)?;
        let size = u16_at(data, 30 + 4 * i).map_err(|_| Error::BadAlgorithms)?;
        if size == 0 || size > MAX_DIGEST {
            return Err(Error::BadAlgorithms);
        }
        algs.list[i] = (id, size);
    }
    Ok((size, algs))
}

/// Size of the `TCG_PCR_EVENT2` entry at the start of `b`.
pub fn entry_size(b: &[u8], algs: &Algorithms) -> Result<usize, Error> {
    let count = u32_at(b, 8)? as usize;
    if count > algs.count {
        return Err(Error::BadAlgorithms);
    }
    let mut at = 12;
    for _ in 0..count {
        let alg = u16_at(b, at)?;
        let size = algs.size_of(alg).ok_or(Error::UnknownAlgorithm(alg))?;
        at += 2 + size as usize;
    }
    let data_size = u32_at(b, at)?;
    if data_size > MAX_EVENT_DATA {
        return Err(Error::EventTooLarge(data_size));
    }
    let size = at + 4 + data_size as usize;
    if b.len() < size {
        return Err(Error::Truncated { needed: size });
    }
    Ok(size)
}

/// Calls `entry_size` on a view that grows as the parser asks (`view(len)`
/// returns `len` bytes from the entry's start): for firmware memory whose
/// extent is not known beforehand.
pub fn entry_size_grow<'a>(mut view: impl FnMut(usize) -> &'a [u8], algs: &Algorithms) -> Result<usize, Error> {
    let mut len = 64;
    for _ in 0..(2 * MAX_ALGORITHMS + 4) {
        match entry_size(view(len), algs) {
            Err(Error::Truncated { needed }) if needed > len => len = needed,
            other => return other,
        }
    }
    Err(Error::BadAlgorithms)
}

/// Like [`entry_size_grow`] for the Spec ID header.
pub fn parse_header_grow<'a>(mut view: impl FnMut(usize) -> &'a [u8]) -> Result<(usize, Algorithms), Error> {
    let mut len = 64;
    for _ in 0..4 {
        match parse_header(view(len)) {
            Err(Error::Truncated { needed }) if needed > len => len = needed,
            other => return other,
        }
    }
    Err(Error::NotCryptoAgile)
}

/// The length of the log at the start of `bytes`, which may be followed by
/// zero padding (a memory object holding the log is page-sized): the
/// header, then entries up to the end or to the first all-zero entry
/// header (a real entry has at least one digest), after which every byte
/// must be zero.
pub fn used_length(bytes: &[u8]) -> Result<usize, Error> {
    let (mut at, algs) = parse_header(bytes)?;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < 12 || rest[..12].iter().all(|&b| b == 0) {
            if rest.iter().all(|&b| b == 0) {
                return Ok(at);
            }
            return Err(Error::Garbage);
        }
        at += entry_size(rest, &algs)?;
    }
    Ok(at)
}

/// Checks that `log` is a whole crypto-agile log (header, then entries
/// ending exactly at its end) and returns the number of entries after the
/// header.
pub fn count_entries(log: &[u8]) -> Result<usize, Error> {
    let (mut at, algs) = parse_header(log)?;
    let mut n = 0;
    while at < log.len() {
        at += entry_size(&log[at..], &algs)?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// A Spec ID event listing SHA-1 (20) and SHA-256 (32), as OVMF writes it.
    fn header() -> Vec<u8> {
        let mut data = Vec::new();
        data.extend_from_slice(SPEC_ID_SIGNATURE);
        data.extend_from_slice(&0u32.to_le_bytes()); // platform class
        data.extend_from_slice(&[0, 2, 0, 2]); // minor, major, errata, uintn size
        data.extend_from_slice(&2u32.to_le_bytes());
        data.extend_from_slice(&[0x04, 0x00, 20, 0, 0x0b, 0x00, 32, 0]);
        data.push(0); // vendor info size
        let mut e = Vec::new();
        e.extend_from_slice(&0u32.to_le_bytes());
        e.extend_from_slice(&EV_NO_ACTION.to_le_bytes());
        e.extend_from_slice(&[0; 20]);
        e.extend_from_slice(&(data.len() as u32).to_le_bytes());
        e.extend_from_slice(&data);
        e
    }

    fn event2(pcr: u32, data: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(&pcr.to_le_bytes());
        e.extend_from_slice(&0x0du32.to_le_bytes());
        e.extend_from_slice(&2u32.to_le_bytes());
        e.extend_from_slice(&[0x04, 0x00]);
        e.extend_from_slice(&[0x11; 20]);
        e.extend_from_slice(&[0x0b, 0x00]);
        e.extend_from_slice(&[0x22; 32]);
        e.extend_from_slice(&(data.len() as u32).to_le_bytes());
        e.extend_from_slice(data);
        e
    }

    #[test]
    fn sizes_header_and_entries() {
        let h = header();
        let (size, algs) = parse_header(&h).unwrap();
        assert_eq!((size, algs.count()), (h.len(), 2));
        let e = event2(8, b"manifest");
        assert_eq!(entry_size(&e, &algs), Ok(4 + 4 + 4 + 22 + 34 + 4 + 8));
        let mut log = h.clone();
        log.extend_from_slice(&e);
        log.extend_from_slice(&event2(9, b"MANTRA/KERNEL.ELF"));
        assert_eq!(count_entries(&log), Ok(2));
        assert_eq!(count_entries(&log[..log.len() - 1]), Err(Error::Truncated { needed: 89 }));
    }

    #[test]
    fn grows_the_view_as_asked() {
        let h = header();
        let (_, algs) = parse_header(&h).unwrap();
        let e = event2(9, &[0x55; 300]);
        let mut asked = Vec::new();
        let size = entry_size_grow(
            |len| {
                asked.push(len);
                &e[..len.min(e.len())]
            },
            &algs,
        );
        assert_eq!(size, Ok(e.len()));
        assert_eq!(asked, [64, 72, e.len()]);
        assert_eq!(parse_header_grow(|len| &h[..len.min(h.len())]).map(|r| r.0), Ok(h.len()));
    }

    #[test]
    fn finds_the_end_before_padding() {
        let mut log = header();
        log.extend_from_slice(&event2(8, b"manifest"));
        let len = log.len();
        log.resize(4096, 0);
        assert_eq!(used_length(&log), Ok(len));
        assert_eq!(used_length(&log[..len]), Ok(len));
        log[4000] = 1;
        assert_eq!(used_length(&log), Err(Error::Garbage));
    }

    #[test]
    fn rejects_garbage() {
        let mut h = header();
        h[32] = b'X';
        assert_eq!(parse_header(&h), Err(Error::NotCryptoAgile));
        let (_, algs) = parse_header(&header()).unwrap();
        let mut e = event2(9, b"x");
        e[12] = 0x0c; // SHA-384 is not listed
        assert_eq!(entry_size(&e, &algs), Err(Error::UnknownAlgorithm(0x0c)));
        let mut e = event2(9, b"x");
        e[8] = 3; // three digests, two algorithms
        assert_eq!(entry_size(&e, &algs), Err(Error::BadAlgorithms));
        let mut e = event2(9, b"x");
        let n = e.len();
        e[n - 5..n - 1].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(entry_size(&e, &algs), Err(Error::EventTooLarge(u32::MAX)));
        assert_eq!(count_entries(&[]), Err(Error::Truncated { needed: 8 }));
    }
}
