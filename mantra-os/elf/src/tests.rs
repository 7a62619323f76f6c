//! Host tests: small ELF images built by hand, then broken in every way a
//! loader must notice, plus a randomized mutation loop.
extern crate std;

use super::*;
use std::string::ToString;
use std::vec;
use std::vec::Vec;

const BASE: u64 = 0xffff_ffff_8000_0000;

#[derive(Clone)]
struct Ph {
    p_type: u32,
    flags: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
    memsz: u64,
    align: u64,
}

/// A hand-written ELF64 image: header, program headers at 64, then payload.
#[derive(Clone)]
struct Image {
    elf_type: u16,
    machine: u16,
    entry: u64,
    phs: Vec<Ph>,
    /// Bytes after the header and program header table; segment offsets
    /// are absolute file offsets.
    file_len: usize,
    patches: Vec<(usize, Vec<u8>)>,
}

fn note_bytes(name: &[u8], note_type: u32, desc: &[u8], align: usize) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(name.len() as u32).to_le_bytes());
    v.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    v.extend_from_slice(&note_type.to_le_bytes());
    v.extend_from_slice(name);
    while v.len() % align != 0 {
        v.push(0);
    }
    v.extend_from_slice(desc);
    while v.len() % align != 0 {
        v.push(0);
    }
    v
}

impl Image {
    /// A kernel-like image: text RX at BASE+0x1000 (file 0x1000..0x1100),
    /// rodata R at BASE+0x2000 (file 0x2000..0x2040) holding the Mantra
    /// note, data RW at BASE+0x3000 with bss, a note segment over the note
    /// and a GNU_STACK header.
    fn kernel() -> Self {
        let note = note_bytes(b"Mantra\0", 1, &7u32.to_le_bytes(), 4);
        let mut img = Self {
            elf_type: ET_EXEC,
            machine: EM_X86_64,
            entry: BASE + 0x1010,
            phs: vec![
                Ph {
                    p_type: PT_LOAD,
                    flags: PF_R | PF_X,
                    offset: 0x1000,
                    vaddr: BASE + 0x1000,
                    filesz: 0x100,
                    memsz: 0x100,
                    align: 0x1000,
                },
                Ph {
                    p_type: PT_LOAD,
                    flags: PF_R,
                    offset: 0x2000,
                    vaddr: BASE + 0x2000,
                    filesz: 0x40,
                    memsz: 0x40,
                    align: 0x1000,
                },
                Ph {
                    p_type: PT_LOAD,
                    flags: PF_R | PF_W,
                    offset: 0x3000,
                    vaddr: BASE + 0x3000,
                    filesz: 0x10,
                    memsz: 0x2000,
                    align: 0x1000,
                },
                Ph {
                    p_type: PT_NOTE,
                    flags: PF_R,
                    offset: 0x2020,
                    vaddr: BASE + 0x2020,
                    filesz: note.len() as u64,
                    memsz: note.len() as u64,
                    align: 4,
                },
                Ph { p_type: PT_GNU_STACK, flags: PF_R | PF_W, offset: 0, vaddr: 0, filesz: 0, memsz: 0, align: 16 },
            ],
            file_len: 0x3010,
            patches: Vec::new(),
        };
        img.patches.push((0x1000, vec![0xcc; 0x100]));
        img.patches.push((0x2000, vec![0x11; 0x20]));
        img.patches.push((0x2020, note));
        img.patches.push((0x3000, vec![0x22; 0x10]));
        img
    }

    fn build(&self) -> Vec<u8> {
        let table_end = EHDR_SIZE + self.phs.len() * PHDR_SIZE;
        let mut b = vec![0u8; self.file_len.max(table_end)];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[6] = 1;
        b[16..18].copy_from_slice(&self.elf_type.to_le_bytes());
        b[18..20].copy_from_slice(&self.machine.to_le_bytes());
        b[20..24].copy_from_slice(&1u32.to_le_bytes());
        b[24..32].copy_from_slice(&self.entry.to_le_bytes());
        b[32..40].copy_from_slice(&(EHDR_SIZE as u64).to_le_bytes());
        b[52..54].copy_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
        b[54..56].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        b[56..58].copy_from_slice(&(self.phs.len() as u16).to_le_bytes());
        for (i, ph) in self.phs.iter().enumerate() {
            let at = EHDR_SIZE + i * PHDR_SIZE;
            b[at..at + 4].copy_from_slice(&ph.p_type.to_le_bytes());
            b[at + 4..at + 8].copy_from_slice(&ph.flags.to_le_bytes());
            b[at + 8..at + 16].copy_from_slice(&ph.offset.to_le_bytes());
            b[at + 16..at + 24].copy_from_slice(&ph.vaddr.to_le_bytes());
            b[at + 24..at + 32].copy_from_slice(&ph.vaddr.to_le_bytes());
            b[at + 32..at + 40].copy_from_slice(&ph.filesz.to_le_bytes());
            b[at + 40..at + 48].copy_from_slice(&ph.memsz.to_le_bytes());
            b[at + 48..at + 56].copy_from_slice(&ph.align.to_le_bytes());
        }
        for (at, bytes) in &self.patches {
            b[*at..*at + bytes.len()].copy_from_slice(bytes);
        }
        b
    }
}

