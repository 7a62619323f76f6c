"""The TPM PCR values a signed image produces, for attestation: MantraBoot
measures through EFI_TCG2_PROTOCOL.HashLogExtendEvent (SHA-256 bank), in
this order, after the image verified:

- PCR 0-7, the firmware (TCG PC Client profile): 0 firmware code, 1 its
  configuration, 2 option ROMs, 3 their configuration, 4 boot manager code
  (MantraBoot's PE image, Authenticode hash), 5 GPT and boot variables,
  7 Secure Boot policy;
- PCR 8, MantraBoot: one event, the signed manifest: digest SHA-256 of the
  manifest body (exactly the bytes its signature covers), event type EV_IPL
  (0x0000000D), event data `manifest`;
- PCR 9, MantraBoot: one event per component it loads (every kind but the
  bootloader), in manifest order: digest SHA-256 of the file (the manifest's
  `sha256`), EV_IPL, event data the component's path.

HashLogExtendEvent hashes the buffer it is given (the manifest body, each
file as loaded) and extends: PCR := SHA-256(PCR || digest), from 32 zero
bytes at reset. Nothing else extends PCR 8 or 9 (OVMF does not use them),
so the values below are the whole of those two PCRs after MantraBoot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from mantra.signing.encoding import ComponentKind, Manifest

PCR_MANIFEST = 8
PCR_COMPONENTS = 9
EV_IPL = 0x0000000D
DIGEST_SIZE = 32
RESET_VALUE = bytes(DIGEST_SIZE)
# What each PCR holds, for `mantra attest` to print next to a mismatch.
PCR_TABLE: dict[int, str] = {
    0: "firmware code (UEFI)",
    1: "firmware configuration",
    2: "option ROMs",
    3: "option ROM configuration",
    4: "boot manager code: MantraBoot's PE image (Authenticode hash)",
    5: "GPT and boot variables",
    7: "Secure Boot policy",
    PCR_MANIFEST: "MantraBoot: the signed manifest (SHA-256 of the manifest body)",
    PCR_COMPONENTS: "MantraBoot: each component it loads, in manifest order (SHA-256 of the file)",
}


@dataclass(frozen=True)
class Event:
    """One measurement as MantraBoot logs it."""

    pcr: int
    event_type: int
    digest: bytes
    data: str  # the event data: "manifest" or the component's path


def extend(value: bytes, digest: bytes) -> bytes:
    """The TPM2_PCR_Extend of the SHA-256 bank: SHA-256(value || digest)."""
    if len(value) != DIGEST_SIZE or len(digest) != DIGEST_SIZE:
        raise ValueError("PCR values and digests of the SHA-256 bank are 32 bytes")
    return hashlib.sha256(value + digest).digest()


def events(manifest_body: bytes) -> list[Event]:
    """The events MantraBoot logs for the image whose signed manifest body is
    `manifest_body`, in the order it extends them."""
    manifest = Manifest.decode(manifest_body)
    logged = [Event(PCR_MANIFEST, EV_IPL, hashlib.sha256(manifest_body).digest(), "manifest")]
    logged += [Event(PCR_COMPONENTS, EV_IPL, c.sha256, c.path)
               for c in manifest.components if c.kind != ComponentKind.BOOTLOADER]
    return logged


def replay(logged: Iterable[Event]) -> dict[int, bytes]:
    """The PCR values `logged` leads to from reset, for each PCR it touches."""
    values: dict[int, bytes] = {}
    for event in logged:
        values[event.pcr] = extend(values.get(event.pcr, RESET_VALUE), event.digest)
    return values


def expected_pcrs(manifest_body: bytes) -> dict[int, bytes]:
    """PCR 8 and 9 (SHA-256 bank) after MantraBoot measured this image."""
    return replay(events(manifest_body))
