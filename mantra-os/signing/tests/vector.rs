//! The fixed test vector (tests/data/signing-vector.sig, made by
//! tests/test_signing_vector.py from fixed seeds) and its expected values
//! from docs/signing.md; every single-bit flip of it is refused.

use mantra_signing::{
    check_component, sha256, verify_envelope, ComponentKind, Error, Hex, Policy, Verified,
};

const VECTOR: &[u8] = include_bytes!("../../../tests/data/signing-vector.sig");
const ROOT_PUBLIC: &str = "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c";
const ENVELOPE_SHA256: &str = "2f61decb2fe5d4f627ecebbb39fe6a090011e43c669a2d8712dbf2046954765e";
const PCR8: &str = "4bdb592c8391a266c37b1c5c0fb7a3b2eaa69704fce78201fbba1cba398db5f3";
const PCR9: &str = "94e628041c8854b37412ea983dbc8b919223f31226f250c3df1192b197a9c868";

fn unhex<const N: usize>(text: &str) -> [u8; N] {
    assert_eq!(text.len(), 2 * N);
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    format!("{}", Hex(bytes))
}

fn root() -> [u8; 32] {
    unhex(ROOT_PUBLIC)
}

fn strict() -> Policy<'static> {
    Policy { board: Some("qemu-x86_64"), min_security_counter: Some(5), min_revocations: Some(2) }
}

fn extend(pcr: [u8; 32], digest: [u8; 32]) -> [u8; 32] {
    let mut both = [0u8; 64];
    both[..32].copy_from_slice(&pcr);
    both[32..].copy_from_slice(&digest);
    sha256(&both)
}

#[test]
fn vector_is_the_documented_one() {
    assert_eq!(VECTOR.len(), 754);
    assert_eq!(hex(&sha256(VECTOR)), ENVELOPE_SHA256);
}

#[test]
fn vector_verifies_with_the_documented_values() {
    let root = root();
    let Verified { key, revocations, manifest, manifest_body } = verify_envelope(VECTOR, &root, &strict()).unwrap();
    assert_eq!((key.not_before, key.not_after), (1_700_000_000, 1_800_000_000));
    assert_eq!(key.issuer, mantra_signing::key_id(&root));
    assert_eq!(revocations.version, 2);
    assert_eq!(revocations.revoked().collect::<Vec<_>>(), vec![&[0xAA; 16][..]]);
    assert_eq!(manifest.security_counter, 5);
    assert_eq!(manifest.signed_at, 1_750_000_000);
    assert_eq!((manifest.board, manifest.product, manifest.version), ("qemu-x86_64", "default", "0.1.0"));
    assert_eq!(manifest.source_revision, "0".repeat(40));
    assert_eq!(manifest.toolchain(), &[("rustc", "rustc 1.96.0")]);
    assert_eq!(manifest.config_sha256, sha256(b"CONFIG_X=y\n"));
    let paths: Vec<_> = manifest.components().iter().map(|c| (c.kind, c.path, c.size)).collect();
    assert_eq!(
        paths,
        vec![
            (ComponentKind::Bootloader, "EFI/BOOT/BOOTX64.EFI", 4),
            (ComponentKind::Kernel, "MANTRA/KERNEL.ELF", 6),
            (ComponentKind::Bootfs, "MANTRA/BOOTFS.IMG", 6),
        ]
    );
    // The components, as a loader checks them (paths compared as FAT does).
    let kernel = check_component(&manifest, "mantra/kernel.elf", ComponentKind::Kernel, Some(b"kernel")).unwrap();
    assert_eq!(kernel.unwrap().sha256, sha256(b"kernel"));
    check_component(&manifest, "MANTRA/BOOTFS.IMG", ComponentKind::Bootfs, Some(b"bootfs")).unwrap();
    assert_eq!(check_component(&manifest, "MANTRA/CMDLINE.TXT", ComponentKind::Cmdline, None), Ok(None));
    // The measurements the doc promises: PCR 8 = the manifest body, PCR 9 = kernel then bootfs.
    assert_eq!(hex(&extend([0; 32], sha256(manifest_body))), PCR8);
    assert_eq!(hex(&extend(extend([0; 32], sha256(b"kernel")), sha256(b"bootfs"))), PCR9);
}

