//! One attestation: TPM2_CreatePrimary of the AK, TPM2_Quote over the
//! nonce, TPM2_FlushContext of the AK, a check that the quote is over this
//! nonce and this PCR selection, then the blob.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::protocol::{self, TAG_AK_PUBLIC, TAG_ATTEST, TAG_EVENT_LOG, TAG_SIGNATURE};
use crate::tpm2::{self, NONCE_LEN, QUOTE_PCRS, TPM_ALG_SHA256};

/// Something that runs a TPM command and returns its whole response.
pub trait Transport {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, String>;
    /// Waits a little before a command is retried.
    fn pause(&mut self) {}
}

/// Response codes after which the same command is sent again:
/// TPM_RC_RETRY, TPM_RC_YIELDED, TPM_RC_TESTING, and TPM_RC_CANCELED (swtpm
/// behind QEMU answers a quote now and then with RETRY or CANCELED).
const RETRY_CODES: [u32; 4] = [0x922, 0x908, 0x90A, 0x909];
/// Tries per command.
pub const TRIES: usize = 50;

/// Runs `command`, again while the TPM answers a retry code.
fn run(tpm: &mut impl Transport, command: &[u8]) -> Result<Vec<u8>, String> {
    let mut tries = 0;
    loop {
        let response = tpm.transmit(command)?;
        let rc = response.get(6..10).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        tries += 1;
        match rc {
            Some(rc) if RETRY_CODES.contains(&rc) && tries < TRIES => tpm.pause(),
            _ => return Ok(response),
        }
    }
}

/// Quotes PCRs 0–9 over `nonce` with the AK and returns the blob with
/// `event_log`.
pub fn attest(tpm: &mut impl Transport, nonce: &[u8; NONCE_LEN], event_log: &[u8]) -> Result<Vec<u8>, String> {
    let created = run(tpm, &tpm2::create_primary_command())
        .and_then(|r| tpm2::parse_create_primary(&r).map_err(|e| format!("{e}")))
        .map_err(|e| format!("TPM2_CreatePrimary of the attestation key: {e}"))?;
    let quoted = run(tpm, &tpm2::quote_command(created.handle, nonce))
        .and_then(|r| tpm2::parse_quote(&r).map_err(|e| format!("{e}")))
        .map_err(|e| format!("TPM2_Quote: {e}"));
    // The AK is transient: flush it whatever the quote did (the TPM has
    // only a few object slots).
    let flushed = run(tpm, &tpm2::flush_context_command(created.handle))
        .and_then(|r| tpm2::parse_flush_context(&r).map_err(|e| format!("{e}")))
        .map_err(|e| format!("TPM2_FlushContext of the attestation key: {e}"));
    let quote = quoted?;
    flushed?;
    let info = tpm2::parse_attest(&quote.attest).map_err(|e| format!("the quote's TPMS_ATTEST: {e}"))?;
    if info.extra_data != nonce {
        return Err("the TPM quoted another nonce than the one requested".into());
    }
    let mut selection = Vec::new();
    selection.extend_from_slice(&1u32.to_be_bytes());
    selection.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
    selection.push(QUOTE_PCRS.len() as u8);
    selection.extend_from_slice(&QUOTE_PCRS);
    if info.pcr_select != selection.as_slice() {
        return Err("the TPM quoted another PCR selection than SHA-256 PCRs 0-9".into());
    }
    protocol::encode_blob(&[
        (TAG_EVENT_LOG, event_log),
        (TAG_AK_PUBLIC, &created.public),
        (TAG_ATTEST, &quote.attest),
        (TAG_SIGNATURE, &quote.signature),
    ])
    .map_err(String::from)
}
