//! The boot filesystem: a flat, read-only archive that `./mantra build`
//! packs (tools/mantra/image/bootfs.py writes the same layout) and MantraBoot loads
//! next to the kernel. Later issues put MantraInit and the services in it.
//!
//! Layout (little-endian):
//! - header, 64 bytes: magic `MANTRAFS`, version u32, entry count u32,
//!   total size u64, entries offset u64, 32 reserved bytes;
//! - `count` entries of 128 bytes: name (80 bytes UTF-8, NUL-padded),
//!   data offset u64, data size u64, SHA-256 of the data (32 bytes);
//! - file data, each file starting on a 4 KiB boundary.

pub const MAGIC: [u8; 8] = *b"MANTRAFS";
pub const VERSION: u32 = 1;
pub const HEADER_SIZE: usize = 64;
pub const ENTRY_SIZE: usize = 128;
pub const NAME_LEN: usize = 80;
pub const DATA_ALIGN: u64 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    Truncated,
    BadMagic,
    UnsupportedVersion(u32),
    /// Entry `index` has a name that is empty or not UTF-8.
    BadName(usize),
    /// Entry `index` points outside the archive.
    BadExtent(usize),
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Truncated => write!(f, "boot filesystem is truncated"),
            Error::BadMagic => write!(f, "not a boot filesystem (bad magic)"),
            Error::UnsupportedVersion(v) => write!(f, "boot filesystem version {v} is not supported (expected {VERSION})"),
            Error::BadName(i) => write!(f, "boot filesystem entry {i} has a bad name"),
            Error::BadExtent(i) => write!(f, "boot filesystem entry {i} points outside the archive"),
        }
    }
}

/// One file of the archive.
#[derive(Clone, Copy, Debug)]
pub struct File<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
    pub sha256: &'a [u8; 32],
}

/// A validated archive.
#[derive(Clone, Copy)]
pub struct BootFs<'a> {
    bytes: &'a [u8],
    count: usize,
    entries_offset: usize,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

impl<'a> BootFs<'a> {
    /// Validates the header and every entry (name, extent) up front, so
    /// iteration afterwards cannot fail.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        if bytes.len() < HEADER_SIZE {
            return Err(Error::Truncated);
        }
        if bytes[..8] != MAGIC {
            return Err(Error::BadMagic);
        }
        let version = u32_at(bytes, 8);
        if version != VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let count = u32_at(bytes, 12) as usize;
        let total = usize::try_from(u64_at(bytes, 16)).map_err(|_| Error::Truncated)?;
        let entries_offset = usize::try_from(u64_at(bytes, 24)).map_err(|_| Error::Truncated)?;
        if total > bytes.len() {
            return Err(Error::Truncated);
        }
        let bytes = &bytes[..total];
        let table_end = count
            .checked_mul(ENTRY_SIZE)
            .and_then(|n| n.checked_add(entries_offset))
            .ok_or(Error::Truncated)?;
        if entries_offset < HEADER_SIZE || table_end > bytes.len() {
            return Err(Error::Truncated);
        }
        let fs = Self { bytes, count, entries_offset };
        for index in 0..count {
            fs.entry(index)?;
        }
        Ok(fs)
    }

    fn entry(&self, index: usize) -> Result<File<'a>, Error> {
        let at = self.entries_offset + index * ENTRY_SIZE;
        let raw = &self.bytes[at..at + ENTRY_SIZE];
        let name_bytes = &raw[..NAME_LEN];
        let name_len = name_bytes.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        let name = core::str::from_utf8(&name_bytes[..name_len]).map_err(|_| Error::BadName(index))?;
        if name.is_empty() {
            return Err(Error::BadName(index));
        }
        let offset = usize::try_from(u64_at(raw, NAME_LEN)).map_err(|_| Error::BadExtent(index))?;
        let size = usize::try_from(u64_at(raw, NAME_LEN + 8)).map_err(|_| Error::BadExtent(index))?;
        let end = offset.checked_add(size).ok_or(Error::BadExtent(index))?;
        if end > self.bytes.len() {
            return Err(Error::BadExtent(index));
        }
        let sha256: &[u8; 32] = raw[NAME_LEN + 16..NAME_LEN + 48].try_into().map_err(|_| Error::Truncated)?;
        Ok(File { name, data: &self.bytes[offset..end], sha256 })
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn files(&self) -> impl Iterator<Item = File<'a>> + '_ {
        (0..self.count).filter_map(move |i| self.entry(i).ok())
    }

    pub fn find(&self, name: &str) -> Option<File<'a>> {
        self.files().find(|f| f.name == name)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// Mirrors tools/mantra/image/bootfs.py.
    fn pack(files: &[(&str, &[u8])]) -> Vec<u8> {
        let table_end = HEADER_SIZE + files.len() * ENTRY_SIZE;
        let mut offset = (table_end as u64).div_ceil(DATA_ALIGN) * DATA_ALIGN;
        let mut entries = Vec::new();
        let mut data = Vec::new();
        for (name, content) in files {
            let mut e = [0u8; ENTRY_SIZE];
            e[..name.len()].copy_from_slice(name.as_bytes());
            e[NAME_LEN..NAME_LEN + 8].copy_from_slice(&offset.to_le_bytes());
            e[NAME_LEN + 8..NAME_LEN + 16].copy_from_slice(&(content.len() as u64).to_le_bytes());
            entries.extend_from_slice(&e);
            data.push((offset, *content));
            offset = (offset + content.len() as u64).div_ceil(DATA_ALIGN) * DATA_ALIGN;
        }
        let mut out = std::vec![0u8; offset as usize];
        out[..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&(files.len() as u32).to_le_bytes());
        out[16..24].copy_from_slice(&offset.to_le_bytes());
        out[24..32].copy_from_slice(&(HEADER_SIZE as u64).to_le_bytes());
        out[HEADER_SIZE..table_end].copy_from_slice(&entries);
        for (off, content) in data {
            out[off as usize..off as usize + content.len()].copy_from_slice(content);
        }
        out
    }

    #[test]
    fn finds_files() {
        let img = pack(&[("manifest.json", b"{}"), ("init", b"\x7fELF")]);
        let fs = BootFs::parse(&img).unwrap();
        assert_eq!(fs.len(), 2);
        assert_eq!(fs.find("init").unwrap().data, b"\x7fELF");
        assert_eq!(fs.files().map(|f| f.data.len()).sum::<usize>(), 6);
        assert!(fs.find("nope").is_none());
    }

    #[test]
    fn rejects_corruption() {
        let img = pack(&[("a", b"hello")]);
        assert_eq!(BootFs::parse(&img[..32]).err(), Some(Error::Truncated));
        let mut bad = img.clone();
        bad[0] = b'X';
        assert_eq!(BootFs::parse(&bad).err(), Some(Error::BadMagic));
        let mut bad = img.clone();
        bad[HEADER_SIZE + NAME_LEN + 8 + 3] = 0xff; // size far past the end
        assert_eq!(BootFs::parse(&bad).err(), Some(Error::BadExtent(0)));
        let mut bad = img.clone();
        bad[HEADER_SIZE] = 0; // empty name
        assert_eq!(BootFs::parse(&bad).err(), Some(Error::BadName(0)));
        let mut bad = img;
        bad[12] = 200; // more entries than the archive holds
        assert_eq!(BootFs::parse(&bad).err(), Some(Error::Truncated));
    }
}
