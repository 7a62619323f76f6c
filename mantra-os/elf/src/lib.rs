//! A checked ELF64 reader for MantraBoot (the kernel) and, later, the
//! userland loader.
//!
//! [`Elf::parse`] validates everything a loader relies on before it hands out
//! a single field: the identification bytes, the type (`ET_EXEC`), the
//! machine the caller expects, the program header table's bounds, and for
//! every segment its file extent, `p_filesz <= p_memsz`, its alignment, its
//! address range and, for loadable segments, that no two overlap in virtual
//! space and that the entry point lies in an executable one. Afterwards the
//! accessors cannot fail, except note parsing, which reports malformed notes
//! as errors too. No input makes this crate panic: all arithmetic on file
//! values is checked and all reads are bounds-checked.
//!
//! The reader is zero-copy and allocation-free; multi-byte fields are
//! decoded byte by byte, so the file buffer needs no particular alignment.
#![no_std]

use core::fmt;

/// `e_machine` of x86-64.
pub const EM_X86_64: u16 = 62;
/// `e_machine` of AArch64.
pub const EM_AARCH64: u16 = 183;

/// `e_type` of an executable (not position-independent).
pub const ET_EXEC: u16 = 2;
/// `e_type` of a shared object or position-independent executable.
pub const ET_DYN: u16 = 3;

/// Program header types.
pub const PT_NULL: u32 = 0;
pub const PT_LOAD: u32 = 1;
pub const PT_DYNAMIC: u32 = 2;
pub const PT_INTERP: u32 = 3;
pub const PT_NOTE: u32 = 4;
pub const PT_PHDR: u32 = 6;
pub const PT_TLS: u32 = 7;
pub const PT_GNU_STACK: u32 = 0x6474_e551;

/// Segment permission bits (`p_flags`).
pub const PF_X: u32 = 1;
pub const PF_W: u32 = 2;
pub const PF_R: u32 = 4;

/// Size of the ELF64 file header.
pub const EHDR_SIZE: usize = 64;
/// Size of one ELF64 program header.
pub const PHDR_SIZE: usize = 56;
/// Most program headers a file may have. Real executables have a handful;
/// the limit bounds the quadratic overlap check.
pub const MAX_PROGRAM_HEADERS: usize = 256;

/// Why a file was rejected. Every variant names what is wrong precisely
/// enough to fix the build that produced the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The file is shorter than the 64-byte ELF64 header.
    TooShort { len: usize },
    /// The first four bytes are not `\x7fELF`.
    BadMagic,
    /// `EI_CLASS` is not `ELFCLASS64`.
    NotElf64 { class: u8 },
    /// `EI_DATA` is not `ELFDATA2LSB`.
    NotLittleEndian { data: u8 },
    /// `EI_VERSION` or `e_version` is not 1.
    BadVersion { version: u32 },
    /// `e_type` is not `ET_EXEC`.
    NotExecutable { elf_type: u16 },
    /// `e_machine` is not the one the caller asked for.
    WrongMachine { found: u16, expected: u16 },
    /// `e_ehsize` is smaller than an ELF64 header.
    BadHeaderSize { size: u16 },
    /// `e_phentsize` is smaller than an ELF64 program header.
    BadProgramHeaderSize { size: u16 },
    /// `e_phnum` is 0: nothing to load.
    NoProgramHeaders,
    /// `e_phnum` is over [`MAX_PROGRAM_HEADERS`] (or uses extended numbering).
    TooManyProgramHeaders { count: u16 },
    /// The program header table does not fit in the file.
    ProgramHeadersOutOfBounds { offset: u64, count: u16, file_len: usize },
    /// `p_offset + p_filesz` of segment `index` overflows or is past the end.
    SegmentPastEndOfFile { index: usize, end: u64, file_len: usize },
    /// `p_filesz > p_memsz` for loadable segment `index`.
    SegmentFileSizeTooLarge { index: usize, filesz: u64, memsz: u64 },
    /// `p_align` of segment `index` is not 0, 1 or a power of two.
    SegmentBadAlignment { index: usize, align: u64 },
    /// `p_vaddr` and `p_offset` of loadable segment `index` differ modulo `p_align`.
    SegmentMisaligned { index: usize, vaddr: u64, offset: u64, align: u64 },
    /// `p_vaddr + p_memsz` of loadable segment `index` overflows.
    SegmentAddressOverflow { index: usize, vaddr: u64, memsz: u64 },
    /// Loadable segments `first` and `second` overlap in virtual memory.
    SegmentsOverlap { first: usize, second: usize },
    /// The file has no non-empty `PT_LOAD` segment.
    NoLoadableSegments,
    /// The entry point is not inside an executable `PT_LOAD` segment.
    EntryNotExecutable { entry: u64 },
    /// A note of `PT_NOTE` segment `segment`, at byte `offset` of that
    /// segment, runs past the segment's end.
    NoteTruncated { segment: usize, offset: usize },
    /// `PT_NOTE` segment `segment` has an alignment other than 0, 1, 4 or 8.
    NoteBadAlignment { segment: usize, align: u64 },
}

