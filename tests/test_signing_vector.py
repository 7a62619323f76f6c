"""A fixed test vector of the envelope (docs/signing.md, "Test vector"):
made from fixed Ed25519 seeds (Ed25519 signatures are deterministic), it
pins the encoding byte for byte, and MantraBoot's Rust verifier can test
against the same file, tests/data/signing-vector.sig."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mantra.signing import pcr
from mantra.signing.encoding import (
    Component,
    ComponentKind,
    Envelope,
    KeyPurpose,
    KeyRecord,
    Manifest,
    RevocationList,
    Signed,
    key_id,
)
from mantra.signing.keys import raw_public
from mantra.signing.verify import VerifyFailure, check_envelope
from support import ROOT

VECTOR = ROOT / "tests" / "data" / "signing-vector.sig"
ROOT_PUBLIC = "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"
ENVELOPE_SHA256 = "2f61decb2fe5d4f627ecebbb39fe6a090011e43c669a2d8712dbf2046954765e"
PCR8 = "4bdb592c8391a266c37b1c5c0fb7a3b2eaa69704fce78201fbba1cba398db5f3"
PCR9 = "94e628041c8854b37412ea983dbc8b919223f31226f250c3df1192b197a9c868"


def make_vector() -> tuple[bytes, bytes]:
    """(root public key, envelope): root seed 32 x 0x01, signing key seed 32 x 0x02."""
    root = Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32)
    signer = Ed25519PrivateKey.from_private_bytes(bytes([2]) * 32)
    root_id = key_id(raw_public(root.public_key()))
    record = KeyRecord(KeyPurpose.IMAGE_SIGNING, raw_public(signer.public_key()), 1_700_000_000, 1_800_000_000,
                       root_id).encode()
    revocations = RevocationList(2, 1_750_000_000, root_id, (bytes([0xAA]) * 16,)).encode()
    manifest = Manifest(
        security_counter=5, signed_at=1_750_000_000, signing_key=key_id(raw_public(signer.public_key())),
        config_sha256=hashlib.sha256(b"CONFIG_X=y\n").digest(), board="qemu-x86_64", product="default",
        version="0.1.0", source_revision="0" * 40, toolchain=(("rustc", "rustc 1.96.0"),),
        components=(
            Component(ComponentKind.BOOTLOADER, "EFI/BOOT/BOOTX64.EFI", 4, hashlib.sha256(b"boot").digest()),
            Component(ComponentKind.KERNEL, "MANTRA/KERNEL.ELF", 6, hashlib.sha256(b"kernel").digest()),
            Component(ComponentKind.BOOTFS, "MANTRA/BOOTFS.IMG", 6, hashlib.sha256(b"bootfs").digest()),
        )).encode()
    envelope = Envelope(Signed(record, root.sign(record)), Signed(revocations, root.sign(revocations)),
                        Signed(manifest, signer.sign(manifest))).encode()
    return raw_public(root.public_key()), envelope


def test_vector_is_pinned() -> None:
    public, envelope = make_vector()
    assert public.hex() == ROOT_PUBLIC
    assert len(envelope) == 754 and hashlib.sha256(envelope).hexdigest() == ENVELOPE_SHA256
    assert VECTOR.read_bytes() == envelope
    body = Envelope.decode(envelope).manifest.body
    assert {n: v.hex() for n, v in pcr.expected_pcrs(body).items()} == {8: PCR8, 9: PCR9}


def test_vector_verifies_and_every_flipped_byte_is_refused() -> None:
    public, envelope = make_vector()
    verified = check_envelope(envelope, public, min_counter=5, min_revocations=2, board="qemu-x86_64",
                              now=1_750_000_000)
    assert verified.manifest.security_counter == 5 and verified.revocations.revoked == (bytes([0xAA]) * 16,)
    for at in range(len(envelope)):
        for bit in (0x01, 0x80):
            changed = envelope[:at] + bytes([envelope[at] ^ bit]) + envelope[at + 1:]
            with pytest.raises(VerifyFailure):
                check_envelope(changed, public)