fn parse(bytes: &[u8]) -> Result<Elf<'_>, Error> {
    Elf::parse(bytes, EM_X86_64)
}

fn with(f: impl FnOnce(&mut Image)) -> Vec<u8> {
    let mut img = Image::kernel();
    f(&mut img);
    img.build()
}

#[test]
fn parses_a_valid_kernel() {
    let bytes = Image::kernel().build();
    let elf = parse(&bytes).unwrap();
    assert_eq!(elf.entry(), BASE + 0x1010);
    assert_eq!(elf.phnum(), 5);
    let loads: Vec<_> = elf.loads().collect();
    assert_eq!(loads.len(), 3);
    assert_eq!(loads[0].index, 0);
    assert!(loads[0].header.is_executable() && !loads[0].header.is_writable());
    assert_eq!(loads[0].data, &[0xcc; 0x100][..]);
    assert_eq!(loads[2].data.len(), 0x10);
    assert_eq!(loads[2].header.memsz, 0x2000);
    assert_eq!(elf.note_segments().count(), 1);
    let note = elf.find_note(b"Mantra\0", 1).unwrap().unwrap();
    assert_eq!(note.name, b"Mantra");
    assert_eq!(note.desc, &7u32.to_le_bytes());
    assert_eq!(note.segment, 3);
    // Name given without NUL matches too; other names and types do not.
    assert!(elf.find_note(b"Mantra", 1).unwrap().is_some());
    assert!(elf.find_note(b"Mantra", 2).unwrap().is_none());
    assert!(elf.find_note(b"GNU", 1).unwrap().is_none());
}

#[test]
fn the_bootinfo_kernel_note_layout_parses() {
    // The exact bytes of mantra_bootinfo::KernelNote::CURRENT (24 bytes):
    // namesz 7, descsz 4, type 1, "Mantra\0\0", version.
    let mut raw = Vec::new();
    for w in [7u32, 4, 1] {
        raw.extend_from_slice(&w.to_le_bytes());
    }
    raw.extend_from_slice(b"Mantra\0\0");
    raw.extend_from_slice(&1u32.to_le_bytes());
    assert_eq!(raw, note_bytes(b"Mantra\0", 1, &1u32.to_le_bytes(), 4));
}

#[test]
fn several_notes_and_eight_byte_alignment() {
    let mut notes =
        note_bytes(b"GNU\0", 3, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20], 8);
    notes.extend(note_bytes(b"Xen\0", 5, &[9; 3], 8));
    notes.extend(note_bytes(b"Mantra\0", 1, &2u32.to_le_bytes(), 8));
    let len = notes.len() as u64;
    let bytes = with(|img| {
        img.phs[3].align = 8;
        img.phs[3].offset = 0x2800;
        img.phs[3].filesz = len;
        img.file_len = 0x3010;
        img.patches.push((0x2800, notes));
    });
    let elf = parse(&bytes).unwrap();
    let all: Vec<_> = elf.notes().collect::<Result<_, _>>().unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].name, b"GNU");
    assert_eq!(all[0].desc.len(), 20);
    assert_eq!(all[1].desc, &[9, 9, 9]);
    assert_eq!(elf.find_note(b"Mantra", 1).unwrap().unwrap().desc, &2u32.to_le_bytes());
}

#[test]
fn missing_note_segment_finds_nothing() {
    let bytes = with(|img| {
        img.phs.remove(3);
    });
    let elf = parse(&bytes).unwrap();
    assert_eq!(elf.find_note(b"Mantra", 1), Ok(None));
}