fn machine_name(machine: u16) -> &'static str {
    match machine {
        EM_X86_64 => "x86_64",
        EM_AARCH64 => "aarch64",
        3 => "i386",
        40 => "arm",
        243 => "riscv",
        _ => "unknown",
    }
}

fn type_name(elf_type: u16) -> &'static str {
    match elf_type {
        0 => "ET_NONE",
        1 => "ET_REL (object file, not linked)",
        ET_EXEC => "ET_EXEC",
        ET_DYN => "ET_DYN (shared object or position-independent executable)",
        4 => "ET_CORE (core dump)",
        _ => "unknown",
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::TooShort { len } => {
                write!(f, "file is {len} bytes, shorter than an ELF64 header ({EHDR_SIZE} bytes)")
            }
            Error::BadMagic => write!(f, "not an ELF file (bad magic)"),
            Error::NotElf64 { class } => write!(f, "not a 64-bit ELF file (EI_CLASS {class}, expected 2)"),
            Error::NotLittleEndian { data } => {
                write!(f, "not a little-endian ELF file (EI_DATA {data}, expected 1)")
            }
            Error::BadVersion { version } => write!(f, "unsupported ELF version {version} (expected 1)"),
            Error::NotExecutable { elf_type } => write!(
                f,
                "ELF type {elf_type} [{}] is not an executable (expected ET_EXEC: link with -C relocation-model=static / -no-pie)",
                type_name(elf_type)
            ),
            Error::WrongMachine { found, expected } => write!(
                f,
                "built for machine {found} ({}), expected {expected} ({})",
                machine_name(found),
                machine_name(expected)
            ),
            Error::BadHeaderSize { size } => {
                write!(f, "ELF header size {size} is smaller than {EHDR_SIZE} bytes")
            }
            Error::BadProgramHeaderSize { size } => {
                write!(f, "program header entry size {size} is smaller than {PHDR_SIZE} bytes")
            }
            Error::NoProgramHeaders => write!(f, "no program headers (nothing to load)"),
            Error::TooManyProgramHeaders { count } => {
                write!(f, "{count} program headers (at most {MAX_PROGRAM_HEADERS} supported)")
            }
            Error::ProgramHeadersOutOfBounds { offset, count, file_len } => write!(
                f,
                "program header table ({count} entries at offset {offset:#x}) extends past end of file ({file_len} bytes)"
            ),
            Error::SegmentPastEndOfFile { index, end, file_len } => write!(
                f,
                "segment {index} extends past end of file (ends at {end:#x}, file is {file_len:#x} bytes)"
            ),
            Error::SegmentFileSizeTooLarge { index, filesz, memsz } => write!(
                f,
                "segment {index} has file size {filesz:#x} larger than its memory size {memsz:#x}"
            ),
            Error::SegmentBadAlignment { index, align } => {
                write!(f, "segment {index} has alignment {align:#x}, not a power of two")
            }
            Error::SegmentMisaligned { index, vaddr, offset, align } => write!(
                f,
                "segment {index}: address {vaddr:#x} and file offset {offset:#x} differ modulo its alignment {align:#x}"
            ),
            Error::SegmentAddressOverflow { index, vaddr, memsz } => write!(
                f,
                "segment {index}: address {vaddr:#x} + size {memsz:#x} overflows the address space"
            ),
            Error::SegmentsOverlap { first, second } => {
                write!(f, "loadable segments {first} and {second} overlap in virtual memory")
            }
            Error::NoLoadableSegments => write!(f, "no loadable (PT_LOAD) segment"),
            Error::EntryNotExecutable { entry } => {
                write!(f, "entry point {entry:#x} is not inside an executable PT_LOAD segment")
            }
            Error::NoteTruncated { segment, offset } => write!(
                f,
                "note at offset {offset:#x} of note segment {segment} extends past the segment's end"
            ),
            Error::NoteBadAlignment { segment, align } => {
                write!(f, "note segment {segment} has alignment {align}, expected 4 or 8")
            }
        }
    }
}

