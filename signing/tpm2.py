"""TPM 2.0 structures attestation reads, parsed strictly (TPM 2.0 Library
Specification, Part 2: Structures), and the few commands the host tools send
to a TPM (the tests drive swtpm with them).

TPM marshaling is big-endian, unaligned; a TPM2B is a u16 size then that
many bytes. Every parser here consumes exactly its input: short input,
trailing bytes, an unknown algorithm or tag and a size that runs past its
container are `DecodeError`s naming the field, never ignored.

- `Public`: a TPM2B_PUBLIC (TPMT_PUBLIC of an ECC or RSA key), its Name and
  the `cryptography` public key;
- `Attest`: a TPM2B_ATTEST holding a TPMS_ATTEST of type
  TPM_ST_ATTEST_QUOTE (TPMS_QUOTE_INFO: PCR selection and digest);
- `Signature`: a TPMT_SIGNATURE (ECDSA or RSASSA) and its verification;
- `ak_template()`: the attestation key template of docs/boot-state.md;
- `Tpm`: a TPM 2.0 command client over any transport (CreatePrimary,
  PCR_Extend, PCR_Read, Quote, FlushContext).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from mantra.signing.encoding import DecodeError

# --- constants (Part 2) -------------------------------------------------------

# TPM_ALG_ID
ALG_RSA = 0x0001
ALG_SHA1 = 0x0004
ALG_HMAC = 0x0005
ALG_AES = 0x0006
ALG_KEYEDHASH = 0x0008
ALG_SHA256 = 0x000B
ALG_SHA384 = 0x000C
ALG_SHA512 = 0x000D
ALG_NULL = 0x0010
ALG_SM3_256 = 0x0012
ALG_RSASSA = 0x0014
ALG_RSAES = 0x0015
ALG_RSAPSS = 0x0016
ALG_OAEP = 0x0017
ALG_ECDSA = 0x0018
ALG_ECDH = 0x0019
ALG_ECDAA = 0x001A
ALG_ECSCHNORR = 0x001C
ALG_ECC = 0x0023
ALG_SYMCIPHER = 0x0025
ALG_CFB = 0x0043
ALG_SHA3_256 = 0x0027
ALG_SHA3_384 = 0x0028
ALG_SHA3_512 = 0x0029

ALG_NAMES = {
    ALG_RSA: "RSA", ALG_SHA1: "SHA-1", ALG_HMAC: "HMAC", ALG_AES: "AES", ALG_KEYEDHASH: "KEYEDHASH",
    ALG_SHA256: "SHA-256", ALG_SHA384: "SHA-384", ALG_SHA512: "SHA-512", ALG_NULL: "NULL", ALG_SM3_256: "SM3-256",
    ALG_RSASSA: "RSASSA", ALG_RSAES: "RSAES", ALG_RSAPSS: "RSAPSS", ALG_OAEP: "OAEP", ALG_ECDSA: "ECDSA",
    ALG_ECDH: "ECDH", ALG_ECDAA: "ECDAA", ALG_ECSCHNORR: "ECSCHNORR", ALG_ECC: "ECC", ALG_SYMCIPHER: "SYMCIPHER",
    ALG_CFB: "CFB", ALG_SHA3_256: "SHA3-256", ALG_SHA3_384: "SHA3-384", ALG_SHA3_512: "SHA3-512",
}
# Digest size of each hash algorithm a TPM may use for a PCR bank or a Name.
DIGEST_SIZES = {
    ALG_SHA1: 20, ALG_SHA256: 32, ALG_SHA384: 48, ALG_SHA512: 64, ALG_SM3_256: 32,
    ALG_SHA3_256: 32, ALG_SHA3_384: 48, ALG_SHA3_512: 64,
}
_HASHLIB = {ALG_SHA1: "sha1", ALG_SHA256: "sha256", ALG_SHA384: "sha384", ALG_SHA512: "sha512",
            ALG_SHA3_256: "sha3_256", ALG_SHA3_384: "sha3_384", ALG_SHA3_512: "sha3_512"}
_CRYPTO_HASH = {ALG_SHA1: hashes.SHA1, ALG_SHA256: hashes.SHA256, ALG_SHA384: hashes.SHA384,
                ALG_SHA512: hashes.SHA512}

# TPM_ECC_CURVE
ECC_NIST_P256 = 0x0003
ECC_NIST_P384 = 0x0004
ECC_NIST_P521 = 0x0005
_CURVES: dict[int, tuple[str, type[ec.EllipticCurve], int]] = {
    ECC_NIST_P256: ("NIST P-256", ec.SECP256R1, 32),
    ECC_NIST_P384: ("NIST P-384", ec.SECP384R1, 48),
    ECC_NIST_P521: ("NIST P-521", ec.SECP521R1, 66),
}

# TPMA_OBJECT
OBJ_FIXED_TPM = 1 << 1
OBJ_ST_CLEAR = 1 << 2
OBJ_FIXED_PARENT = 1 << 4
OBJ_SENSITIVE_DATA_ORIGIN = 1 << 5
OBJ_USER_WITH_AUTH = 1 << 6
OBJ_ADMIN_WITH_POLICY = 1 << 7
OBJ_NO_DA = 1 << 10
OBJ_ENCRYPTED_DUPLICATION = 1 << 11
OBJ_RESTRICTED = 1 << 16
OBJ_DECRYPT = 1 << 17
OBJ_SIGN = 1 << 18
_ATTRIBUTE_NAMES = {
    OBJ_FIXED_TPM: "fixedTPM", OBJ_ST_CLEAR: "stClear", OBJ_FIXED_PARENT: "fixedParent",
    OBJ_SENSITIVE_DATA_ORIGIN: "sensitiveDataOrigin", OBJ_USER_WITH_AUTH: "userWithAuth",
    OBJ_ADMIN_WITH_POLICY: "adminWithPolicy", OBJ_NO_DA: "noDA", OBJ_ENCRYPTED_DUPLICATION: "encryptedDuplication",
    OBJ_RESTRICTED: "restricted", OBJ_DECRYPT: "decrypt", OBJ_SIGN: "sign",
}
# Bits Part 2 reserves in TPMA_OBJECT (must be 0).
_OBJ_RESERVED = 0x1 | 0x8 | (0x3 << 8) | (0xF << 12) | (0x1FFF << 19)

# TPM_ST
ST_NO_SESSIONS = 0x8001
ST_SESSIONS = 0x8002
ST_ATTEST_QUOTE = 0x8018
ST_ATTEST_NAMES = {0x8014: "TPM_ST_ATTEST_CERTIFY", 0x8015: "TPM_ST_ATTEST_COMMAND_AUDIT",
                   0x8016: "TPM_ST_ATTEST_SESSION_AUDIT", 0x8017: "TPM_ST_ATTEST_CREATION",
                   ST_ATTEST_QUOTE: "TPM_ST_ATTEST_QUOTE", 0x8019: "TPM_ST_ATTEST_TIME", 0x801A: "TPM_ST_ATTEST_NV",
                   0x801C: "TPM_ST_ATTEST_NV_DIGEST"}
# TPM_GENERATED_VALUE: the magic of everything the TPM itself signs.
TPM_GENERATED_VALUE = 0xFF544347

# TPM_RH / handles
RH_OWNER = 0x40000001
RS_PW = 0x40000009
RH_ENDORSEMENT = 0x4000000B
RH_PLATFORM = 0x4000000C
RH_NULL = 0x40000007

# TPM_CC
CC_CREATE_PRIMARY = 0x00000131
CC_QUOTE = 0x00000158
CC_FLUSH_CONTEXT = 0x00000165
CC_STARTUP = 0x00000144
CC_PCR_READ = 0x0000017E
CC_PCR_EXTEND = 0x00000182
CC_PCR_EVENT = 0x0000013C
SU_CLEAR = 0x0000

PCR_SELECT_MIN = 3  # bytes of a PCR bitmap a TPM with 24 PCRs takes
MAX_PCR = 23


def alg_name(alg: int) -> str:
    return ALG_NAMES.get(alg, f"algorithm {alg:#06x}")


def attribute_names(attributes: int) -> str:
    """TPMA_OBJECT as `a | b | c` (unknown bits as hex)."""
    names = [name for bit, name in _ATTRIBUTE_NAMES.items() if attributes & bit]
    rest = attributes & ~sum(_ATTRIBUTE_NAMES)
    if rest:
        names.append(f"{rest:#x}")
    return " | ".join(names) or "none"


def digest(alg: int, data: bytes) -> bytes:
    """`data` hashed with TPM hash algorithm `alg`."""
    name = _HASHLIB.get(alg)
    if name is None:
        raise ValueError(f"{alg_name(alg)} is not a hash this tool computes")
    return hashlib.new(name, data).digest()


# --- reading --------------------------------------------------------------------


class Reader:
    """A big-endian cursor over `data` that refuses to read past its end;
    errors name `what` and the byte offset."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = memoryview(bytes(data))
        self.pos = 0
        self.what = what

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def fail(self, message: str, at: int | None = None) -> DecodeError:
        return DecodeError(f"{self.what}: {message} (at byte {self.pos if at is None else at})")

    def take(self, size: int, name: str) -> bytes:
        if size > self.left:
            raise self.fail(f"truncated: {name} needs {size} bytes, {self.left} left")
        chunk = bytes(self.data[self.pos : self.pos + size])
        self.pos += size
        return chunk

    def u8(self, name: str) -> int:
        return self.take(1, name)[0]

    def u16(self, name: str) -> int:
        return struct.unpack(">H", self.take(2, name))[0]

    def u32(self, name: str) -> int:
        return struct.unpack(">I", self.take(4, name))[0]

    def u64(self, name: str) -> int:
        return struct.unpack(">Q", self.take(8, name))[0]

    def tpm2b(self, name: str, max_size: int | None = None) -> bytes:
        start = self.pos
        size = self.u16(f"{name} size")
        if max_size is not None and size > max_size:
            raise self.fail(f"{name} is {size} bytes, at most {max_size}", start)
        return self.take(size, name)

    def finish(self) -> None:
        if self.left:
            raise self.fail(f"{self.left} trailing bytes")


