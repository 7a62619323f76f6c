//! ACPI table discovery: RSDP → RSDT/XSDT → MADT and TPM2, checksummed at
//! every step.
//!
//! Pure logic over a [`PhysRead`] so the host tests feed it synthetic tables;
//! the kernel reads physical memory through its direct map. Only what
//! MantraCore needs is decoded: CPUs (local APICs), I/O APICs and interrupt
//! source overrides from the MADT, and where the TPM is from the TPM2 table
//! (for the userland TPM driver). Everything else (AML, devices) is
//! userland's business.

use alloc::vec::Vec;

/// Reads physical memory.
pub trait PhysRead {
    /// Copies `buf.len()` bytes from physical address `phys`; `Err` when the
    /// range is not readable RAM/firmware memory.
    fn read(&self, phys: u64, buf: &mut [u8]) -> Result<(), ()>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    /// The RSDP is unreadable, has a bad signature or checksum.
    BadRsdp,
    /// A table header could not be read or its checksum fails.
    BadTable { signature: [u8; 4], phys: u64 },
    /// No MADT ("APIC") in the root table.
    NoMadt,
    /// A MADT entry runs past the table.
    BadMadtEntry { offset: usize },
    /// The TPM2 table is shorter than its fixed fields (`len` bytes).
    ShortTpm2 { len: usize },
}

impl core::fmt::Display for AcpiError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AcpiError::BadRsdp => write!(f, "ACPI RSDP unreadable or corrupt"),
            AcpiError::BadTable { signature, phys } => {
                write!(f, "ACPI table {} at {phys:#x} unreadable or bad checksum", core::str::from_utf8(signature).unwrap_or("????"))
            }
            AcpiError::NoMadt => write!(f, "no ACPI MADT: cannot find CPUs and interrupt controllers"),
            AcpiError::BadMadtEntry { offset } => write!(f, "MADT entry at offset {offset} is malformed"),
            AcpiError::ShortTpm2 { len } => {
                write!(f, "ACPI TPM2 table is {len} bytes, shorter than its {TPM2_MIN_LEN} bytes of fixed fields")
            }
        }
    }
}

/// A processor's local APIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpu {
    pub processor_uid: u32,
    pub apic_id: u32,
    /// Enabled now (as opposed to online-capable only).
    pub enabled: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoApic {
    pub id: u8,
    pub address: u64,
    pub gsi_base: u32,
}

/// An ISA IRQ routed to another global system interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptOverride {
    pub bus_irq: u8,
    pub gsi: u32,
    pub flags: u16,
}

/// What the MADT says about this machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Madt {
    pub local_apic_address: u64,
    /// Legacy 8259 PICs present (they must be masked).
    pub has_8259: bool,
    pub cpus: Vec<Cpu>,
    pub io_apics: Vec<IoApic>,
    pub overrides: Vec<InterruptOverride>,
}

impl Madt {
    /// CPUs that can run (enabled or online-capable).
    pub fn usable_cpus(&self) -> impl Iterator<Item = &Cpu> {
        self.cpus.iter()
    }
}

const HEADER_LEN: usize = 36;

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b)) == 0
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

/// Largest table we accept; real MADTs are a few KiB.
const MAX_TABLE_LEN: usize = 1 << 20;

/// Reads and checksums the whole table at `phys`.
fn read_table(mem: &impl PhysRead, phys: u64) -> Result<([u8; 4], Vec<u8>), AcpiError> {
    let mut header = [0u8; HEADER_LEN];
    let bad = |signature| AcpiError::BadTable { signature, phys };
    mem.read(phys, &mut header).map_err(|_| bad(*b"????"))?;
    let signature = [header[0], header[1], header[2], header[3]];
    let len = u32_at(&header, 4) as usize;
    if !(HEADER_LEN..=MAX_TABLE_LEN).contains(&len) {
        return Err(bad(signature));
    }
    let mut table = alloc::vec![0u8; len];
    mem.read(phys, &mut table).map_err(|_| bad(signature))?;
    if !checksum_ok(&table) {
        return Err(bad(signature));
    }
    Ok((signature, table))
}

