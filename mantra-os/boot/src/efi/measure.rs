//! Measured boot (docs/signing.md, "PCRs"): after the image verified and
//! before ExitBootServices, MantraBoot extends, through the firmware's
//! EFI_TCG2_PROTOCOL.HashLogExtendEvent (event type EV_IPL):
//!
//! - PCR 8: the manifest body (exactly the bytes its signature covers),
//!   event data `manifest`;
//! - PCR 9: each component it loads (every kind but the bootloader), in
//!   manifest order, the file's bytes as loaded, event data its path.
//!
//! Then it reads PCR 8 and 9 back (TPM2_PCR_Read, SHA-256 bank) and prints
//! them, and copies the event log (GetEventLog, crypto-agile format: the
//! firmware's events and these) into memory it hands the kernel in BootInfo;
//! [`EventLog::finish`] appends, after ExitBootServices, the events the
//! firmware logged after the copy (the EFI_TCG2_FINAL_EVENTS_TABLE). Without the protocol the boot goes on unmeasured and says so; a
//! TPM that is there but fails to measure stops the boot: a measured-boot
//! device must never boot unmeasured silently.

use alloc::format;
use alloc::string::String;
use mantra_bootinfo::eventlog::{self, Algorithms};
use mantra_boot::tpm::{self, PCR_COMPONENTS, PCR_MANIFEST};
use mantra_signing::{ComponentKind, Hex, Manifest};
use uefi::boot::{self, AllocateType, MemoryType, ScopedProtocol};
use uefi::proto::tcg::v2::{HashLogExtendEventFlags, PcrEventInputs, Tcg};
use uefi::proto::tcg::{EventType, HashAlgorithm, PcrIndex};
use uefi::Status;

use super::fail::Fatal;

/// Hint for a TPM that is present but does not measure.
const HINT: &str = "check the TPM (firmware setup; under QEMU, swtpm) or disable it in the firmware to boot unmeasured";

fn failed(what: impl Into<String>) -> Fatal {
    Fatal::new(format!("measured boot failed: {}", what.into()), HINT)
}

/// A file MantraBoot loaded: its path as the manifest names it, its bytes.
pub struct Loaded<'a> {
    pub path: &'static str,
    pub bytes: &'a [u8],
}

/// Measures the verified image into the TPM, if there is one (see the
/// module comment). `loaded` are the files MantraBoot read and checked
/// against `manifest`; every component the manifest lists (but the
/// bootloader) must be among them. Returns the event log to hand over
/// (`None` without a TPM, or when it cannot be copied: said on the console).
pub fn measure(manifest_body: &[u8], manifest: &Manifest<'_>, loaded: &[Loaded<'_>]) -> Result<Option<EventLog>, Fatal> {
    let handle = match boot::get_handle_for_protocol::<Tcg>() {
        Ok(handle) => handle,
        Err(e) if e.status() == Status::NOT_FOUND => {
            say!("MantraBoot: no TPM (EFI_TCG2_PROTOCOL absent): boot not measured");
            return Ok(None);
        }
        Err(e) => return Err(failed(format!("cannot look for EFI_TCG2_PROTOCOL: {}", e.status()))),
    };
    let mut tcg: ScopedProtocol<Tcg> = boot::open_protocol_exclusive(handle)
        .map_err(|e| failed(format!("cannot open EFI_TCG2_PROTOCOL: {}", e.status())))?;
    let capability = tcg
        .get_capability()
        .map_err(|e| failed(format!("EFI_TCG2_PROTOCOL.GetCapability: {}", e.status())))?;
    if !capability.tpm_present() {
        say!("MantraBoot: no TPM (EFI_TCG2_PROTOCOL reports no TPM device): boot not measured");
        return Ok(None);
    }
    if !capability.active_pcr_banks.contains(HashAlgorithm::SHA256) {
        return Err(failed(format!(
            "the TPM's SHA-256 PCR bank is not active (active banks {:#x})",
            capability.active_pcr_banks.bits()
        )));
    }

    extend(&mut tcg, PCR_MANIFEST, manifest_body, "manifest")?;
    let mut events = 1;
    for component in manifest.components().iter().filter(|c| c.kind != ComponentKind::Bootloader) {
        let file = loaded.iter().find(|f| f.path.eq_ignore_ascii_case(component.path)).ok_or_else(|| {
            failed(format!("the manifest lists {}, which MantraBoot does not load", component.path))
        })?;
        extend(&mut tcg, PCR_COMPONENTS, file.bytes, component.path)?;
        events += 1;
    }

    let mut response = [0u8; 512];
    tcg.submit_command(&tpm::pcr_read_command(), &mut response)
        .map_err(|e| failed(format!("TPM2_PCR_Read: EFI_TCG2_PROTOCOL.SubmitCommand: {}", e.status())))?;
    let pcrs = tpm::parse_pcr_read_response(&response).map_err(|e| failed(format!("TPM2_PCR_Read: {e}")))?;
    say!("MantraBoot: measured {events} events (TCG2): PCR8 {} PCR9 {}", Hex(&pcrs.pcr8), Hex(&pcrs.pcr9));
    match EventLog::capture(&mut tcg) {
        Ok(log) => {
            say!(
                "MantraBoot: event log {} bytes, {} events{} (handed to the kernel)",
                log.len,
                log.entries,
                if log.final_table.is_some() { ", final events table found" } else { ", no final events table" }
            );
            Ok(Some(log))
        }
        Err(why) => {
            say!("MantraBoot: warning: the TCG event log is not handed to the kernel: {why}; attestation will report no event log");
            Ok(None)
        }
    }
}

