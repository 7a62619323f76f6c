"""Reference PCR values (mantra.signing.pcr): the SHA-256 extend chain of
PCR 8 (the manifest) and PCR 9 (the components MantraBoot loads)."""

from __future__ import annotations

import hashlib

import pytest
from mantra.signing import pcr
from mantra.signing.encoding import Component, ComponentKind, Manifest


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def test_extend_is_sha256_of_old_value_and_digest() -> None:
    digest = sha(b"abc")
    assert pcr.extend(bytes(32), digest) == sha(bytes(32) + digest)
    # A known value: extending zeros with SHA-256("abc"), as tpm2_pcrextend would.
    assert pcr.extend(bytes(32), digest).hex() == sha(bytes(32) + bytes.fromhex(
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")).hex()
    with pytest.raises(ValueError):
        pcr.extend(bytes(32), b"short")


def test_replay_chains_extends_per_pcr() -> None:
    a, b, c = sha(b"a"), sha(b"b"), sha(b"c")
    events = [pcr.Event(8, pcr.EV_IPL, a, "x"), pcr.Event(9, pcr.EV_IPL, b, "y"), pcr.Event(9, pcr.EV_IPL, c, "z")]
    assert pcr.replay(events) == {8: sha(bytes(32) + a), 9: sha(sha(bytes(32) + b) + c)}
    # Order matters: the same events in another order give another PCR 9.
    assert pcr.replay([events[0], events[2], events[1]])[9] != pcr.replay(events)[9]


def test_expected_pcrs_of_a_manifest() -> None:
    kernel, bootfs, cmdline = sha(b"kernel"), sha(b"bootfs"), sha(b"cmdline")
    body = Manifest(
        security_counter=1, signed_at=2, signing_key=b"\x01" * 16, config_sha256=b"\x02" * 32, board="b",
        product="p", version="v", source_revision="r", toolchain=(),
        components=(Component(ComponentKind.BOOTLOADER, "EFI/BOOT/BOOTX64.EFI", 1, sha(b"boot")),
                    Component(ComponentKind.KERNEL, "MANTRA/KERNEL.ELF", 6, kernel),
                    Component(ComponentKind.BOOTFS, "MANTRA/BOOTFS.IMG", 6, bootfs),
                    Component(ComponentKind.CMDLINE, "MANTRA/CMDLINE.TXT", 7, cmdline))).encode()
    events = pcr.events(body)
    # The manifest body into PCR 8, then every component but the bootloader
    # (the firmware measures that into PCR 4) into PCR 9, in manifest order.
    assert [(e.pcr, e.event_type, e.data) for e in events] == [
        (8, 0x0D, "manifest"), (9, 0x0D, "MANTRA/KERNEL.ELF"), (9, 0x0D, "MANTRA/BOOTFS.IMG"),
        (9, 0x0D, "MANTRA/CMDLINE.TXT")]
    assert pcr.expected_pcrs(body) == {
        8: sha(bytes(32) + sha(body)),
        9: sha(sha(sha(bytes(32) + kernel) + bootfs) + cmdline),
    }