/// Physical addresses of every table the RSDP's root table lists.
pub fn root_tables(mem: &impl PhysRead, rsdp_phys: u64) -> Result<Vec<u64>, AcpiError> {
    let mut rsdp = [0u8; 36];
    mem.read(rsdp_phys, &mut rsdp[..20]).map_err(|_| AcpiError::BadRsdp)?;
    if &rsdp[..8] != b"RSD PTR " || !checksum_ok(&rsdp[..20]) {
        return Err(AcpiError::BadRsdp);
    }
    let revision = rsdp[15];
    let (root_phys, entry_len) = if revision >= 2 {
        mem.read(rsdp_phys, &mut rsdp).map_err(|_| AcpiError::BadRsdp)?;
        if !checksum_ok(&rsdp) {
            return Err(AcpiError::BadRsdp);
        }
        (u64_at(&rsdp, 24), 8)
    } else {
        (u64::from(u32_at(&rsdp, 16)), 4)
    };
    let (_, root) = read_table(mem, root_phys)?;
    let entries = &root[HEADER_LEN..];
    Ok(entries
        .chunks_exact(entry_len)
        .map(|e| if entry_len == 8 { u64_at(e, 0) } else { u64::from(u32_at(e, 0)) })
        .collect())
}

/// The first table of the root table with `signature`, read whole and
/// checksummed; `Ok(None)` when there is none. A table we cannot read is
/// skipped unless it is the one asked for.
pub fn find_table(mem: &impl PhysRead, rsdp_phys: u64, signature: &[u8; 4]) -> Result<Option<Vec<u8>>, AcpiError> {
    for phys in root_tables(mem, rsdp_phys)? {
        let mut sig = [0u8; 4];
        if mem.read(phys, &mut sig).is_err() || &sig != signature {
            continue;
        }
        let (_, table) = read_table(mem, phys)?;
        return Ok(Some(table));
    }
    Ok(None)
}

/// Finds and decodes the MADT.
pub fn parse_madt(mem: &impl PhysRead, rsdp_phys: u64) -> Result<Madt, AcpiError> {
    match find_table(mem, rsdp_phys, b"APIC")? {
        Some(table) => decode_madt(&table),
        None => Err(AcpiError::NoMadt),
    }
}

/// Decodes a checksummed MADT.
pub fn decode_madt(table: &[u8]) -> Result<Madt, AcpiError> {
    if table.len() < HEADER_LEN + 8 {
        return Err(AcpiError::BadMadtEntry { offset: HEADER_LEN });
    }
    let mut madt = Madt {
        local_apic_address: u64::from(u32_at(table, HEADER_LEN)),
        has_8259: u32_at(table, HEADER_LEN + 4) & 1 != 0,
        ..Madt::default()
    };
    let mut at = HEADER_LEN + 8;
    while at + 2 <= table.len() {
        let kind = table[at];
        let len = table[at + 1] as usize;
        if len < 2 || at + len > table.len() {
            return Err(AcpiError::BadMadtEntry { offset: at });
        }
        let e = &table[at..at + len];
        let need = |n: usize| if len < n { Err(AcpiError::BadMadtEntry { offset: at }) } else { Ok(()) };
        match kind {
            0 => {
                need(8)?;
                let flags = u32_at(e, 4);
                // Bit 0 enabled, bit 1 online-capable; neither: never usable.
                if flags & 0b11 != 0 {
                    madt.cpus.push(Cpu { processor_uid: u32::from(e[2]), apic_id: u32::from(e[3]), enabled: flags & 1 != 0 });
                }
            }
            1 => {
                need(12)?;
                madt.io_apics.push(IoApic { id: e[2], address: u64::from(u32_at(e, 4)), gsi_base: u32_at(e, 8) });
            }
            2 => {
                need(10)?;
                madt.overrides.push(InterruptOverride { bus_irq: e[3], gsi: u32_at(e, 4), flags: u16::from_le_bytes([e[8], e[9]]) });
            }
            5 => {
                need(12)?;
                madt.local_apic_address = u64_at(e, 4);
            }
            9 => {
                need(16)?;
                let flags = u32_at(e, 8);
                if flags & 0b11 != 0 {
                    madt.cpus.push(Cpu { processor_uid: u32_at(e, 12), apic_id: u32_at(e, 4), enabled: flags & 1 != 0 });
                }
            }
            _ => {}
        }
        at += len;
    }
    Ok(madt)
}

/// Where the PC Client Platform TPM Profile puts the TPM's locality-0
/// registers (TIS/FIFO and CRB alike): a fixed address, which is why a
/// FIFO TPM2 table may leave its control area address 0.
pub const TPM_PC_CLIENT_BASE: u64 = 0xFED4_0000;