/// Room left after the copied log for the final events table's entries
/// (ExitBootServices logs two small events).
const FINAL_EVENTS_ROOM: usize = 16 * 1024;
/// Largest log MantraBoot copies.
const MAX_LOG: usize = 4 << 20;
/// Most final-table events MantraBoot walks (a guard against garbage).
const MAX_FINAL_EVENTS: u64 = 4096;

/// `EFI_TCG2_FINAL_EVENTS_TABLE_GUID`.
const FINAL_EVENTS_TABLE: uefi::Guid = uefi::guid!("1e2ed096-30e2-4254-bd89-863bbef82325");

/// The event log on its way to the kernel: a copy of the firmware's log
/// with room for the events logged after the copy.
pub struct EventLog {
    /// Loader data (the kernel gets a copy inside BootInfo).
    buffer: &'static mut [u8],
    len: usize,
    entries: usize,
    algs: Algorithms,
    /// Physical address of EFI_TCG2_FINAL_EVENTS_TABLE (ACPI NVS: still
    /// there after ExitBootServices), and how many of its events were
    /// logged before our GetEventLog call (those are in the copy already).
    final_table: Option<u64>,
    final_preboot: u64,
}

/// A view of `len` bytes of firmware memory at `addr`.
///
/// # Safety
/// `addr..addr + len` must be readable memory (the firmware's event log
/// structures) for as long as the slice lives.
unsafe fn firmware_bytes<'a>(addr: u64, len: usize) -> &'a [u8] {
    // SAFETY: per the function contract.
    unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
}

impl EventLog {
    /// GetEventLog(EFI_TCG2_EVENT_LOG_FORMAT_TCG_2), then copies the log
    /// from its start through the end of its last entry.
    fn capture(tcg: &mut Tcg) -> Result<Self, String> {
        let (mut location, mut last_entry, mut truncated) = (0u64, 0u64, 0u8);
        let raw = (tcg as *mut Tcg).cast::<uefi_raw::protocol::tcg::v2::Tcg2Protocol>();
        // SAFETY: `Tcg` is a repr(transparent) wrapper of the raw protocol
        // struct, which the firmware keeps alive while the protocol is open
        // (`tcg` borrows the open protocol); the out-pointers are locals.
        let status = unsafe {
            ((*raw).get_event_log)(
                raw,
                uefi_raw::protocol::tcg::v2::Tcg2EventLogFormat::TCG_2,
                &mut location,
                &mut last_entry,
                &mut truncated,
            )
        };
        if !status.is_success() {
            return Err(format!("EFI_TCG2_PROTOCOL.GetEventLog(TCG_2): {status:?}"));
        }
        if location == 0 {
            return Err("GetEventLog gave no log (the firmware keeps no crypto-agile log)".into());
        }
        if truncated != 0 {
            say!("MantraBoot: warning: the firmware's event log is truncated (it ran out of room): replaying it will not give the PCRs");
        }
        let final_table = uefi::system::with_config_table(|tables| {
            tables.iter().find(|t| t.guid == FINAL_EVENTS_TABLE).map(|t| t.address as u64)
        });
        // SAFETY: the final events table starts with Version and NumberOfEvents (u64 each).
        let final_preboot = final_table.map_or(0, |addr| u64::from_le_bytes(unsafe { firmware_bytes(addr + 8, 8) }.try_into().unwrap_or([0; 8])));

        // SAFETY: GetEventLog returned the log's start: its header entry is readable.
        let (header, algs) = eventlog::parse_header_grow(|len| unsafe { firmware_bytes(location, len) })
            .map_err(|e| format!("the log's first entry: {e}"))?;
        let len = if last_entry == 0 || last_entry == location {
            header
        } else {
            if last_entry < location + header as u64 || last_entry - location > MAX_LOG as u64 {
                return Err(format!("GetEventLog's last entry {last_entry:#x} is not inside the log at {location:#x}"));
            }
            // SAFETY: GetEventLog names the start of the last entry: readable.
            let last = eventlog::entry_size_grow(|len| unsafe { firmware_bytes(last_entry, len) }, &algs)
                .map_err(|e| format!("the log's last entry: {e}"))?;
            (last_entry - location) as usize + last
        };
        if len > MAX_LOG {
            return Err(format!("the log is {len} bytes, more than {MAX_LOG}"));
        }
        let pages = (len + FINAL_EVENTS_ROOM).div_ceil(4096);
        let ptr = boot::allocate_pages(AllocateType::AnyPages, MemoryType::LOADER_DATA, pages)
            .map_err(|e| format!("cannot allocate {pages} pages for the event log: {}", e.status()))?;
        // SAFETY: a fresh allocation of `pages` pages that only this slice refers to.
        let buffer = unsafe { core::slice::from_raw_parts_mut(ptr.as_ptr(), pages * 4096) };
        // SAFETY: `len` bytes from `location` are the log (sized above).
        buffer[..len].copy_from_slice(unsafe { firmware_bytes(location, len) });
        let entries = eventlog::count_entries(&buffer[..len]).map_err(|e| format!("the copied log is malformed: {e}"))?;
        Ok(Self { buffer, len, entries, algs, final_table, final_preboot })
    }

