"""Readers for the attestation answer (docs/boot-state.md, "Attestation
console protocol"), for the tests: the console lines, the MTRA-ATQ blob,
the crypto-agile TCG event log and the TPM 2.0 structures in it. Strict:
anything malformed raises ValueError."""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from dataclasses import dataclass

BEGIN = re.compile(r"MANTRA-ATTEST-BEGIN ([0-9a-f]{64}) (\d+)\r?$")
DATA = re.compile(r"MANTRA-ATTEST-DATA (\d+) ([A-Za-z0-9+/=]+)\r?$")
END = re.compile(r"MANTRA-ATTEST-END ([0-9a-f]{64})\r?$")
ERROR = re.compile(r"MANTRA-ATTEST-ERROR (.*?)\r?$")

TAG_EVENT_LOG, TAG_AK_PUBLIC, TAG_ATTEST, TAG_SIGNATURE = 1, 2, 3, 4
EV_NO_ACTION = 3
TPM_ALG_SHA256 = 0x000B


def answer_blob(text: str) -> tuple[str, bytes]:
    """The nonce (hex) and blob of the answer in console `text` (markers may
    follow other text on their line; DATA lines in sequence)."""
    nonce = length = digest = None
    chunks: list[bytes] = []
    for line in text.splitlines():
        if (m := ERROR.search(line)) and nonce is None:
            raise ValueError(f"the device answered an error: {m[1]}")
        if m := BEGIN.search(line):
            nonce, length, chunks = m[1], int(m[2]), []
        elif (m := DATA.search(line)) and nonce is not None:
            if int(m[1]) != len(chunks):
                raise ValueError(f"DATA line {m[1]} out of sequence (expected {len(chunks)})")
            chunk = base64.b64decode(m[2], validate=True)
            if len(chunk) > 72:
                raise ValueError(f"DATA line {m[1]} holds {len(chunk)} bytes, more than 72")
            chunks.append(chunk)
        elif (m := END.search(line)) and nonce is not None:
            digest = m[1]
            break
    if nonce is None or digest is None:
        raise ValueError("no complete MANTRA-ATTEST-BEGIN ... END answer")
    blob = b"".join(chunks)
    if len(blob) != length:
        raise ValueError(f"blob is {len(blob)} bytes, BEGIN said {length}")
    if hashlib.sha256(blob).hexdigest() != digest:
        raise ValueError("blob SHA-256 differs from the END line's")
    return nonce, blob


def blob_sections(blob: bytes) -> dict[int, bytes]:
    """The sections of an MTRA-ATQ blob by tag."""
    if len(blob) < 16 or blob[:8] != b"MTRA-ATQ":
        raise ValueError("no MTRA-ATQ header")
    version, count, total = struct.unpack_from("<HHI", blob, 8)
    if version != 1 or total != len(blob):
        raise ValueError(f"version {version}, total {total} for {len(blob)} bytes")
    at, sections = 16, {}
    for _ in range(count):
        tag, reserved, length = struct.unpack_from("<HHI", blob, at)
        if reserved != 0 or at + 8 + length > len(blob) or tag in sections:
            raise ValueError(f"bad section header at {at}")
        sections[tag] = blob[at + 8:at + 8 + length]
        at += 8 + length
    if at != len(blob):
        raise ValueError("bytes after the last section")
    return sections


@dataclass(frozen=True)
class LogEvent:
    pcr: int
    event_type: int
    digests: dict[int, bytes]  # algorithm id -> digest
    data: bytes