#[test]
fn truncated_note_is_an_error() {
    // Note header claims a 64-byte descriptor the segment does not have.
    let bytes = with(|img| {
        let at = 0x2020 + 4;
        img.patches.push((at, 64u32.to_le_bytes().to_vec()));
    });
    let elf = parse(&bytes).unwrap();
    assert_eq!(elf.find_note(b"Mantra", 1), Err(Error::NoteTruncated { segment: 3, offset: 0 }));
    // Huge name size must not overflow.
    let bytes = with(|img| {
        img.patches.push((0x2020, u32::MAX.to_le_bytes().to_vec()));
    });
    let elf = parse(&bytes).unwrap();
    assert!(matches!(elf.find_note(b"Mantra", 1), Err(Error::NoteTruncated { .. })));
    // A segment too short for even a note header.
    let bytes = with(|img| img.phs[3].filesz = 5);
    let elf = parse(&bytes).unwrap();
    assert_eq!(elf.find_note(b"Mantra", 1), Err(Error::NoteTruncated { segment: 3, offset: 0 }));
}

#[test]
fn rejects_bad_identification() {
    let good = Image::kernel().build();
    assert_eq!(parse(&good[..10]).err(), Some(Error::TooShort { len: 10 }));
    assert_eq!(parse(&[]).err(), Some(Error::TooShort { len: 0 }));
    let mut b = good.clone();
    b[1] = b'X';
    assert_eq!(parse(&b).err(), Some(Error::BadMagic));
    let mut b = good.clone();
    b[4] = 1;
    assert_eq!(parse(&b).err(), Some(Error::NotElf64 { class: 1 }));
    let mut b = good.clone();
    b[5] = 2;
    assert_eq!(parse(&b).err(), Some(Error::NotLittleEndian { data: 2 }));
    let mut b = good.clone();
    b[6] = 0;
    assert_eq!(parse(&b).err(), Some(Error::BadVersion { version: 0 }));
    let mut b = good.clone();
    b[20] = 2;
    assert_eq!(parse(&b).err(), Some(Error::BadVersion { version: 2 }));
    let b = with(|img| img.elf_type = ET_DYN);
    assert_eq!(parse(&b).err(), Some(Error::NotExecutable { elf_type: ET_DYN }));
    let b = with(|img| img.machine = EM_AARCH64);
    assert_eq!(parse(&b).err(), Some(Error::WrongMachine { found: EM_AARCH64, expected: EM_X86_64 }));
    assert!(Elf::parse(&b, EM_AARCH64).is_ok());
    let mut b = good.clone();
    b[52] = 32;
    assert_eq!(parse(&b).err(), Some(Error::BadHeaderSize { size: 32 }));
    let mut b = good;
    b[54] = 40;
    assert_eq!(parse(&b).err(), Some(Error::BadProgramHeaderSize { size: 40 }));
}

#[test]
fn rejects_bad_program_header_table() {
    let b = with(|img| img.phs.clear());
    assert_eq!(parse(&b).err(), Some(Error::NoProgramHeaders));
    let mut b = Image::kernel().build();
    b[56..58].copy_from_slice(&0xffffu16.to_le_bytes());
    assert_eq!(parse(&b).err(), Some(Error::TooManyProgramHeaders { count: 0xffff }));
    let mut b = Image::kernel().build();
    let len = b.len();
    b[32..40].copy_from_slice(&(len as u64 - 100).to_le_bytes());
    assert_eq!(
        parse(&b).err(),
        Some(Error::ProgramHeadersOutOfBounds { offset: len as u64 - 100, count: 5, file_len: len })
    );
    let mut b = Image::kernel().build();
    b[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(parse(&b).err(), Some(Error::ProgramHeadersOutOfBounds { .. })));
    // A larger entry size is stepped over correctly.
    let img = Image::kernel();
    let mut b = vec![0u8; 0x3010];
    let plain = img.build();
    b.copy_from_slice(&plain);
    // Re-lay the table with 64-byte entries (8 padding bytes each).
    let table: Vec<u8> = plain[EHDR_SIZE..EHDR_SIZE + 5 * PHDR_SIZE].to_vec();
    for i in 0..5 {
        let at = EHDR_SIZE + i * 64;
        b[at..at + PHDR_SIZE].copy_from_slice(&table[i * PHDR_SIZE..(i + 1) * PHDR_SIZE]);
        b[at + PHDR_SIZE..at + 64].fill(0xee);
    }
    b[54..56].copy_from_slice(&64u16.to_le_bytes());
    let elf = parse(&b).unwrap();
    assert_eq!(elf.loads().count(), 3);
}

#[test]
fn rejects_segments_past_end_of_file() {
    let b = with(|img| img.phs[2].filesz = 0x20);
    let err = parse(&b).unwrap_err();
    assert_eq!(err, Error::SegmentPastEndOfFile { index: 2, end: 0x3020, file_len: 0x3010 });
    assert!(err.to_string().starts_with("segment 2 extends past end of file"), "{err}");
    let b = with(|img| img.phs[1].offset = u64::MAX - 4);
    assert!(matches!(parse(&b), Err(Error::SegmentPastEndOfFile { index: 1, end: u64::MAX, .. })));
    // Non-load segments are bounds-checked too.
    let b = with(|img| img.phs[3].offset = 0x3000);
    assert!(matches!(parse(&b), Err(Error::SegmentPastEndOfFile { index: 3, .. })));
}

