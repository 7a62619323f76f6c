//! Each failure kind of the verifier, on envelopes built here with fixed
//! keys: the right `Error` (and `Problem` for malformed bodies), in
//! docs/signing.md's check order.

use ed25519_dalek::{Signer, SigningKey};
use mantra_signing::{key_id, verify_envelope, Error, Policy, Problem, Structure};

const ROOT_SEED: [u8; 32] = [1; 32];
const SIGNER_SEED: [u8; 32] = [2; 32];
const OTHER_SEED: [u8; 32] = [3; 32];

fn public(seed: &[u8; 32]) -> [u8; 32] {
    SigningKey::from_bytes(seed).verifying_key().to_bytes()
}

fn sign(seed: &[u8; 32], body: &[u8]) -> Vec<u8> {
    let mut out = body.to_vec();
    out.extend_from_slice(&SigningKey::from_bytes(seed).sign(body).to_bytes());
    out
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Everything an envelope says, each field changeable by a test.
#[derive(Clone)]
struct Image {
    root: [u8; 32],
    // key record
    signer: [u8; 32],
    record_root: [u8; 32],
    issuer: [u8; 16],
    key_reserved: u32,
    not_before: u64,
    not_after: u64,
    // revocation list
    revocations_root: [u8; 32],
    revocations_issuer: [u8; 16],
    revocations_version: u64,
    revoked: Vec<[u8; 16]>,
    // manifest
    manifest_signer: [u8; 32],
    named_signer: Option<[u8; 16]>,
    counter: u64,
    signed_at: u64,
    board: String,
    components: Vec<(u8, String)>,
}

impl Image {
    fn good() -> Self {
        let root_id = key_id(&public(&ROOT_SEED));
        Self {
            root: ROOT_SEED,
            signer: SIGNER_SEED,
            record_root: ROOT_SEED,
            issuer: root_id,
            key_reserved: 0,
            not_before: 100,
            not_after: 200,
            revocations_root: ROOT_SEED,
            revocations_issuer: root_id,
            revocations_version: 1,
            revoked: vec![],
            manifest_signer: SIGNER_SEED,
            named_signer: None,
            counter: 3,
            signed_at: 150,
            board: "qemu-x86_64".into(),
            components: vec![(2, "MANTRA/KERNEL.ELF".into()), (3, "MANTRA/BOOTFS.IMG".into())],
        }
    }

    fn envelope(&self) -> Vec<u8> {
        let signer_public = public(&self.signer);
        let mut record = b"MTRA-KEY".to_vec();
        record.extend_from_slice(&1u16.to_le_bytes());
        record.extend_from_slice(&1u16.to_le_bytes());
        record.extend_from_slice(&self.key_reserved.to_le_bytes());
        record.extend_from_slice(&key_id(&signer_public));
        record.extend_from_slice(&signer_public);
        record.extend_from_slice(&self.not_before.to_le_bytes());
        record.extend_from_slice(&self.not_after.to_le_bytes());
        record.extend_from_slice(&self.issuer);

        let mut revocations = b"MTRA-REV".to_vec();
        revocations.extend_from_slice(&1u16.to_le_bytes());
        revocations.extend_from_slice(&0u16.to_le_bytes());
        revocations.extend_from_slice(&(self.revoked.len() as u32).to_le_bytes());
        revocations.extend_from_slice(&self.revocations_version.to_le_bytes());
        revocations.extend_from_slice(&123u64.to_le_bytes());
        revocations.extend_from_slice(&self.revocations_issuer);
        for id in &self.revoked {
            revocations.extend_from_slice(id);
        }

        let mut manifest = b"MTRA-MAN".to_vec();
        manifest.extend_from_slice(&1u16.to_le_bytes());
        manifest.extend_from_slice(&[0; 6]);
        manifest.extend_from_slice(&self.counter.to_le_bytes());
        manifest.extend_from_slice(&self.signed_at.to_le_bytes());
        manifest.extend_from_slice(&self.named_signer.unwrap_or(key_id(&public(&self.manifest_signer))));
        manifest.extend_from_slice(&[0x5a; 32]);
        for s in [self.board.as_str(), "default", "0.1.0", "unknown"] {
            string(&mut manifest, s);
        }
        manifest.extend_from_slice(&1u16.to_le_bytes());
        string(&mut manifest, "rustc");
        string(&mut manifest, "rustc 1.96.0");
        manifest.extend_from_slice(&(self.components.len() as u16).to_le_bytes());
        for (kind, path) in &self.components {
            manifest.extend_from_slice(&[*kind, 0]);
            manifest.extend_from_slice(&6u64.to_le_bytes());
            manifest.extend_from_slice(&[0x11; 32]);
            string(&mut manifest, path);
        }

        let sections = [
            sign(&self.record_root, &record),
            sign(&self.revocations_root, &revocations),
            sign(&self.manifest_signer, &manifest),
        ];
        let total = 16 + sections.iter().map(|s| 8 + s.len()).sum::<usize>();
        let mut out = b"MTRA-ENV".to_vec();
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&3u16.to_le_bytes());
        out.extend_from_slice(&(total as u32).to_le_bytes());
        for (tag, value) in sections.iter().enumerate() {
            out.extend_from_slice(&(tag as u16 + 1).to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
        out
    }

    /// The verifier's answer, as (Debug of the error, its message).
    fn refusal_with(&self, envelope: &[u8], policy: &Policy<'_>) -> (String, String) {
        match verify_envelope(envelope, &public(&self.root), policy) {
            Ok(_) => panic!("accepted"),
            Err(e) => (format!("{e:?}"), e.to_string()),
        }
    }

    fn refusal(&self) -> (String, String) {
        self.refusal_with(&self.envelope(), &Policy::default())
    }

    fn malformed(&self) -> (Structure, Problem) {
        match verify_envelope(&self.envelope(), &public(&self.root), &Policy::default()) {
            Err(Error::Malformed(e)) => (e.structure, e.problem),
            Err(other) => panic!("refused, but not as malformed: {other}"),
            Ok(_) => panic!("accepted"),
        }
    }
}

fn change(f: impl FnOnce(&mut Image)) -> Image {
    let mut image = Image::good();
    f(&mut image);
    image
}

#[test]
fn the_good_image_verifies() {
    let image = Image::good();
    let envelope = image.envelope();
    let policy = Policy { board: Some("qemu-x86_64"), min_security_counter: Some(3), min_revocations: Some(1) };
    let verified = verify_envelope(&envelope, &public(&ROOT_SEED), &policy).unwrap();
    assert_eq!(verified.key.key_id, key_id(&public(&SIGNER_SEED)));
    assert_eq!(verified.manifest.components().len(), 2);
}

#[test]
fn another_root_is_named() {
    let other = key_id(&public(&OTHER_SEED));
    let (debug, text) = change(|i| {
        i.record_root = OTHER_SEED;
        i.issuer = other;
    })
    .refusal();
    assert!(debug.starts_with("KeyRecordSignature"), "{debug}");
    assert!(text.contains(&format!("issued by root key {}", mantra_signing::Hex(&other))), "{text}");
    assert!(text.contains("signed with another key set"), "{text}");
}

#[test]
fn key_record_checks() {
    // Signed by the root, but naming another issuer.
    let (debug, _) = change(|i| i.issuer = [9; 16]).refusal();
    assert!(debug.starts_with("KeyRecordIssuer"), "{debug}");
    // Signed by the root, yet malformed: decoded only after its signature verified.
    assert_eq!(
        change(|i| i.key_reserved = 7).malformed(),
        (Structure::KeyRecord, Problem::Reserved { field: "at byte 12", value: 7 })
    );
    assert!(matches!(change(|i| i.not_before = 300).malformed(), (Structure::KeyRecord, Problem::ValidityReversed { .. })));
    // Validity at signing time.
    let (debug, text) = change(|i| i.signed_at = 201).refusal();
    assert!(debug.starts_with("KeyExpired"), "{debug}");
    assert!(text.contains("had expired when the image was signed"), "{text}");
    assert!(change(|i| i.signed_at = 99).refusal().0.starts_with("KeyNotYetValid"));
    // Both ends are inclusive.
    for at in [100, 200] {
        let image = change(|i| i.signed_at = at);
        verify_envelope(&image.envelope(), &public(&ROOT_SEED), &Policy::default()).unwrap();
    }
}

#[test]
fn revocation_list_checks() {
    let (debug, text) = change(|i| i.revocations_root = OTHER_SEED).refusal();
    assert!(debug.starts_with("RevocationsSignature"), "{debug}");
    assert!(text.starts_with("revocation list: root signature does not verify"), "{text}");
    assert!(change(|i| i.revocations_issuer = [9; 16]).refusal().0.starts_with("RevocationsIssuer"));
    let signer = key_id(&public(&SIGNER_SEED));
    let (debug, text) = change(|i| {
        i.revoked = vec![[0; 16], signer, [0xff; 16]];
        i.revocations_version = 4;
    })
    .refusal();
    assert!(debug.starts_with("KeyRevoked"), "{debug}");
    assert!(text.ends_with("is revoked (revocation list version 4)"), "{text}");
    // Other keys revoked: fine.
    let image = change(|i| i.revoked = vec![[0; 16], [0xff; 16]]);
    verify_envelope(&image.envelope(), &public(&ROOT_SEED), &Policy::default()).unwrap();
    // Unsorted or duplicate ids.
    for revoked in [vec![[2; 16], [1; 16]], vec![[1; 16], [1; 16]]] {
        let image = change(|i| i.revoked = revoked.clone());
        assert_eq!(image.malformed(), (Structure::RevocationList, Problem::RevokedUnsorted));
    }
    let image = Image::good();
    let policy = Policy { min_revocations: Some(2), ..Policy::default() };
    assert!(image.refusal_with(&image.envelope(), &policy).0.starts_with("RevocationsRollback"));
}

#[test]
fn manifest_checks() {
    // Signed by a key the record does not certify, naming it: unknown signing key.
    let (debug, text) = change(|i| i.manifest_signer = OTHER_SEED).refusal();
    assert!(debug.starts_with("ManifestSignature"), "{debug}");
    assert!(text.contains("which the key record does not certify"), "{text}");
    // Signed by another key, naming the certified one: the signature fails.
    let signer = key_id(&public(&SIGNER_SEED));
    let (_, text) = change(|i| {
        i.manifest_signer = OTHER_SEED;
        i.named_signer = Some(signer);
    })
    .refusal();
    assert!(text.contains("does not verify (the manifest or its signature was changed after signing)"), "{text}");
    // Signed by the certified key, naming another.
    let (debug, _) = change(|i| i.named_signer = Some([7; 16])).refusal();
    assert!(debug.starts_with("ManifestSigningKey"), "{debug}");
    let image = Image::good();
    let policy = Policy { min_security_counter: Some(4), ..Policy::default() };
    assert_eq!(
        image.refusal_with(&image.envelope(), &policy).1,
        "security counter 3 is lower than the minimum 4 (downgrade refused)"
    );
    let image = change(|i| i.board = "pc-x86_64".into());
    let policy = Policy { board: Some("qemu-x86_64"), ..Policy::default() };
    assert!(image.refusal_with(&image.envelope(), &policy).0.starts_with("Board"));
}

#[test]
fn malformed_manifests() {
    let manifest = |components: Vec<(u8, &str)>| {
        change(|i| i.components = components.into_iter().map(|(k, p)| (k, p.to_string())).collect()).malformed()
    };
    let k = "MANTRA/KERNEL.ELF";
    let b = "MANTRA/BOOTFS.IMG";
    assert_eq!(manifest(vec![]), (Structure::Manifest, Problem::ComponentCount(0)));
    assert_eq!(manifest(vec![(2, k)]), (Structure::Manifest, Problem::KernelAndBootfs));
    assert_eq!(manifest(vec![(2, k), (2, "A"), (3, b)]), (Structure::Manifest, Problem::KernelAndBootfs));
    // Only a bootloader is the ESP's manifest (well-formed); a bootloader
    // with anything but a kernel and a boot filesystem is not.
    let boot = "EFI/BOOT/BOOTX64.EFI";
    assert_eq!(manifest(vec![(1, boot), (4, "A")]), (Structure::Manifest, Problem::KernelAndBootfs));
    assert_eq!(manifest(vec![(1, boot), (2, k)]), (Structure::Manifest, Problem::KernelAndBootfs));
    assert_eq!(manifest(vec![(2, k), (3, b), (4, "mantra/kernel.elf")]), (Structure::Manifest, Problem::PathTwice));
    assert_eq!(manifest(vec![(2, k), (3, b), (4, "A"), (4, "B")]), (Structure::Manifest, Problem::KindTwice));
    assert!(matches!(manifest(vec![(2, k), (3, b), (9, "X")]), (_, Problem::UnknownKind { index: 2, kind: 9 })));
    for path in ["", "/MANTRA/X", "MANTRA//X", "MANTRA/../X", "./X", "MANTRA\\X", "X/"] {
        assert!(matches!(manifest(vec![(2, k), (3, b), (4, path)]), (_, Problem::BadPath { index: 2 })), "{path}");
    }
    assert!(matches!(manifest(vec![(2, k), (3, b), (4, "X\u{7f}")]), (_, Problem::StrNotAscii { .. })));
    assert!(matches!(change(|i| i.board = "q".repeat(256)).malformed(), (_, Problem::StrTooLong { length: 256, .. })));
}

#[test]
fn malformed_envelopes() {
    let root = public(&ROOT_SEED);
    let good = Image::good().envelope();
    let envelope_problem = |data: &[u8]| match verify_envelope(data, &root, &Policy::default()) {
        Err(Error::Malformed(e)) if e.structure == Structure::Envelope => e.problem,
        other => panic!("{other:?}"),
    };
    // Trailing bytes (the header's length fixed up), and a short file.
    let mut longer = good.clone();
    longer.push(0);
    let total = longer.len() as u32;
    longer[12..16].copy_from_slice(&total.to_le_bytes());
    assert_eq!(envelope_problem(&longer), Problem::Trailing(1));
    assert!(matches!(envelope_problem(&good[..good.len() - 1]), Problem::TotalLength { .. }));
    assert!(matches!(envelope_problem(&good[..10]), Problem::Truncated { .. }));
    assert!(matches!(envelope_problem(&[]), Problem::Truncated { .. }));
    // Too large, whatever its content.
    assert_eq!(envelope_problem(&vec![0; 64 * 1024 + 1]), Problem::TooLarge(64 * 1024 + 1));
    let mut changed = good.clone();
    changed[10] = 2;
    assert_eq!(envelope_problem(&changed), Problem::SectionCount(2));
    let mut changed = good.clone();
    changed[8] = 2;
    assert_eq!(envelope_problem(&changed), Problem::Version(2));
    let mut changed = good.clone();
    changed[16] = 2;
    assert_eq!(envelope_problem(&changed), Problem::SectionTag { index: 0, got: 2, expected: 1 });
    let mut changed = good.clone();
    changed[18] = 1;
    assert!(matches!(envelope_problem(&changed), Problem::Reserved { value: 1, .. }));
    let mut changed = good.clone();
    changed[20..24].copy_from_slice(&64u32.to_le_bytes());
    assert_eq!(envelope_problem(&changed), Problem::SectionTooShort { tag: 1, length: 64 });
    let message = verify_envelope(&changed, &root, &Policy::default()).unwrap_err().to_string();
    assert_eq!(
        message,
        "signed manifest MANTRA/MANIFEST.SIG is malformed: envelope: section 1 is 64 bytes, too short for a body \
         and a signature (at byte 16)"
    );
}
