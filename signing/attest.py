"""Attestation, host side (`mantra attest`; docs/boot-state.md, "Attestation
console protocol"; docs/signing.md, "Attestation").

The host sends `MANTRA-ATTEST-REQUEST <nonce>` on the device's console; the
device answers with a blob (`Blob`): the TCG event log, the attestation key
(AK) TPM2B_PUBLIC, a TPM2_Quote of SHA-256 PCRs 0-9 over the nonce
(TPM2B_ATTEST) and its TPMT_SIGNATURE. `verify` checks, in this order:

1. the blob's framing (and, in `AnswerReader`, the protocol's SHA-256);
2. the AK is a key of the fixed AK template (a restricted ECC P-256 ECDSA
   signing key: the TPM signs only quotes and structures it made with it);
3. the AK is the one pinned for this device (`AkPin`);
4. the quote's signature, by the AK;
5. the quote is TPM_GENERATED_VALUE / TPM_ST_ATTEST_QUOTE, signed by the AK
   as a primary key of the endorsement hierarchy (qualifiedSigner);
6. extraData is the nonce the host sent (the quote is fresh);
7. the selection is SHA-256 PCRs 0-9;
8. the event log replays to the quoted pcrDigest;
9. every PCR 8/9 event equals the reference events of the signed manifest
   of the reference image (`Reference`, whose signature is checked first),
   and the bootloader the firmware measured into PCR 4 is the reference
   image's (its Authenticode hash).

A failure raises `AttestFailure`, whose reasons name what differs, e.g.
`component MANTRA/BOOTFS.IMG: measured <hex>, reference <hex>`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import IntEnum
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from mantra.errors import MantraError
from mantra.signing import eventlog, pcr, pe, tpm2
from mantra.signing.encoding import ComponentKind, DecodeError, Manifest
from mantra.signing.image import MANIFEST_PATH, FatFiles, open_esp, open_slot
from mantra.signing.verify import VerifyFailure, check_envelope

NONCE_SIZE = 32
BLOB_MAGIC = b"MTRA-ATQ"
BLOB_VERSION = 1
BLOB_HEADER = struct.Struct("<8sHHI")  # magic, version, section count, total length
SECTION_HEADER = struct.Struct("<HHI")  # tag, reserved, length
MAX_BLOB = 1 << 20  # an event log is tens of KiB; refuse an absurd announced length up front
DATA_CHUNK = 72  # bytes per MANTRA-ATTEST-DATA line, at most
QUOTED_PCRS = tuple(range(10))
QUOTED_BANK = tpm2.ALG_SHA256

REQUEST = "MANTRA-ATTEST-REQUEST"
BEGIN = "MANTRA-ATTEST-BEGIN"
DATA = "MANTRA-ATTEST-DATA"
END = "MANTRA-ATTEST-END"
ERROR = "MANTRA-ATTEST-ERROR"


class AttestFailure(Exception):
    """Attestation refused; `reasons` are one line each."""

    def __init__(self, *reasons: str) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


# --- the blob ----------------------------------------------------------------------


class Tag(IntEnum):
    EVENT_LOG = 1
    AK_PUBLIC = 2
    QUOTE = 3
    SIGNATURE = 4

    @property
    def label(self) -> str:
        return {1: "event log", 2: "AK TPM2B_PUBLIC", 3: "quote TPM2B_ATTEST", 4: "quote TPMT_SIGNATURE"}[self.value]


@dataclass(frozen=True)
class Blob:
    """The device's answer, section by section (raw bytes, parsed later)."""

    event_log: bytes
    ak_public: bytes
    quote: bytes
    signature: bytes

    def encode(self) -> bytes:
        sections = b""
        for tag in Tag:
            value = self.value(tag)
            sections += SECTION_HEADER.pack(int(tag), 0, len(value)) + value
        total = BLOB_HEADER.size + len(sections)
        return BLOB_HEADER.pack(BLOB_MAGIC, BLOB_VERSION, len(Tag), total) + sections

    def value(self, tag: Tag) -> bytes:
        return (self.event_log, self.ak_public, self.quote, self.signature)[tag - 1]

    @classmethod
    def decode(cls, data: bytes) -> Blob:
        """Exactly the four sections, tags 1-4 in order, nothing after."""
        def fail(message: str, at: int) -> DecodeError:
            return DecodeError(f"attestation blob: {message} (at byte {at})")

        if len(data) < BLOB_HEADER.size:
            raise fail(f"{len(data)} bytes, too short for the header", 0)
        magic, version, count, total = BLOB_HEADER.unpack_from(data)
        if magic != BLOB_MAGIC:
            raise fail(f"bad magic {magic!r}, expected {BLOB_MAGIC!r}", 0)
        if version != BLOB_VERSION:
            raise fail(f"version {version}, this tool reads {BLOB_VERSION}", 8)
        if count != len(Tag):
            raise fail(f"{count} sections, expected {len(Tag)}", 10)
        if total != len(data):
            raise fail(f"header says {total} bytes, the blob has {len(data)}", 12)
        pos = BLOB_HEADER.size
        values = []
        for tag in Tag:
            if len(data) - pos < SECTION_HEADER.size:
                raise fail(f"truncated: section {int(tag)} header", pos)
            got, reserved, length = SECTION_HEADER.unpack_from(data, pos)
            if got != tag:
                raise fail(f"section {int(tag) - 1} has tag {got}, expected {int(tag)} ({tag.label})", pos)
            if reserved:
                raise fail(f"reserved field of section {int(tag)} is {reserved}, must be 0", pos + 2)
            pos += SECTION_HEADER.size
            if length > len(data) - pos:
                raise fail(f"section {int(tag)} ({tag.label}) is {length} bytes, {len(data) - pos} left", pos - 4)
            values.append(data[pos : pos + length])
            pos += length
        if pos != len(data):
            raise fail(f"{len(data) - pos} trailing bytes", pos)
        return cls(*values)


