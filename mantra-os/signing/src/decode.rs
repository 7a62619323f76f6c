//! The canonical encoding of docs/signing.md ("Encoding"), decoded
//! strictly: short input, trailing bytes, nonzero reserved fields, unknown
//! versions, purposes, kinds or tags, counts out of range, lengths past
//! their container and unsorted or duplicate lists are all errors. Nothing
//! here checks a signature: [`crate::verify_envelope`] decides when a body
//! may be decoded.

use core::fmt;

use sha2::{Digest, Sha256};

use crate::reader::Reader;
use crate::{
    KeyId, KEY_ID_SIZE, MAX_COMPONENTS, MAX_ENVELOPE, MAX_REVOKED, MAX_TOOLCHAIN, PUBLIC_KEY_SIZE, SHA256_SIZE,
    SIGNATURE_SIZE,
};

const ENVELOPE_MAGIC: &[u8; 8] = b"MTRA-ENV";
const KEY_RECORD_MAGIC: &[u8; 8] = b"MTRA-KEY";
const REVOCATIONS_MAGIC: &[u8; 8] = b"MTRA-REV";
const MANIFEST_MAGIC: &[u8; 8] = b"MTRA-MAN";
const FORMAT_VERSION: u16 = 1;
const SECTION_COUNT: u16 = 3;
/// Key record body size.
pub const KEY_RECORD_SIZE: usize = 96;
/// Revocation list header size (before the revoked ids).
const REVOCATIONS_HEADER: usize = 48;
/// Where the manifest header holds the signing key id.
pub const MANIFEST_SIGNING_KEY_OFFSET: usize = 32;
/// Where key records and revocation lists hold their issuer.
const KEY_RECORD_ISSUER_OFFSET: usize = 80;
const REVOCATIONS_ISSUER_OFFSET: usize = 32;

/// Which structure a decode error is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Structure {
    Envelope,
    KeyRecord,
    RevocationList,
    Manifest,
}

impl fmt::Display for Structure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Structure::Envelope => "envelope",
            Structure::KeyRecord => "key record",
            Structure::RevocationList => "revocation list",
            Structure::Manifest => "manifest",
        })
    }
}

