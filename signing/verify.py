"""`mantra verify`: the offline check of a signed image, in the order
MantraBoot checks it (docs/signing.md, "Verification"). Every signature is
checked before the bytes it covers are decoded; each passed check is
reported, and the first failed one (every failed one, for the components)
is raised as a VerifyFailure whose reasons say precisely what differs."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mantra.image import esp, gpt
from mantra.signing.encoding import (
    ComponentKind,
    DecodeError,
    Envelope,
    KeyPurpose,
    KeyRecord,
    Manifest,
    KEY_ID_SIZE,
    MANIFEST_HEADER,
    MANIFEST_SIGNING_KEY_OFFSET,
    RevocationList,
    Signed,
    key_id,
)
from mantra.signing.image import MANIFEST_PATH, SLOTS, FatFiles, kind_of, open_esp, open_slot
from mantra.signing.keys import utc


class VerifyFailure(Exception):
    """The image is refused; `reasons` are one line each."""

    def __init__(self, *reasons: str) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


@dataclass(frozen=True)
class Verified:
    envelope: Envelope
    key: KeyRecord
    revocations: RevocationList
    manifest: Manifest


def _valid(public_key: bytes, signed: Signed) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signed.signature, signed.body)
    except (InvalidSignature, ValueError):
        return False
    return True


def _peek_issuer(body: bytes) -> bytes | None:
    """The issuer a key record or revocation list claims, read without
    trusting it: only to explain a refusal."""
    for decode in (KeyRecord.decode, RevocationList.decode):
        try:
            return decode(body).issuer
        except DecodeError:
            continue
    return None


def _short(kid: bytes) -> str:
    return kid.hex()


@dataclass(frozen=True)
class DiskVerified:
    """What verify_disk checked: the ESP's envelope (None when only a slot
    was asked for) and each slot's, by slot name; `empty` lists the slots
    that hold no file system."""

    esp: Verified | None
    slots: dict[str, Verified]
    empty: tuple[str, ...] = ()

    @property
    def primary(self) -> Verified:
        """The first slot's (a, then b), else the ESP's."""
        first = next(iter(self.slots.values()), None) or self.esp
        assert first is not None
        return first


def verify_image(image: Path, root_public: bytes, *, min_counter: int | None = None,
                 min_revocations: int | None = None, board: str | None = None, now: int | None = None,
                 slot: str | None = None, report: Callable[[str], None] = lambda line: None) -> Verified:
    """verify_disk, returning the first slot's verified envelope (the
    ESP's when no slot holds an image)."""
    return verify_disk(image, root_public, min_counter=min_counter, min_revocations=min_revocations, board=board,
                       now=now, slot=slot, report=report).primary


def verify_disk(image: Path, root_public: bytes, *, min_counter: int | None = None,
                min_revocations: int | None = None, board: str | None = None, now: int | None = None,
                slot: str | None = None, report: Callable[[str], None] = lambda line: None) -> DiskVerified:
    """Checks `image` against the root public key: the ESP (its manifest
    lists the bootloader) and every slot that holds a file system, or only
    `slot`. `report` receives one line per check passed. Raises
    VerifyFailure when anything is refused; each reason ends with
    ` (ESP)` / ` (slot a)` saying where."""
    try:
        esp_files = open_esp(image)
        slot_files = [open_slot(image, s) for s in (SLOTS if slot is None else (slot,))]
    except gpt.GptError as exc:
        raise VerifyFailure(str(exc)) from None
    report(f"image: GPT ok, ESP at byte {esp_files.offset} ({esp_files.partition.size} bytes)")
    targets = [] if slot is not None else [esp_files]
    empty = []
    for files in slot_files:
        if files.has_filesystem():
            targets.append(files)
            report(f"{files.label}: partition {files.partition.name} at byte {files.offset} "
                   f"({files.partition.size} bytes)")
        elif slot is not None:
            raise VerifyFailure(f"{files.label} holds no file system (an empty slot) ({files.label})")
        else:
            empty.append(files.label.removeprefix("slot "))
            report(f"{files.label}: empty (partition {files.partition.name} holds no file system)")
    if slot is None and not any(not f.is_esp for f in targets):
        raise VerifyFailure("no slot holds an image: both slot partitions are empty (install one: ./mantra slot "
                            "install IMAGE --slot a --from SIGNED_IMAGE)")
    failures: list[str] = []
    esp_verified = None
    slots: dict[str, Verified] = {}
    for files in targets:
        report(f"--- {files.label} ---")
        try:
            verified = _verify_files(files, root_public, min_counter=min_counter, min_revocations=min_revocations,
                                     board=board, now=now, report=report)
        except VerifyFailure as failure:
            failures += [f"{reason} ({files.label})" for reason in failure.reasons]
            continue
        if files.is_esp:
            esp_verified = verified
        else:
            slots[files.label.removeprefix("slot ")] = verified
    if failures:
        raise VerifyFailure(*failures)
    return DiskVerified(esp_verified, slots, tuple(empty))