# --- the console protocol ---------------------------------------------------------------


def request_line(nonce: bytes) -> str:
    """The line the host writes (without its line ending)."""
    return f"{REQUEST} {nonce.hex()}"


def answer_lines(nonce: bytes, blob: bytes) -> list[str]:
    """The lines a device answers with (what attestd prints; for tests)."""
    lines = [f"{BEGIN} {nonce.hex()} {len(blob)}"]
    for number, at in enumerate(range(0, len(blob), DATA_CHUNK)):
        lines.append(f"{DATA} {number} {base64.b64encode(blob[at : at + DATA_CHUNK]).decode()}")
    return lines + [f"{END} {hashlib.sha256(blob).hexdigest()}"]


_MARKER = re.compile(r"MANTRA-ATTEST-(BEGIN|DATA|END|ERROR)\b")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


class AnswerReader:
    """Collects the device's answer to `nonce` from console lines (`feed`
    one line at a time; other console output is skipped). An answer that
    begins with another nonce (left over from an earlier request) is
    skipped too. A malformed answer or MANTRA-ATTEST-ERROR raises
    AttestFailure."""

    def __init__(self, nonce: bytes) -> None:
        self.nonce = nonce
        self.length: int | None = None
        self.data = bytearray()
        self.next = 0
        self.skipped: list[str] = []
        self.blob: bytes | None = None

    def feed(self, line: str) -> bytes | None:
        """The blob once the END line checked out, else None."""
        found = _MARKER.search(line)
        if found is None or self.blob is not None:
            return self.blob
        kind = found[1]
        fields = line[found.end():].split()
        if kind == "ERROR":
            message = line[found.end():].strip() or "(no message)"
            raise AttestFailure(f"the device answered {ERROR}: {message}")
        if kind == "BEGIN":
            if len(fields) != 2 or not _HEX64.fullmatch(fields[0]) or not fields[1].isdigit():
                raise AttestFailure(f"malformed {BEGIN} line: {line.strip()!r} (expected: {BEGIN} <nonce: 64 hex "
                                    "digits> <blob length>)")
            if bytes.fromhex(fields[0]) != self.nonce:
                self.skipped.append(fields[0])
                self.length = None
                return None
            self.length = int(fields[1])
            if not 0 < self.length <= MAX_BLOB:
                raise AttestFailure(f"the device announces a {self.length}-byte blob (1 to {MAX_BLOB} expected)")
            self.data.clear()
            self.next = 0
            return None
        if self.length is None:  # part of an answer to another nonce, or before ours began
            return None
        if kind == "DATA":
            if len(fields) != 2 or not fields[0].isdigit():
                raise AttestFailure(f"malformed {DATA} line: {line.strip()!r} (expected: {DATA} <sequence> <base64>)")
            if int(fields[0]) != self.next:
                raise AttestFailure(f"{DATA} line {fields[0]} arrived where {self.next} was expected (a line of the "
                                    "answer was lost or garbled on the console)")
            try:
                chunk = base64.b64decode(fields[1], validate=True)
            except binascii.Error:
                raise AttestFailure(f"{DATA} line {self.next}: not base64: {fields[1]!r}") from None
            if not 0 < len(chunk) <= DATA_CHUNK:
                raise AttestFailure(f"{DATA} line {self.next}: {len(chunk)} bytes, 1 to {DATA_CHUNK} expected")
            self.data += chunk
            self.next += 1
            if len(self.data) > self.length:
                raise AttestFailure(f"the answer holds more than the announced {self.length} bytes")
            return None
        # END
        if len(fields) != 1 or not _HEX64.fullmatch(fields[0]):
            raise AttestFailure(f"malformed {END} line: {line.strip()!r} (expected: {END} <SHA-256: 64 hex digits>)")
        if len(self.data) != self.length:
            raise AttestFailure(f"the answer holds {len(self.data)} bytes, {self.length} were announced")
        got = hashlib.sha256(self.data).hexdigest()
        if got != fields[0].lower():
            raise AttestFailure(f"the blob's SHA-256 is {got}, the device sent {fields[0].lower()} (corrupted on the "
                                "console)")
        self.blob = bytes(self.data)
        return self.blob