/// What is wrong with the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    Truncated { field: &'static str, need: usize, left: usize },
    Trailing(usize),
    TooLarge(usize),
    BadMagic,
    Version(u16),
    Reserved { field: &'static str, value: u64 },
    SectionCount(u16),
    TotalLength { header: u32, actual: usize },
    SectionTag { index: usize, got: u16, expected: u16 },
    SectionTooShort { tag: u16, length: u32 },
    UnknownPurpose(u16),
    KeyIdMismatch,
    ValidityReversed { not_before: u64, not_after: u64 },
    TooManyRevoked(u32),
    RevokedUnsorted,
    StrTooLong { field: &'static str, length: u16 },
    StrNotAscii { field: &'static str },
    ToolchainCount(u16),
    ComponentCount(u16),
    UnknownKind { index: usize, kind: u8 },
    BadPath { index: usize },
    KernelAndBootfs,
    KindTwice,
    PathTwice,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Problem::Truncated { field, need, left } => write!(f, "truncated: {field} needs {need} bytes, {left} left"),
            Problem::Trailing(n) => write!(f, "{n} trailing bytes"),
            Problem::TooLarge(n) => write!(f, "{n} bytes, at most {MAX_ENVELOPE}"),
            Problem::BadMagic => f.write_str("bad magic"),
            Problem::Version(v) => write!(f, "unsupported format version {v} (this verifier reads {FORMAT_VERSION})"),
            Problem::Reserved { field, value } => write!(f, "reserved field {field} is {value}, must be 0"),
            Problem::SectionCount(n) => write!(f, "{n} sections, expected {SECTION_COUNT}"),
            Problem::TotalLength { header, actual } => {
                write!(f, "header says {header} bytes, the envelope has {actual}")
            }
            Problem::SectionTag { index, got, expected } => {
                write!(f, "section {index} has tag {got}, expected {expected}")
            }
            Problem::SectionTooShort { tag, length } => {
                write!(f, "section {tag} is {length} bytes, too short for a body and a signature")
            }
            Problem::UnknownPurpose(p) => write!(f, "unknown key purpose {p}"),
            Problem::KeyIdMismatch => f.write_str("key id is not the SHA-256 prefix of the public key"),
            Problem::ValidityReversed { not_before, not_after } => {
                write!(f, "validity ends ({not_after}) before it starts ({not_before})")
            }
            Problem::TooManyRevoked(n) => write!(f, "{n} revoked keys, at most {MAX_REVOKED}"),
            Problem::RevokedUnsorted => f.write_str("revoked key ids are not in strictly ascending order"),
            Problem::StrTooLong { field, length } => write!(f, "{field} is {length} bytes long, at most {}", crate::MAX_STR),
            Problem::StrNotAscii { field } => write!(f, "{field} is not printable ASCII"),
            Problem::ToolchainCount(n) => write!(f, "{n} toolchain entries, at most {MAX_TOOLCHAIN}"),
            Problem::ComponentCount(n) => write!(f, "{n} components, 1 to {MAX_COMPONENTS} allowed"),
            Problem::UnknownKind { index, kind } => write!(f, "component {index}: unknown kind {kind}"),
            Problem::BadPath { index } => write!(
                f,
                "component {index}: path must be relative, '/'-separated, with no empty, '.' or '..' parts"
            ),
            Problem::KernelAndBootfs => f.write_str("a manifest lists exactly one kernel and one boot filesystem (or only a bootloader)"),
            Problem::KindTwice => f.write_str("a component kind is listed twice"),
            Problem::PathTwice => f.write_str("a component path is listed twice"),
        }
    }
}

/// Bytes that are not a well-formed structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeError {
    pub structure: Structure,
    /// Byte offset in the structure where the problem is.
    pub at: usize,
    pub problem: Problem,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (at byte {})", self.structure, self.problem, self.at)
    }
}

/// A key's id: the first 16 bytes of SHA-256 of its raw public key.
pub fn key_id(public_key: &[u8; PUBLIC_KEY_SIZE]) -> KeyId {
    let digest = Sha256::digest(public_key);
    let mut id = [0u8; KEY_ID_SIZE];
    id.copy_from_slice(&digest[..KEY_ID_SIZE]);
    id
}

fn magic_and_version(r: &mut Reader<'_>, magic: &[u8; 8]) -> Result<(), DecodeError> {
    if r.array::<8>("magic")? != *magic {
        return Err(r.fail_at(0, Problem::BadMagic));
    }
    let version = r.u16("format version")?;
    if version != FORMAT_VERSION {
        return Err(r.fail_at(8, Problem::Version(version)));
    }
    Ok(())
}

// --- envelope ----------------------------------------------------------------

/// One signed structure: `body` (exactly the signed bytes) and its signature.
#[derive(Clone, Copy, Debug)]
pub struct Signed<'a> {
    pub body: &'a [u8],
    pub signature: [u8; SIGNATURE_SIZE],
}

/// `MANTRA/MANIFEST.SIG` split into its three signed sections; only the
/// framing is checked, the bodies are still untrusted bytes.
#[derive(Clone, Copy, Debug)]
pub struct Envelope<'a> {
    pub key_record: Signed<'a>,
    pub revocations: Signed<'a>,
    pub manifest: Signed<'a>,
}

