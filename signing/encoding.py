"""The one canonical binary encoding of the signed structures, as
docs/signing.md lays them out byte by byte (MantraBoot's no_std verifier
parses the same bytes).

Rules shared by every structure:

- integers are unsigned little-endian; `str` is a u16 length then that many
  bytes of printable ASCII (0x20..0x7E), at most MAX_STR bytes;
- every structure starts with its own 8-byte magic, so a signature over one
  kind of structure never verifies as another;
- a decoder consumes every byte: trailing bytes, short input, reserved fields
  that are not zero, unknown versions, kinds or tags, counts out of range and
  unsorted or duplicate lists are errors (`DecodeError`), never ignored.

An encoded structure decodes to an equal object, and an object encodes to
exactly one byte string (`encode(decode(b)) == b` for every accepted `b`).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from enum import IntEnum

SIGNATURE_SIZE = 64  # Ed25519
PUBLIC_KEY_SIZE = 32  # Ed25519, raw
KEY_ID_SIZE = 16
SHA256_SIZE = 32
MAX_STR = 255
MAX_COMPONENTS = 16
MAX_TOOLCHAIN = 16
MAX_REVOKED = 1024
MAX_ENVELOPE = 64 * 1024  # MantraBoot refuses a bigger MANTRA/MANIFEST.SIG before reading it

ENVELOPE_MAGIC = b"MTRA-ENV"
KEY_RECORD_MAGIC = b"MTRA-KEY"
REVOCATIONS_MAGIC = b"MTRA-REV"
MANIFEST_MAGIC = b"MTRA-MAN"
FORMAT_VERSION = 1

ENVELOPE_HEADER = struct.Struct("<8sHHI")  # magic, format, section count, total length
SECTION_HEADER = struct.Struct("<HHI")  # tag, reserved, length
KEY_RECORD = struct.Struct("<8sHHI16s32sQQ16s")
REVOCATIONS_HEADER = struct.Struct("<8sHHIQQ16s")
MANIFEST_HEADER = struct.Struct("<8sHHIQQ16s32s")
MANIFEST_SIGNING_KEY_OFFSET = 32  # where the manifest header holds the signing key id
COMPONENT_HEADER = struct.Struct("<BBQ32s")


class DecodeError(ValueError):
    """Bytes that are not a well-formed structure; the message says where and why."""


class KeyPurpose(IntEnum):
    IMAGE_SIGNING = 1


class ComponentKind(IntEnum):
    """What MantraBoot does with a component. The bootloader is loaded by the
    firmware, not by MantraBoot: host tools verify it, MantraBoot skips it."""

    BOOTLOADER = 1
    KERNEL = 2
    BOOTFS = 3
    CMDLINE = 4

    @property
    def label(self) -> str:
        return self.name.lower()


class SectionTag(IntEnum):
    KEY_RECORD = 1
    REVOCATIONS = 2
    MANIFEST = 3


def key_id(public_key: bytes) -> bytes:
    """A key's id: the first 16 bytes of SHA-256 of its raw 32-byte public key."""
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes, not {len(public_key)}")
    return hashlib.sha256(public_key).digest()[:KEY_ID_SIZE]


def _check_str(value: str, what: str) -> bytes:
    if len(value) > MAX_STR or not all(" " <= ch <= "~" for ch in value):
        raise ValueError(f"{what} {value!r}: at most {MAX_STR} characters of printable ASCII")
    return value.encode("ascii")


def _str(value: str, what: str) -> bytes:
    data = _check_str(value, what)
    return struct.pack("<H", len(data)) + data


