//! Verified boot (docs/signing.md, "Verification"): MANTRA/MANIFEST.SIG is
//! checked against the root public key built into MantraBoot, then every
//! file MantraBoot loads is checked (size and SHA-256 against the manifest)
//! on the bytes it read, before any of them is parsed or used.

use alloc::format;
use mantra_signing::{check_component, verify_envelope, ComponentKind, Error, Hex, Policy, Verified};

use mantra_boot::slots::Rollback;

use super::fail::Fatal;
use super::platform::rdtsc;

/// The root public key of the product's key set (raw Ed25519), embedded at
/// build time from `$MANTRA_CONFIG_DIR/root_key.bin` (see build.rs).
pub const ROOT_KEY: [u8; 32] = *include_bytes!(concat!(env!("OUT_DIR"), "/root_key.bin"));

/// The envelope's path in manifest form and in messages.
pub const MANIFEST_PATH: &str = mantra_signing::MANIFEST_PATH;
/// Hint for any signature check that fails.
pub const HINT: &str = "rebuild and re-sign the image (./mantra build) or flash a good one";

/// A refusal: `image signature check failed: <which check>`.
pub fn refused(what: impl core::fmt::Display) -> Fatal {
    Fatal::new(format!("image signature check failed: {what}"), HINT)
}

fn refusal(error: Error<'_>) -> Fatal {
    refused(error)
}

/// A verified envelope and the components checked against it so far.
pub struct Image<'a> {
    pub verified: Verified<'a>,
    /// The envelope's bytes (MANTRA/MANIFEST.SIG).
    pub envelope: &'a [u8],
    /// Components checked (files MantraBoot loads that the manifest lists).
    pub components: usize,
    /// Guest time (TSC) spent on the envelope's checks and on hashing.
    pub envelope_tsc: u64,
    pub hash_tsc: u64,
}

impl<'a> Image<'a> {
    /// Steps 2 to 8: framing, key record and revocation list (root key),
    /// manifest (certified key), validity, board, and the stored rollback
    /// minimums (security counter, revocation list version).
    pub fn verify(envelope: &'a [u8], minimum: Rollback) -> Result<Self, Fatal> {
        let start = rdtsc();
        let policy = Policy {
            board: Some(mantra_config::BOARD),
            min_security_counter: Some(minimum.security_counter),
            min_revocations: Some(minimum.revocations),
        };
        let verified = verify_envelope(envelope, &ROOT_KEY, &policy).map_err(refusal)?;
        Ok(Self { verified, envelope, components: 0, envelope_tsc: rdtsc().wrapping_sub(start), hash_tsc: 0 })
    }

    /// Step 9 for one file MantraBoot loads: `path` as the manifest names
    /// it, `bytes` exactly the file's bytes, `None` if it does not exist.
    /// Refuses an unlisted file, a listed one that is missing, and any size
    /// or SHA-256 difference.
    pub fn check(&mut self, path: &'static str, kind: ComponentKind, bytes: Option<&[u8]>) -> Result<(), Fatal> {
        let start = rdtsc();
        let listed = check_component(&self.verified.manifest, path, kind, bytes).map_err(refusal)?;
        self.hash_tsc += rdtsc().wrapping_sub(start);
        self.components += usize::from(listed.is_some());
        Ok(())
    }

    /// `MantraBoot: slot a: verified (...)`: one slot's checks and their cost.
    pub fn report_slot(&self, slot: char) {
        say!(
            "MantraBoot: slot {slot}: verified (key {:.8}, security counter {}, revocation list {}, {} components) in {} tsc: envelope {}, hashes {}",
            Hex(&self.verified.key.key_id),
            self.verified.manifest.security_counter,
            self.verified.revocations.version,
            self.components,
            self.envelope_tsc + self.hash_tsc,
            self.envelope_tsc,
            self.hash_tsc
        );
    }

    /// `MantraBoot: image verified (...)`: the slot that boots.
    pub fn report(&self) {
        say!(
            "MantraBoot: image verified (key {:.8}, security counter {}, {} components) in {} tsc: envelope {}, hashes {}",
            Hex(&self.verified.key.key_id),
            self.verified.manifest.security_counter,
            self.components,
            self.envelope_tsc + self.hash_tsc,
            self.envelope_tsc,
            self.hash_tsc
        );
    }
}