impl<'a> Envelope<'a> {
    /// Checks the framing: size, magic, format, section count, total
    /// length, tags 1, 2, 3 in order, reserved fields, section lengths, and
    /// nothing after section 3.
    pub fn parse(data: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(data, Structure::Envelope);
        if data.len() > MAX_ENVELOPE {
            return Err(r.fail(Problem::TooLarge(data.len())));
        }
        magic_and_version(&mut r, ENVELOPE_MAGIC)?;
        let count = r.u16("section count")?;
        if count != SECTION_COUNT {
            return Err(r.fail_at(10, Problem::SectionCount(count)));
        }
        let total = r.u32("total length")?;
        if usize::try_from(total).ok() != Some(data.len()) {
            return Err(r.fail_at(12, Problem::TotalLength { header: total, actual: data.len() }));
        }
        let mut sections = [Signed { body: &[], signature: [0; SIGNATURE_SIZE] }; 3];
        for (index, section) in sections.iter_mut().enumerate() {
            let expected = index as u16 + 1;
            let at = r.pos();
            let tag = r.u16("section tag")?;
            if tag != expected {
                return Err(r.fail_at(at, Problem::SectionTag { index, got: tag, expected }));
            }
            r.reserved(2, "of the section header")?;
            let length = r.u32("section length")?;
            if (length as usize) <= SIGNATURE_SIZE {
                return Err(r.fail_at(at, Problem::SectionTooShort { tag, length }));
            }
            let value = r.take(length as usize, "section value")?;
            let (body, signature) = value.split_at(value.len() - SIGNATURE_SIZE);
            section.body = body;
            section.signature.copy_from_slice(signature);
        }
        r.finish()?;
        let [key_record, revocations, manifest] = sections;
        Ok(Self { key_record, revocations, manifest })
    }
}

/// The issuer a key record or revocation list body claims, read without
/// decoding or trusting it: only to explain a refusal.
pub(crate) fn peek_issuer(body: &[u8]) -> Option<KeyId> {
    let at = if body.len() == KEY_RECORD_SIZE && body.starts_with(KEY_RECORD_MAGIC) {
        KEY_RECORD_ISSUER_OFFSET
    } else if body.len() >= REVOCATIONS_HEADER && body.starts_with(REVOCATIONS_MAGIC) {
        REVOCATIONS_ISSUER_OFFSET
    } else {
        return None;
    };
    body[at..at + KEY_ID_SIZE].try_into().ok()
}

/// The signing key id a manifest body claims, read without trusting it.
pub(crate) fn peek_signing_key(body: &[u8]) -> Option<KeyId> {
    body.get(MANIFEST_SIGNING_KEY_OFFSET..MANIFEST_SIGNING_KEY_OFFSET + KEY_ID_SIZE)?.try_into().ok()
}

// --- key record ----------------------------------------------------------------

/// The root's statement: `public_key` may sign images from `not_before` to
/// `not_after` (Unix seconds, inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    pub key_id: KeyId,
    pub public_key: [u8; PUBLIC_KEY_SIZE],
    pub not_before: u64,
    pub not_after: u64,
    pub issuer: KeyId,
}

/// The only key purpose: image signing.
const PURPOSE_IMAGE_SIGNING: u16 = 1;

impl KeyRecord {
    pub fn parse(data: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(data, Structure::KeyRecord);
        magic_and_version(&mut r, KEY_RECORD_MAGIC)?;
        let purpose = r.u16("purpose")?;
        if purpose != PURPOSE_IMAGE_SIGNING {
            return Err(r.fail_at(10, Problem::UnknownPurpose(purpose)));
        }
        r.reserved(4, "at byte 12")?;
        let key_id = r.array::<KEY_ID_SIZE>("key id")?;
        let public_key = r.array::<PUBLIC_KEY_SIZE>("public key")?;
        let not_before = r.u64("not_before")?;
        let not_after = r.u64("not_after")?;
        let issuer = r.array::<KEY_ID_SIZE>("issuer")?;
        r.finish()?;
        if key_id != crate::key_id(&public_key) {
            return Err(r.fail_at(16, Problem::KeyIdMismatch));
        }
        if not_before > not_after {
            return Err(r.fail_at(64, Problem::ValidityReversed { not_before, not_after }));
        }
        Ok(Self { key_id, public_key, not_before, not_after, issuer })
    }
}

// --- revocation list -------------------------------------------------------------

