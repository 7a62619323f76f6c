//! A/B boot (docs/boot-state.md): find the slot partitions, verify each one
//! completely (signed manifest against the built-in root key and the stored
//! rollback minimums, every component's size and SHA-256 on the bytes
//! read), run the state machine (`mantra_boot::slots::decide`) with the
//! UEFI variables `MantraSlots` and `MantraRollback` and, with a TPM, the NV
//! index 0x01004D42, write the new state and `MantraBootCurrent`, lock the
//! NV index, and hand the chosen slot's verified files to the boot.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use mantra_boot::slots::{self, Decision, Event, Found, Rollback, Slot, Slots, State};
use mantra_boot::tpm_nv::{self, NvError, NV_INDEX};
use mantra_signing::{sha256, ComponentKind};
use uefi::boot::{self, MemoryType, OpenProtocolAttributes, OpenProtocolParams, ScopedProtocol, SearchType};
use uefi::proto::media::partition::PartitionInfo;
use uefi::proto::tcg::v2::Tcg;
use uefi::Identify;
use uefi::runtime::{self, VariableAttributes, VariableVendor};
use uefi::{cstr16, guid, CStr16, Guid, Handle, Status};

use super::fail::Fatal;
use super::files::{Esp, PageFile};
use super::platform::rdtsc;
use super::verify;
use mantra_boot::memmap;

/// GPT partition type of an A/B slot.
const SLOT_TYPE: Guid = guid!("5f0f1e43-6d61-4e74-8a4f-534c4f543031");
/// The vendor GUID of every MantraOS variable.
pub(super) const VENDOR: VariableVendor = VariableVendor(guid!("b1237644-3bb1-4cbd-a419-51a543783796"));
pub(super) const SLOTS_VAR: &CStr16 = cstr16!("MantraSlots");
const CURRENT_VAR: &CStr16 = cstr16!("MantraBootCurrent");
const ROLLBACK_VAR: &CStr16 = cstr16!("MantraRollback");
/// What to do when no slot can boot.
const NOTHING_HINT: &str = "install a signed image into a slot (./mantra slot install TARGET_IMAGE --slot a --from SIGNED_IMAGE) or flash a new image: ./mantra build";
const VAR_HINT: &str = "check the firmware's variable store (under QEMU: delete firmware-vars.fd beside the image)";
const TPM_HINT: &str = "check the TPM (firmware setup; under QEMU, swtpm: delete tpm/ beside the image for a fresh one)";

pub(super) fn nv_store() -> VariableAttributes {
    VariableAttributes::NON_VOLATILE | VariableAttributes::BOOTSERVICE_ACCESS
}

/// A slot's verified files, ready to boot.
pub struct SlotImage {
    pub image: verify::Image<'static>,
    pub kernel: Vec<u8>,
    pub bootfs: PageFile,
    pub cmdline: Option<Vec<u8>>,
}

/// Why a slot was refused or is empty, and its envelope hash if known.
pub(super) struct Refusal {
    pub(super) what: String,
    envelope_hash: Option<[u8; 32]>,
}

/// What [`choose`] decided.
pub enum Choice {
    Boot(SlotImage),
    /// No slot can boot: why (the caller enters flash mode).
    Nothing(Fatal),
}

/// The rollback minimums in force (the variable and the TPM NV index),
/// read without changing anything (flash mode's BEGIN checks against them).
pub fn minimums() -> Result<Rollback, Fatal> {
    let mut tpm = Tpm::open()?;
    let var_minimum = read_rollback()?;
    let nv_minimum = match tpm.as_mut() {
        Some(tpm) => tpm.read_minimum()?,
        None => None,
    };
    Ok(var_minimum.unwrap_or_default().max(nv_minimum.flatten().unwrap_or_default()))
}