impl core::error::Error for Error {}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    let mut v = [0u8; 8];
    v.copy_from_slice(s);
    Some(u64::from_le_bytes(v))
}

/// The fields of the ELF64 file header a loader uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileHeader {
    pub elf_type: u16,
    pub machine: u16,
    pub entry: u64,
    pub phoff: u64,
    pub shoff: u64,
    pub flags: u32,
    pub ehsize: u16,
    pub phentsize: u16,
    pub phnum: u16,
}

/// One ELF64 program header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramHeader {
    pub p_type: u32,
    pub flags: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub paddr: u64,
    pub filesz: u64,
    pub memsz: u64,
    pub align: u64,
}

impl ProgramHeader {
    /// Decodes the 56 bytes at `at`; `None` if they are not all in `b`.
    fn decode(b: &[u8], at: usize) -> Option<Self> {
        Some(Self {
            p_type: u32_at(b, at)?,
            flags: u32_at(b, at.checked_add(4)?)?,
            offset: u64_at(b, at.checked_add(8)?)?,
            vaddr: u64_at(b, at.checked_add(16)?)?,
            paddr: u64_at(b, at.checked_add(24)?)?,
            filesz: u64_at(b, at.checked_add(32)?)?,
            memsz: u64_at(b, at.checked_add(40)?)?,
            align: u64_at(b, at.checked_add(48)?)?,
        })
    }

    pub fn is_readable(&self) -> bool {
        self.flags & PF_R != 0
    }
    pub fn is_writable(&self) -> bool {
        self.flags & PF_W != 0
    }
    pub fn is_executable(&self) -> bool {
        self.flags & PF_X != 0
    }
    /// End of the segment in virtual memory (exclusive). Validated not to
    /// overflow for `PT_LOAD` segments of a parsed file.
    pub fn vaddr_end(&self) -> u64 {
        self.vaddr.saturating_add(self.memsz)
    }
}

/// A segment of a parsed file: its header and the bytes it has in the file.
#[derive(Clone, Copy, Debug)]
pub struct Segment<'a> {
    /// Index in the program header table (what error messages call "segment N").
    pub index: usize,
    pub header: ProgramHeader,
    /// The `p_filesz` bytes at `p_offset` (already bounds-checked).
    pub data: &'a [u8],
}

/// One note: name without its NUL terminator, type and descriptor bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Note<'a> {
    pub name: &'a [u8],
    pub note_type: u32,
    pub desc: &'a [u8],
    /// Index of the `PT_NOTE` segment the note is in.
    pub segment: usize,
}

/// A validated ELF64 executable.
#[derive(Clone, Copy, Debug)]
pub struct Elf<'a> {
    bytes: &'a [u8],
    header: FileHeader,
}