/// The root's list of revoked signing keys; `version` only grows.
#[derive(Clone, Copy, Debug)]
pub struct RevocationList<'a> {
    pub version: u64,
    pub issued: u64,
    pub issuer: KeyId,
    /// N revoked key ids, 16 bytes each, strictly ascending.
    revoked: &'a [u8],
}

impl<'a> RevocationList<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(data, Structure::RevocationList);
        magic_and_version(&mut r, REVOCATIONS_MAGIC)?;
        r.reserved(2, "at byte 10")?;
        let count = r.u32("revoked key count")?;
        let version = r.u64("list version")?;
        let issued = r.u64("issued")?;
        let issuer = r.array::<KEY_ID_SIZE>("issuer")?;
        if count as usize > MAX_REVOKED {
            return Err(r.fail_at(12, Problem::TooManyRevoked(count)));
        }
        let revoked = r.take(count as usize * KEY_ID_SIZE, "revoked key ids")?;
        r.finish()?;
        let list = Self { version, issued, issuer, revoked };
        let mut previous: Option<&[u8]> = None;
        for (index, id) in revoked.chunks_exact(KEY_ID_SIZE).enumerate() {
            if previous.is_some_and(|p| p >= id) {
                return Err(r.fail_at(REVOCATIONS_HEADER + index * KEY_ID_SIZE, Problem::RevokedUnsorted));
            }
            previous = Some(id);
        }
        Ok(list)
    }

    /// Number of revoked keys.
    pub fn len(&self) -> usize {
        self.revoked.len() / KEY_ID_SIZE
    }

    pub fn is_empty(&self) -> bool {
        self.revoked.is_empty()
    }

    /// The revoked key ids, ascending.
    pub fn revoked(&self) -> impl Iterator<Item = &'a [u8]> {
        self.revoked.chunks_exact(KEY_ID_SIZE)
    }

    pub fn is_revoked(&self, id: &KeyId) -> bool {
        self.revoked().any(|r| r == id)
    }
}

// --- manifest --------------------------------------------------------------------

/// What MantraBoot does with a component.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComponentKind {
    /// Started by the firmware; host tools verify it, MantraBoot skips it.
    Bootloader = 1,
    Kernel = 2,
    Bootfs = 3,
    Cmdline = 4,
}

impl ComponentKind {
    fn from_u8(kind: u8) -> Option<Self> {
        Some(match kind {
            1 => Self::Bootloader,
            2 => Self::Kernel,
            3 => Self::Bootfs,
            4 => Self::Cmdline,
            _ => return None,
        })
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Bootloader => "bootloader",
            Self::Kernel => "kernel",
            Self::Bootfs => "boot filesystem",
            Self::Cmdline => "kernel command line",
        }
    }
}

impl fmt::Display for ComponentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A file the firmware or MantraBoot loads: path on the FAT file system
/// that holds the envelope, size and SHA-256.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Component<'a> {
    pub kind: ComponentKind,
    pub size: u64,
    pub sha256: [u8; SHA256_SIZE],
    pub path: &'a str,
}

const NO_COMPONENT: Component<'static> =
    Component { kind: ComponentKind::Bootloader, size: 0, sha256: [0; SHA256_SIZE], path: "" };

/// The image manifest, signed by the signing key it names.
#[derive(Clone, Copy, Debug)]
pub struct Manifest<'a> {
    pub security_counter: u64,
    pub signed_at: u64,
    pub signing_key: KeyId,
    pub config_sha256: [u8; SHA256_SIZE],
    pub board: &'a str,
    pub product: &'a str,
    pub version: &'a str,
    pub source_revision: &'a str,
    toolchain: [(&'a str, &'a str); MAX_TOOLCHAIN],
    toolchain_len: usize,
    components: [Component<'a>; MAX_COMPONENTS],
    components_len: usize,
}

/// A component path: relative, `/`-separated, no empty, `.` or `..` parts, no `\`.
fn valid_path(path: &str) -> bool {
    !path.is_empty() && !path.contains('\\') && path.split('/').all(|part| !matches!(part, "" | "." | ".."))
}

