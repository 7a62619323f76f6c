"""The TCG event log in the crypto-agile format (TCG PC Client Platform
Firmware Profile, section 10), parsed strictly, and replayed to PCR values.

The log is little-endian (UEFI's byte order; the TPM structures of tpm2.py
are big-endian). It starts with one SHA-1-format `TCG_PCClientPCREvent`:

    pcrIndex u32 = 0, eventType u32 = EV_NO_ACTION, digest[20] = 0,
    eventDataSize u32, event = TCG_EfiSpecIDEvent:
        signature[16] = "Spec ID Event03\\0", platformClass u32,
        specVersionMinor u8 = 0, specVersionMajor u8 = 2, specErrata u8,
        uintnSize u8 (1: UINT32, 2: UINT64), numberOfAlgorithms u32,
        digestSizes[numberOfAlgorithms] = {algorithmId u16, digestSize u16},
        vendorInfoSize u8, vendorInfo[vendorInfoSize]

then `TCG_PCR_EVENT2` entries to the end:

    pcrIndex u32, eventType u32,
    digests = TPML_DIGEST_VALUES {count u32, {hashAlg u16, digest[size]}...},
    eventSize u32, event[eventSize]

where each entry carries exactly one digest of every algorithm the Spec ID
event lists (sizes from that list). EV_NO_ACTION entries are not extended
into any PCR; a `StartupLocality` EV_NO_ACTION event sets PCR 0's starting
value (the locality the TPM was started from, in its last byte).

`LogBuilder` writes logs in this format (the tests build logs to match the
PCRs they extend into swtpm).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from mantra.signing import tpm2
from mantra.signing.encoding import DecodeError

SPEC_ID_SIGNATURE = b"Spec ID Event03\x00"
STARTUP_LOCALITY_SIGNATURE = b"StartupLocality\x00"
MAX_ALGORITHMS = 8  # a TPM has a handful of PCR banks
MAX_DIGEST = 64
MAX_EVENT_DATA = 1 << 20
PCR_COUNT = 24

EV_PREBOOT_CERT = 0x00000000
EV_POST_CODE = 0x00000001
EV_NO_ACTION = 0x00000003
EV_SEPARATOR = 0x00000004
EV_ACTION = 0x00000005
EV_EVENT_TAG = 0x00000006
EV_S_CRTM_CONTENTS = 0x00000007
EV_S_CRTM_VERSION = 0x00000008
EV_CPU_MICROCODE = 0x00000009
EV_PLATFORM_CONFIG_FLAGS = 0x0000000A
EV_TABLE_OF_DEVICES = 0x0000000B
EV_COMPACT_HASH = 0x0000000C
EV_IPL = 0x0000000D
EV_IPL_PARTITION_DATA = 0x0000000E
EV_NONHOST_CODE = 0x0000000F
EV_NONHOST_CONFIG = 0x00000010
EV_NONHOST_INFO = 0x00000011
EV_OMIT_BOOT_DEVICE_EVENTS = 0x00000012
EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
EV_EFI_VARIABLE_BOOT = 0x80000002
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
EV_EFI_BOOT_SERVICES_DRIVER = 0x80000004
EV_EFI_RUNTIME_SERVICES_DRIVER = 0x80000005
EV_EFI_GPT_EVENT = 0x80000006
EV_EFI_ACTION = 0x80000007
EV_EFI_PLATFORM_FIRMWARE_BLOB = 0x80000008
EV_EFI_HANDOFF_TABLES = 0x80000009
EV_EFI_PLATFORM_FIRMWARE_BLOB2 = 0x8000000A
EV_EFI_HANDOFF_TABLES2 = 0x8000000B
EV_EFI_VARIABLE_BOOT2 = 0x8000000C
EV_EFI_HCRTM_EVENT = 0x80000010
EV_EFI_VARIABLE_AUTHORITY = 0x800000E0
EV_EFI_SPDM_FIRMWARE_BLOB = 0x800000E1
EV_EFI_SPDM_FIRMWARE_CONFIG = 0x800000E2

EVENT_TYPE_NAMES = {value: name for name, value in globals().items() if name.startswith("EV_")}

_PCR_EVENT_HEADER = struct.Struct("<II20sI")  # pcrIndex, eventType, SHA-1 digest, eventDataSize
_SPEC_ID_HEADER = struct.Struct("<16sIBBBBI")  # signature .. numberOfAlgorithms


def type_name(event_type: int) -> str:
    return EVENT_TYPE_NAMES.get(event_type, f"event type {event_type:#010x}")


@dataclass(frozen=True)
class SpecId:
    """The Spec ID event: the log's digest algorithms and their sizes."""

    platform_class: int
    errata: int
    uintn_size: int
    algorithms: tuple[tuple[int, int], ...]  # (TPM_ALG_ID, digest size), in the log's order
    vendor_info: bytes = b""

    def encode_event(self) -> bytes:
        """The whole first entry (TCG_PCClientPCREvent holding this Spec ID event)."""
        data = _SPEC_ID_HEADER.pack(SPEC_ID_SIGNATURE, self.platform_class, 0, 2, self.errata, self.uintn_size,
                                    len(self.algorithms))
        data += b"".join(struct.pack("<HH", alg, size) for alg, size in self.algorithms)
        data += bytes([len(self.vendor_info)]) + self.vendor_info
        return _PCR_EVENT_HEADER.pack(0, EV_NO_ACTION, bytes(20), len(data)) + data

    def size_of(self, alg: int) -> int | None:
        return next((size for a, size in self.algorithms if a == alg), None)

    def describe(self) -> str:
        return ", ".join(tpm2.alg_name(alg) for alg, _ in self.algorithms)