/// Everything up to the choice: see the module comment. Returns the slot to
/// boot, or why nothing can boot.
pub fn choose() -> Result<Choice, Fatal> {
    let start = rdtsc();
    let mut verify_tsc = 0u64;
    let handles = find_slots()?;
    let mut tpm = Tpm::open()?;
    let var_minimum = read_rollback()?;
    let nv_minimum = match tpm.as_mut() {
        Some(tpm) => tpm.read_minimum()?,
        None => None,
    };
    let minimum = var_minimum.unwrap_or_default().max(nv_minimum.flatten().unwrap_or_default());
    say!(
        "MantraBoot: rollback minimums: security counter {}, revocation list {} ({})",
        minimum.security_counter,
        minimum.revocations,
        match (&tpm, nv_minimum) {
            (None, _) => "UEFI variable; no TPM",
            (Some(_), Some(Some(_))) => "UEFI variable and TPM NV index 0x01004d42",
            (Some(_), _) => "UEFI variable; TPM NV index 0x01004d42 not written yet",
        }
    );
    let stored = read_slots()?;
    if stored.is_none() {
        say!("MantraBoot: no valid MantraSlots variable: a factory-fresh device (slots that verify become active)");
    }

    // Verify every slot; keep the files of those that verified.
    let mut images: [Option<SlotImage>; 2] = [None, None];
    let mut found = [Found::Empty; 2];
    let mut reasons: [String; 2] = [String::new(), String::new()];
    for slot in Slot::ALL {
        let i = slot as usize;
        if stored.is_some_and(|s| s.record(slot).state == State::Flashing) {
            // Half written, perhaps: never read, never booted (decide keeps it).
            continue;
        }
        let slot_start = rdtsc();
        let loaded = load_slot(slot, handles[i], minimum);
        verify_tsc += rdtsc().wrapping_sub(slot_start);
        match loaded {
            Ok(Ok(image)) => {
                image.image.report_slot(slot.name());
                found[i] = Found::Verified {
                    security_counter: image.image.verified.manifest.security_counter,
                    revocations: image.image.verified.revocations.version,
                    envelope_hash: sha256(image.image.envelope),
                };
                images[i] = Some(image);
            }
            Ok(Err(empty)) => {
                say!("MantraBoot: slot {}: empty ({})", slot.name(), empty);
                reasons[i] = format!("empty ({empty})");
            }
            Err(refusal) => {
                say!("MantraBoot: slot {}: refused: {}", slot.name(), refusal.what);
                found[i] = Found::Refused { envelope_hash: refusal.envelope_hash };
                reasons[i] = format!("refused ({})", refusal.what);
            }
        }
    }

    let decision = slots::decide(stored, found, minimum, mantra_config::BOOT_TRIES as u8);
    report_events(&decision, &mut reasons);

    // The new state, before anything of a slot runs.
    if decision.rollback != minimum || var_minimum != Some(decision.rollback) {
        write_var(ROLLBACK_VAR, nv_store(), &decision.rollback.encode(), "MantraRollback")?;
    }
    if let Some(tpm) = tpm.as_mut() {
        if nv_minimum.is_some() && nv_minimum != Some(Some(decision.rollback)) {
            tpm.write_minimum(decision.rollback)?;
        }
    }
    if let Some(by) = decision.raised_by {
        say!(
            "MantraBoot: rollback minimum raised to {} (slot {} confirmed; revocation list minimum {})",
            decision.rollback.security_counter,
            by.name(),
            decision.rollback.revocations
        );
    }
    if decision.slots_changed {
        write_var(
            SLOTS_VAR,
            nv_store() | VariableAttributes::RUNTIME_ACCESS,
            &decision.slots.encode(),
            "MantraSlots",
        )?;
    }

    let Some(boot) = decision.boot else {
        for image in images.into_iter().flatten() {
            image.bootfs.free();
        }
        return Ok(Choice::Nothing(Fatal::new(
            format!("no bootable slot: slot a {}, slot b {}", reasons[0], reasons[1]),
            NOTHING_HINT,
        )));
    };
    write_var(
        CURRENT_VAR,
        VariableAttributes::BOOTSERVICE_ACCESS | VariableAttributes::RUNTIME_ACCESS,
        &boot.current().encode(),
        "MantraBootCurrent",
    )?;
    if let Some(tpm) = tpm.as_mut() {
        if nv_minimum.is_some() {
            tpm.lock()?;
        }
    }
    drop(tpm);

    let [a, b] = images;
    let (chosen, other) = match boot.slot {
        Slot::A => (a, b),
        Slot::B => (b, a),
    };
    if let Some(other) = other {
        other.bootfs.free();
    }
    let image = chosen.ok_or_else(|| Fatal::new("chose a slot that did not verify", "report this MantraBoot bug"))?;
    let total = rdtsc().wrapping_sub(start);
    say!(
        "MantraBoot: A/B: slot chosen in {total} tsc: reading and verifying the slots {verify_tsc}, partitions, variables and TPM NV {}",
        total.wrapping_sub(verify_tsc)
    );
    match boot.state {
        State::Pending => say!(
            "MantraBoot: booting slot {} (pending, {} {} left, security counter {})",
            boot.slot.name(),
            boot.tries_left,
            if boot.tries_left == 1 { "try" } else { "tries" },
            boot.security_counter
        ),
        _ => say!("MantraBoot: booting slot {} (active, security counter {})", boot.slot.name(), boot.security_counter),
    }
    Ok(Choice::Boot(image))
}