/// Size of a TIS/FIFO TPM's register window: five localities of 4 KiB each
/// (TCG PC Client Platform TPM Profile, FIFO interface).
pub const TPM_FIFO_WINDOW: u64 = 5 * 0x1000;

/// The TPM2 table's fixed fields (TCG ACPI Specification, "TPM2 ACPI
/// Table"): header (36), platform class u16 (36), reserved u16 (38), control
/// area address u64 (40), start method u32 (48). Start-method-specific
/// parameters (12 bytes at 52) and the optional event log area (minimum
/// length u32 at 64, start address u64 at 68) follow.
const TPM2_MIN_LEN: usize = 52;
const TPM2_LOG_AREA_END: usize = 76;

/// How the OS sends commands to the TPM: the TPM2 table's start method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TpmInterface {
    /// 6: memory-mapped FIFO (the TIS registers), e.g. QEMU's tpm-tis.
    Fifo,
    /// 7: Command Response Buffer, started by writing its control area.
    Crb,
    /// 2: started by an ACPI method (older firmware TPMs).
    AcpiStart,
    /// 8: CRB started by an ACPI method.
    CrbAcpi,
    /// 11: CRB started by an Arm SMC call.
    CrbArmSmc,
    /// Any other start method (reserved, or newer than this code).
    Other(u32),
}

impl TpmInterface {
    pub fn from_start_method(method: u32) -> Self {
        match method {
            2 => Self::AcpiStart,
            6 => Self::Fifo,
            7 => Self::Crb,
            8 => Self::CrbAcpi,
            11 => Self::CrbArmSmc,
            other => Self::Other(other),
        }
    }
}

impl core::fmt::Display for TpmInterface {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Fifo => write!(f, "TIS/FIFO"),
            Self::Crb => write!(f, "CRB"),
            Self::AcpiStart => write!(f, "ACPI start method"),
            Self::CrbAcpi => write!(f, "CRB, ACPI start"),
            Self::CrbArmSmc => write!(f, "CRB, Arm SMC start"),
            Self::Other(method) => write!(f, "start method {method}"),
        }
    }
}

/// What the TPM2 table says about the machine's TPM 2.0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tpm2 {
    /// 0 client, 1 server.
    pub platform_class: u16,
    pub interface: TpmInterface,
    /// The control area address as the table gives it (0 for FIFO on QEMU).
    pub control_area: u64,
    /// Physical address of the registers a driver talks to: for FIFO the
    /// TIS base (the control area if the table gives one, else the PC
    /// Client fixed address); for the other interfaces the control area.
    pub registers: u64,
    /// The firmware's event log area (start, minimum length), when the
    /// table has one.
    pub log_area: Option<(u64, u32)>,
}

/// Finds and decodes the TPM2 table; `Ok(None)` when the machine has none
/// (no TPM 2.0, or the firmware does not describe it).
pub fn parse_tpm2(mem: &impl PhysRead, rsdp_phys: u64) -> Result<Option<Tpm2>, AcpiError> {
    find_table(mem, rsdp_phys, b"TPM2")?.map(|table| decode_tpm2(&table)).transpose()
}