def _verify_files(files: FatFiles, root_public: bytes, *, min_counter: int | None, min_revocations: int | None,
                  board: str | None, now: int | None, report: Callable[[str], None]) -> Verified:
    """One file system: its envelope, then every component, and nothing else
    MantraBoot or the firmware would load."""
    paths = files.paths()
    stored = {p.upper(): p for p in paths}
    if MANIFEST_PATH not in stored:
        raise VerifyFailure(f"no signed manifest: {MANIFEST_PATH} is not on the {files.label} (sign the image with "
                            "./mantra sign IMAGE --keys DIR)")
    raw = files.read(stored[MANIFEST_PATH])
    verified = check_envelope(raw, root_public, min_counter=min_counter, min_revocations=min_revocations,
                              board=board, now=now, report=report)
    manifest = verified.manifest

    failures = []
    for component in manifest.components:
        if component.kind not in files.kinds:
            failures.append(f"component {component.path}: a {component.kind.label} does not belong on the "
                            f"{files.label} (a manifest of the other partition kind)")
            continue
        path = stored.get(component.path.upper())
        if path is None:
            failures.append(f"component {component.path}: missing from the {files.label}")
            continue
        data = files.read(path)
        if len(data) != component.size:
            failures.append(f"component {component.path}: size mismatch (expected {component.size} bytes, "
                            f"got {len(data)})")
            continue
        digest = hashlib.sha256(data).digest()
        if digest != component.sha256:
            failures.append(f"component {component.path}: sha256 mismatch (expected {component.sha256.hex()}, "
                            f"got {digest.hex()})")
            continue
        report(f"component {component.path}: {component.kind.label}, {component.size} bytes, sha256 ok")
    if not files.is_esp and manifest.component(esp.KERNEL_PATH) is None:
        failures.append("the manifest lists no kernel: not a slot's manifest")
    listed = {c.path.upper() for c in manifest.components} | {MANIFEST_PATH}
    for upper, path in sorted(stored.items()):
        if upper not in listed:
            kind = kind_of(path)
            what = f"a {kind.label} MantraBoot would load" if kind not in (None, ComponentKind.BOOTLOADER) else "a file"
            where = "ESP" if files.is_esp else files.label
            failures.append(f"{where} file {path} is not in the manifest ({what} that nothing verifies)")
    if failures:
        raise VerifyFailure(*failures)
    return verified