/// The console lines for what changed, and the reasons of slots that turned
/// bad without a refusal of their own.
fn report_events(decision: &Decision, reasons: &mut [String; 2]) {
    for slot in Slot::ALL {
        let i = slot as usize;
        let n = slot.name();
        match decision.events[i] {
            Some(Event::NewContents { tries }) => {
                say!("MantraBoot: slot {n}: new contents: pending, {tries} tries")
            }
            Some(Event::OutOfTries) => {
                say!("MantraBoot: slot {n}: marked bad: pending and never confirmed, no tries left");
                reasons[i] = String::from("bad (pending and never confirmed, no tries left)");
            }
            Some(Event::BelowMinimum { security_counter, revocations }) => {
                let what = if security_counter < decision.rollback.security_counter {
                    format!(
                        "security counter {security_counter} is lower than the minimum {} (downgrade refused)",
                        decision.rollback.security_counter
                    )
                } else {
                    format!(
                        "revocation list: version {revocations} is older than the minimum {} (rollback of the revocation list refused)",
                        decision.rollback.revocations
                    )
                };
                say!("MantraBoot: slot {n}: refused: {what}");
                reasons[i] = format!("refused ({what})");
            }
            Some(Event::StillBad) => {
                say!("MantraBoot: slot {n}: bad (marked bad on an earlier boot, unchanged since)");
                reasons[i] = String::from("bad (marked bad on an earlier boot)");
            }
            Some(Event::Emptied) => say!("MantraBoot: slot {n}: now empty"),
            Some(Event::Flashing) => {
                say!("MantraBoot: slot {n}: flashing (a flash began and was not activated): not booted; flash it again (./mantra flash)");
                reasons[i] = String::from("flashing (an unfinished flash)");
            }
            Some(Event::Factory) | Some(Event::Refused) | None => {}
        }
    }
}

/// The handles of the partitions `slot-a` and `slot-b` of the slot type.
pub(super) fn find_slots() -> Result<[Option<Handle>; 2], Fatal> {
    let mut found = [None, None];
    let handles = match boot::locate_handle_buffer(SearchType::ByProtocol(&PartitionInfo::GUID)) {
        Ok(handles) => handles,
        Err(e) if e.status() == Status::NOT_FOUND => return Ok(found),
        Err(e) => {
            return Err(Fatal::new(
                format!("cannot list the disk partitions (EFI_PARTITION_INFO_PROTOCOL): {}", e.status()),
                "report this firmware problem",
            ))
        }
    };
    for &handle in handles.iter() {
        // SAFETY: GetProtocol opens the interface without taking it from any
        // driver; the reference is used only within this iteration, while
        // the partition's handle stays installed (nothing here disconnects it).
        let info = unsafe {
            boot::open_protocol::<PartitionInfo>(
                OpenProtocolParams { handle, agent: boot::image_handle(), controller: None },
                OpenProtocolAttributes::GetProtocol,
            )
        };
        let Ok(info) = info else { continue };
        let Some(entry) = info.gpt_partition_entry() else { continue };
        let type_guid = entry.partition_type_guid;
        if type_guid.0 != SLOT_TYPE {
            continue;
        }
        let name = entry.partition_name;
        let mut text = [0u16; 36];
        for (t, c) in text.iter_mut().zip(name.iter()) {
            *t = u16::from(*c);
        }
        let len = text.iter().position(|&c| c == 0).unwrap_or(text.len());
        let slot = match &text[..len] {
            [0x73, 0x6c, 0x6f, 0x74, 0x2d, 0x61] => Slot::A, // "slot-a"
            [0x73, 0x6c, 0x6f, 0x74, 0x2d, 0x62] => Slot::B, // "slot-b"
            _ => continue,
        };
        if found[slot as usize].is_none() {
            found[slot as usize] = Some(handle);
        }
    }
    Ok(found)
}

