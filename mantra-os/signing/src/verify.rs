//! docs/signing.md "Verification", steps 2 to 9, for a loader: each
//! signature is checked before the bytes it covers are decoded, and the
//! first failure refuses the image with an [`Error`] that says which check
//! failed.

use core::fmt;

use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::decode::{peek_issuer, peek_signing_key};
use crate::{
    key_id, Component, ComponentKind, DecodeError, Envelope, Hex, KeyId, KeyRecord, Manifest, RevocationList,
    Signed, Structure, MANIFEST_PATH, PUBLIC_KEY_SIZE, SHA256_SIZE,
};

/// What the verifier compares against besides the root key: the stored
/// minimums (rollback protection) and the board the loader was built for.
/// `None` skips that check.
#[derive(Clone, Copy, Debug, Default)]
pub struct Policy<'p> {
    pub board: Option<&'p str>,
    pub min_security_counter: Option<u64>,
    pub min_revocations: Option<u64>,
}

/// Why an image is refused. Display says precisely which check failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error<'a> {
    /// The envelope's framing, or a body that verified yet does not decode.
    Malformed(DecodeError),
    /// The key record's root signature does not verify. `issuer` is the
    /// root the (untrusted) record claims, when it claims another one.
    KeyRecordSignature { root: KeyId, issuer: Option<KeyId> },
    KeyRecordIssuer { issuer: KeyId, root: KeyId },
    RevocationsSignature { root: KeyId, issuer: Option<KeyId> },
    RevocationsIssuer { issuer: KeyId, root: KeyId },
    RevocationsRollback { version: u64, minimum: u64 },
    KeyRevoked { key: KeyId, version: u64 },
    /// The manifest's signature does not verify with the certified key;
    /// `claimed` is the other key the (untrusted) manifest names, if any.
    ManifestSignature { key: KeyId, claimed: Option<KeyId> },
    ManifestSigningKey { named: KeyId, signer: KeyId },
    KeyExpired { key: KeyId, signed_at: u64, not_after: u64 },
    KeyNotYetValid { key: KeyId, signed_at: u64, not_before: u64 },
    Downgrade { counter: u64, minimum: u64 },
    Board { image: &'a str, expected: &'a str },
    /// A component the manifest lists is not there.
    ComponentMissing { path: &'a str },
    /// A file the loader would load is not in the manifest.
    ComponentUnlisted { path: &'a str, kind: ComponentKind },
    /// The manifest lists the file with another kind than the loader loads it as.
    ComponentKind { path: &'a str, listed: ComponentKind, expected: ComponentKind },
    ComponentSize { path: &'a str, expected: u64, got: u64 },
    ComponentHash { path: &'a str, expected: [u8; SHA256_SIZE], got: [u8; SHA256_SIZE] },
}

impl fmt::Display for Error<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::Malformed(e) if e.structure == Structure::Envelope => {
                write!(f, "signed manifest {MANIFEST_PATH} is malformed: {e}")
            }
            Error::Malformed(e) => write!(f, "{} is malformed: {e}", e.structure),
            Error::KeyRecordSignature { root, issuer: Some(issuer) } if issuer != root => write!(
                f,
                "key record: issued by root key {}, not by the trusted root key {} (signed with another key set)",
                Hex(&issuer),
                Hex(&root)
            ),
            Error::KeyRecordSignature { root, .. } => write!(
                f,
                "key record: root signature does not verify with root key {} (forged or altered key record: \
                 unknown signing key)",
                Hex(&root)
            ),
            Error::KeyRecordIssuer { issuer, root } => {
                write!(f, "key record: names issuer {}, but the root key is {}", Hex(&issuer), Hex(&root))
            }
            Error::RevocationsSignature { root, issuer } => {
                write!(f, "revocation list: root signature does not verify with root key {} (", Hex(&root))?;
                match issuer {
                    Some(issuer) if issuer != root => write!(f, "issued by root key {})", Hex(&issuer)),
                    _ => f.write_str("altered)"),
                }
            }
            Error::RevocationsIssuer { issuer, root } => {
                write!(f, "revocation list: names issuer {}, but the root key is {}", Hex(&issuer), Hex(&root))
            }
            Error::RevocationsRollback { version, minimum } => write!(
                f,
                "revocation list: version {version} is older than the minimum {minimum} (rollback of the \
                 revocation list refused)"
            ),
            Error::KeyRevoked { key, version } => {
                write!(f, "key record: key {} is revoked (revocation list version {version})", Hex(&key))
            }
            Error::ManifestSignature { key, claimed: Some(claimed) } if claimed != key => write!(
                f,
                "manifest: signed by key {}, which the key record does not certify (it certifies {}): unknown \
                 signing key",
                Hex(&claimed),
                Hex(&key)
            ),
            Error::ManifestSignature { key, .. } => write!(
                f,
                "manifest: signature by key {} does not verify (the manifest or its signature was changed after \
                 signing)",
                Hex(&key)
            ),
            Error::ManifestSigningKey { named, signer } => {
                write!(f, "manifest: names signing key {}, but key {} signed it", Hex(&named), Hex(&signer))
            }
            Error::KeyExpired { key, signed_at, not_after } => write!(
                f,
                "key record: key {} had expired when the image was signed (signed at {signed_at}, key valid until \
                 {not_after}, Unix seconds)",
                Hex(&key)
            ),
            Error::KeyNotYetValid { key, signed_at, not_before } => write!(
                f,
                "key record: key {} was not yet valid when the image was signed (signed at {signed_at}, key valid \
                 from {not_before}, Unix seconds)",
                Hex(&key)
            ),
            Error::Downgrade { counter, minimum } => {
                write!(f, "security counter {counter} is lower than the minimum {minimum} (downgrade refused)")
            }
            Error::Board { image, expected } => write!(f, "board: the image is for {image}, expected {expected}"),
            Error::ComponentMissing { path } => write!(f, "component {path}: missing"),
            Error::ComponentUnlisted { path, kind } => {
                write!(f, "{path} is not in the manifest (a {kind} that nothing verifies)")
            }
            Error::ComponentKind { path, listed, expected } => {
                write!(f, "component {path}: listed as a {listed}, but it is loaded as the {expected}")
            }
            Error::ComponentSize { path, expected, got } => {
                write!(f, "component {path}: size mismatch (expected {expected} bytes, got {got})")
            }
            Error::ComponentHash { path, expected, got } => {
                write!(f, "component {path}: sha256 mismatch (expected {}, got {})", Hex(&expected), Hex(&got))
            }
        }
    }
}

/// An envelope that passed every check of [`verify_envelope`].
#[derive(Clone, Copy, Debug)]
pub struct Verified<'a> {
    pub key: KeyRecord,
    pub revocations: RevocationList<'a>,
    pub manifest: Manifest<'a>,
    /// Exactly the signed manifest bytes (what PCR 8 measures).
    pub manifest_body: &'a [u8],
}