#[test]
fn every_single_bit_flip_is_refused() {
    let root = root();
    let mut changed = VECTOR.to_vec();
    let mut refused = 0;
    for at in 0..VECTOR.len() {
        for bit in 0..8 {
            changed[at] ^= 1 << bit;
            // No policy: only the signatures and the encoding may refuse it.
            let result = verify_envelope(&changed, &root, &Policy::default());
            assert!(result.is_err(), "flipping bit {bit} of byte {at} was accepted");
            refused += 1;
            changed[at] ^= 1 << bit;
        }
    }
    assert_eq!(refused, 754 * 8);
}

#[test]
fn flips_fail_at_the_right_check() {
    let root = root();
    let flip = |at: usize| {
        let mut changed = VECTOR.to_vec();
        changed[at] ^= 1;
        match verify_envelope(&changed, &root, &Policy::default()) {
            Err(e) => (format!("{e:?}"), e.to_string()),
            Ok(_) => panic!("flip at {at} accepted"),
        }
    };
    // Envelope header and section framing: refused before any signature.
    assert!(flip(0).0.starts_with("Malformed(DecodeError { structure: Envelope"), "{:?}", flip(0));
    assert!(flip(12).1.starts_with("signed manifest MANTRA/MANIFEST.SIG is malformed: envelope: header says"));
    // Key record body (section 1 starts at 16 + 8) and its signature.
    let (debug, text) = flip(24 + 40);
    assert!(debug.starts_with("KeyRecordSignature"), "{debug}");
    assert!(text.contains("forged or altered key record"), "{text}");
    let root_id = hex(&mantra_signing::key_id(&root));
    assert!(flip(24 + 100).1.starts_with(&format!("key record: root signature does not verify with root key {root_id} ")));
    // Revocation list (section 2 starts at 16 + 168 + 8).
    assert!(flip(192 + 20).0.starts_with("RevocationsSignature"));
    // Manifest body and signature (section 3 starts at 16 + 168 + 136 + 8: one revoked key).
    assert!(flip(328 + 100).0.starts_with("ManifestSignature"));
    assert!(flip(VECTOR.len() - 1).1.contains("the manifest or its signature was changed after signing"));
    // The signing key id in the manifest: names a key the record does not certify.
    assert!(flip(328 + 32).1.contains("which the key record does not certify"));
}

#[test]
fn the_policy_refuses_downgrades_rollbacks_and_other_boards() {
    let root = root();
    let policy = |board, counter, revocations| Policy {
        board: Some(board),
        min_security_counter: Some(counter),
        min_revocations: Some(revocations),
    };
    assert_eq!(
        verify_envelope(VECTOR, &root, &policy("qemu-x86_64", 6, 2)).unwrap_err(),
        Error::Downgrade { counter: 5, minimum: 6 }
    );
    assert_eq!(
        verify_envelope(VECTOR, &root, &policy("qemu-x86_64", 5, 3)).unwrap_err().to_string(),
        "revocation list: version 2 is older than the minimum 3 (rollback of the revocation list refused)"
    );
    assert_eq!(
        verify_envelope(VECTOR, &root, &policy("pc-x86_64", 0, 0)).unwrap_err().to_string(),
        "board: the image is for qemu-x86_64, expected pc-x86_64"
    );
}

#[test]
fn components_are_checked_by_size_and_hash() {
    let root = root();
    let manifest = verify_envelope(VECTOR, &root, &strict()).unwrap().manifest;
    let kernel = "MANTRA/KERNEL.ELF";
    assert_eq!(
        check_component(&manifest, kernel, ComponentKind::Kernel, Some(b"kernel!")).unwrap_err(),
        Error::ComponentSize { path: kernel, expected: 6, got: 7 }
    );
    let err = check_component(&manifest, kernel, ComponentKind::Kernel, Some(b"kernek")).unwrap_err();
    assert!(matches!(err, Error::ComponentHash { .. }));
    assert!(err.to_string().starts_with("component MANTRA/KERNEL.ELF: sha256 mismatch (expected "), "{err}");
    assert_eq!(
        check_component(&manifest, kernel, ComponentKind::Kernel, None).unwrap_err().to_string(),
        "component MANTRA/KERNEL.ELF: missing"
    );
    assert_eq!(
        check_component(&manifest, "MANTRA/CMDLINE.TXT", ComponentKind::Cmdline, Some(b"x")).unwrap_err().to_string(),
        "MANTRA/CMDLINE.TXT is not in the manifest (a kernel command line that nothing verifies)"
    );
    assert!(matches!(
        check_component(&manifest, kernel, ComponentKind::Bootfs, Some(b"kernel")).unwrap_err(),
        Error::ComponentKind { listed: ComponentKind::Kernel, expected: ComponentKind::Bootfs, .. }
    ));
}