def parse_event_log(log: bytes) -> list[LogEvent]:
    """The TCG_PCR_EVENT2 entries of a crypto-agile log (after its Spec ID header)."""
    pcr, event_type = struct.unpack_from("<II", log, 0)
    (size,) = struct.unpack_from("<I", log, 28)
    spec = log[32:32 + size]
    if event_type != EV_NO_ACTION or spec[:16] != b"Spec ID Event03\0":
        raise ValueError("not a crypto-agile log")
    (count,) = struct.unpack_from("<I", spec, 24)
    sizes = dict(struct.unpack_from("<HH", spec, 28 + 4 * i) for i in range(count))
    at, events = 32 + size, []
    while at < len(log):
        pcr, event_type, n = struct.unpack_from("<III", log, at)
        at += 12
        digests = {}
        for _ in range(n):
            (alg,) = struct.unpack_from("<H", log, at)
            if alg not in sizes:
                raise ValueError(f"digest algorithm {alg:#x} not in the Spec ID event")
            digests[alg] = log[at + 2:at + 2 + sizes[alg]]
            at += 2 + sizes[alg]
        (length,) = struct.unpack_from("<I", log, at)
        data = log[at + 4:at + 4 + length]
        if len(data) != length:
            raise ValueError("event data past the end of the log")
        at += 4 + length
        events.append(LogEvent(pcr, event_type, digests, data))
    return events


def replay_sha256(events: list[LogEvent], pcrs: range) -> dict[int, bytes]:
    """The SHA-256 bank's PCR values the log leads to (EV_NO_ACTION is not extended)."""
    values = {pcr: bytes(32) for pcr in pcrs}
    for event in events:
        if event.pcr in values and event.event_type != EV_NO_ACTION:
            values[event.pcr] = hashlib.sha256(values[event.pcr] + event.digests[TPM_ALG_SHA256]).digest()
    return values


class Reader:
    """Big-endian TPM structure reader."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise ValueError("TPM structure truncated")
        out = self.data[self.at:self.at + n]
        self.at += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def tpm2b(self) -> bytes:
        return self.take(self.u16())

    def done(self) -> None:
        if self.at != len(self.data):
            raise ValueError("bytes after the TPM structure")


@dataclass(frozen=True)
class Attest:
    body: bytes  # TPMS_ATTEST (what the signature covers)
    extra_data: bytes
    pcr_select: bytes
    pcr_digest: bytes


def parse_attest(tpm2b_attest: bytes) -> Attest:
    outer = Reader(tpm2b_attest)
    body = outer.tpm2b()
    outer.done()
    r = Reader(body)
    if r.u32() != 0xFF544347 or r.u16() != 0x8018:
        raise ValueError("not a TPM-generated quote")
    r.tpm2b()  # qualifiedSigner
    extra = r.tpm2b()
    r.take(17 + 8)  # clockInfo, firmwareVersion
    start = r.at
    for _ in range(r.u32()):
        r.u16()
        r.take(r.u8())
    select = body[start:r.at]
    digest = r.tpm2b()
    r.done()
    return Attest(body, extra, select, digest)


@dataclass(frozen=True)
class EccPublic:
    name_alg: int
    attributes: int
    scheme: int
    scheme_hash: int
    curve: int
    x: bytes
    y: bytes


def parse_ecc_public(tpm2b_public: bytes) -> EccPublic:
    outer = Reader(tpm2b_public)
    r = Reader(outer.tpm2b())
    outer.done()
    if r.u16() != 0x0023:
        raise ValueError("the AK is not an ECC key")
    name_alg, attributes = r.u16(), r.u32()
    r.tpm2b()  # authPolicy
    if r.u16() != 0x0010:
        raise ValueError("the AK has a symmetric algorithm")
    scheme = r.u16()
    scheme_hash = r.u16() if scheme != 0x0010 else 0
    curve = r.u16()
    if r.u16() != 0x0010:
        raise ValueError("the AK has a KDF")
    x, y = r.tpm2b(), r.tpm2b()
    r.done()
    return EccPublic(name_alg, attributes, scheme, scheme_hash, curve, x, y)


def parse_ecdsa_signature(signature: bytes) -> tuple[int, int, int]:
    """(hash algorithm, r, s) of a TPMT_SIGNATURE with ECDSA."""
    r = Reader(signature)
    if r.u16() != 0x0018:
        raise ValueError("not an ECDSA signature")
    hash_alg = r.u16()
    sig_r, sig_s = r.tpm2b(), r.tpm2b()
    r.done()
    return hash_alg, int.from_bytes(sig_r, "big"), int.from_bytes(sig_s, "big")
