"""The canonical encoding of the signed structures (mantra.signing.encoding,
docs/signing.md): round trips, the exact byte layouts the Rust verifier will
parse, and strictness: trailing bytes, short input, bad lengths, reserved
fields, unknown values and unsorted lists are refused."""

from __future__ import annotations

import hashlib
import struct

import pytest
from mantra.signing.encoding import (
    Component,
    ComponentKind,
    DecodeError,
    Envelope,
    KeyPurpose,
    KeyRecord,
    Manifest,
    RevocationList,
    Signed,
    key_id,
)

PUBLIC = bytes(range(32))
ROOT_ID = bytes(range(100, 116))


def record() -> KeyRecord:
    return KeyRecord(KeyPurpose.IMAGE_SIGNING, PUBLIC, 1_700_000_000, 1_800_000_000, ROOT_ID)


def revocations(*revoked: bytes) -> RevocationList:
    return RevocationList(3, 1_750_000_000, ROOT_ID, tuple(sorted(revoked)))


def manifest(**changes) -> Manifest:
    fields = dict(
        security_counter=7, signed_at=1_750_000_000, signing_key=key_id(PUBLIC), config_sha256=b"\xc0" * 32,
        board="qemu-x86_64", product="default", version="0.1.0", source_revision="0123abcd-dirty",
        toolchain=(("python", "3.11.2"), ("rustc", "rustc 1.96.0")),
        components=(
            Component(ComponentKind.BOOTLOADER, "EFI/BOOT/BOOTX64.EFI", 10, b"\x01" * 32),
            Component(ComponentKind.KERNEL, "MANTRA/KERNEL.ELF", 20, b"\x02" * 32),
            Component(ComponentKind.BOOTFS, "MANTRA/BOOTFS.IMG", 30, b"\x03" * 32),
        ),
    )
    fields.update(changes)
    return Manifest(**fields)


def envelope() -> Envelope:
    return Envelope(Signed(record().encode(), b"\x11" * 64), Signed(revocations().encode(), b"\x22" * 64),
                    Signed(manifest().encode(), b"\x33" * 64))


def test_key_id_is_the_sha256_prefix_of_the_public_key() -> None:
    assert key_id(PUBLIC) == hashlib.sha256(PUBLIC).digest()[:16]
    with pytest.raises(ValueError):
        key_id(b"short")


def test_key_record_layout_and_round_trip() -> None:
    body = record().encode()
    assert len(body) == 96
    assert body[:8] == b"MTRA-KEY" and struct.unpack_from("<HHI", body, 8) == (1, 1, 0)
    assert body[16:32] == key_id(PUBLIC) and body[32:64] == PUBLIC
    assert struct.unpack_from("<QQ", body, 64) == (1_700_000_000, 1_800_000_000) and body[80:96] == ROOT_ID
    assert KeyRecord.decode(body) == record()


def test_revocation_list_layout_and_round_trip() -> None:
    ids = (b"\x09" * 16, b"\x01" * 16)
    body = revocations(*ids).encode()
    assert len(body) == 48 + 32
    assert body[:8] == b"MTRA-REV" and struct.unpack_from("<HHIQQ", body, 8) == (1, 0, 2, 3, 1_750_000_000)
    assert body[32:48] == ROOT_ID and body[48:64] == b"\x01" * 16 and body[64:80] == b"\x09" * 16
    assert RevocationList.decode(body) == revocations(*ids)


def test_manifest_layout_and_round_trip() -> None:
    body = manifest().encode()
    assert body[:8] == b"MTRA-MAN" and struct.unpack_from("<HHIQQ", body, 8) == (1, 0, 0, 7, 1_750_000_000)
    assert body[32:48] == key_id(PUBLIC) and body[48:80] == b"\xc0" * 32
    assert body[80:82] == struct.pack("<H", 11) and body[82:93] == b"qemu-x86_64"
    # The last component: kind, reserved, size, sha256, path.
    tail = struct.pack("<BBQ", 3, 0, 30) + b"\x03" * 32 + struct.pack("<H", 17) + b"MANTRA/BOOTFS.IMG"
    assert body.endswith(tail)
    assert Manifest.decode(body) == manifest()
    assert Manifest.decode(body).encode() == body