class _Reader:
    """A cursor over `data` that refuses to read past its end."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.what = what

    def fail(self, message: str) -> DecodeError:
        return DecodeError(f"{self.what}: {message} (at byte {self.pos})")

    def take(self, size: int, field: str) -> bytes:
        if size > len(self.data) - self.pos:
            raise self.fail(f"truncated: {field} needs {size} bytes, {len(self.data) - self.pos} left")
        chunk = bytes(self.data[self.pos : self.pos + size])
        self.pos += size
        return chunk

    def unpack(self, layout: struct.Struct, field: str) -> tuple:
        return layout.unpack(self.take(layout.size, field))

    def u16(self, field: str) -> int:
        return struct.unpack("<H", self.take(2, field))[0]

    def string(self, field: str) -> str:
        start = self.pos
        length = self.u16(f"{field} length")
        if length > MAX_STR:
            self.pos = start
            raise self.fail(f"{field} is {length} bytes long, at most {MAX_STR}")
        raw = self.take(length, field)
        if not all(0x20 <= b <= 0x7E for b in raw):
            self.pos = start
            raise self.fail(f"{field} is not printable ASCII")
        return raw.decode("ascii")

    def finish(self) -> None:
        if self.pos != len(self.data):
            raise self.fail(f"{len(self.data) - self.pos} trailing bytes")


def _check_magic(reader: _Reader, magic: bytes, want: bytes, version: int) -> None:
    if magic != want:
        reader.pos = 0
        raise reader.fail(f"bad magic {magic!r}, expected {want!r}")
    if version != FORMAT_VERSION:
        reader.pos = 8
        raise reader.fail(f"unsupported format version {version} (this tool reads {FORMAT_VERSION})")


def _zero(reader: _Reader, value: int, field: str) -> None:
    if value != 0:
        raise reader.fail(f"reserved field {field} is {value}, must be 0")


# --- key record -----------------------------------------------------------


@dataclass(frozen=True)
class KeyRecord:
    """The root's statement: `public_key` may sign images from `not_before`
    to `not_after` (Unix seconds, inclusive)."""

    purpose: KeyPurpose
    public_key: bytes
    not_before: int
    not_after: int
    issuer: bytes  # key id of the root key

    @property
    def key_id(self) -> bytes:
        return key_id(self.public_key)

    def encode(self) -> bytes:
        if not 0 <= self.not_before <= self.not_after < 1 << 64:
            raise ValueError(f"bad validity period {self.not_before}..{self.not_after}")
        if len(self.issuer) != KEY_ID_SIZE:
            raise ValueError("issuer must be a 16-byte key id")
        return KEY_RECORD.pack(KEY_RECORD_MAGIC, FORMAT_VERSION, int(self.purpose), 0, self.key_id, self.public_key,
                               self.not_before, self.not_after, self.issuer)

    @classmethod
    def decode(cls, data: bytes) -> KeyRecord:
        reader = _Reader(data, "key record")
        magic, version, purpose, reserved, kid, public_key, not_before, not_after, issuer = reader.unpack(
            KEY_RECORD, "key record")
        _check_magic(reader, magic, KEY_RECORD_MAGIC, version)
        reader.finish()
        if purpose not in KeyPurpose._value2member_map_:
            raise reader.fail(f"unknown key purpose {purpose}")
        _zero(reader, reserved, "at byte 12")
        if kid != key_id(public_key):
            raise reader.fail("key id is not the SHA-256 prefix of the public key")
        if not_before > not_after:
            raise reader.fail(f"validity ends ({not_after}) before it starts ({not_before})")
        return cls(KeyPurpose(purpose), public_key, not_before, not_after, issuer)


# --- revocation list ------------------------------------------------------


@dataclass(frozen=True)
class RevocationList:
    """The root's list of revoked signing keys. `version` only grows: a
    verifier that has seen version N refuses any older list."""

    version: int
    issued: int
    issuer: bytes
    revoked: tuple[bytes, ...]  # key ids, strictly ascending

    def encode(self) -> bytes:
        if list(self.revoked) != sorted(set(self.revoked)) or len(self.revoked) > MAX_REVOKED:
            raise ValueError(f"revoked key ids must be unique, sorted, at most {MAX_REVOKED}")
        if any(len(k) != KEY_ID_SIZE for k in self.revoked) or len(self.issuer) != KEY_ID_SIZE:
            raise ValueError("key ids are 16 bytes")
        return REVOCATIONS_HEADER.pack(REVOCATIONS_MAGIC, FORMAT_VERSION, 0, len(self.revoked), self.version,
                                       self.issued, self.issuer) + b"".join(self.revoked)

    @classmethod
    def decode(cls, data: bytes) -> RevocationList:
        reader = _Reader(data, "revocation list")
        magic, version, reserved, count, list_version, issued, issuer = reader.unpack(
            REVOCATIONS_HEADER, "revocation list header")
        _check_magic(reader, magic, REVOCATIONS_MAGIC, version)
        _zero(reader, reserved, "at byte 10")
        if count > MAX_REVOKED:
            raise reader.fail(f"{count} revoked keys, at most {MAX_REVOKED}")
        revoked = tuple(reader.take(KEY_ID_SIZE, f"revoked key id {i}") for i in range(count))
        reader.finish()
        if any(a >= b for a, b in zip(revoked, revoked[1:])):
            raise reader.fail("revoked key ids are not in strictly ascending order")
        return cls(list_version, issued, issuer, revoked)


# --- manifest -------------------------------------------------------------


@dataclass(frozen=True)
class Component:
    """A file MantraBoot (or the firmware, for the bootloader) loads: its
    path on the FAT file system that holds the manifest, size and SHA-256."""

    kind: ComponentKind
    path: str
    size: int
    sha256: bytes

    def encode(self) -> bytes:
        _check_path(self.path)
        if len(self.sha256) != SHA256_SIZE:
            raise ValueError("sha256 is 32 bytes")
        return COMPONENT_HEADER.pack(int(self.kind), 0, self.size, self.sha256) + _str(self.path, "component path")


def _check_path(path: str) -> None:
    _check_str(path, "component path")
    parts = path.split("/")
    if not path or "\\" in path or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"component path {path!r}: relative, '/'-separated, no empty, '.' or '..' parts")


@dataclass(frozen=True)
class Manifest:
    """What an image is: signed by the signing key whose id it names."""

    security_counter: int
    signed_at: int
    signing_key: bytes  # key id
    config_sha256: bytes
    board: str
    product: str
    version: str
    source_revision: str
    toolchain: tuple[tuple[str, str], ...]  # (tool, version)
    components: tuple[Component, ...]

    def encode(self) -> bytes:
        if len(self.toolchain) > MAX_TOOLCHAIN:
            raise ValueError(f"at most {MAX_TOOLCHAIN} toolchain entries")
        _check_components(self.components, ValueError)
        out = bytearray(MANIFEST_HEADER.pack(MANIFEST_MAGIC, FORMAT_VERSION, 0, 0, self.security_counter,
                                             self.signed_at, self.signing_key, self.config_sha256))
        for value, what in ((self.board, "board"), (self.product, "product"), (self.version, "version"),
                            (self.source_revision, "source revision")):
            out += _str(value, what)
        out += struct.pack("<H", len(self.toolchain))
        for tool, version in self.toolchain:
            out += _str(tool, "tool name") + _str(version, "tool version")
        out += struct.pack("<H", len(self.components))
        for component in self.components:
            out += component.encode()
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        reader = _Reader(data, "manifest")
        magic, version, reserved1, reserved2, counter, signed_at, signing_key, config = reader.unpack(
            MANIFEST_HEADER, "manifest header")
        _check_magic(reader, magic, MANIFEST_MAGIC, version)
        _zero(reader, reserved1, "at byte 10")
        _zero(reader, reserved2, "at byte 12")
        board = reader.string("board")
        product = reader.string("product")
        image_version = reader.string("version")
        revision = reader.string("source revision")
        count = reader.u16("toolchain count")
        if count > MAX_TOOLCHAIN:
            raise reader.fail(f"{count} toolchain entries, at most {MAX_TOOLCHAIN}")
        toolchain = tuple((reader.string("tool name"), reader.string("tool version")) for _ in range(count))
        count = reader.u16("component count")
        if not 1 <= count <= MAX_COMPONENTS:
            raise reader.fail(f"{count} components, 1 to {MAX_COMPONENTS} allowed")
        components = []
        for index in range(count):
            kind, reserved, size, sha = reader.unpack(COMPONENT_HEADER, f"component {index}")
            if kind not in ComponentKind._value2member_map_:
                raise reader.fail(f"component {index}: unknown kind {kind}")
            _zero(reader, reserved, f"of component {index}")
            path = reader.string(f"component {index} path")
            try:
                _check_path(path)
            except ValueError as exc:
                raise reader.fail(str(exc)) from None
            components.append(Component(ComponentKind(kind), path, size, sha))
        reader.finish()
        _check_components(components, reader.fail)
        return cls(counter, signed_at, signing_key, config, board, product, image_version, revision, toolchain,
                   tuple(components))

    def component(self, path: str) -> Component | None:
        return next((c for c in self.components if c.path.upper() == path.upper()), None)


def _check_components(components, error) -> None:
    """One kernel and one boot filesystem (a slot's manifest), or only a
    bootloader (the ESP's manifest); no kind or path (FAT names are
    case-insensitive) twice."""
    kinds = [c.kind for c in components]
    paths = [c.path.upper() for c in components]
    boot_only = kinds == [ComponentKind.BOOTLOADER]
    if not boot_only and (kinds.count(ComponentKind.KERNEL) != 1 or kinds.count(ComponentKind.BOOTFS) != 1):
        raise error("a manifest lists exactly one kernel and one boot filesystem (or only a bootloader)")
    if len(set(kinds)) != len(kinds):
        raise error("a component kind is listed twice")
    if len(set(paths)) != len(paths):
        raise error("a component path is listed twice")


# --- signed structures and the envelope -------------------------------------


@dataclass(frozen=True)
class Signed:
    """A structure's encoded bytes (`body`, exactly what is signed) and the
    Ed25519 signature over them."""

    body: bytes
    signature: bytes

    def encode(self) -> bytes:
        if len(self.signature) != SIGNATURE_SIZE:
            raise ValueError("an Ed25519 signature is 64 bytes")
        return self.body + self.signature

    @classmethod
    def split(cls, value: bytes) -> Signed:
        return cls(value[:-SIGNATURE_SIZE], value[-SIGNATURE_SIZE:])


@dataclass(frozen=True)
class Envelope:
    """MANTRA/MANIFEST.SIG: the key record, the revocation list and the
    manifest, each with its signature."""

    key_record: Signed
    revocations: Signed
    manifest: Signed

    def encode(self) -> bytes:
        sections = b""
        for tag, signed in ((SectionTag.KEY_RECORD, self.key_record), (SectionTag.REVOCATIONS, self.revocations),
                            (SectionTag.MANIFEST, self.manifest)):
            value = signed.encode()
            sections += SECTION_HEADER.pack(int(tag), 0, len(value)) + value
        total = ENVELOPE_HEADER.size + len(sections)
        return ENVELOPE_HEADER.pack(ENVELOPE_MAGIC, FORMAT_VERSION, len(SectionTag), total) + sections

    @classmethod
    def decode(cls, data: bytes) -> Envelope:
        """Splits the envelope into its three signed sections. Only the
        framing is checked here: a verifier checks each body's signature
        before it decodes the body (`key()`, `revocation_list()`, `image_manifest()`)."""
        reader = _Reader(data, "envelope")
        if len(data) > MAX_ENVELOPE:
            raise reader.fail(f"{len(data)} bytes, at most {MAX_ENVELOPE}")
        magic, version, count, total = reader.unpack(ENVELOPE_HEADER, "envelope header")
        _check_magic(reader, magic, ENVELOPE_MAGIC, version)
        if count != len(SectionTag):
            raise reader.fail(f"{count} sections, expected {len(SectionTag)}")
        if total != len(data):
            raise reader.fail(f"header says {total} bytes, the envelope has {len(data)}")
        values: list[Signed] = []
        for tag in SectionTag:
            got, reserved, length = reader.unpack(SECTION_HEADER, f"section {tag.value} header")
            if got != tag:
                raise reader.fail(f"section {len(values)} has tag {got}, expected {int(tag)} ({tag.name.lower()})")
            _zero(reader, reserved, f"of section {int(tag)}")
            if length <= SIGNATURE_SIZE:
                raise reader.fail(f"section {int(tag)} is {length} bytes, too short for a body and a signature")
            values.append(Signed.split(reader.take(length, f"section {int(tag)} ({tag.name.lower()})")))
        reader.finish()
        return cls(*values)

    def key(self) -> KeyRecord:
        return KeyRecord.decode(self.key_record.body)

    def revocation_list(self) -> RevocationList:
        return RevocationList.decode(self.revocations.body)

    def image_manifest(self) -> Manifest:
        return Manifest.decode(self.manifest.body)
