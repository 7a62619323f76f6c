//! MantraOS signed images: the strict parser and the verifier of the
//! envelope `MANTRA/MANIFEST.SIG` (key record, revocation list, manifest),
//! exactly as docs/signing.md lays them out, and the component check.
//!
//! `no_std`, no allocation: MantraBoot links it, and `cargo test` runs it on
//! the host against the fixed test vector `tests/data/signing-vector.sig`.
//!
//! The one entry point for a loader is [`verify_envelope`]: framing, then
//! each signature *before* the bytes it covers are decoded (key record and
//! revocation list by the root key, manifest by the certified key), then
//! revocation, validity, rollback and board. [`check_component`] then
//! checks each file's size and SHA-256 against the manifest, on the bytes
//! the loader read, before it uses them.
#![no_std]

mod decode;
mod hex;
mod reader;
mod verify;

pub use decode::{
    key_id, Component, ComponentKind, DecodeError, Envelope, KeyRecord, Manifest, Problem, RevocationList, Signed,
    Structure,
};
pub use hex::Hex;
pub use verify::{check_component, sha256, verify_envelope, Error, Policy, Verified};

/// Ed25519 signature size.
pub const SIGNATURE_SIZE: usize = 64;
/// Raw Ed25519 public key size.
pub const PUBLIC_KEY_SIZE: usize = 32;
/// A key id: the first 16 bytes of SHA-256 of the raw public key.
pub const KEY_ID_SIZE: usize = 16;
/// SHA-256 digest size.
pub const SHA256_SIZE: usize = 32;
/// Longest `str` field.
pub const MAX_STR: usize = 255;
/// Most components in a manifest.
pub const MAX_COMPONENTS: usize = 16;
/// Most toolchain entries in a manifest.
pub const MAX_TOOLCHAIN: usize = 16;
/// Most revoked keys in a revocation list.
pub const MAX_REVOKED: usize = 1024;
/// Largest envelope (MantraBoot refuses a bigger file before reading it).
pub const MAX_ENVELOPE: usize = 64 * 1024;
/// Where the envelope lives, relative to the root of the FAT file system
/// that holds the components.
pub const MANIFEST_PATH: &str = "MANTRA/MANIFEST.SIG";

/// A key id.
pub type KeyId = [u8; KEY_ID_SIZE];
