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
//! them. Without the protocol the boot goes on unmeasured and says so; a
//! TPM that is there but fails to measure stops the boot: a measured-boot
//! device must never boot unmeasured silently.

use alloc::format;
use alloc::string::String;
use mantra_boot::tpm::{self, PCR_COMPONENTS, PCR_MANIFEST};
use mantra_signing::{ComponentKind, Hex, Manifest};
use uefi::boot::{self, ScopedProtocol};
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
/// bootloader) must be among them.
pub fn measure(manifest_body: &[u8], manifest: &Manifest<'_>, loaded: &[Loaded<'_>]) -> Result<(), Fatal> {
    let handle = match boot::get_handle_for_protocol::<Tcg>() {
        Ok(handle) => handle,
        Err(e) if e.status() == Status::NOT_FOUND => {
            say!("MantraBoot: no TPM (EFI_TCG2_PROTOCOL absent): boot not measured");
            return Ok(());
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
        return Ok(());
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
    Ok(())
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