/// Ed25519 `verify_strict` (refuses small-order keys, non-canonical points
/// and non-canonical signatures); a key that is not a valid point never verifies.
fn signature_ok(public_key: &[u8; PUBLIC_KEY_SIZE], signed: &Signed<'_>) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(public_key) else { return false };
    key.verify_strict(signed.body, &Signature::from_bytes(&signed.signature)).is_ok()
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; SHA256_SIZE] {
    Sha256::digest(data).into()
}

/// Steps 2 to 8 of docs/signing.md on the envelope's bytes: framing; key
/// record (root signature, then decode, issuer); revocation list (root
/// signature, then decode, issuer, minimum version, key not revoked);
/// manifest (signature by the certified key, then decode, signing key id);
/// validity at signing time; security counter; board. The components are
/// checked afterwards with [`check_component`].
pub fn verify_envelope<'a>(
    raw: &'a [u8],
    root_public: &[u8; PUBLIC_KEY_SIZE],
    policy: &Policy<'a>,
) -> Result<Verified<'a>, Error<'a>> {
    let root = key_id(root_public);
    let envelope = Envelope::parse(raw).map_err(Error::Malformed)?;

    // The key record: certified by this root.
    if !signature_ok(root_public, &envelope.key_record) {
        return Err(Error::KeyRecordSignature { root, issuer: peek_issuer(envelope.key_record.body) });
    }
    let record = KeyRecord::parse(envelope.key_record.body).map_err(Error::Malformed)?;
    if record.issuer != root {
        return Err(Error::KeyRecordIssuer { issuer: record.issuer, root });
    }

    // The revocation list: signed by this root, not rolled back, key not on it.
    if !signature_ok(root_public, &envelope.revocations) {
        return Err(Error::RevocationsSignature { root, issuer: peek_issuer(envelope.revocations.body) });
    }
    let revocations = RevocationList::parse(envelope.revocations.body).map_err(Error::Malformed)?;
    if revocations.issuer != root {
        return Err(Error::RevocationsIssuer { issuer: revocations.issuer, root });
    }
    if let Some(minimum) = policy.min_revocations.filter(|&m| revocations.version < m) {
        return Err(Error::RevocationsRollback { version: revocations.version, minimum });
    }
    if revocations.is_revoked(&record.key_id) {
        return Err(Error::KeyRevoked { key: record.key_id, version: revocations.version });
    }

    // The manifest: signed by the certified key.
    if !signature_ok(&record.public_key, &envelope.manifest) {
        return Err(Error::ManifestSignature { key: record.key_id, claimed: peek_signing_key(envelope.manifest.body) });
    }
    let manifest = Manifest::parse(envelope.manifest.body).map_err(Error::Malformed)?;
    if manifest.signing_key != record.key_id {
        return Err(Error::ManifestSigningKey { named: manifest.signing_key, signer: record.key_id });
    }

    // Validity when it signed (a loader has no trusted clock).
    if manifest.signed_at > record.not_after {
        return Err(Error::KeyExpired { key: record.key_id, signed_at: manifest.signed_at, not_after: record.not_after });
    }
    if manifest.signed_at < record.not_before {
        return Err(Error::KeyNotYetValid {
            key: record.key_id,
            signed_at: manifest.signed_at,
            not_before: record.not_before,
        });
    }

    // Rollback and board.
    if let Some(minimum) = policy.min_security_counter.filter(|&m| manifest.security_counter < m) {
        return Err(Error::Downgrade { counter: manifest.security_counter, minimum });
    }
    if let Some(expected) = policy.board.filter(|&b| b != manifest.board) {
        return Err(Error::Board { image: manifest.board, expected });
    }
    Ok(Verified { key: record, revocations, manifest, manifest_body: envelope.manifest.body })
}