@dataclass(frozen=True)
class Event:
    """One TCG_PCR_EVENT2 entry. `number` counts from 1 after the Spec ID
    event; `offset` is where the entry starts in the log."""

    number: int
    offset: int
    pcr: int
    event_type: int
    digests: tuple[tuple[int, bytes], ...]  # (TPM_ALG_ID, digest), in the entry's order
    data: bytes

    def digest(self, alg: int) -> bytes:
        return next(value for a, value in self.digests if a == alg)

    @property
    def type_name(self) -> str:
        return type_name(self.event_type)

    def describe_data(self, limit: int = 48) -> str:
        """The event data as text when it is printable ASCII (a trailing NUL
        dropped), else its size."""
        text = self.data[:-1] if self.data.endswith(b"\x00") else self.data
        if text and all(0x20 <= b <= 0x7E for b in text):
            value = text.decode("ascii")
            return repr(value if len(value) <= limit else value[:limit] + "...")
        return f"{len(self.data)} bytes"

    def encode(self) -> bytes:
        out = struct.pack("<III", self.pcr, self.event_type, len(self.digests))
        out += b"".join(struct.pack("<H", alg) + value for alg, value in self.digests)
        return out + struct.pack("<I", len(self.data)) + self.data


@dataclass(frozen=True)
class EventLog:
    spec_id: SpecId
    events: tuple[Event, ...]

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def encode(self) -> bytes:
        return self.spec_id.encode_event() + b"".join(event.encode() for event in self.events)

    @classmethod
    def decode(cls, data: bytes, what: str = "event log") -> EventLog:
        """Parses a whole log; every byte must belong to an entry."""
        reader = _Reader(data, what)
        spec_id = _read_spec_id(reader)
        events = []
        while reader.left:
            events.append(_read_event(reader, spec_id, len(events) + 1))
        return cls(spec_id, tuple(events))

    def startup_locality(self) -> int:
        """The locality of the StartupLocality event (0 without one)."""
        for event in self.events:
            if event.event_type == EV_NO_ACTION and event.data.startswith(STARTUP_LOCALITY_SIGNATURE):
                return event.data[len(STARTUP_LOCALITY_SIGNATURE)]
        return 0

    def replay(self, alg: int = tpm2.ALG_SHA256) -> dict[int, bytes]:
        """The value of every PCR 0-23 of bank `alg` after the logged
        extends, from reset (PCR 0 from the startup locality)."""
        size = self.spec_id.size_of(alg)
        if size is None:
            raise DecodeError(f"the event log has no {tpm2.alg_name(alg)} digests (its banks: "
                              f"{self.spec_id.describe()})")
        values = {pcr: bytes(size) for pcr in range(PCR_COUNT)}
        values[0] = bytes(size - 1) + bytes([self.startup_locality()])
        for event in self.events:
            if event.event_type != EV_NO_ACTION:
                values[event.pcr] = tpm2.digest(alg, values[event.pcr] + event.digest(alg))
        return values


class _Reader(tpm2.Reader):
    """Little-endian reads."""

    def u16(self, name: str) -> int:
        return struct.unpack("<H", self.take(2, name))[0]

    def u32(self, name: str) -> int:
        return struct.unpack("<I", self.take(4, name))[0]