#[test]
fn rejects_bad_sizes_alignment_and_addresses() {
    let b = with(|img| img.phs[1].filesz = 0x80);
    assert_eq!(parse(&b).err(), Some(Error::SegmentFileSizeTooLarge { index: 1, filesz: 0x80, memsz: 0x40 }));
    let b = with(|img| img.phs[0].align = 0x1800);
    assert_eq!(parse(&b).err(), Some(Error::SegmentBadAlignment { index: 0, align: 0x1800 }));
    let b = with(|img| img.phs[0].vaddr += 8);
    assert!(matches!(parse(&b), Err(Error::SegmentMisaligned { index: 0, .. })));
    let b = with(|img| {
        img.phs[2].vaddr = u64::MAX - 0xfff;
    });
    assert!(matches!(parse(&b), Err(Error::SegmentAddressOverflow { index: 2, .. })));
    let b = with(|img| img.phs[3].align = 16);
    assert_eq!(parse(&b).err(), Some(Error::NoteBadAlignment { segment: 3, align: 16 }));
    // Alignment 0 and 1 mean "none".
    let b = with(|img| {
        img.phs[0].align = 0;
        img.phs[1].align = 1;
        img.phs[1].vaddr += 3;
    });
    assert!(parse(&b).is_ok());
}

#[test]
fn rejects_overlapping_loads() {
    // Data moved onto rodata's page (same offset modulo 0x1000 keeps it aligned).
    let b = with(|img| {
        img.phs[2].vaddr = BASE + 0x2000;
        img.phs[2].offset = 0x3000;
    });
    assert_eq!(parse(&b).err(), Some(Error::SegmentsOverlap { first: 1, second: 2 }));
    let b = with(|img| {
        img.phs[1].vaddr = BASE;
        img.phs[1].memsz = 0x1001;
        img.phs[1].filesz = 0x10;
    });
    assert_eq!(parse(&b).err(), Some(Error::SegmentsOverlap { first: 0, second: 1 }));
    // Touching ranges are fine.
    let b = with(|img| {
        img.phs[1].vaddr = BASE;
        img.phs[1].memsz = 0x1000;
        img.phs[1].filesz = 0x10;
    });
    assert!(parse(&b).is_ok());
    // Empty loads are ignored for overlap purposes.
    let b = with(|img| {
        img.phs[1].memsz = 0;
        img.phs[1].filesz = 0;
        img.phs[1].vaddr = BASE + 0x1000;
    });
    let elf = parse(&b).unwrap();
    assert_eq!(elf.loads().count(), 2);
}

#[test]
fn entry_must_be_in_executable_load() {
    let b = with(|img| img.entry = BASE + 0x2000);
    assert_eq!(parse(&b).err(), Some(Error::EntryNotExecutable { entry: BASE + 0x2000 }));
    let b = with(|img| img.entry = BASE + 0x1100);
    assert_eq!(parse(&b).err(), Some(Error::EntryNotExecutable { entry: BASE + 0x1100 }));
    let b = with(|img| img.entry = 0);
    assert!(matches!(parse(&b), Err(Error::EntryNotExecutable { .. })));
}

#[test]
fn requires_a_loadable_segment() {
    let b = with(|img| {
        for ph in &mut img.phs {
            if ph.p_type == PT_LOAD {
                ph.p_type = PT_NULL;
            }
        }
    });
    assert_eq!(parse(&b).err(), Some(Error::NoLoadableSegments));
}

#[test]
fn null_segments_are_ignored_even_with_garbage_fields() {
    let b = with(|img| {
        img.phs.push(Ph {
            p_type: PT_NULL,
            flags: 0,
            offset: u64::MAX,
            vaddr: 0,
            filesz: u64::MAX,
            memsz: 0,
            align: 3,
        });
    });
    let elf = parse(&b).unwrap();
    assert_eq!(elf.segments().count(), 6);
    assert_eq!(elf.segment(5).unwrap().data.len(), 0);
    assert!(elf.segment(6).is_none());
}