/// Step 9 for one file the loader read: `path` is where it read it, `kind`
/// what it loads it as, `bytes` exactly the file's bytes (`None`: the file
/// does not exist). A file that exists must be listed with that kind, with
/// the same size and SHA-256; a listed file must exist. Returns the listed
/// component, or None for an absent, unlisted file (e.g. no command line).
pub fn check_component<'a, 'm>(
    manifest: &'m Manifest<'a>,
    path: &'a str,
    kind: ComponentKind,
    bytes: Option<&[u8]>,
) -> Result<Option<&'m Component<'a>>, Error<'a>> {
    let listed = manifest.component(path);
    let (component, bytes) = match (listed, bytes) {
        (None, None) => return Ok(None),
        (None, Some(_)) => return Err(Error::ComponentUnlisted { path, kind }),
        (Some(c), None) => return Err(Error::ComponentMissing { path: c.path }),
        (Some(c), Some(bytes)) => (c, bytes),
    };
    if component.kind != kind {
        return Err(Error::ComponentKind { path: component.path, listed: component.kind, expected: kind });
    }
    let got = bytes.len() as u64;
    if got != component.size {
        return Err(Error::ComponentSize { path: component.path, expected: component.size, got });
    }
    let digest = sha256(bytes);
    if digest != component.sha256 {
        return Err(Error::ComponentHash { path: component.path, expected: component.sha256, got: digest });
    }
    Ok(Some(component))
}