def _u16(value: int) -> bytes:
    return struct.pack(">H", value)


def _u32(value: int) -> bytes:
    return struct.pack(">I", value)


def tpm2b(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError("a TPM2B holds at most 65535 bytes")
    return _u16(len(data)) + data


# --- PCR selection ----------------------------------------------------------------


@dataclass(frozen=True)
class PcrSelection:
    """One TPMS_PCR_SELECTION: a bank and the PCRs selected in it."""

    hash_alg: int
    pcrs: tuple[int, ...]  # ascending
    size_of_select: int = PCR_SELECT_MIN

    def encode(self) -> bytes:
        bitmap = bytearray(self.size_of_select)
        for pcr in self.pcrs:
            bitmap[pcr // 8] |= 1 << (pcr % 8)
        return _u16(self.hash_alg) + bytes([self.size_of_select]) + bytes(bitmap)

    def describe(self) -> str:
        return f"{alg_name(self.hash_alg)} {_ranges(self.pcrs)}"


def _ranges(pcrs: Iterable[int]) -> str:
    """[0, 1, 2, 3, 8] as '0-3, 8'."""
    out: list[str] = []
    run: list[int] = []
    for pcr in sorted(pcrs):
        if run and pcr == run[-1] + 1:
            run.append(pcr)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [pcr]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(out) or "none"


def encode_pcr_selections(selections: Iterable[PcrSelection]) -> bytes:
    """A TPML_PCR_SELECTION."""
    selections = list(selections)
    return _u32(len(selections)) + b"".join(s.encode() for s in selections)


def read_pcr_selections(reader: Reader, name: str) -> tuple[PcrSelection, ...]:
    """A TPML_PCR_SELECTION (at most one selection per bank)."""
    count = reader.u32(f"{name} count")
    if count > 16:  # HASH_COUNT of any real TPM is far smaller
        raise reader.fail(f"{name}: {count} banks selected, at most 16")
    out = []
    for index in range(count):
        alg = reader.u16(f"{name} {index} hash")
        if alg not in DIGEST_SIZES:
            raise reader.fail(f"{name} {index}: {alg_name(alg)} is not a PCR bank hash", reader.pos - 2)
        size = reader.u8(f"{name} {index} sizeofSelect")
        if not PCR_SELECT_MIN <= size <= 4:
            raise reader.fail(f"{name} {index}: sizeofSelect {size}, expected {PCR_SELECT_MIN} or 4 (24 or 32 PCRs)",
                              reader.pos - 1)
        bitmap = reader.take(size, f"{name} {index} pcrSelect")
        pcrs = tuple(i for i in range(size * 8) if bitmap[i // 8] >> (i % 8) & 1)
        out.append(PcrSelection(alg, pcrs, size))
    if len({s.hash_alg for s in out}) != len(out):
        raise reader.fail(f"{name}: a bank is selected twice")
    return tuple(out)


# --- TPM2B_PUBLIC ----------------------------------------------------------------


@dataclass(frozen=True)
class Public:
    """A TPMT_PUBLIC of an asymmetric key (ECC or RSA). `raw` are its exact
    bytes (without the TPM2B size), which its Name hashes."""

    type: int
    name_alg: int
    attributes: int
    auth_policy: bytes
    symmetric: tuple[int, ...]  # (ALG_NULL,) or (algorithm, keyBits, mode)
    scheme: int  # signing scheme, ALG_NULL for none
    scheme_hash: int | None  # the scheme's hash (None with ALG_NULL)
    # ECC
    curve: int | None = None
    kdf: tuple[int, ...] = (ALG_NULL,)
    x: bytes = b""
    y: bytes = b""
    # RSA
    key_bits: int | None = None
    exponent: int = 0  # 0 = the default 65537
    modulus: bytes = b""
    raw: bytes = field(default=b"", compare=False)

    # -- encoding (templates for TPM2_CreatePrimary) --

    def encode(self) -> bytes:
        """The TPMT_PUBLIC (not the TPM2B)."""
        out = _u16(self.type) + _u16(self.name_alg) + _u32(self.attributes) + tpm2b(self.auth_policy)
        out += b"".join(_u16(v) for v in self.symmetric)
        out += _u16(self.scheme)
        if self.scheme != ALG_NULL:
            assert self.scheme_hash is not None
            out += _u16(self.scheme_hash)
            if self.scheme == ALG_ECDAA:
                out += _u16(0)
        if self.type == ALG_ECC:
            assert self.curve is not None
            out += _u16(self.curve) + b"".join(_u16(v) for v in self.kdf) + tpm2b(self.x) + tpm2b(self.y)
        else:
            assert self.key_bits is not None
            out += _u16(self.key_bits) + _u32(self.exponent) + tpm2b(self.modulus)
        return out

    def encode_tpm2b(self) -> bytes:
        return tpm2b(self.raw or self.encode())

    # -- decoding --

    @classmethod
    def decode(cls, data: bytes, what: str = "TPM2B_PUBLIC") -> Public:
        """A TPM2B_PUBLIC: exactly the u16 size and the TPMT_PUBLIC it announces."""
        reader = Reader(data, what)
        size = reader.u16("size")
        if size != reader.left:
            raise reader.fail(f"size field says {size} bytes, {reader.left} follow", 0)
        return cls.decode_tpmt(reader.take(size, "TPMT_PUBLIC"), what)

    @classmethod
    def decode_tpmt(cls, raw: bytes, what: str = "TPMT_PUBLIC") -> Public:
        reader = Reader(raw, what)
        key_type = reader.u16("type")
        if key_type not in (ALG_ECC, ALG_RSA):
            raise reader.fail(f"key type {alg_name(key_type)}: attestation keys are ECC or RSA", 0)
        name_alg = reader.u16("nameAlg")
        if name_alg not in DIGEST_SIZES:
            raise reader.fail(f"nameAlg {alg_name(name_alg)} is not a hash", 2)
        attributes = reader.u32("objectAttributes")
        if attributes & _OBJ_RESERVED:
            raise reader.fail(f"objectAttributes {attributes:#010x} sets reserved bits", 4)
        auth_policy = reader.tpm2b("authPolicy", 64)
        if auth_policy and len(auth_policy) != DIGEST_SIZES[name_alg]:
            raise reader.fail(f"authPolicy is {len(auth_policy)} bytes, a {alg_name(name_alg)} digest is "
                              f"{DIGEST_SIZES[name_alg]}")
        symmetric: tuple[int, ...] = (reader.u16("symmetric.algorithm"),)
        if symmetric[0] != ALG_NULL:
            symmetric += (reader.u16("symmetric.keyBits"), reader.u16("symmetric.mode"))
        scheme = reader.u16("scheme")
        scheme_hash = None
        if scheme != ALG_NULL:
            allowed = (ALG_ECDSA, ALG_ECDAA, ALG_ECSCHNORR, ALG_ECDH) if key_type == ALG_ECC else \
                (ALG_RSASSA, ALG_RSAPSS, ALG_RSAES, ALG_OAEP)
            if scheme not in allowed:
                raise reader.fail(f"scheme {alg_name(scheme)} is not a scheme of an {alg_name(key_type)} key",
                                  reader.pos - 2)
            if scheme != ALG_RSAES:  # RSAES is the one scheme without a hash
                scheme_hash = reader.u16("scheme hashAlg")
                if scheme_hash not in DIGEST_SIZES:
                    raise reader.fail(f"scheme hash {alg_name(scheme_hash)} is not a hash", reader.pos - 2)
                if scheme == ALG_ECDAA:
                    reader.u16("scheme count")
        if key_type == ALG_ECC:
            curve = reader.u16("curveID")
            if curve not in _CURVES:
                raise reader.fail(f"curve {curve:#06x} is not a curve this tool knows (NIST P-256, P-384, P-521)",
                                  reader.pos - 2)
            kdf: tuple[int, ...] = (reader.u16("kdf.scheme"),)
            if kdf[0] != ALG_NULL:
                kdf += (reader.u16("kdf.hashAlg"),)
            size = _CURVES[curve][2]
            x = reader.tpm2b("unique.x", size)
            y = reader.tpm2b("unique.y", size)
            reader.finish()
            return cls(key_type, name_alg, attributes, auth_policy, symmetric, scheme, scheme_hash, curve=curve,
                       kdf=kdf, x=x, y=y, raw=bytes(raw))
        key_bits = reader.u16("keyBits")
        if key_bits not in (1024, 2048, 3072, 4096):
            raise reader.fail(f"keyBits {key_bits}: RSA keys are 1024, 2048, 3072 or 4096 bits", reader.pos - 2)
        exponent = reader.u32("exponent")
        modulus = reader.tpm2b("unique.rsa", key_bits // 8)
        reader.finish()
        return cls(key_type, name_alg, attributes, auth_policy, symmetric, scheme, scheme_hash, key_bits=key_bits,
                   exponent=exponent, modulus=modulus, raw=bytes(raw))

    # -- what it is --

    @property
    def tpmt(self) -> bytes:
        """The TPMT_PUBLIC bytes (what the Name hashes)."""
        return self.raw or self.encode()

    def name(self) -> bytes:
        """The key's Name: nameAlg (u16) || H_nameAlg(TPMT_PUBLIC)."""
        return _u16(self.name_alg) + digest(self.name_alg, self.tpmt)

    def qualified_name(self, parent_qualified_name: bytes) -> bytes:
        """The Qualified Name under a parent: nameAlg || H(QN(parent) || Name).
        A hierarchy's qualified name is its handle (e.g. TPM_RH_ENDORSEMENT),
        so a primary key's parent QN is `hierarchy_name(RH_ENDORSEMENT)`."""
        return _u16(self.name_alg) + digest(self.name_alg, parent_qualified_name + self.name())

    def describe(self) -> str:
        if self.type == ALG_ECC:
            assert self.curve is not None
            kind = f"ECC {_CURVES[self.curve][0]}"
        else:
            kind = f"RSA {self.key_bits}"
        scheme = alg_name(self.scheme) + (f"-{alg_name(self.scheme_hash)}" if self.scheme_hash else "")
        return f"{kind}, {scheme}, {attribute_names(self.attributes)}"

    def public_key(self) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
        """The key as a `cryptography` public key; DecodeError when the
        point is not on the curve or the modulus is not the key size."""
        if self.type == ALG_ECC:
            assert self.curve is not None
            _, curve, size = _CURVES[self.curve]
            if len(self.x) != size or len(self.y) != size:
                raise DecodeError(f"TPMT_PUBLIC: the ECC point is not {size}-byte coordinates "
                                  f"(x {len(self.x)}, y {len(self.y)} bytes)")
            try:
                return ec.EllipticCurvePublicNumbers(int.from_bytes(self.x, "big"), int.from_bytes(self.y, "big"),
                                                     curve()).public_key()
            except ValueError:
                raise DecodeError("TPMT_PUBLIC: the ECC point is not on the curve") from None
        assert self.key_bits is not None
        if len(self.modulus) != self.key_bits // 8 or not self.modulus[0] & 0x80:
            raise DecodeError(f"TPMT_PUBLIC: the RSA modulus is not {self.key_bits} bits")
        try:
            return rsa.RSAPublicNumbers(self.exponent or 65537, int.from_bytes(self.modulus, "big")).public_key()
        except ValueError as exc:
            raise DecodeError(f"TPMT_PUBLIC: not an RSA public key: {exc}") from None


def hierarchy_name(handle: int) -> bytes:
    """The Name (and Qualified Name) of a permanent handle: the handle itself."""
    return _u32(handle)


# The attestation key template (docs/boot-state.md, "Attestation console protocol").
AK_ATTRIBUTES = (OBJ_FIXED_TPM | OBJ_FIXED_PARENT | OBJ_SENSITIVE_DATA_ORIGIN | OBJ_USER_WITH_AUTH | OBJ_NO_DA
                 | OBJ_RESTRICTED | OBJ_SIGN)
AK_HIERARCHY = RH_ENDORSEMENT


def ak_template() -> Public:
    """The AK template: ECC NIST P-256, nameAlg SHA-256, fixedTPM |
    fixedParent | sensitiveDataOrigin | userWithAuth | noDA | restricted |
    sign, no policy, no symmetric, ECDSA with SHA-256, no KDF, empty unique.
    (noDA: the auth is empty; a DA-protected key would lock the TPM out
    after a few power cuts, see docs/boot-state.md.)"""
    return Public(ALG_ECC, ALG_SHA256, AK_ATTRIBUTES, b"", (ALG_NULL,), ALG_ECDSA, ALG_SHA256, curve=ECC_NIST_P256,
                  kdf=(ALG_NULL,))


def template_differences(public: Public, template: Public | None = None) -> list[str]:
    """How `public` differs from the key `template` makes (every field but
    the unique point); empty when it is such a key."""
    want = template or ak_template()
    out = []

    def differ(what: str, got: object, expected: object) -> None:
        out.append(f"{what} is {got}, the template has {expected}")

    if public.type != want.type:
        differ("type", alg_name(public.type), alg_name(want.type))
        return out
    if public.name_alg != want.name_alg:
        differ("nameAlg", alg_name(public.name_alg), alg_name(want.name_alg))
    if public.attributes != want.attributes:
        differ("objectAttributes", attribute_names(public.attributes), attribute_names(want.attributes))
    if public.auth_policy != want.auth_policy:
        differ("authPolicy", public.auth_policy.hex() or "empty", want.auth_policy.hex() or "empty")
    if public.symmetric != want.symmetric:
        differ("symmetric", alg_name(public.symmetric[0]), alg_name(want.symmetric[0]))
    if (public.scheme, public.scheme_hash) != (want.scheme, want.scheme_hash):
        differ("scheme", f"{alg_name(public.scheme)}/{alg_name(public.scheme_hash or ALG_NULL)}",
               f"{alg_name(want.scheme)}/{alg_name(want.scheme_hash or ALG_NULL)}")
    if public.type == ALG_ECC:
        if public.curve != want.curve:
            differ("curve", _CURVES[public.curve][0] if public.curve in _CURVES else public.curve,
                   _CURVES[want.curve][0] if want.curve in _CURVES else want.curve)
        if public.kdf != want.kdf:
            differ("kdf", alg_name(public.kdf[0]), alg_name(want.kdf[0]))
    else:
        if public.key_bits != want.key_bits:
            differ("keyBits", public.key_bits, want.key_bits)
        if public.exponent != want.exponent:
            differ("exponent", public.exponent, want.exponent)
    return out


# --- TPM2B_ATTEST ------------------------------------------------------------------


@dataclass(frozen=True)
class Attest:
    """A TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE. `raw` are the exact bytes
    the signature covers (the TPMS_ATTEST, without the TPM2B size)."""

    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    pcr_select: tuple[PcrSelection, ...]
    pcr_digest: bytes
    raw: bytes = field(default=b"", compare=False)

    @classmethod
    def decode(cls, data: bytes, what: str = "TPM2B_ATTEST") -> Attest:
        """A TPM2B_ATTEST holding a quote: framing, magic and type are
        checked here (what follows depends on the type)."""
        outer = Reader(data, what)
        size = outer.u16("size")
        if size != outer.left:
            raise outer.fail(f"size field says {size} bytes, {outer.left} follow", 0)
        raw = outer.take(size, "TPMS_ATTEST")
        reader = Reader(raw, "TPMS_ATTEST")
        magic = reader.u32("magic")
        if magic != TPM_GENERATED_VALUE:
            raise reader.fail(f"magic {magic:#010x} is not TPM_GENERATED_VALUE {TPM_GENERATED_VALUE:#010x} "
                              "(not a structure the TPM made)", 0)
        kind = reader.u16("type")
        if kind != ST_ATTEST_QUOTE:
            raise reader.fail(f"type {ST_ATTEST_NAMES.get(kind, hex(kind))}, expected TPM_ST_ATTEST_QUOTE "
                              f"({ST_ATTEST_QUOTE:#06x})", 4)
        signer = reader.tpm2b("qualifiedSigner", 2 + 64)
        if signer and (len(signer) < 2 or int.from_bytes(signer[:2], "big") not in DIGEST_SIZES
                       or len(signer) != 2 + DIGEST_SIZES[int.from_bytes(signer[:2], "big")]):
            raise reader.fail("qualifiedSigner is not a digest Name (nameAlg and its digest)")
        extra = reader.tpm2b("extraData", 64)
        clock = reader.u64("clockInfo.clock")
        resets = reader.u32("clockInfo.resetCount")
        restarts = reader.u32("clockInfo.restartCount")
        safe = reader.u8("clockInfo.safe")
        if safe > 1:
            raise reader.fail(f"clockInfo.safe is {safe}, a TPMI_YES_NO is 0 or 1", reader.pos - 1)
        firmware = reader.u64("firmwareVersion")
        selection = read_pcr_selections(reader, "pcrSelect")
        pcr_digest = reader.tpm2b("pcrDigest", 64)
        reader.finish()
        return cls(magic, kind, signer, extra, clock, resets, restarts, bool(safe), firmware, selection, pcr_digest,
                   raw=raw)

    def encode(self) -> bytes:
        """The TPMS_ATTEST (tests build altered quotes with it)."""
        return (_u32(self.magic) + _u16(self.type) + tpm2b(self.qualified_signer) + tpm2b(self.extra_data)
                + struct.pack(">QIIB", self.clock, self.reset_count, self.restart_count, int(self.safe))
                + struct.pack(">Q", self.firmware_version) + encode_pcr_selections(self.pcr_select)
                + tpm2b(self.pcr_digest))

    @property
    def tpms(self) -> bytes:
        """The TPMS_ATTEST bytes (what the signature covers)."""
        return self.raw or self.encode()

    def encode_tpm2b(self) -> bytes:
        return tpm2b(self.tpms)


# --- TPMT_SIGNATURE ----------------------------------------------------------------


class SignatureError(Exception):
    """A signature that does not verify; the message says why."""


@dataclass(frozen=True)
class Signature:
    """A TPMT_SIGNATURE: ECDSA (r, s) or RSASSA (PKCS#1 v1.5), with its hash."""

    sig_alg: int
    hash_alg: int
    r: bytes = b""
    s: bytes = b""
    rsa: bytes = b""

    @classmethod
    def decode(cls, data: bytes, what: str = "TPMT_SIGNATURE") -> Signature:
        reader = Reader(data, what)
        sig_alg = reader.u16("sigAlg")
        if sig_alg not in (ALG_ECDSA, ALG_RSASSA, ALG_RSAPSS):
            raise reader.fail(f"sigAlg {alg_name(sig_alg)}: this tool verifies ECDSA, RSASSA and RSAPSS", 0)
        hash_alg = reader.u16("hash")
        if hash_alg not in _CRYPTO_HASH:
            raise reader.fail(f"hash {alg_name(hash_alg)}: this tool verifies SHA-1/256/384/512 signatures", 2)
        if sig_alg == ALG_ECDSA:
            r = reader.tpm2b("signatureR", 66)
            s = reader.tpm2b("signatureS", 66)
            reader.finish()
            if not r or not s:
                raise reader.fail("an ECDSA signature with an empty r or s")
            return cls(sig_alg, hash_alg, r=r, s=s)
        sig = reader.tpm2b("sig", 512)
        reader.finish()
        return cls(sig_alg, hash_alg, rsa=sig)

    def encode(self) -> bytes:
        out = _u16(self.sig_alg) + _u16(self.hash_alg)
        if self.sig_alg == ALG_ECDSA:
            return out + tpm2b(self.r) + tpm2b(self.s)
        return out + tpm2b(self.rsa)

    def describe(self) -> str:
        return f"{alg_name(self.sig_alg)}-{alg_name(self.hash_alg)}"

    def verify(self, public: Public, message: bytes) -> None:
        """Checks the signature over `message` with `public`; raises
        SignatureError saying what does not fit."""
        if public.scheme != ALG_NULL and (self.sig_alg, self.hash_alg) != (public.scheme, public.scheme_hash):
            raise SignatureError(f"the signature is {self.describe()}, the key signs with "
                                 f"{alg_name(public.scheme)}-{alg_name(public.scheme_hash or ALG_NULL)}")
        key = public.public_key()
        algorithm = _CRYPTO_HASH[self.hash_alg]()
        try:
            if self.sig_alg == ALG_ECDSA:
                if not isinstance(key, ec.EllipticCurvePublicKey):
                    raise SignatureError("an ECDSA signature from an RSA key")
                der = encode_dss_signature(int.from_bytes(self.r, "big"), int.from_bytes(self.s, "big"))
                key.verify(der, message, ec.ECDSA(algorithm))
            else:
                if not isinstance(key, rsa.RSAPublicKey):
                    raise SignatureError(f"an {alg_name(self.sig_alg)} signature from an ECC key")
                pad = padding.PKCS1v15() if self.sig_alg == ALG_RSASSA else \
                    padding.PSS(padding.MGF1(algorithm), padding.PSS.AUTO)
                key.verify(self.rsa, message, pad, algorithm)
        except InvalidSignature:
            raise SignatureError(f"the {self.describe()} signature does not verify with the AK") from None


# --- commands ----------------------------------------------------------------------


class TpmError(Exception):
    """A TPM command failed: `code` is the TPM_RC."""

    def __init__(self, command: str, code: int) -> None:
        super().__init__(f"{command}: TPM response code {code:#x}")
        self.command = command
        self.code = code


_PASSWORD_SESSION = _u32(RS_PW) + tpm2b(b"") + b"\x00" + tpm2b(b"")  # empty password


def command(code: int, handles: Iterable[int] = (), parameters: bytes = b"", *, auth_handles: int = 0) -> bytes:
    """A TPM command; the first `auth_handles` handles are authorized with
    an empty password session."""
    body = b"".join(_u32(h) for h in handles)
    tag = ST_NO_SESSIONS
    if auth_handles:
        sessions = _PASSWORD_SESSION * auth_handles
        body += _u32(len(sessions)) + sessions
        tag = ST_SESSIONS
    body += parameters
    return _u16(tag) + _u32(10 + len(body)) + _u32(code) + body


@dataclass(frozen=True)
class Response:
    handles: tuple[int, ...]
    parameters: bytes


def parse_response(name: str, data: bytes, handles: int = 0) -> Response:
    """A TPM response: header, `handles` handles, then the parameters (the
    parameterSize of a sessions response is honoured, sessions skipped)."""
    reader = Reader(data, f"{name} response")
    tag = reader.u16("tag")
    size = reader.u32("responseSize")
    code = reader.u32("responseCode")
    if size != len(data):
        raise reader.fail(f"responseSize {size}, {len(data)} bytes received", 2)
    if code != 0:
        raise TpmError(name, code)
    found = tuple(reader.u32(f"handle {i}") for i in range(handles))
    if tag == ST_SESSIONS:
        parameters = reader.take(reader.u32("parameterSize"), "parameters")
    elif tag == ST_NO_SESSIONS:
        parameters = reader.take(reader.left, "parameters")
    else:
        raise reader.fail(f"tag {tag:#06x} is neither TPM_ST_SESSIONS nor TPM_ST_NO_SESSIONS", 0)
    return Response(found, parameters)


@dataclass(frozen=True)
class Quote:
    attest: bytes  # TPM2B_ATTEST
    signature: bytes  # TPMT_SIGNATURE


# TPM_RC_RETRY, TPM_RC_YIELDED, TPM_RC_TESTING: the TPM asks to send the command again.
_TRY_AGAIN = (0x922, 0x908, 0x90A)
_RETRIES = 20


class Tpm:
    """A TPM 2.0 driven command by command; `transport` sends one command
    and returns the TPM's response (e.g. swtpm's TCP or unix socket)."""

    def __init__(self, transport: Callable[[bytes], bytes]) -> None:
        self.transport = transport

    def _run(self, name: str, cmd: bytes, handles: int = 0) -> Response:
        for _ in range(_RETRIES):
            try:
                return parse_response(name, self.transport(cmd), handles)
            except TpmError as error:
                if error.code not in _TRY_AGAIN:
                    raise
        raise TpmError(name, error.code)

    def startup(self) -> None:
        self._run("TPM2_Startup", command(CC_STARTUP, parameters=_u16(SU_CLEAR)))

    def create_primary(self, template: Public, hierarchy: int = RH_ENDORSEMENT) -> tuple[int, Public, bytes]:
        """TPM2_CreatePrimary with an empty auth: (handle, its public, its Name)."""
        params = tpm2b(tpm2b(b"") + tpm2b(b"")) + template.encode_tpm2b() + tpm2b(b"") + _u32(0)
        response = self._run("TPM2_CreatePrimary", command(CC_CREATE_PRIMARY, [hierarchy], params, auth_handles=1), 1)
        reader = Reader(response.parameters, "TPM2_CreatePrimary parameters")
        public = reader.tpm2b("outPublic")
        reader.tpm2b("creationData")
        reader.tpm2b("creationHash")
        reader.take(2 + 4, "creationTicket tag and hierarchy")
        reader.tpm2b("creationTicket digest")
        name = reader.tpm2b("name")
        reader.finish()
        return response.handles[0], Public.decode(tpm2b(public)), name

    def pcr_extend(self, pcr: int, digests: dict[int, bytes]) -> None:
        """TPM2_PCR_Extend of `pcr` in each bank of `digests` (alg -> digest)."""
        values = _u32(len(digests)) + b"".join(_u16(alg) + value for alg, value in digests.items())
        self._run("TPM2_PCR_Extend", command(CC_PCR_EXTEND, [pcr], values, auth_handles=1))

    def pcr_read(self, alg: int, pcrs: Iterable[int]) -> dict[int, bytes]:
        """TPM2_PCR_Read, one bank (a TPM returns at most 8 PCRs per call)."""
        out: dict[int, bytes] = {}
        wanted = sorted(pcrs)
        while wanted:
            chunk, wanted = wanted[:8], wanted[8:]
            selection = encode_pcr_selections([PcrSelection(alg, tuple(chunk))])
            response = self._run("TPM2_PCR_Read", command(CC_PCR_READ, parameters=selection))
            reader = Reader(response.parameters, "TPM2_PCR_Read parameters")
            reader.u32("pcrUpdateCounter")
            got = read_pcr_selections(reader, "pcrSelectionOut")
            count = reader.u32("pcrValues count")
            values = [reader.tpm2b(f"pcrValue {i}") for i in range(count)]
            reader.finish()
            selected = [p for s in got for p in s.pcrs]
            if selected != chunk or len(values) != len(chunk):
                raise DecodeError(f"TPM2_PCR_Read returned PCRs {selected}, {len(values)} values, asked {chunk}")
            out.update(zip(chunk, values))
        return out

    def quote(self, key: int, nonce: bytes, selection: Iterable[PcrSelection]) -> Quote:
        """TPM2_Quote with the key's own scheme (inScheme TPM_ALG_NULL)."""
        params = tpm2b(nonce) + _u16(ALG_NULL) + encode_pcr_selections(selection)
        response = self._run("TPM2_Quote", command(CC_QUOTE, [key], params, auth_handles=1))
        reader = Reader(response.parameters, "TPM2_Quote parameters")
        attest = reader.tpm2b("quoted")
        start = reader.pos
        Signature.decode(reader.take(reader.left, "signature"))
        return Quote(tpm2b(attest), response.parameters[start:])

    def flush(self, handle: int) -> None:
        self._run("TPM2_FlushContext", command(CC_FLUSH_CONTEXT, parameters=_u32(handle)))