#[test]
fn every_error_displays_something_useful() {
    let errors = [
        Error::TooShort { len: 3 },
        Error::BadMagic,
        Error::NotElf64 { class: 1 },
        Error::NotLittleEndian { data: 2 },
        Error::BadVersion { version: 9 },
        Error::NotExecutable { elf_type: ET_DYN },
        Error::WrongMachine { found: EM_AARCH64, expected: EM_X86_64 },
        Error::BadHeaderSize { size: 1 },
        Error::BadProgramHeaderSize { size: 1 },
        Error::NoProgramHeaders,
        Error::TooManyProgramHeaders { count: 999 },
        Error::ProgramHeadersOutOfBounds { offset: 1, count: 2, file_len: 3 },
        Error::SegmentPastEndOfFile { index: 2, end: 5, file_len: 4 },
        Error::SegmentFileSizeTooLarge { index: 1, filesz: 2, memsz: 1 },
        Error::SegmentBadAlignment { index: 1, align: 3 },
        Error::SegmentMisaligned { index: 1, vaddr: 1, offset: 2, align: 16 },
        Error::SegmentAddressOverflow { index: 1, vaddr: 1, memsz: 2 },
        Error::SegmentsOverlap { first: 0, second: 1 },
        Error::NoLoadableSegments,
        Error::EntryNotExecutable { entry: 1 },
        Error::NoteTruncated { segment: 3, offset: 0 },
        Error::NoteBadAlignment { segment: 3, align: 2 },
    ];
    let mut seen = std::collections::BTreeSet::new();
    for e in errors {
        let s = e.to_string();
        assert!(s.len() > 10, "{e:?} -> {s}");
        assert!(seen.insert(s), "duplicate message for {e:?}");
    }
    assert_eq!(
        Error::WrongMachine { found: EM_AARCH64, expected: EM_X86_64 }.to_string(),
        "built for machine 183 (aarch64), expected 62 (x86_64)"
    );
    assert!(Error::NotExecutable { elf_type: ET_DYN }.to_string().contains("relocation-model=static"));
}

/// Exercises everything a caller can reach after a successful parse, so
/// the fuzz loops below cover the accessors too.
fn exercise(bytes: &[u8]) {
    for machine in [EM_X86_64, EM_AARCH64] {
        if let Ok(elf) = Elf::parse(bytes, machine) {
            let _ = elf.entry();
            for s in elf.segments() {
                let _ = (s.header.vaddr_end(), s.data.len());
            }
            for s in elf.loads() {
                assert!(s.header.filesz <= s.header.memsz);
                assert_eq!(s.data.len() as u64, s.header.filesz);
            }
            for n in elf.notes() {
                let _ = n.map(|n| n.desc.len());
            }
            let _ = elf.find_note(b"Mantra", 1);
            let _ = elf.find_note(b"", 0);
        }
    }
}

#[test]
fn every_truncation_is_rejected_or_consistent() {
    let good = Image::kernel().build();
    for len in 0..good.len() {
        exercise(&good[..len]);
        // Every prefix shorter than the last segment's end must be rejected.
        if len < 0x3010 {
            assert!(parse(&good[..len]).is_err(), "prefix of {len} bytes accepted");
        }
    }
}

/// xorshift64*: deterministic, no dependencies.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_mutations_never_panic() {
    let good = Image::kernel().build();
    let mut notes = Image::kernel();
    notes.phs[3].align = 8;
    let seeds = [good, notes.build()];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut accepted = 0;
    // Mutate the header and program header area mostly, where the
    // interesting fields are, plus the note.
    for round in 0..60_000 {
        let mut b = seeds[round % 2].clone();
        let edits = 1 + rng.below(6);
        for _ in 0..edits {
            let at = match rng.below(4) {
                0 => rng.below(EHDR_SIZE),
                1 | 2 => EHDR_SIZE + rng.below(5 * PHDR_SIZE),
                _ => 0x2020 + rng.below(0x20),
            };
            b[at] = match rng.below(4) {
                0 => 0,
                1 => 0xff,
                2 => b[at] ^ (1 << rng.below(8)),
                _ => rng.next() as u8,
            };
        }
        if rng.below(8) == 0 {
            let len = rng.below(b.len() + 1);
            b.truncate(len);
        }
        exercise(&b);
        if parse(&b).is_ok() {
            accepted += 1;
        }
    }
    // Some mutations hit don't-care bytes; most are caught.
    assert!(accepted > 0 && accepted < 60_000, "accepted {accepted}");
}

#[test]
fn pure_garbage_never_panics() {
    let mut rng = Rng(12345);
    for _ in 0..20_000 {
        let len = rng.below(600);
        let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // Half of them get a valid identification so parsing goes deeper.
        if len >= 20 && rng.below(2) == 0 {
            b[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
            b[16..20].copy_from_slice(&[2, 0, 62, 0]);
        }
        exercise(&b);
    }
}