def test_envelope_layout_and_round_trip() -> None:
    data = envelope().encode()
    assert data[:8] == b"MTRA-ENV" and struct.unpack_from("<HHI", data, 8) == (1, 3, len(data))
    assert struct.unpack_from("<HHI", data, 16) == (1, 0, 96 + 64)
    assert data[24:24 + 96] == record().encode() and data[120:184] == b"\x11" * 64
    decoded = Envelope.decode(data)
    assert decoded == envelope()
    assert (decoded.key(), decoded.revocation_list(), decoded.image_manifest()) == (
        record(), revocations(), manifest())


@pytest.mark.parametrize("decode, data", [
    (KeyRecord.decode, record().encode()),
    (RevocationList.decode, revocations(b"\x05" * 16).encode()),
    (Manifest.decode, manifest().encode()),
    (Envelope.decode, envelope().encode()),
], ids=["key record", "revocation list", "manifest", "envelope"])
def test_trailing_bytes_and_truncation_are_refused(decode, data: bytes) -> None:
    with pytest.raises(DecodeError, match="trailing bytes|says"):
        decode(data + b"\0")
    for cut in (1, len(data) // 2, len(data) - 1):
        with pytest.raises(DecodeError):
            decode(data[:cut])


@pytest.mark.parametrize("decode, data", [
    (KeyRecord.decode, record().encode()),
    (RevocationList.decode, revocations().encode()),
    (Manifest.decode, manifest().encode()),
    (Envelope.decode, envelope().encode()),
], ids=["key record", "revocation list", "manifest", "envelope"])
def test_bad_magic_and_version_are_refused(decode, data: bytes) -> None:
    with pytest.raises(DecodeError, match="bad magic"):
        decode(b"X" + data[1:])
    with pytest.raises(DecodeError, match="unsupported format version 2"):
        decode(data[:8] + b"\x02\x00" + data[10:])


def test_key_record_strictness() -> None:
    body = bytearray(record().encode())
    body[12] = 1
    with pytest.raises(DecodeError, match="reserved"):
        KeyRecord.decode(bytes(body))
    body = bytearray(record().encode())
    body[10] = 9
    with pytest.raises(DecodeError, match="unknown key purpose 9"):
        KeyRecord.decode(bytes(body))
    body = bytearray(record().encode())
    body[16] ^= 1
    with pytest.raises(DecodeError, match="key id is not the SHA-256 prefix"):
        KeyRecord.decode(bytes(body))
    inverted = KeyRecord(KeyPurpose.IMAGE_SIGNING, PUBLIC, 5, 4, ROOT_ID)
    body = bytearray(record().encode())
    body[64:80] = struct.pack("<QQ", 5, 4)
    with pytest.raises(DecodeError, match="validity ends"):
        KeyRecord.decode(bytes(body))
    with pytest.raises(ValueError):
        inverted.encode()


def test_revocation_list_must_be_sorted_and_counted() -> None:
    body = revocations(b"\x01" * 16, b"\x02" * 16).encode()
    swapped = body[:48] + body[64:80] + body[48:64]
    with pytest.raises(DecodeError, match="strictly ascending"):
        RevocationList.decode(swapped)
    duplicate = body[:48] + body[48:64] * 2
    with pytest.raises(DecodeError, match="strictly ascending"):
        RevocationList.decode(duplicate)
    more = body[:12] + struct.pack("<I", 3) + body[16:]
    with pytest.raises(DecodeError, match="truncated"):
        RevocationList.decode(more)
    with pytest.raises(DecodeError, match="at most 1024"):
        RevocationList.decode(body[:12] + struct.pack("<I", 5000) + body[16:])


def test_manifest_strings_are_bounded_printable_ascii() -> None:
    with pytest.raises(ValueError, match="printable ASCII"):
        manifest(board="qemu\x1b[31m").encode()
    with pytest.raises(ValueError, match="printable ASCII"):
        manifest(product="caf\u00e9").encode()
    with pytest.raises(ValueError, match="at most 255"):
        manifest(version="1" * 256).encode()
    body = bytearray(manifest().encode())
    body[82] = 0x07  # a control character inside "qemu-x86_64"
    with pytest.raises(DecodeError, match="board is not printable ASCII"):
        Manifest.decode(bytes(body))
    body = bytearray(manifest().encode())
    body[80:82] = struct.pack("<H", 300)  # longer than allowed
    with pytest.raises(DecodeError, match="board is 300 bytes long"):
        Manifest.decode(bytes(body))
    body[80:82] = struct.pack("<H", 60000)
    with pytest.raises(DecodeError):
        Manifest.decode(bytes(body))


def test_manifest_components_are_checked() -> None:
    kernel = Component(ComponentKind.KERNEL, "MANTRA/KERNEL.ELF", 1, b"\0" * 32)
    bootfs = Component(ComponentKind.BOOTFS, "MANTRA/BOOTFS.IMG", 1, b"\0" * 32)
    with pytest.raises(ValueError, match="exactly one kernel"):
        manifest(components=(bootfs,)).encode()
    # The ESP's manifest: only the bootloader.
    loader = Component(ComponentKind.BOOTLOADER, "EFI/BOOT/BOOTX64.EFI", 1, b"\0" * 32)
    esp_only = manifest(components=(loader,))
    assert Manifest.decode(esp_only.encode()) == esp_only
    with pytest.raises(ValueError, match="exactly one kernel"):
        manifest(components=(loader, Component(ComponentKind.CMDLINE, "MANTRA/CMDLINE.TXT", 1, b"\0" * 32))).encode()
    with pytest.raises(ValueError, match="path is listed twice"):
        manifest(components=(kernel, bootfs, Component(ComponentKind.CMDLINE, "mantra/kernel.elf", 1,
                                                       b"\0" * 32))).encode()
    for bad in ("/MANTRA/KERNEL.ELF", "MANTRA//KERNEL.ELF", "MANTRA/../X", "MANTRA\\KERNEL.ELF", ""):
        with pytest.raises(ValueError):
            manifest(components=(Component(ComponentKind.KERNEL, bad, 1, b"\0" * 32), bootfs)).encode()
    body = bytearray(manifest().encode())
    first = body.index(b"EFI/BOOT") - 2 - 42  # the first component's kind byte
    assert body[first] == ComponentKind.BOOTLOADER
    body[first] = 9
    with pytest.raises(DecodeError, match="component 0: unknown kind 9"):
        Manifest.decode(bytes(body))
    body[first] = int(ComponentKind.KERNEL)  # now two kernels
    with pytest.raises(DecodeError, match="exactly one kernel"):
        Manifest.decode(bytes(body))
    body[first] = int(ComponentKind.BOOTLOADER)
    body[first + 1] = 1
    with pytest.raises(DecodeError, match="reserved"):
        Manifest.decode(bytes(body))


def test_component_count_is_bounded() -> None:
    body = manifest().encode()
    at = body.index(b"EFI/BOOT") - 2 - 42 - 2  # the component count
    assert struct.unpack_from("<H", body, at) == (3,)
    with pytest.raises(DecodeError, match="0 components"):
        Manifest.decode(body[:at] + struct.pack("<H", 0) + body[at + 2:])
    with pytest.raises(DecodeError, match="17 components"):
        Manifest.decode(body[:at] + struct.pack("<H", 17) + body[at + 2:])


def test_envelope_framing_is_strict() -> None:
    data = envelope().encode()
    with pytest.raises(DecodeError, match="4 sections"):
        Envelope.decode(data[:10] + struct.pack("<H", 4) + data[12:])
    with pytest.raises(DecodeError, match="header says"):
        Envelope.decode(data[:12] + struct.pack("<I", len(data) + 1) + data[16:])
    # Sections out of order: the revocation list first.
    with pytest.raises(DecodeError, match="tag 2, expected 1"):
        Envelope.decode(data[:16] + struct.pack("<H", 2) + data[18:])
    with pytest.raises(DecodeError, match="reserved"):
        Envelope.decode(data[:18] + b"\x01\x00" + data[20:])
    # A section length that runs past the end, and one too short for a signature.
    with pytest.raises(DecodeError, match="truncated"):
        Envelope.decode(data[:20] + struct.pack("<I", 100_000) + data[24:])
    with pytest.raises(DecodeError, match="too short"):
        Envelope.decode(data[:20] + struct.pack("<I", 64) + data[24:])
    with pytest.raises(DecodeError, match="at most 65536"):
        Envelope.decode(data + bytes(65536))


def test_encoding_is_canonical() -> None:
    """Every accepted byte string re-encodes to itself, so one manifest has
    exactly one encoding (and one hash, and one PCR value)."""
    for structure in (record(), revocations(b"\x07" * 16), manifest(), envelope()):
        data = structure.encode()
        assert type(structure).decode(data).encode() == data