# --- AK pinning ------------------------------------------------------------------------


def _spki(key) -> bytes:  # noqa: ANN001 - a cryptography public key
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _pem(public: tpm2.Public) -> bytes:
    return public.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def fingerprint(public: tpm2.Public) -> str:
    """SHA-256 of the AK's SubjectPublicKeyInfo (DER), as hex."""
    return hashlib.sha256(_spki(public.public_key())).hexdigest()


def load_ak(path: Path) -> bytes:
    """An AK from a file, as its SubjectPublicKeyInfo DER: PEM or DER
    SubjectPublicKeyInfo (`tpm2_readpublic -f pem`), or a raw TPM2B_PUBLIC."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MantraError(f"cannot read the AK file {path}: {exc.strerror}", "give the AK as a PEM public key") from None
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return _spki(serialization.load_pem_public_key(data))
        try:
            return _spki(tpm2.Public.decode(data).public_key())
        except DecodeError:
            return _spki(serialization.load_der_public_key(data))
    except (ValueError, TypeError, DecodeError) as exc:
        raise MantraError(f"{path} is not a public key ({exc})",
                          "give a PEM or DER SubjectPublicKeyInfo, or the TPM2B_PUBLIC of the AK") from None


@dataclass(frozen=True)
class AkPin:
    """Where this device's AK is pinned (trust on first use), and the AK
    given explicitly with `--ak`, if any."""

    file: Path
    explicit: Path | None = None

    def check(self, ak: tpm2.Public, report: Callable[[str], None]) -> bool:
        """Compares `ak` with the pinned or given AK; True when it is to be
        pinned (`store`) once the quote it signed has verified: on first use,
        or when --ak names it and the pin file does not hold it yet."""
        presented = _spki(ak.public_key())
        short = hashlib.sha256(presented).hexdigest()[:16]
        if self.explicit is not None:
            wanted = load_ak(self.explicit)
            if presented != wanted:
                raise AttestFailure(f"AK: the device's AK {short} is not the AK in {self.explicit} "
                                    f"({hashlib.sha256(wanted).hexdigest()[:16]}): another TPM, or a TPM whose "
                                    "endorsement hierarchy was cleared")
            pinned = self._pinned()
            report(f"AK: {short} is the AK given with --ak {self.explicit}"
                   + ("" if pinned == presented else f" (pinned in {self.file} once the quote verifies)"))
            return pinned != presented
        pinned = self._pinned()
        if pinned is None:
            report(f"AK: {short}: first use of this device, pinned in {self.file} once the quote verifies (trusted "
                   "because it is new: check it out of band, or pin it with --ak FILE)")
            return True
        if presented != pinned:
            new = self.file.with_name(self.file.name + ".new")
            new.write_bytes(_pem(ak))
            seen = datetime.fromtimestamp(self.file.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            raise AttestFailure(
                f"AK: the device's AK changed: {self.file} pins {hashlib.sha256(pinned).hexdigest()[:16]} (since "
                f"{seen}), the device presents {short}. A replaced TPM or a cleared endorsement hierarchy gives a "
                f"new AK, and so does another device. If that is expected, check the new AK out of band and pin "
                f"it: --ak {new} (saved there), or delete {self.file} to trust the next AK on first use")
        report(f"AK: {short} is the AK pinned in {self.file}")
        return False

    def _pinned(self) -> bytes | None:
        if not self.file.is_file():
            return None
        try:
            return load_ak(self.file)
        except Exception as exc:  # noqa: BLE001 - any unreadable pin is a refusal that says what to do
            raise AttestFailure(f"AK: the pin file {self.file} is unreadable ({exc}); delete it to pin the device's "
                                "AK again on next use, or pin one with --ak FILE") from None

    def store(self, ak: tpm2.Public) -> None:
        """Pins `ak` (written atomically)."""
        self._write(_pem(ak))

    def _write(self, pem: bytes) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_name(self.file.name + ".tmp")
        tmp.write_bytes(pem)
        tmp.replace(self.file)


def pin_file(directory: Path, device: str) -> Path:
    """The pin file of `device` (a name: `qemu`, or a port URL) in `directory`."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", device).strip("_") or "device"
    return directory / "attest" / f"ak-{safe}.pem"