    /// Bytes [`finish`](Self::finish) may return at most.
    pub fn capacity(&self) -> usize {
        self.buffer.len()
    }

    /// After ExitBootServices: appends the final events table's entries
    /// logged after the copy and returns the whole log. Allocation-free; a
    /// problem is reported on the serial console and leaves the log as it is.
    pub fn finish(self) -> &'static [u8] {
        let Self { buffer, mut len, algs, final_table, final_preboot, .. } = self;
        if let Some(table) = final_table {
            // SAFETY: the table (ACPI NVS) outlives boot services; it starts
            // with two u64 fields.
            let count = u64::from_le_bytes(unsafe { firmware_bytes(table + 8, 8) }.try_into().unwrap_or([0; 8]));
            if count > MAX_FINAL_EVENTS || count < final_preboot {
                say!("MantraBoot: warning: final events table holds {count} events (had {final_preboot}): not appended");
                return &buffer[..len];
            }
            let mut at = table + 16;
            let mut appended = 0;
            for index in 0..count {
                // SAFETY: the table's events follow its header back to back,
                // `count` of them; each is sized before the next is read.
                let size = match eventlog::entry_size_grow(|n| unsafe { firmware_bytes(at, n) }, &algs) {
                    Ok(size) => size,
                    Err(e) => {
                        say!("MantraBoot: warning: final events table entry {index}: {e}; later events not appended");
                        break;
                    }
                };
                if index >= final_preboot {
                    if len + size > buffer.len() {
                        say!("MantraBoot: warning: no room for final event {index} ({size} bytes); later events not appended");
                        break;
                    }
                    // SAFETY: the entry was just sized.
                    buffer[len..len + size].copy_from_slice(unsafe { firmware_bytes(at, size) });
                    len += size;
                    appended += 1;
                }
                at += size as u64;
            }
            let _ = appended;
        }
        &buffer[..len]
    }
}

/// HashLogExtendEvent: the firmware hashes `data` (plain bytes, no PE/COFF
/// handling), extends `pcr` in every active bank and logs an EV_IPL event
/// with `description` (ASCII) as its data.
fn extend(tcg: &mut Tcg, pcr: u32, data: &[u8], description: &str) -> Result<(), Fatal> {
    let event = PcrEventInputs::new_in_box(PcrIndex(pcr), EventType::IPL, description.as_bytes())
        .map_err(|e| failed(format!("event for {description}: {}", e.status())))?;
    tcg.hash_log_extend_event(HashLogExtendEventFlags::empty(), data, &event).map_err(|e| {
        failed(format!("EFI_TCG2_PROTOCOL.HashLogExtendEvent of {description} into PCR {pcr}: {}", e.status()))
    })
}