impl<'a> Elf<'a> {
    /// Validates `bytes` as a little-endian ELF64 `ET_EXEC` file for
    /// `machine` (e.g. [`EM_X86_64`]). See the crate documentation for the
    /// checks.
    pub fn parse(bytes: &'a [u8], machine: u16) -> Result<Self, Error> {
        if bytes.len() < EHDR_SIZE {
            return Err(Error::TooShort { len: bytes.len() });
        }
        if bytes[..4] != *b"\x7fELF" {
            return Err(Error::BadMagic);
        }
        if bytes[4] != 2 {
            return Err(Error::NotElf64 { class: bytes[4] });
        }
        if bytes[5] != 1 {
            return Err(Error::NotLittleEndian { data: bytes[5] });
        }
        if bytes[6] != 1 {
            return Err(Error::BadVersion { version: bytes[6].into() });
        }
        let too_short = Error::TooShort { len: bytes.len() };
        let header = FileHeader {
            elf_type: u16_at(bytes, 16).ok_or(too_short)?,
            machine: u16_at(bytes, 18).ok_or(too_short)?,
            entry: u64_at(bytes, 24).ok_or(too_short)?,
            phoff: u64_at(bytes, 32).ok_or(too_short)?,
            shoff: u64_at(bytes, 40).ok_or(too_short)?,
            flags: u32_at(bytes, 48).ok_or(too_short)?,
            ehsize: u16_at(bytes, 52).ok_or(too_short)?,
            phentsize: u16_at(bytes, 54).ok_or(too_short)?,
            phnum: u16_at(bytes, 56).ok_or(too_short)?,
        };
        let version = u32_at(bytes, 20).ok_or(too_short)?;
        if header.elf_type != ET_EXEC {
            return Err(Error::NotExecutable { elf_type: header.elf_type });
        }
        if header.machine != machine {
            return Err(Error::WrongMachine { found: header.machine, expected: machine });
        }
        if version != 1 {
            return Err(Error::BadVersion { version });
        }
        if usize::from(header.ehsize) < EHDR_SIZE {
            return Err(Error::BadHeaderSize { size: header.ehsize });
        }
        if header.phnum == 0 {
            return Err(Error::NoProgramHeaders);
        }
        if usize::from(header.phnum) > MAX_PROGRAM_HEADERS {
            return Err(Error::TooManyProgramHeaders { count: header.phnum });
        }
        if usize::from(header.phentsize) < PHDR_SIZE {
            return Err(Error::BadProgramHeaderSize { size: header.phentsize });
        }
        let table_oob =
            Error::ProgramHeadersOutOfBounds { offset: header.phoff, count: header.phnum, file_len: bytes.len() };
        let table_len = usize::from(header.phnum) * usize::from(header.phentsize);
        let table_end =
            usize::try_from(header.phoff).ok().and_then(|off| off.checked_add(table_len)).ok_or(table_oob)?;
        if table_end > bytes.len() {
            return Err(table_oob);
        }

        let elf = Self { bytes, header };
        let mut loadable = 0usize;
        for index in 0..elf.phnum() {
            let ph = elf.raw_program_header(index).ok_or(table_oob)?;
            elf.check_segment(index, &ph)?;
            if ph.p_type == PT_LOAD && ph.memsz != 0 {
                loadable += 1;
            }
        }
        if loadable == 0 {
            return Err(Error::NoLoadableSegments);
        }
        // Pairwise overlap of loadable segments (phnum is bounded).
        for a in 0..elf.phnum() {
            let Some(pa) = elf.raw_program_header(a) else { continue };
            if pa.p_type != PT_LOAD || pa.memsz == 0 {
                continue;
            }
            for b in a + 1..elf.phnum() {
                let Some(pb) = elf.raw_program_header(b) else { continue };
                if pb.p_type != PT_LOAD || pb.memsz == 0 {
                    continue;
                }
                if pa.vaddr < pb.vaddr_end() && pb.vaddr < pa.vaddr_end() {
                    return Err(Error::SegmentsOverlap { first: a, second: b });
                }
            }
        }
        let entry = header.entry;
        let entry_ok =
            elf.loads().any(|s| s.header.is_executable() && s.header.vaddr <= entry && entry < s.header.vaddr_end());
        if !entry_ok {
            return Err(Error::EntryNotExecutable { entry });
        }
        Ok(elf)
    }

    fn check_segment(&self, index: usize, ph: &ProgramHeader) -> Result<(), Error> {
        let file_len = self.bytes.len();
        if ph.p_type == PT_NULL {
            return Ok(());
        }
        let end = ph.offset.checked_add(ph.filesz);
        match end {
            Some(end) if end <= file_len as u64 => {}
            _ => return Err(Error::SegmentPastEndOfFile { index, end: end.unwrap_or(u64::MAX), file_len }),
        }
        if ph.align > 1 && !ph.align.is_power_of_two() {
            return Err(Error::SegmentBadAlignment { index, align: ph.align });
        }
        match ph.p_type {
            PT_LOAD => {
                if ph.filesz > ph.memsz {
                    return Err(Error::SegmentFileSizeTooLarge { index, filesz: ph.filesz, memsz: ph.memsz });
                }
                if ph.vaddr.checked_add(ph.memsz).is_none() {
                    return Err(Error::SegmentAddressOverflow { index, vaddr: ph.vaddr, memsz: ph.memsz });
                }
                if ph.align > 1 && ph.vaddr % ph.align != ph.offset % ph.align {
                    return Err(Error::SegmentMisaligned {
                        index,
                        vaddr: ph.vaddr,
                        offset: ph.offset,
                        align: ph.align,
                    });
                }
            }
            PT_NOTE if !matches!(ph.align, 0 | 1 | 4 | 8) => {
                return Err(Error::NoteBadAlignment { segment: index, align: ph.align });
            }
            _ => {}
        }
        Ok(())
    }

    fn raw_program_header(&self, index: usize) -> Option<ProgramHeader> {
        let off = usize::try_from(self.header.phoff).ok()?;
        let at = index.checked_mul(usize::from(self.header.phentsize))?.checked_add(off)?;
        ProgramHeader::decode(self.bytes, at)
    }

