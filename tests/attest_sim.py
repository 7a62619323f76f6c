"""A device for attestation tests without QEMU: a real TPM (swtpm, through
tpm_sim.SwtpmServer) measured the way OVMF and MantraBoot measure a boot,
with the event log written to match, answering quote requests the way the
device's attestation service does (docs/boot-state.md):

    device = SimulatedDevice(tpm, manifest_body)
    device.boot()                       # firmware events, then MantraBoot's PCR 8/9 events
    blob = device.answer(nonce)         # the MTRA-ATQ blob: log, AK, quote, signature

`components` are the files MantraBoot loaded (path -> bytes): the files of
the reference image for a golden boot, other bytes to play a device that
booted other contents than the reference.
"""

from __future__ import annotations

import struct

from mantra.signing import attest, eventlog, pcr, pe, tpm2
from mantra.signing.encoding import ComponentKind, Manifest
from tpm_sim import SwtpmServer

QUOTE_SELECTION = tpm2.PcrSelection(tpm2.ALG_SHA256, tuple(range(10)))
BOOTLOADER = "EFI/BOOT/BOOTX64.EFI"


def tiny_pe(code: bytes) -> bytes:
    """A minimal PE32+ EFI application with one section holding `code`."""
    headers = bytearray(0x200)
    headers[:2] = b"MZ"
    struct.pack_into("<I", headers, 0x3C, 0x40)
    headers[0x40:0x44] = b"PE\0\0"
    struct.pack_into("<HHIIIHH", headers, 0x44, 0x8664, 1, 0, 0, 0, 240, 0x22)  # COFF header
    optional = 0x58
    struct.pack_into("<H", headers, optional, 0x20B)  # PE32+
    struct.pack_into("<I", headers, optional + 16, 0x1000)  # AddressOfEntryPoint
    struct.pack_into("<II", headers, optional + 32, 0x1000, 0x200)  # SectionAlignment, FileAlignment
    struct.pack_into("<II", headers, optional + 56, 0x2000, 0x200)  # SizeOfImage, SizeOfHeaders
    struct.pack_into("<H", headers, optional + 68, 10)  # Subsystem: EFI application
    struct.pack_into("<I", headers, optional + 108, 16)  # NumberOfRvaAndSizes
    raw = code + bytes(-len(code) % 0x200)
    struct.pack_into("<8sIIII", headers, optional + 240, b".text", len(code), 0x1000, len(raw), 0x200)
    return bytes(headers) + raw


class SimulatedDevice:
    def __init__(self, tpm: SwtpmServer, manifest_body: bytes, components: dict[str, bytes]) -> None:
        self.tpm = tpm
        self.manifest_body = manifest_body
        self.components = components
        self.log = eventlog.LogBuilder((tpm2.ALG_SHA1, tpm2.ALG_SHA256))
        self.booted = False

    def _measure(self, index: int, event_type: int, hashed: bytes, data: bytes) -> None:
        self.tpm.pcr_extend(index, self.log.measure(index, event_type, hashed, data))

    def boot(self) -> None:
        """What the firmware and MantraBoot measure on a boot (PCRs from reset)."""
        assert not self.booted, "one boot per TPM reset"
        self.booted = True
        # The firmware (the shape of OVMF's log).
        self._measure(0, eventlog.EV_S_CRTM_VERSION, b"\x00\x00", b"\x00\x00")
        self._measure(0, eventlog.EV_EFI_PLATFORM_FIRMWARE_BLOB, b"firmware volume",
                      struct.pack("<QQ", 0xFFC84000, 0x348000))
        for name in (b"SecureBoot", b"PK", b"KEK", b"db", b"dbx"):
            self._measure(7, eventlog.EV_EFI_VARIABLE_DRIVER_CONFIG, name, name)
        for index in range(8):
            self._measure(index, eventlog.EV_SEPARATOR, bytes(4), bytes(4))
        self._measure(5, eventlog.EV_EFI_GPT_EVENT, b"gpt header and entries", b"gpt")
        if BOOTLOADER in self.components:  # the firmware measures the PE image's Authenticode hash
            image = self.components[BOOTLOADER]
            digests = {tpm2.ALG_SHA1: pe.authenticode_hash(image, "sha1"),
                       tpm2.ALG_SHA256: pe.authenticode_hash(image, "sha256")}
            self.log.log(4, eventlog.EV_EFI_BOOT_SERVICES_APPLICATION, digests, struct.pack("<QQQQ", 0, len(image), 0, 0))
            self.tpm.pcr_extend(4, digests)
        # MantraBoot (docs/signing.md, "Measured boot").
        self._measure(pcr.PCR_MANIFEST, pcr.EV_IPL, self.manifest_body, b"manifest")
        manifest = Manifest.decode(self.manifest_body)
        for component in manifest.components:
            if component.kind == ComponentKind.BOOTLOADER:
                continue
            self._measure(pcr.PCR_COMPONENTS, pcr.EV_IPL, self.components[component.path], component.path.encode())
        # After GetEventLog: ExitBootServices, from the final events table.
        self._measure(5, eventlog.EV_EFI_ACTION, b"Exit Boot Services Invocation", b"Exit Boot Services Invocation")

    def quote(self, nonce: bytes, selection: tpm2.PcrSelection = QUOTE_SELECTION,
              template: tpm2.Public | None = None) -> tuple[tpm2.Public, tpm2.Quote]:
        handle, ak, _ = self.tpm.create_primary(template or tpm2.ak_template())
        try:
            return ak, self.tpm.quote(handle, nonce, [selection])
        finally:
            self.tpm.flush(handle)

    def blob(self, nonce: bytes, **quote_options) -> attest.Blob:
        if not self.booted:
            self.boot()
        ak, quote = self.quote(nonce, **quote_options)
        return attest.Blob(self.log.encode(), ak.encode_tpm2b(), quote.attest, quote.signature)

    def answer(self, nonce: bytes, **quote_options) -> bytes:
        return self.blob(nonce, **quote_options).encode()