/// Reads and verifies one slot. `Ok(Err(why))`: empty (no partition, or
/// no file system); `Err`: refused (a file system without a signed
/// manifest is an unsigned image, refused).
pub(super) fn load_slot(slot: Slot, handle: Option<Handle>, minimum: Rollback) -> Result<Result<SlotImage, &'static str>, Refusal> {
    let Some(handle) = handle else { return Ok(Err("no partition slot-x of the slot type")) };
    let refusal = |fatal: Fatal, hash| Refusal { what: fatal.what, envelope_hash: hash };
    let name = match slot {
        Slot::A => "slot a",
        Slot::B => "slot b",
    };
    let mut fs = match Esp::open_handle(handle, name) {
        Ok(Some(fs)) => fs,
        Ok(None) => {
            // The firmware may not have connected a file system driver to it yet.
            let _ = boot::connect_controller(handle, None, None, true);
            match Esp::open_handle(handle, name) {
                Ok(Some(fs)) => fs,
                Ok(None) => return Ok(Err("no file system")),
                Err(fatal) => return Err(refusal(fatal, None)),
            }
        }
        Err(fatal) => return Err(refusal(fatal, None)),
    };
    let envelope = match fs.read_bounded(
        cstr16!("\\MANTRA\\MANIFEST.SIG"),
        verify::MANIFEST_PATH,
        mantra_signing::MAX_ENVELOPE,
    ) {
        Ok(Some(Ok(bytes))) => bytes,
        Ok(Some(Err(size))) => {
            return Err(Refusal {
                what: format!(
                    "image signature check failed: signed manifest {} is {size} bytes, at most {}",
                    verify::MANIFEST_PATH,
                    mantra_signing::MAX_ENVELOPE
                ),
                envelope_hash: None,
            })
        }
        Ok(None) => {
            return Err(Refusal {
                what: format!(
                    "image signature check failed: signed manifest {} not found in the slot (unsigned image)",
                    verify::MANIFEST_PATH
                ),
                envelope_hash: None,
            })
        }
        Err(fatal) => return Err(refusal(fatal, None)),
    };
    let hash = Some(sha256(&envelope));
    // The envelope lives as long as the boot: the verified image borrows it.
    let envelope: &'static [u8] = Box::leak(envelope.into_boxed_slice());
    let mut image = verify::Image::verify(envelope, minimum).map_err(|f| refusal(f, hash))?;

    let kernel = fs
        .read(cstr16!("\\MANTRA\\KERNEL.ELF"), super::KERNEL_PATH)
        .map_err(|f| refusal(f, hash))?
        .ok_or_else(|| Refusal { what: format!("kernel {} not found", super::KERNEL_PATH), envelope_hash: hash })?;
    image.check("MANTRA/KERNEL.ELF", ComponentKind::Kernel, Some(&kernel)).map_err(|f| refusal(f, hash))?;
    let bootfs = fs
        .read_to_pages(
            cstr16!("\\MANTRA\\BOOTFS.IMG"),
            super::BOOTFS_PATH,
            MemoryType::custom(memmap::BOOT_DATA_MEMORY_TYPE),
        )
        .map_err(|f| refusal(f, hash))?
        .ok_or_else(|| Refusal {
            what: format!("boot filesystem {} not found", super::BOOTFS_PATH),
            envelope_hash: hash,
        })?;
    if let Err(f) = image.check("MANTRA/BOOTFS.IMG", ComponentKind::Bootfs, Some(bootfs.bytes())) {
        bootfs.free();
        return Err(refusal(f, hash));
    }
    let cmdline = match fs.read(cstr16!("\\MANTRA\\CMDLINE.TXT"), super::CMDLINE_PATH) {
        Ok(c) => c,
        Err(f) => {
            bootfs.free();
            return Err(refusal(f, hash));
        }
    };
    if let Err(f) = image.check("MANTRA/CMDLINE.TXT", ComponentKind::Cmdline, cmdline.as_deref()) {
        bootfs.free();
        return Err(refusal(f, hash));
    }
    Ok(Ok(SlotImage { image, kernel, bootfs, cmdline }))
}