    /// The file header.
    pub fn header(&self) -> &FileHeader {
        &self.header
    }

    /// The entry point (validated to lie in an executable `PT_LOAD` segment).
    pub fn entry(&self) -> u64 {
        self.header.entry
    }

    /// The whole file.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Number of program headers.
    pub fn phnum(&self) -> usize {
        usize::from(self.header.phnum)
    }

    /// Segment `index` of the program header table, if it exists.
    pub fn segment(&self, index: usize) -> Option<Segment<'a>> {
        if index >= self.phnum() {
            return None;
        }
        let header = self.raw_program_header(index)?;
        let data = if header.p_type == PT_NULL {
            &[][..]
        } else {
            let start = usize::try_from(header.offset).ok()?;
            let end = start.checked_add(usize::try_from(header.filesz).ok()?)?;
            self.bytes.get(start..end)?
        };
        Some(Segment { index, header, data })
    }

    /// Every program header, in table order.
    pub fn segments(&self) -> impl Iterator<Item = Segment<'a>> + '_ {
        (0..self.phnum()).filter_map(move |i| self.segment(i))
    }

    /// The non-empty `PT_LOAD` segments, in table order.
    pub fn loads(&self) -> impl Iterator<Item = Segment<'a>> + '_ {
        self.segments().filter(|s| s.header.p_type == PT_LOAD && s.header.memsz != 0)
    }

    /// The `PT_NOTE` segments, in table order.
    pub fn note_segments(&self) -> impl Iterator<Item = Segment<'a>> + '_ {
        self.segments().filter(|s| s.header.p_type == PT_NOTE)
    }

    /// Every note of every `PT_NOTE` segment. A malformed note yields one
    /// `Err` and ends the iteration of its segment.
    pub fn notes(&self) -> impl Iterator<Item = Result<Note<'a>, Error>> + '_ {
        self.note_segments().flat_map(NoteIter::new)
    }

    /// The first note called `name` (with or without its NUL terminator)
    /// of type `note_type`. A malformed note met before it is an error.
    pub fn find_note(&self, name: &[u8], note_type: u32) -> Result<Option<Note<'a>>, Error> {
        let name = name.strip_suffix(b"\0").unwrap_or(name);
        for note in self.notes() {
            let note = note?;
            if note.name == name && note.note_type == note_type {
                return Ok(Some(note));
            }
        }
        Ok(None)
    }
}

/// Iterates over the notes of one `PT_NOTE` segment.
#[derive(Clone, Debug)]
pub struct NoteIter<'a> {
    data: &'a [u8],
    segment: usize,
    align: usize,
    offset: usize,
    done: bool,
}

impl<'a> NoteIter<'a> {
    pub fn new(segment: Segment<'a>) -> Self {
        let align = if segment.header.align == 8 { 8 } else { 4 };
        Self { data: segment.data, segment: segment.index, align, offset: 0, done: false }
    }

    fn next_note(&mut self) -> Result<Note<'a>, Error> {
        let truncated = Error::NoteTruncated { segment: self.segment, offset: self.offset };
        let at = self.offset;
        let namesz = u32_at(self.data, at).ok_or(truncated)? as usize;
        let descsz = u32_at(self.data, at + 4).ok_or(truncated)? as usize;
        let note_type = u32_at(self.data, at + 8).ok_or(truncated)?;
        let name_start = at + 12;
        let name_end = name_start.checked_add(namesz).ok_or(truncated)?;
        let name = self.data.get(name_start..name_end).ok_or(truncated)?;
        let desc_start = align_up(name_end, self.align).ok_or(truncated)?;
        let desc_end = desc_start.checked_add(descsz).ok_or(truncated)?;
        let desc = self.data.get(desc_start..desc_end).ok_or(truncated)?;
        let next = align_up(desc_end, self.align).ok_or(truncated)?;
        self.offset = next;
        let name = name.strip_suffix(b"\0").unwrap_or(name);
        Ok(Note { name, note_type, desc, segment: self.segment })
    }
}

fn align_up(n: usize, align: usize) -> Option<usize> {
    Some(n.checked_add(align - 1)? & !(align - 1))
}

impl<'a> Iterator for NoteIter<'a> {
    type Item = Result<Note<'a>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.offset >= self.data.len() {
            return None;
        }
        let note = self.next_note();
        if note.is_err() {
            self.done = true;
        }
        Some(note)
    }
}

#[cfg(test)]
mod tests;