def check_envelope(raw: bytes, root_public: bytes, *, min_counter: int | None = None,
                   min_revocations: int | None = None, board: str | None = None, now: int | None = None,
                   report: Callable[[str], None] = lambda line: None) -> Verified:
    """Steps 2 to 8 of docs/signing.md's verification on the envelope's
    bytes alone: framing, key record, revocation list, manifest signature,
    validity, security counter and board. The components are the caller's."""
    now = int(time.time()) if now is None else now
    root_id = key_id(root_public)
    try:
        envelope = Envelope.decode(raw)
    except DecodeError as exc:
        raise VerifyFailure(f"signed manifest {MANIFEST_PATH} is malformed: {exc}") from None
    report(f"envelope: {MANIFEST_PATH}, {len(raw)} bytes, format 1")

    # The key record: certified by this root.
    if not _valid(root_public, envelope.key_record):
        issuer = _peek_issuer(envelope.key_record.body)
        if issuer is not None and issuer != root_id:
            raise VerifyFailure(f"key record: issued by root key {_short(issuer)}, not by the given root key "
                                f"{_short(root_id)} (wrong --root, or an unknown signing key)")
        raise VerifyFailure(f"key record: root signature does not verify with root key {_short(root_id)} "
                            "(forged or altered key record: unknown signing key)")
    try:
        record = KeyRecord.decode(envelope.key_record.body)
    except DecodeError as exc:  # signed by the root, yet malformed: a tool bug, refused all the same
        raise VerifyFailure(f"key record is malformed: {exc}") from None
    if record.issuer != root_id:
        raise VerifyFailure(f"key record: names issuer {_short(record.issuer)}, but the root key is {_short(root_id)}")
    if record.purpose != KeyPurpose.IMAGE_SIGNING:
        raise VerifyFailure(f"key record: key {_short(record.key_id)} is not an image-signing key")
    report(f"key record: key {_short(record.key_id)} certified by root key {_short(root_id)}, valid "
           f"{utc(record.not_before)} to {utc(record.not_after)}")

    # The revocation list: signed by this root, key not on it.
    if not _valid(root_public, envelope.revocations):
        issuer = _peek_issuer(envelope.revocations.body)
        detail = f"issued by root key {_short(issuer)}" if issuer is not None and issuer != root_id else "altered"
        raise VerifyFailure(f"revocation list: root signature does not verify with root key {_short(root_id)} "
                            f"({detail})")
    try:
        revocations = RevocationList.decode(envelope.revocations.body)
    except DecodeError as exc:
        raise VerifyFailure(f"revocation list is malformed: {exc}") from None
    if revocations.issuer != root_id:
        raise VerifyFailure(f"revocation list: names issuer {_short(revocations.issuer)}, but the root key is "
                            f"{_short(root_id)}")
    if min_revocations is not None and revocations.version < min_revocations:
        raise VerifyFailure(f"revocation list: version {revocations.version} is older than the minimum "
                            f"{min_revocations} (rollback of the revocation list refused)")
    if record.key_id in revocations.revoked:
        raise VerifyFailure(f"key record: key {_short(record.key_id)} is revoked (revocation list version "
                            f"{revocations.version})")
    report(f"revocation list: version {revocations.version}, {len(revocations.revoked)} revoked, "
           f"key {_short(record.key_id)} not revoked")

    # The manifest: signed by the certified key.
    if not _valid(record.public_key, envelope.manifest):
        body = envelope.manifest.body
        start = MANIFEST_SIGNING_KEY_OFFSET
        claimed = body[start : start + KEY_ID_SIZE] if len(body) >= MANIFEST_HEADER.size else None
        if claimed is not None and claimed != record.key_id:
            raise VerifyFailure(f"manifest: signed by key {_short(claimed)}, which the key record does not certify "
                                f"(it certifies {_short(record.key_id)}): unknown signing key")
        raise VerifyFailure(f"manifest: signature by key {_short(record.key_id)} does not verify (the manifest or "
                            "its signature was changed after signing)")
    try:
        manifest = Manifest.decode(envelope.manifest.body)
    except DecodeError as exc:
        raise VerifyFailure(f"manifest is malformed: {exc}") from None
    if manifest.signing_key != record.key_id:
        raise VerifyFailure(f"manifest: names signing key {_short(manifest.signing_key)}, but key "
                            f"{_short(record.key_id)} signed it")
    report(f"manifest: signature by key {_short(record.key_id)} ok ({manifest.product} {manifest.version} for "
           f"{manifest.board}, signed {utc(manifest.signed_at)})")

    # Validity: the key was valid when it signed (MantraBoot has no trusted clock).
    if manifest.signed_at > record.not_after:
        raise VerifyFailure(f"key record: key {_short(record.key_id)} had expired when the image was signed "
                            f"(signed {utc(manifest.signed_at)}, key valid until {utc(record.not_after)})")
    if manifest.signed_at < record.not_before:
        raise VerifyFailure(f"key record: key {_short(record.key_id)} was not yet valid when the image was signed "
                            f"(signed {utc(manifest.signed_at)}, key valid from {utc(record.not_before)})")
    note = "" if now <= record.not_after else f"; the key has expired since ({utc(record.not_after)})"
    report(f"validity: signed {utc(manifest.signed_at)}, within the key's validity{note}")

    # Rollback and board.
    if min_counter is not None and manifest.security_counter < min_counter:
        raise VerifyFailure(f"security counter {manifest.security_counter} is lower than the minimum {min_counter} "
                            "(downgrade refused)")
    report(f"security counter: {manifest.security_counter}"
           + (f" >= minimum {min_counter}" if min_counter is not None else " (no minimum given: --min-counter N)"))
    if board is not None and manifest.board != board:
        raise VerifyFailure(f"board: the image is for {manifest.board}, expected {board}")
    report(f"board: {manifest.board}" + ("" if board is not None else " (not checked: --board BOARD)"))
    return Verified(envelope, record, revocations, manifest)