# --- the reference --------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """The signed manifest of the reference image and the events MantraBoot
    logs when it boots that image."""

    image: Path
    manifest: Manifest
    manifest_body: bytes
    events: tuple[pcr.Event, ...]
    # The bootloader component (path, Authenticode SHA-256 of the file the
    # manifest lists): what the firmware measures into PCR 4.
    bootloader: tuple[str, bytes] | None = None


def load_reference(image: Path, root_public: bytes, report: Callable[[str], None] = lambda line: None,
                   slot: str = "a") -> Reference:
    """Reads and verifies the signed manifests of `image` (each envelope's
    signatures against `root_public`, docs/signing.md steps 2-8): the one of
    slot `slot`, whose kernel, boot filesystem and command line MantraBoot
    measures into PCRs 8 and 9 when it boots that slot, and the ESP's, which
    lists the bootloader the firmware measures into PCR 4."""
    try:
        slot_files = open_slot(image, slot)
        if not slot_files.has_filesystem():
            raise AttestFailure(f"reference image {image}: slot {slot} is empty (no file system)")
        slot_raw = _manifest_of(image, slot_files)
        esp_files = open_esp(image)
        esp_raw = _manifest_of(image, esp_files)
    except AttestFailure:
        raise
    except Exception as exc:  # noqa: BLE001 - GptError, MantraError: the image is unusable
        raise AttestFailure(f"reference image {image}: {exc}") from None
    verified = _verified(image, slot_raw, root_public, slot_files.label)
    body = verified.envelope.manifest.body
    manifest = verified.manifest
    report(f"reference: {image} slot {slot}: {manifest.product} {manifest.version} for {manifest.board}, signed "
           f"manifest verified (key {verified.key.key_id.hex()}, security counter {manifest.security_counter})")
    esp_manifest = _verified(image, esp_raw, root_public, "ESP").manifest
    bootloader = None
    for component in esp_manifest.components:
        if component.kind != ComponentKind.BOOTLOADER:
            continue
        # The firmware measures the bootloader's Authenticode hash, not its
        # SHA-256: computed from the file, once it is the file the manifest lists.
        stored = {p.upper(): p for p in esp_files.paths()}
        data = esp_files.read(stored[component.path.upper()]) if component.path.upper() in stored else None
        if data is None or hashlib.sha256(data).digest() != component.sha256:
            raise AttestFailure(f"reference image {image}: component {component.path}: "
                                + ("missing from the ESP" if data is None else "sha256 mismatch with the manifest"))
        try:
            bootloader = (component.path, pe.authenticode_hash(data))
        except DecodeError as exc:
            raise AttestFailure(f"reference image {image}: component {component.path}: {exc}") from None
    return Reference(image, manifest, body, tuple(pcr.events(body)), bootloader)


def _manifest_of(image: Path, files: FatFiles) -> bytes:
    stored = {p.upper(): p for p in files.paths()}
    if MANIFEST_PATH not in stored:
        raise AttestFailure(f"reference image {image}: no signed manifest ({MANIFEST_PATH} is not on its "
                            f"{files.label})")
    return files.read(stored[MANIFEST_PATH])


def _verified(image: Path, raw: bytes, root_public: bytes, label: str):
    try:
        return check_envelope(raw, root_public)
    except VerifyFailure as failure:
        raise AttestFailure(*(f"reference image {image} ({label}): {reason}" for reason in failure.reasons)) from None


# --- verification ---------------------------------------------------------------------


@dataclass(frozen=True)
class Attested:
    """What a verified quote says."""

    ak: tpm2.Public
    attest: tpm2.Attest
    log: eventlog.EventLog
    pcrs: dict[int, bytes]  # SHA-256 PCRs 0-9 as replayed (= quoted)


def verify(blob_bytes: bytes, nonce: bytes, reference: Reference, pin: AkPin,
           report: Callable[[str], None] = lambda line: None) -> Attested:
    """Checks the device's blob against `nonce` and `reference` (module
    comment, steps 1-9); raises AttestFailure naming what differs."""
    try:
        blob = Blob.decode(blob_bytes)
    except DecodeError as exc:
        raise AttestFailure(str(exc)) from None
    report(f"blob: {len(blob_bytes)} bytes: event log {len(blob.event_log)}, AK {len(blob.ak_public)}, quote "
           f"{len(blob.quote)}, signature {len(blob.signature)}")

    # The AK: a key of the fixed template, the device's pinned key.
    try:
        ak = tpm2.Public.decode(blob.ak_public, "AK TPM2B_PUBLIC")
        ak.public_key()
    except DecodeError as exc:
        raise AttestFailure(str(exc)) from None
    differences = tpm2.template_differences(ak)
    if differences:
        raise AttestFailure(*(f"AK: not the AK template of docs/boot-state.md: {d}" for d in differences))
    report(f"AK: {ak.describe()}: the AK template (a restricted signing key)")
    to_pin = pin.check(ak, report)

    # The quote: signed by the AK before its bytes are trusted.
    try:
        signature = tpm2.Signature.decode(blob.signature)
        framing = tpm2.Reader(blob.quote, "quote TPM2B_ATTEST")
        size = framing.u16("size")
        if size != framing.left:
            raise framing.fail(f"size field says {size} bytes, {framing.left} follow", 0)
        signed = framing.take(size, "TPMS_ATTEST")
    except DecodeError as exc:
        raise AttestFailure(str(exc)) from None
    try:
        signature.verify(ak, signed)
    except tpm2.SignatureError as exc:
        raise AttestFailure(f"quote: {exc}") from None
    report(f"quote: {signature.describe()} signature by the AK verifies")
    try:
        attest = tpm2.Attest.decode(blob.quote)
    except DecodeError as exc:
        raise AttestFailure(str(exc)) from None
    expected_signer = ak.qualified_name(tpm2.hierarchy_name(tpm2.AK_HIERARCHY))
    if attest.qualified_signer != expected_signer:
        raise AttestFailure(f"quote: qualifiedSigner {attest.qualified_signer.hex()} is not the AK as a primary key of "
                            f"the endorsement hierarchy ({expected_signer.hex()})")
    report(f"quote: TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE, signer the AK in the endorsement hierarchy; TPM clock "
           f"{attest.clock} ms, reset count {attest.reset_count}, restart count {attest.restart_count}, firmware "
           f"{attest.firmware_version:#018x}")

    # Fresh, and over the PCRs we asked for.
    if attest.extra_data != nonce:
        raise AttestFailure(f"nonce: the quote is over {attest.extra_data.hex() or '(empty)'}, not the nonce sent "
                            f"({nonce.hex()}): a replayed or stale quote")
    report(f"nonce: {nonce.hex()} (the quote is fresh)")
    if to_pin:  # the AK signed our fresh nonce: it is the device's key
        pin.store(ak)
        report(f"AK: pinned in {pin.file}")
    wanted = tpm2.PcrSelection(QUOTED_BANK, QUOTED_PCRS)
    got = ", ".join(s.describe() for s in attest.pcr_select) or "none"
    if len(attest.pcr_select) != 1 or (attest.pcr_select[0].hash_alg, attest.pcr_select[0].pcrs) != (
            wanted.hash_alg, wanted.pcrs):
        raise AttestFailure(f"quote: PCR selection {got}, expected {wanted.describe()}")
    report(f"PCR selection: {got}")

    # The event log replays to the quoted PCRs.
    try:
        log = eventlog.EventLog.decode(blob.event_log)
        replayed = log.replay(QUOTED_BANK)
    except DecodeError as exc:
        raise AttestFailure(str(exc)) from None
    values = {i: replayed[i] for i in QUOTED_PCRS}
    digest = hashlib.sha256(b"".join(values[i] for i in QUOTED_PCRS)).digest()
    if digest != attest.pcr_digest:
        pcrs = ", ".join(f"PCR {i} {values[i].hex()}" for i in QUOTED_PCRS)
        raise AttestFailure(f"event log: does not replay to the quoted PCRs: replayed pcrDigest {digest.hex()}, quoted "
                            f"{attest.pcr_digest.hex()} (the log was altered, or an extend was not logged); "
                            f"replayed {pcrs}")
    measured = [e for e in log.events if e.event_type != eventlog.EV_NO_ACTION]
    report(f"event log: {len(log.events)} events, banks {log.spec_id.describe()}; replays to the quoted pcrDigest "
           f"{digest.hex()}")
    firmware = [e for e in measured if e.pcr <= 7]
    report(f"firmware: {len(firmware)} events in PCRs 0-7, replayed (the signed manifest has reference values only "
           "for the bootloader the firmware started, PCR 4)")

    compare_events(log, reference, report)
    return Attested(ak, attest, log, values)


def compare_events(log: eventlog.EventLog, reference: Reference, report: Callable[[str], None]) -> None:
    """Every PCR 8 and 9 event of the log against the reference events;
    component differences first (they also change the manifest)."""
    ours = {pcr.PCR_MANIFEST, pcr.PCR_COMPONENTS}
    logged = [e for e in log.events if e.pcr in ours and e.event_type != eventlog.EV_NO_ACTION]
    problems: list[str] = []
    for event in logged:
        if event.event_type != pcr.EV_IPL:
            problems.append(f"PCR {event.pcr}: event {event.number} is {event.type_name} {event.describe_data()}, "
                            "MantraBoot logs only EV_IPL events there")
    logged = [e for e in logged if e.event_type == pcr.EV_IPL]

    def name(event: eventlog.Event) -> str:
        return event.data.decode("ascii", "replace")

    # PCR 9: each component, matched by path.
    measured = [e for e in logged if e.pcr == pcr.PCR_COMPONENTS]
    expected = [e for e in reference.events if e.pcr == pcr.PCR_COMPONENTS]
    found: dict[str, eventlog.Event] = {}
    for event in measured:
        key = name(event).upper()
        if key in found:
            problems.append(f"component {name(event)}: measured twice")
        found[key] = event
    matched: list[str] = []
    for want in expected:
        event = found.pop(want.data.upper(), None)
        if event is None:
            problems.append(f"component {want.data}: not measured (reference {want.digest.hex()})")
            continue
        got = event.digest(tpm2.ALG_SHA256)
        if got != want.digest:
            problems.append(f"component {want.data}: measured {got.hex()}, reference {want.digest.hex()}")
        else:
            matched.append(f"component {want.data}: {got.hex()} = reference")
    for event in found.values():
        problems.append(f"component {name(event)}: measured {event.digest(tpm2.ALG_SHA256).hex()}, not in the "
                        "reference image")
    order = [name(e).upper() for e in measured]
    reference_order = [e.data.upper() for e in expected]
    if not problems and order != reference_order:
        problems.append(f"PCR 9: components measured in the order {', '.join(order)}; the reference order is "
                        f"{', '.join(reference_order)}")

    # PCR 4: the bootloader, as the firmware started it.
    bootloader = None
    if reference.bootloader is not None:
        path, want_digest = reference.bootloader
        apps = [e for e in log.events if e.pcr == 4 and e.event_type == eventlog.EV_EFI_BOOT_SERVICES_APPLICATION]
        if not apps:
            problems.append(f"component {path}: not measured (no EV_EFI_BOOT_SERVICES_APPLICATION event in PCR 4; "
                            f"reference Authenticode hash {want_digest.hex()})")
        else:
            got = apps[-1].digest(tpm2.ALG_SHA256)
            if got != want_digest:
                problems.append(f"component {path}: measured {got.hex()} (PCR 4, Authenticode), reference "
                                f"{want_digest.hex()}")
            else:
                bootloader = f"component {path}: {got.hex()} = reference (PCR 4, Authenticode, the firmware's measurement)"
            others = [e.digest(tpm2.ALG_SHA256).hex() for e in apps[:-1]]
            if others:
                problems.append(f"PCR 4: the firmware started {len(others)} other boot application(s) before "
                                f"{path}: {', '.join(others)}")

    # PCR 8: the manifest.
    manifests = [e for e in logged if e.pcr == pcr.PCR_MANIFEST]
    want = next(e for e in reference.events if e.pcr == pcr.PCR_MANIFEST)
    if len(manifests) != 1 or name(manifests[0]) != want.data:
        listed = ", ".join(f"{name(e)!r}" for e in manifests) or "none"
        problems.append(f"manifest (PCR 8): 1 event {want.data!r} expected, the log has {len(manifests)} ({listed})")
    else:
        got = manifests[0].digest(tpm2.ALG_SHA256)
        if got != want.digest:
            problems.append(f"manifest (PCR 8): measured {got.hex()}, reference {want.digest.hex()} (the device booted "
                            f"another signed manifest than {reference.manifest.product} "
                            f"{reference.manifest.version}, security counter {reference.manifest.security_counter})")
        else:
            matched.insert(0, f"manifest (PCR 8): {got.hex()} = reference")
    if problems:
        raise AttestFailure(*problems)
    for line in ([bootloader] if bootloader else []) + matched:
        report(line)


def read_answer(lines: Iterable[str], nonce: bytes) -> bytes:
    """The blob from an iterable of console lines (AttestFailure when the
    lines end without a complete answer)."""
    reader = AnswerReader(nonce)
    for line in lines:
        blob = reader.feed(line)
        if blob is not None:
            return blob
    if reader.length is not None:
        raise AttestFailure(f"the answer ended after {len(reader.data)} of {reader.length} bytes")
    raise AttestFailure(f"no {BEGIN} line for nonce {nonce.hex()}")


# --- the console link ---------------------------------------------------------------------


class ConsoleLink:
    """The device's console through pyserial: `url` is anything
    `serial.serial_for_url` opens (socket://HOST:PORT, a pty or tty path,
    rfc2217://...). What the device prints is copied to `transcript`."""

    def __init__(self, url: str, *, transcript: Path | None = None, baudrate: int = 115200) -> None:
        import serial  # pyserial

        self.url = url
        try:
            self.port = serial.serial_for_url(url, baudrate=baudrate, timeout=0.1, write_timeout=10)
        except (serial.SerialException, ValueError, OSError) as exc:
            raise MantraError(f"cannot open the device's console {url}: {exc}",
                              "give --port as socket://HOST:PORT (a console on TCP), a pty or a tty (e.g. "
                              "/dev/ttyUSB0), and check that nothing else holds it") from None
        self.transcript = transcript.open("ab") if transcript is not None else None
        self.pending = b""

    def send_line(self, line: str) -> None:
        self.port.write(line.encode("ascii") + b"\r\n")
        self.port.flush()

    def read_lines(self, deadline: float) -> Iterable[str]:
        """Console lines until `deadline` (time.monotonic()); CR and LF
        both end a line, empty lines are skipped."""
        while time.monotonic() < deadline:
            chunk = self.port.read(4096)
            if not chunk:
                continue
            if self.transcript is not None:
                self.transcript.write(chunk)
                self.transcript.flush()
            self.pending += chunk
            *complete, self.pending = re.split(rb"[\r\n]", self.pending)
            for raw in complete:
                if raw:
                    yield raw.decode("utf-8", "replace")

    def wait_for(self, text: str, deadline: float) -> bool:
        """Reads until a line holds `text`; False at the deadline."""
        return any(text in line for line in self.read_lines(deadline))

    def request(self, nonce: bytes, timeout: float) -> bytes:
        """Sends the quote request and returns the device's blob; raises
        AttestFailure for an error answer, MantraError when none comes."""

        self.send_line(request_line(nonce))
        reader = AnswerReader(nonce)
        for line in self.read_lines(time.monotonic() + timeout):
            blob = reader.feed(line)
            if blob is not None:
                return blob
        got = (f"the answer stopped after {len(reader.data)} of {reader.length} bytes" if reader.length is not None
               else f"no {BEGIN} line for our nonce")
        raise MantraError(f"the device did not answer the attestation request within {timeout:g} s ({got})",
                          "check that the device runs a product with the attestation service and a TPM, and that "
                          "--port is its console; --timeout S waits longer")

    def close(self) -> None:
        self.port.close()
        if self.transcript is not None:
            self.transcript.close()

    def __enter__(self) -> ConsoleLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