/// Decodes a checksummed TPM2 table.
pub fn decode_tpm2(table: &[u8]) -> Result<Tpm2, AcpiError> {
    if table.len() < TPM2_MIN_LEN {
        return Err(AcpiError::ShortTpm2 { len: table.len() });
    }
    let platform_class = u16::from_le_bytes([table[36], table[37]]);
    let control_area = u64_at(table, 40);
    let interface = TpmInterface::from_start_method(u32_at(table, 48));
    let registers = match interface {
        TpmInterface::Fifo if control_area == 0 => TPM_PC_CLIENT_BASE,
        _ => control_area,
    };
    let log_area = (table.len() >= TPM2_LOG_AREA_END)
        .then(|| (u64_at(table, 68), u32_at(table, 64)))
        .filter(|&(start, len)| start != 0 && len != 0);
    Ok(Tpm2 { platform_class, interface, control_area, registers, log_area })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    /// Fake physical memory: a buffer at a base address.
    struct Mem {
        base: u64,
        bytes: Vec<u8>,
    }

    impl PhysRead for Mem {
        fn read(&self, phys: u64, buf: &mut [u8]) -> Result<(), ()> {
            let start = phys.checked_sub(self.base).ok_or(())? as usize;
            let src = self.bytes.get(start..start + buf.len()).ok_or(())?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }

    fn fix_checksum(bytes: &mut [u8], at: usize) {
        bytes[at] = 0;
        let sum = bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        bytes[at] = 0u8.wrapping_sub(sum);
    }

    fn table(sig: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; HEADER_LEN];
        t[..4].copy_from_slice(sig);
        t.extend_from_slice(body);
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        fix_checksum(&mut t, 9);
        t
    }

    fn madt_body() -> Vec<u8> {
        let mut b = vec![];
        b.extend_from_slice(&0xfee0_0000u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        for (uid, id, flags) in [(0u8, 0u8, 1u32), (1, 2, 1), (2, 4, 2), (3, 6, 0)] {
            b.extend_from_slice(&[0, 8, uid, id]);
            b.extend_from_slice(&flags.to_le_bytes());
        }
        b.extend_from_slice(&[1, 12, 9, 0]);
        b.extend_from_slice(&0xfec0_0000u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&[2, 10, 0, 0]);
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b
    }

    /// RSDP v2 at base, XSDT at base+0x100 pointing to a FACP-like dummy and the MADT.
    fn machine(madt: Vec<u8>) -> Mem {
        machine_with(madt, None)
    }

    /// As `machine`, plus `extra` (a TPM2 table) at base+0x800 listed last.
    fn machine_with(madt: Vec<u8>, extra: Option<Vec<u8>>) -> Mem {
        let base = 0xe_0000u64;
        let mut bytes = vec![0u8; 0x1000];
        let dummy = table(b"FACP", &[0u8; 8]);
        let dummy_at = 0x200;
        let madt_at = 0x400;
        let extra_at = 0x800;
        let mut entries = vec![(base + dummy_at).to_le_bytes(), (base + madt_at).to_le_bytes()];
        if let Some(extra) = &extra {
            entries.push((base + extra_at).to_le_bytes());
            bytes[extra_at as usize..extra_at as usize + extra.len()].copy_from_slice(extra);
        }
        let xsdt = table(b"XSDT", &entries.concat());
        let mut rsdp = vec![0u8; 36];
        rsdp[..8].copy_from_slice(b"RSD PTR ");
        rsdp[15] = 2;
        rsdp[20..24].copy_from_slice(&36u32.to_le_bytes());
        rsdp[24..32].copy_from_slice(&(base + 0x100).to_le_bytes());
        fix_checksum(&mut rsdp[..20], 8);
        fix_checksum(&mut rsdp, 32);
        bytes[..36].copy_from_slice(&rsdp);
        bytes[0x100..0x100 + xsdt.len()].copy_from_slice(&xsdt);
        bytes[dummy_at as usize..dummy_at as usize + dummy.len()].copy_from_slice(&dummy);
        bytes[madt_at as usize..madt_at as usize + madt.len()].copy_from_slice(&madt);
        Mem { base, bytes }
    }

    #[test]
    fn decodes_cpus_ioapic_and_overrides() {
        let mem = machine(table(b"APIC", &madt_body()));
        let madt = parse_madt(&mem, mem.base).unwrap();
        assert_eq!(madt.local_apic_address, 0xfee0_0000);
        assert!(madt.has_8259);
        // The CPU with neither enabled nor online-capable is left out.
        assert_eq!(madt.cpus.iter().map(|c| c.apic_id).collect::<Vec<_>>(), vec![0, 2, 4]);
        assert!(!madt.cpus[2].enabled);
        assert_eq!(madt.io_apics, vec![IoApic { id: 9, address: 0xfec0_0000, gsi_base: 0 }]);
        assert_eq!(madt.overrides[0].gsi, 2);
    }

    #[test]
    fn bad_checksums_are_refused() {
        let mut madt = table(b"APIC", &madt_body());
        madt[40] ^= 1;
        let mem = machine(madt);
        assert!(matches!(parse_madt(&mem, mem.base), Err(AcpiError::BadTable { signature: [b'A', b'P', b'I', b'C'], .. })));
        let mut mem = machine(table(b"APIC", &madt_body()));
        mem.bytes[0] = b'X';
        assert_eq!(parse_madt(&mem, mem.base), Err(AcpiError::BadRsdp));
    }

    #[test]
    fn missing_madt_and_truncated_entries() {
        let mem = machine(table(b"SSDT", &[0u8; 4]));
        assert_eq!(parse_madt(&mem, mem.base), Err(AcpiError::NoMadt));
        let mut body = madt_body();
        body.extend_from_slice(&[0, 40]); // entry claims 40 bytes, table ends
        assert!(matches!(decode_madt(&table(b"APIC", &body)), Err(AcpiError::BadMadtEntry { .. })));
        // Zero-length entries must not loop forever.
        let mut body = madt_body();
        body.extend_from_slice(&[7, 0]);
        assert!(decode_madt(&table(b"APIC", &body)).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678u32;
        for _ in 0..2000 {
            let mut body = madt_body();
            for _ in 0..4 {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let at = (seed as usize >> 8) % body.len();
                body[at] = (seed >> 16) as u8;
            }
            let _ = decode_madt(&table(b"APIC", &body));
        }
    }

    /// A TPM2 table body (after the header): platform class, control area,
    /// start method, 12 bytes of start-method parameters, then optionally
    /// the log area (minimum length, start).
    fn tpm2_body(control_area: u64, start_method: u32, log: Option<(u32, u64)>) -> Vec<u8> {
        let mut b = vec![];
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&control_area.to_le_bytes());
        b.extend_from_slice(&start_method.to_le_bytes());
        b.extend_from_slice(&[0u8; 12]);
        if let Some((len, start)) = log {
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(&start.to_le_bytes());
        }
        b
    }

    #[test]
    fn tpm2_fifo_without_control_area_is_at_the_pc_client_address() {
        // As QEMU's tpm-tis: start method 6, control area 0, a log area.
        let tpm2 = table(b"TPM2", &tpm2_body(0, 6, Some((0x1_0000, 0x7ff0_0000))));
        let mem = machine_with(table(b"APIC", &madt_body()), Some(tpm2));
        let tpm = parse_tpm2(&mem, mem.base).unwrap().unwrap();
        assert_eq!(tpm.interface, TpmInterface::Fifo);
        assert_eq!(tpm.registers, 0xfed4_0000);
        assert_eq!(tpm.control_area, 0);
        assert_eq!(tpm.log_area, Some((0x7ff0_0000, 0x1_0000)));
        assert_eq!(std::format!("{}", tpm.interface), "TIS/FIFO");
        // The MADT is still found beside it.
        assert_eq!(parse_madt(&mem, mem.base).unwrap().cpus.len(), 3);
    }

    #[test]
    fn tpm2_crb_registers_are_its_control_area() {
        let tpm = decode_tpm2(&table(b"TPM2", &tpm2_body(0xfed4_0040, 7, None))).unwrap();
        assert_eq!(tpm.interface, TpmInterface::Crb);
        assert_eq!(tpm.registers, 0xfed4_0040);
        assert_eq!(tpm.log_area, None);
        // A FIFO table that names its base is believed.
        let tpm = decode_tpm2(&table(b"TPM2", &tpm2_body(0xfed5_0000, 6, Some((0, 0))))).unwrap();
        assert_eq!((tpm.registers, tpm.log_area), (0xfed5_0000, None));
        assert_eq!(TpmInterface::from_start_method(13), TpmInterface::Other(13));
        assert_eq!(std::format!("{}", TpmInterface::Other(13)), "start method 13");
    }

    #[test]
    fn no_tpm2_table_is_none() {
        let mem = machine(table(b"APIC", &madt_body()));
        assert_eq!(parse_tpm2(&mem, mem.base), Ok(None));
    }

    #[test]
    fn tpm2_bad_checksum_and_short_table_are_refused() {
        let mut tpm2 = table(b"TPM2", &tpm2_body(0, 6, None));
        tpm2[48] ^= 1;
        let mem = machine_with(table(b"APIC", &madt_body()), Some(tpm2));
        assert!(matches!(parse_tpm2(&mem, mem.base), Err(AcpiError::BadTable { signature: [b'T', b'P', b'M', b'2'], .. })));
        // Header plus platform class and part of the control area only.
        let short = table(b"TPM2", &[0u8; 8]);
        let mem = machine_with(table(b"APIC", &madt_body()), Some(short));
        assert_eq!(parse_tpm2(&mem, mem.base), Err(AcpiError::ShortTpm2 { len: 44 }));
        // Every truncation of a valid table decodes or is refused, never panics.
        let full = table(b"TPM2", &tpm2_body(0, 6, Some((1, 2))));
        for len in 0..full.len() {
            let result = decode_tpm2(&full[..len]);
            assert_eq!(result.is_ok(), len >= 52, "len {len}");
        }
    }
}