/// A variable's bytes and attributes; `None` when it does not exist or is
/// larger than `N`.
pub(super) fn read_var<const N: usize>(name: &CStr16, what: &str) -> Result<Option<(Vec<u8>, VariableAttributes)>, Fatal> {
    let mut buf = [0u8; N];
    match runtime::get_variable(name, &VENDOR, &mut buf) {
        Ok((data, attributes)) => Ok(Some((Vec::from(&*data), attributes))),
        Err(e) if e.status() == Status::NOT_FOUND => Ok(None),
        Err(e) if e.status() == Status::BUFFER_TOO_SMALL => {
            say!("MantraBoot: warning: variable {what} is too large: ignored as malformed");
            Ok(None)
        }
        Err(e) => Err(Fatal::new(format!("cannot read the UEFI variable {what}: {}", e.status()), VAR_HINT)),
    }
}

/// `MantraSlots`; `None` when missing or malformed.
pub(super) fn read_slots() -> Result<Option<Slots>, Fatal> {
    let Some((data, _)) = read_var::<{ slots::SLOTS_SIZE + 1 }>(SLOTS_VAR, "MantraSlots")? else { return Ok(None) };
    let decoded = Slots::decode(&data);
    if decoded.is_none() {
        say!("MantraBoot: warning: variable MantraSlots is malformed ({} bytes): ignored", data.len());
    }
    Ok(decoded)
}

/// `MantraRollback`; `None` when missing. A malformed one, or one the OS
/// could have written (attributes other than NV | BS), is not trusted
/// (the TPM copy, if any, still holds).
fn read_rollback() -> Result<Option<Rollback>, Fatal> {
    let Some((data, attributes)) = read_var::<{ slots::ROLLBACK_SIZE + 1 }>(ROLLBACK_VAR, "MantraRollback")? else {
        return Ok(None);
    };
    if attributes != nv_store() {
        say!("MantraBoot: warning: variable MantraRollback has attributes {:#x}, not NV|BS: ignored", attributes.bits());
        return Ok(None);
    }
    let decoded = Rollback::decode(&data);
    if decoded.is_none() {
        say!("MantraBoot: warning: variable MantraRollback is malformed: ignored");
    }
    Ok(decoded)
}

/// Writes a variable with exactly `attributes` (deleting one that has
/// others first: SetVariable refuses to change them).
pub(super) fn write_var(name: &CStr16, attributes: VariableAttributes, data: &[u8], what: &str) -> Result<(), Fatal> {
    let mut probe = [0u8; 1];
    let existing = match runtime::get_variable(name, &VENDOR, &mut probe) {
        Ok((_, a)) => Some(a),
        Err(e) if e.status() == Status::BUFFER_TOO_SMALL => {
            let mut buf = [0u8; 256];
            runtime::get_variable(name, &VENDOR, &mut buf).ok().map(|(_, a)| a)
        }
        Err(_) => None,
    };
    if existing.is_some_and(|a| a != attributes) {
        let _ = runtime::delete_variable(name, &VENDOR);
    }
    runtime::set_variable(name, &VENDOR, attributes, data)
        .map_err(|e| Fatal::new(format!("cannot write the UEFI variable {what}: {}", e.status()), VAR_HINT))
}