impl<'a> Manifest<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(data, Structure::Manifest);
        magic_and_version(&mut r, MANIFEST_MAGIC)?;
        r.reserved(2, "at byte 10")?;
        r.reserved(4, "at byte 12")?;
        let security_counter = r.u64("security counter")?;
        let signed_at = r.u64("signed_at")?;
        let signing_key = r.array::<KEY_ID_SIZE>("signing key id")?;
        let config_sha256 = r.array::<SHA256_SIZE>("config hash")?;
        let board = r.str("board")?;
        let product = r.str("product")?;
        let version = r.str("version")?;
        let source_revision = r.str("source revision")?;

        let at = r.pos();
        let count = r.u16("toolchain count")?;
        if usize::from(count) > MAX_TOOLCHAIN {
            return Err(r.fail_at(at, Problem::ToolchainCount(count)));
        }
        let mut toolchain = [("", ""); MAX_TOOLCHAIN];
        for entry in toolchain.iter_mut().take(usize::from(count)) {
            *entry = (r.str("tool name")?, r.str("tool version")?);
        }
        let toolchain_len = usize::from(count);

        let at = r.pos();
        let count = r.u16("component count")?;
        if !(1..=MAX_COMPONENTS).contains(&usize::from(count)) {
            return Err(r.fail_at(at, Problem::ComponentCount(count)));
        }
        let mut components = [NO_COMPONENT; MAX_COMPONENTS];
        for (index, component) in components.iter_mut().take(usize::from(count)).enumerate() {
            let at = r.pos();
            let raw_kind = r.u8("component kind")?;
            let kind = ComponentKind::from_u8(raw_kind)
                .ok_or_else(|| r.fail_at(at, Problem::UnknownKind { index, kind: raw_kind }))?;
            r.reserved(1, "of a component")?;
            let size = r.u64("component size")?;
            let sha256 = r.array::<SHA256_SIZE>("component sha256")?;
            let path_at = r.pos();
            let path = r.str("component path")?;
            if !valid_path(path) {
                return Err(r.fail_at(path_at, Problem::BadPath { index }));
            }
            *component = Component { kind, size, sha256, path };
        }
        let components_len = usize::from(count);
        r.finish()?;

        let listed = &components[..components_len];
        let count_of = |kind| listed.iter().filter(|c| c.kind == kind).count();
        // A slot's manifest (kernel and boot filesystem), or the ESP's,
        // which lists only the bootloader (docs/signing.md).
        let boot_only = components_len == 1 && listed[0].kind == ComponentKind::Bootloader;
        if !boot_only && (count_of(ComponentKind::Kernel) != 1 || count_of(ComponentKind::Bootfs) != 1) {
            return Err(r.fail(Problem::KernelAndBootfs));
        }
        for (i, a) in listed.iter().enumerate() {
            for b in &listed[i + 1..] {
                if a.kind == b.kind {
                    return Err(r.fail(Problem::KindTwice));
                }
                if a.path.eq_ignore_ascii_case(b.path) {
                    return Err(r.fail(Problem::PathTwice));
                }
            }
        }
        Ok(Self {
            security_counter,
            signed_at,
            signing_key,
            config_sha256,
            board,
            product,
            version,
            source_revision,
            toolchain,
            toolchain_len,
            components,
            components_len,
        })
    }

    /// (tool, version) entries, sorted by tool.
    pub fn toolchain(&self) -> &[(&'a str, &'a str)] {
        &self.toolchain[..self.toolchain_len]
    }

    /// The components, in load order.
    pub fn components(&self) -> &[Component<'a>] {
        &self.components[..self.components_len]
    }

    /// The component at `path` (compared case-insensitively, as FAT does).
    pub fn component(&self, path: &str) -> Option<&Component<'a>> {
        self.components().iter().find(|c| c.path.eq_ignore_ascii_case(path))
    }
}