def _read_spec_id(reader: _Reader) -> SpecId:
    if reader.left < _PCR_EVENT_HEADER.size:
        raise reader.fail(f"{reader.left} bytes: too short for the Spec ID event (not a TCG event log)")
    pcr, event_type, sha1, size = _PCR_EVENT_HEADER.unpack(reader.take(_PCR_EVENT_HEADER.size, "first event"))
    if pcr != 0 or event_type != EV_NO_ACTION or sha1 != bytes(20):
        raise reader.fail(f"the first event is PCR {pcr} {type_name(event_type)}, not the Spec ID event "
                          "(PCR 0 EV_NO_ACTION, zero digest): not a crypto-agile log", 0)
    start = reader.pos
    if size > reader.left:
        raise reader.fail(f"truncated: the Spec ID event announces {size} bytes, {reader.left} left")
    body = _Reader(reader.take(size, "Spec ID event"), f"{reader.what}: Spec ID event")
    if size < _SPEC_ID_HEADER.size:
        raise reader.fail(f"the Spec ID event is {size} bytes, too short", start)
    signature, platform, minor, major, errata, uintn, count = _SPEC_ID_HEADER.unpack(
        body.take(_SPEC_ID_HEADER.size, "header"))
    if signature != SPEC_ID_SIGNATURE:
        raise reader.fail(f"the Spec ID signature is {signature!r}, expected {SPEC_ID_SIGNATURE!r} "
                          "(a SHA-1-only log, or not an event log)", start)
    if (major, minor) != (2, 0):
        raise reader.fail(f"spec version {major}.{minor}, expected 2.0", start + 20)
    if uintn not in (1, 2):
        raise reader.fail(f"uintnSize {uintn}, expected 1 (UINT32) or 2 (UINT64)", start + 23)
    if not 1 <= count <= MAX_ALGORITHMS:
        raise reader.fail(f"{count} digest algorithms, 1 to {MAX_ALGORITHMS} allowed", start + 24)
    algorithms = []
    for index in range(count):
        alg = body.u16(f"algorithm {index} id")
        digest_size = body.u16(f"algorithm {index} digest size")
        known = tpm2.DIGEST_SIZES.get(alg)
        if known is not None and digest_size != known:
            raise body.fail(f"{tpm2.alg_name(alg)} digests are {known} bytes, the Spec ID event says {digest_size}")
        if not 1 <= digest_size <= MAX_DIGEST:
            raise body.fail(f"algorithm {alg:#06x} has digest size {digest_size}, 1 to {MAX_DIGEST} allowed")
        if any(alg == a for a, _ in algorithms):
            raise body.fail(f"{tpm2.alg_name(alg)} is listed twice")
        algorithms.append((alg, digest_size))
    vendor = body.take(body.u8("vendorInfoSize"), "vendorInfo")
    body.finish()
    return SpecId(platform, errata, uintn, tuple(algorithms), vendor)


def _read_event(reader: _Reader, spec_id: SpecId, number: int) -> Event:
    offset = reader.pos
    what = f"event {number}"
    pcr = reader.u32(f"{what} pcrIndex")
    if pcr >= PCR_COUNT:
        raise reader.fail(f"{what}: PCR {pcr}, a TPM has PCRs 0-{PCR_COUNT - 1}", offset)
    event_type = reader.u32(f"{what} eventType")
    count = reader.u32(f"{what} digest count")
    if count != len(spec_id.algorithms):
        raise reader.fail(f"{what}: {count} digests, the Spec ID event lists {len(spec_id.algorithms)} "
                          f"({spec_id.describe()})", offset + 8)
    digests: list[tuple[int, bytes]] = []
    for index in range(count):
        alg = reader.u16(f"{what} digest {index} algorithm")
        size = spec_id.size_of(alg)
        if size is None:
            raise reader.fail(f"{what}: a digest of {tpm2.alg_name(alg)}, which the Spec ID event does not list",
                              reader.pos - 2)
        if any(alg == a for a, _ in digests):
            raise reader.fail(f"{what}: two {tpm2.alg_name(alg)} digests", reader.pos - 2)
        digests.append((alg, reader.take(size, f"{what} {tpm2.alg_name(alg)} digest")))
    size = reader.u32(f"{what} eventSize")
    if size > MAX_EVENT_DATA:
        raise reader.fail(f"{what}: {size} bytes of event data, at most {MAX_EVENT_DATA}", reader.pos - 4)
    data = reader.take(size, f"{what} event data")
    return Event(number, offset, pcr, event_type, tuple(digests), data)


class LogBuilder:
    """Writes a crypto-agile log as firmware does: `measure` hashes data
    into every bank, logs the entry, and returns the digests to extend."""

    def __init__(self, algorithms: Iterable[int] = (tpm2.ALG_SHA1, tpm2.ALG_SHA256)) -> None:
        self.spec_id = SpecId(0, 2, 2, tuple((alg, tpm2.DIGEST_SIZES[alg]) for alg in algorithms))
        self.events: list[Event] = []

    def log(self, pcr: int, event_type: int, digests: dict[int, bytes], data: bytes) -> Event:
        event = Event(len(self.events) + 1, 0, pcr, event_type, tuple(digests.items()), data)
        self.events.append(event)
        return event

    def measure(self, pcr: int, event_type: int, hashed: bytes, data: bytes) -> dict[int, bytes]:
        """Logs an event whose digests are the hashes of `hashed`."""
        digests = {alg: tpm2.digest(alg, hashed) for alg, _ in self.spec_id.algorithms}
        self.log(pcr, event_type, digests, data)
        return digests

    def no_action(self, data: bytes) -> None:
        self.log(0, EV_NO_ACTION, {alg: bytes(size) for alg, size in self.spec_id.algorithms}, data)

    def build(self) -> EventLog:
        return EventLog(self.spec_id, tuple(self.events))

    def encode(self) -> bytes:
        return self.build().encode()