/// The TPM behind EFI_TCG2_PROTOCOL, for the NV index of the minimums.
struct Tpm {
    tcg: ScopedProtocol<Tcg>,
}

impl Tpm {
    fn open() -> Result<Option<Self>, Fatal> {
        let handle = match boot::get_handle_for_protocol::<Tcg>() {
            Ok(handle) => handle,
            Err(e) if e.status() == Status::NOT_FOUND => return Ok(None),
            Err(e) => return Err(failed(format!("cannot look for EFI_TCG2_PROTOCOL: {}", e.status()))),
        };
        let mut tcg: ScopedProtocol<Tcg> = boot::open_protocol_exclusive(handle)
            .map_err(|e| failed(format!("cannot open EFI_TCG2_PROTOCOL: {}", e.status())))?;
        let capability = tcg
            .get_capability()
            .map_err(|e| failed(format!("EFI_TCG2_PROTOCOL.GetCapability: {}", e.status())))?;
        Ok(capability.tpm_present().then_some(Self { tcg }))
    }

    fn submit(&mut self, command: &[u8], what: &str, response: &mut [u8; 256]) -> Result<(), Fatal> {
        self.tcg
            .submit_command(command, response)
            .map_err(|e| failed(format!("{what}: EFI_TCG2_PROTOCOL.SubmitCommand: {}", e.status())))
    }

    /// The minimums in the NV index: `Some(Some(_))` read, `Some(None)`
    /// defined now or never written (written at the end of this boot),
    /// `None` not usable (it could not be defined: the variable alone keeps
    /// the minimums, and the console says so).
    fn read_minimum(&mut self) -> Result<Option<Option<Rollback>>, Fatal> {
        let mut response = [0u8; 256];
        self.submit(tpm_nv::read_command().bytes(), "TPM2_NV_Read", &mut response)?;
        match tpm_nv::parse_read_response(&response) {
            Ok(data) => Ok(Some(Some(Rollback::from_nv(&data)))),
            Err(e) if e.is_uninitialized() => Ok(Some(None)),
            Err(e) if e.is_undefined() => {
                self.submit(tpm_nv::define_space_command().bytes(), "TPM2_NV_DefineSpace", &mut response)?;
                match tpm_nv::parse_response(&response) {
                    Ok(()) => {
                        say!("MantraBoot: TPM NV index {NV_INDEX:#010x} defined (rollback minimums)");
                        Ok(Some(None))
                    }
                    Err(e) => {
                        say!(
                            "MantraBoot: warning: cannot define TPM NV index {NV_INDEX:#010x} ({e}): rollback minimums kept in the UEFI variable only"
                        );
                        Ok(None)
                    }
                }
            }
            Err(e) => Err(nv_failed("TPM2_NV_Read", e)),
        }
    }

    fn write_minimum(&mut self, minimum: Rollback) -> Result<(), Fatal> {
        let mut response = [0u8; 256];
        self.submit(tpm_nv::write_command(&minimum.to_nv()).bytes(), "TPM2_NV_Write", &mut response)?;
        tpm_nv::parse_response(&response).map_err(|e| nv_failed("TPM2_NV_Write", e))
    }

    /// Locks the index until the next TPM reset: the OS cannot change it.
    fn lock(&mut self) -> Result<(), Fatal> {
        let mut response = [0u8; 256];
        self.submit(tpm_nv::write_lock_command().bytes(), "TPM2_NV_WriteLock", &mut response)?;
        tpm_nv::parse_response(&response).map_err(|e| nv_failed("TPM2_NV_WriteLock", e))?;
        say!("MantraBoot: TPM NV index {NV_INDEX:#010x} write-locked until the next TPM reset");
        Ok(())
    }
}

fn failed(what: String) -> Fatal {
    Fatal::new(format!("rollback protection failed: {what}"), TPM_HINT)
}

fn nv_failed(command: &str, e: NvError) -> Fatal {
    failed(format!("{command} of NV index {NV_INDEX:#010x}: {e}"))
}

