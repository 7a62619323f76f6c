//! TPM 2.0 command marshalling and strict response parsing (TCG TPM 2.0
//! Library, Part 2 structures and Part 3 commands) for the three commands
//! attestation needs: TPM2_CreatePrimary of the attestation key,
//! TPM2_Quote and TPM2_FlushContext. Big-endian throughout.
//!
//! The attestation key (docs/boot-state.md, "Attestation console
//! protocol"): a primary key in the endorsement hierarchy, empty auth,
//! ECC NIST P-256, nameAlg SHA-256, fixedTPM | fixedParent |
//! sensitiveDataOrigin | userWithAuth | noDA | restricted | sign, scheme
//! ECDSA with SHA-256, empty unique: the same TPM always derives the same key.
//!
//! Every response is parsed strictly: the header's size must equal the
//! bytes received, every TPM2B must fit, and nothing may be left over.

use alloc::vec::Vec;

pub const TPM_ST_NO_SESSIONS: u16 = 0x8001;
pub const TPM_ST_SESSIONS: u16 = 0x8002;
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;

pub const TPM_CC_CREATE_PRIMARY: u32 = 0x0000_0131;
pub const TPM_CC_QUOTE: u32 = 0x0000_0158;
pub const TPM_CC_FLUSH_CONTEXT: u32 = 0x0000_0165;

pub const TPM_RH_ENDORSEMENT: u32 = 0x4000_000B;
pub const TPM_RS_PW: u32 = 0x4000_0009;

pub const TPM_ALG_RSASSA: u16 = 0x0014;
pub const TPM_ALG_RSAPSS: u16 = 0x0016;
pub const TPM_ALG_SHA256: u16 = 0x000B;
pub const TPM_ALG_NULL: u16 = 0x0010;
pub const TPM_ALG_ECDSA: u16 = 0x0018;
pub const TPM_ALG_ECDAA: u16 = 0x001A;
pub const TPM_ALG_SM2: u16 = 0x001B;
pub const TPM_ALG_ECSCHNORR: u16 = 0x001C;
pub const TPM_ALG_ECC: u16 = 0x0023;
pub const TPM_ECC_NIST_P256: u16 = 0x0003;

/// TPMA_OBJECT bits of the attestation key.
pub const FIXED_TPM: u32 = 1 << 1;
pub const FIXED_PARENT: u32 = 1 << 4;
pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
pub const USER_WITH_AUTH: u32 = 1 << 6;
/// Not subject to dictionary-attack lockout: without it every unclean
/// reset counts as an authorization failure (TPM2 Part 1, "Dictionary
/// Attack Protection") and quotes end in TPM_RC_LOCKOUT.
pub const NO_DA: u32 = 1 << 10;
pub const RESTRICTED: u32 = 1 << 16;
pub const SIGN: u32 = 1 << 18;
pub const AK_ATTRIBUTES: u32 = FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | USER_WITH_AUTH | NO_DA | RESTRICTED | SIGN;

/// PCRs the quote covers: 0–9 of the SHA-256 bank (bitmap, 3 octets).
pub const QUOTE_PCRS: [u8; 3] = [0xFF, 0x03, 0x00];
/// Length of the nonce (qualifying data).
pub const NONCE_LEN: usize = 32;
/// Bytes of a response header: tag, size, response code.
pub const HEADER_LEN: usize = 10;
/// Largest response accepted (a TPM's own limit is about 4 KiB).
pub const MAX_RESPONSE: usize = 8192;

/// Why a response was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The TPM answered with a non-zero response code.
    Tpm(u32),
    /// The bytes do not form the expected response.
    Malformed(&'static str),
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Tpm(rc) => write!(f, "TPM response code {rc:#x}{}", rc_hint(*rc)),
            Error::Malformed(what) => write!(f, "malformed TPM response: {what}"),
        }
    }
}

/// A few response codes worth naming.
fn rc_hint(rc: u32) -> &'static str {
    match rc {
        0x100 => " (TPM_RC_INITIALIZE: TPM2_Startup was not run)",
        0x101 => " (TPM_RC_FAILURE: the TPM is in failure mode)",
        0x922 => " (TPM_RC_RETRY)",
        0x902 => " (TPM_RC_OBJECT_MEMORY: no room for another loaded object)",
        0x921 => " (TPM_RC_LOCKOUT: dictionary-attack lockout; it heals after the TPM's recovery time)",
        // Format 1 (bit 7) TPM_RC_AUTH_FAIL / TPM_RC_BAD_AUTH, whatever
        // handle, session or parameter number bits 8-11 and 6 name.
        rc if rc & 0x0BF == 0x08E || rc & 0x0BF == 0x0A2 => {
            " (authorization failed: does the endorsement hierarchy have a password?)"
        }
        _ => "",
    }
}

/// A command under construction: header placeholder, then fields.
struct Command(Vec<u8>);

impl Command {
    fn new(tag: u16, code: u32) -> Self {
        let mut bytes = Vec::with_capacity(128);
        bytes.extend_from_slice(&tag.to_be_bytes());
        bytes.extend_from_slice(&[0; 4]);
        bytes.extend_from_slice(&code.to_be_bytes());
        Self(bytes)
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    /// A TPM2B: u16 size, then the bytes.
    fn tpm2b(&mut self, v: &[u8]) -> &mut Self {
        self.u16(v.len() as u16).bytes(v)
    }
    /// The authorization area with one empty-password session (TPM_RS_PW,
    /// empty nonce, no attributes, empty HMAC = the password).
    fn password_session(&mut self) -> &mut Self {
        self.u32(9).u32(TPM_RS_PW).tpm2b(&[]).u8(0).tpm2b(&[])
    }
    fn finish(mut self) -> Vec<u8> {
        let size = self.0.len() as u32;
        self.0[2..6].copy_from_slice(&size.to_be_bytes());
        self.0
    }
}

/// The attestation key's TPMT_PUBLIC template (see the module comment).
pub fn ak_template() -> Vec<u8> {
    let mut t = Command(Vec::new());
    t.u16(TPM_ALG_ECC)
        .u16(TPM_ALG_SHA256)
        .u32(AK_ATTRIBUTES)
        .tpm2b(&[]) // authPolicy
        // TPMS_ECC_PARMS: symmetric (NULL: a signing key), scheme ECDSA
        // with SHA-256, curve P-256, kdf NULL.
        .u16(TPM_ALG_NULL)
        .u16(TPM_ALG_ECDSA)
        .u16(TPM_ALG_SHA256)
        .u16(TPM_ECC_NIST_P256)
        .u16(TPM_ALG_NULL)
        // unique: TPMS_ECC_POINT with empty x and y.
        .tpm2b(&[])
        .tpm2b(&[]);
    t.0
}

/// TPM2_CreatePrimary(TPM_RH_ENDORSEMENT, empty auth) of the attestation key.
pub fn create_primary_command() -> Vec<u8> {
    let template = ak_template();
    let mut c = Command::new(TPM_ST_SESSIONS, TPM_CC_CREATE_PRIMARY);
    c.u32(TPM_RH_ENDORSEMENT).password_session();
    // inSensitive: TPM2B_SENSITIVE_CREATE { userAuth empty, data empty }.
    c.u16(4).tpm2b(&[]).tpm2b(&[]);
    c.tpm2b(&template); // inPublic
    c.tpm2b(&[]); // outsideInfo
    c.u32(0); // creationPCR: no selection
    c.finish()
}

/// TPM2_Quote with key `ak`: SHA-256 PCRs 0–9, qualifying data `nonce`,
/// scheme NULL (the key's own ECDSA-SHA256).
pub fn quote_command(ak: u32, nonce: &[u8; NONCE_LEN]) -> Vec<u8> {
    let mut c = Command::new(TPM_ST_SESSIONS, TPM_CC_QUOTE);
    c.u32(ak).password_session();
    c.tpm2b(nonce);
    c.u16(TPM_ALG_NULL);
    c.u32(1).u16(TPM_ALG_SHA256).u8(QUOTE_PCRS.len() as u8).bytes(&QUOTE_PCRS);
    c.finish()
}

/// TPM2_FlushContext(`handle`).
pub fn flush_context_command(handle: u32) -> Vec<u8> {
    let mut c = Command::new(TPM_ST_NO_SESSIONS, TPM_CC_FLUSH_CONTEXT);
    c.u32(handle);
    c.finish()
}

/// A bounds-checked reader over a response.
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Error> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or(Error::Malformed(what))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    pub fn u8(&mut self, what: &'static str) -> Result<u8, Error> {
        Ok(self.take(1, what)?[0])
    }
    pub fn u16(&mut self, what: &'static str) -> Result<u16, Error> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub fn u32(&mut self, what: &'static str) -> Result<u32, Error> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// A TPM2B's contents.
    pub fn tpm2b(&mut self, what: &'static str) -> Result<&'a [u8], Error> {
        let n = self.u16(what)? as usize;
        self.take(n, what)
    }
    /// A TPM2B with its size prefix, as the wire carries it.
    pub fn tpm2b_whole(&mut self, what: &'static str) -> Result<&'a [u8], Error> {
        let start = self.at;
        self.tpm2b(what)?;
        Ok(&self.bytes[start..self.at])
    }
    pub fn position(&self) -> usize {
        self.at
    }
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }
    pub fn end(&self, what: &'static str) -> Result<(), Error> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(Error::Malformed(what))
        }
    }
}

/// The size a response header announces (for the driver, which reads the
/// header first): checks the tag and bounds.
pub fn response_size(header: &[u8]) -> Result<usize, Error> {
    let mut r = Reader::new(header);
    let tag = r.u16("header")?;
    let size = r.u32("header")? as usize;
    if tag != TPM_ST_NO_SESSIONS && tag != TPM_ST_SESSIONS {
        return Err(Error::Malformed("unknown response tag"));
    }
    if !(HEADER_LEN..=MAX_RESPONSE).contains(&size) {
        return Err(Error::Malformed("response size out of range"));
    }
    Ok(size)
}

/// Checks the header of a whole response; returns a reader past it and
/// the tag. A non-zero response code is `Error::Tpm`.
fn open(response: &[u8], sessions: bool) -> Result<Reader<'_>, Error> {
    let mut r = Reader::new(response);
    let tag = r.u16("header")?;
    let size = r.u32("header")? as usize;
    let rc = r.u32("header")?;
    if size != response.len() {
        return Err(Error::Malformed("size field differs from the bytes received"));
    }
    if rc != 0 {
        return Err(Error::Tpm(rc));
    }
    let expected = if sessions { TPM_ST_SESSIONS } else { TPM_ST_NO_SESSIONS };
    if tag != expected {
        return Err(Error::Malformed("unexpected response tag"));
    }
    Ok(r)
}

/// Parses the parameter area of a sessions response: returns a reader over
/// exactly the parameters, after checking the authorization area (one
/// password session: empty nonce, attributes, empty HMAC).
fn parameters<'a>(r: &mut Reader<'a>) -> Result<Reader<'a>, Error> {
    let size = r.u32("parameterSize")? as usize;
    let params = r.take(size, "parameters")?;
    r.tpm2b("session nonce")?;
    r.u8("session attributes")?;
    r.tpm2b("session hmac")?;
    r.end("bytes after the authorization area")?;
    Ok(Reader::new(params))
}

/// What TPM2_CreatePrimary returned that attestation uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedPrimary {
    pub handle: u32,
    /// The key's TPM2B_PUBLIC, size prefix included.
    pub public: Vec<u8>,
}

pub fn parse_create_primary(response: &[u8]) -> Result<CreatedPrimary, Error> {
    let mut r = open(response, true)?;
    let handle = r.u32("objectHandle")?;
    let mut p = parameters(&mut r)?;
    let public = p.tpm2b_whole("outPublic")?.to_vec();
    p.tpm2b("creationData")?;
    p.tpm2b("creationHash")?;
    p.u16("creationTicket tag")?;
    p.u32("creationTicket hierarchy")?;
    p.tpm2b("creationTicket digest")?;
    p.tpm2b("name")?;
    p.end("bytes after the name")?;
    if public.len() <= 2 {
        return Err(Error::Malformed("empty outPublic"));
    }
    Ok(CreatedPrimary { handle, public })
}

/// What TPM2_Quote returned, as the wire carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quote {
    /// TPM2B_ATTEST, size prefix included.
    pub attest: Vec<u8>,
    /// TPMT_SIGNATURE.
    pub signature: Vec<u8>,
}

/// Reads a TPMT_SIGNATURE and returns its bytes.
fn signature<'a>(r: &mut Reader<'a>, all: &'a [u8]) -> Result<&'a [u8], Error> {
    let start = r.position();
    let alg = r.u16("signature algorithm")?;
    match alg {
        TPM_ALG_ECDSA | TPM_ALG_ECDAA | TPM_ALG_SM2 | TPM_ALG_ECSCHNORR => {
            r.u16("signature hash")?;
            r.tpm2b("signatureR")?;
            r.tpm2b("signatureS")?;
        }
        TPM_ALG_RSASSA | TPM_ALG_RSAPSS => {
            r.u16("signature hash")?;
            r.tpm2b("RSA signature")?;
        }
        _ => return Err(Error::Malformed("unsupported signature algorithm")),
    }
    Ok(&all[start..r.position()])
}

pub fn parse_quote(response: &[u8]) -> Result<Quote, Error> {
    let mut r = open(response, true)?;
    let size = r.u32("parameterSize")? as usize;
    let params = r.take(size, "parameters")?;
    r.tpm2b("session nonce")?;
    r.u8("session attributes")?;
    r.tpm2b("session hmac")?;
    r.end("bytes after the authorization area")?;
    let mut p = Reader::new(params);
    let attest = p.tpm2b_whole("quoted")?.to_vec();
    let signature = signature(&mut p, params)?.to_vec();
    p.end("bytes after the signature")?;
    Ok(Quote { attest, signature })
}

pub fn parse_flush_context(response: &[u8]) -> Result<(), Error> {
    open(response, false)?.end("bytes after the header")
}

/// The fields of a TPMS_ATTEST of a quote that a verifier checks first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuoteInfo<'a> {
    pub extra_data: &'a [u8],
    /// TPML_PCR_SELECTION as raw bytes.
    pub pcr_select: &'a [u8],
    pub pcr_digest: &'a [u8],
}

/// Parses a TPM2B_ATTEST (size prefix included) holding a quote.
pub fn parse_attest(attest: &[u8]) -> Result<QuoteInfo<'_>, Error> {
    let mut outer = Reader::new(attest);
    let body = outer.tpm2b("TPM2B_ATTEST")?;
    outer.end("bytes after TPM2B_ATTEST")?;
    let mut r = Reader::new(body);
    if r.u32("magic")? != TPM_GENERATED_VALUE {
        return Err(Error::Malformed("attest magic is not TPM_GENERATED_VALUE"));
    }
    if r.u16("type")? != TPM_ST_ATTEST_QUOTE {
        return Err(Error::Malformed("attest type is not a quote"));
    }
    r.tpm2b("qualifiedSigner")?;
    let extra_data = r.tpm2b("extraData")?;
    r.take(8 + 4 + 4 + 1, "clockInfo")?;
    r.take(8, "firmwareVersion")?;
    let select_start = r.position();
    let count = r.u32("pcrSelect count")?;
    for _ in 0..count {
        r.u16("pcrSelect hash")?;
        let n = r.u8("sizeofSelect")? as usize;
        r.take(n, "pcrSelect")?;
    }
    let pcr_select = &body[select_start..r.position()];
    let pcr_digest = r.tpm2b("pcrDigest")?;
    r.end("bytes after pcrDigest")?;
    Ok(QuoteInfo { extra_data, pcr_select, pcr_digest })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;

    fn hex(s: &str) -> Vec<u8> {
        let s: std::string::String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn create_primary_command_bytes() {
        // Part 3 section 24.1: header, primaryHandle, the password session,
        // inSensitive, inPublic (the AK template), outsideInfo, creationPCR.
        let expected = hex(
            "8002 00000041 00000131 4000000b
             00000009 40000009 0000 00 0000
             0004 0000 0000
             0018 0023 000b 00050472 0000 0010 0018 000b 0003 0010 0000 0000
             0000 00000000",
        );
        assert_eq!(create_primary_command(), expected);
    }

    #[test]
    fn quote_command_bytes() {
        let nonce = [0xA5; 32];
        let mut expected = hex("8002 00000049 00000158 80000000 00000009 40000009 0000 00 0000 0020");
        expected.extend_from_slice(&nonce);
        expected.extend_from_slice(&hex("0010 00000001 000b 03 ff0300"));
        assert_eq!(expected.len(), 0x49);
        assert_eq!(quote_command(0x8000_0000, &nonce), expected);
        assert_eq!(flush_context_command(0x8000_0001), hex("8001 0000000e 00000165 80000001"));
    }

    /// A CreatePrimary response shaped as swtpm's (public area shortened to
    /// a plausible ECC point; creation data and ticket present).
    fn create_primary_response() -> Vec<u8> {
        let mut public = ak_template();
        // unique: 32-byte x and y instead of the empty ones.
        public.truncate(public.len() - 4);
        public.extend_from_slice(&hex("0020"));
        public.extend_from_slice(&[0x11; 32]);
        public.extend_from_slice(&hex("0020"));
        public.extend_from_slice(&[0x22; 32]);
        let mut params = Vec::new();
        params.extend_from_slice(&(public.len() as u16).to_be_bytes());
        params.extend_from_slice(&public);
        params.extend_from_slice(&hex("0003 aabbcc")); // creationData
        params.extend_from_slice(&hex("0002 dddd")); // creationHash
        params.extend_from_slice(&hex("8021 4000000b 0001 ee")); // creationTicket
        params.extend_from_slice(&hex("0002 000b")); // name (truncated for the test)
        let mut body = hex("80000000");
        body.extend_from_slice(&(params.len() as u32).to_be_bytes());
        body.extend_from_slice(&params);
        body.extend_from_slice(&hex("0000 01 0000"));
        let mut r = hex("8002");
        r.extend_from_slice(&((body.len() + 10) as u32).to_be_bytes());
        r.extend_from_slice(&[0; 4]);
        r.extend_from_slice(&body);
        r
    }

    /// Responses recorded from swtpm 0.7 (libtpms) on a fresh TPM state, to
    /// exactly the commands `create_primary_command()` and
    /// `quote_command(0x80000000, &[0xA5; 32])` produce, sent over its TCP
    /// data channel (then TPM2_FlushContext answered `80010000000a00000000`).
    const RECORDED_CREATE_PRIMARY: &str = concat!(
             "80020000013800000000800000000000012100580023000b00050472000000100018000b000300100020f95a7e9c13a5",
             "480068ca1d13d555aeb98025e4055eda950cf1a1cedd572b4e2200203ad1acdf5d6a42851fc5b9cf26fab8f62db28bc7",
             "6d0e613587a871c38888b4680037000000000020e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b",
             "7852b85501001000044000000b00044000000b0000002028d026fafd749106743e27c4280551585e5d17668eb521835e",
             "d60127effc05d480214000000b0040aee0a8f0dafffc9b27374779040d40a91fe35c52fc260dfed5e5075e1159460cbc",
             "9b62347779aa8d6acf1858a06b20da4445c71658e2f69753075a9fdde3cffd0022000b372b3120b62f5ce57bfdc5480d",
             "b3fe9e15afe6d323ac1a6d14c150ebb0db74ca0000010000",
    );
    const RECORDED_QUOTE: &str = concat!(
             "8002000000ee00000000000000db0091ff54434780180022000b1242a39c705da80b2f1488403fd8c4f18fd1cda046e7",
             "5ef8b0bc56a7baf25fb70020a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a500000000",
             "000003fc000000010000000001201910230016363600000001000b03ff030000207b6436b0c98f62380866d9432c2af0",
             "ee08ce16a171bda6951aecd95ee1307d610018000b00203ede44ca2063f70a8047648e007796e5480be1dd825b97f0fc",
             "1bf99b23bc10d20020ecf5f56f6d49630853dc2cc31dc0a7a609057c4343f471cbfcec8063e96f74170000010000",
    );

    #[test]
    fn parses_recorded_swtpm_responses() {
        let created = parse_create_primary(&hex(RECORDED_CREATE_PRIMARY)).unwrap();
        assert_eq!(created.handle, 0x8000_0000);
        // The AK's public area: our template back, with the point filled in.
        let public = &created.public;
        assert_eq!(public.len(), 2 + 0x58);
        assert_eq!(&public[2..22], &ak_template()[..20]);
        assert_eq!(&public[22..24], &[0x00, 0x20]); // x: 32 bytes
        let quote = parse_quote(&hex(RECORDED_QUOTE)).unwrap();
        let info = parse_attest(&quote.attest).unwrap();
        assert_eq!(info.extra_data, &[0xA5; 32]);
        assert_eq!(info.pcr_select, &hex("00000001 000b 03 ff0300")[..]);
        assert_eq!(info.pcr_digest.len(), 32);
        assert_eq!(&quote.signature[..4], &hex("0018 000b")[..]); // ECDSA, SHA-256: the key's scheme
        assert_eq!(quote.signature.len(), 4 + 34 + 34);
        assert_eq!(parse_flush_context(&hex("80010000000a00000000")), Ok(()));
    }

    #[test]
    fn parses_create_primary() {
        let response = create_primary_response();
        let created = parse_create_primary(&response).unwrap();
        assert_eq!(created.handle, 0x8000_0000);
        assert_eq!(&created.public[..4], &hex("0058 0023"));
        assert_eq!(created.public.len(), 2 + 0x58);
        // Every truncation and a trailing byte are refused, never a panic.
        for n in 0..response.len() {
            assert!(parse_create_primary(&response[..n]).is_err(), "{n}");
        }
        let mut longer = response.clone();
        longer.push(0);
        assert!(parse_create_primary(&longer).is_err());
    }

    #[test]
    fn response_codes_are_named() {
        assert!(alloc::format!("{}", Error::Tpm(0x9a2)).contains("authorization failed"));
        assert!(alloc::format!("{}", Error::Tpm(0x98e)).contains("authorization failed"));
        assert!(alloc::format!("{}", Error::Tpm(0x921)).contains("TPM_RC_LOCKOUT"));
        assert_eq!(alloc::format!("{}", Error::Tpm(0x1c4)), "TPM response code 0x1c4");
    }

    #[test]
    fn tpm_errors_are_reported() {
        // TPM_RC_HIERARCHY-ish failure: header only.
        let response = hex("8001 0000000a 00000985");
        assert_eq!(parse_create_primary(&response), Err(Error::Tpm(0x985)));
        assert_eq!(response_size(&response), Ok(10));
        assert!(response_size(&hex("1234 0000000a")).is_err());
        assert!(response_size(&hex("8001 00100000")).is_err());
    }

    /// A TPMS_ATTEST of a quote over `nonce`, as a TPM2B.
    fn attest(nonce: &[u8]) -> Vec<u8> {
        let mut b = hex("ff544347 8018 0022 000b");
        b.extend_from_slice(&[0x33; 32]); // qualifiedSigner
        b.extend_from_slice(&(nonce.len() as u16).to_be_bytes());
        b.extend_from_slice(nonce);
        b.extend_from_slice(&[0; 17]); // clockInfo
        b.extend_from_slice(&[0; 8]); // firmwareVersion
        b.extend_from_slice(&hex("00000001 000b 03 ff0300 0020"));
        b.extend_from_slice(&[0x44; 32]);
        let mut out = (b.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&b);
        out
    }

    #[test]
    fn parses_quote_and_attest() {
        let nonce = [0x5A; 32];
        let att = attest(&nonce);
        let mut params = att.clone();
        params.extend_from_slice(&hex("0018 000b 0020"));
        params.extend_from_slice(&[0x66; 32]);
        params.extend_from_slice(&hex("0020"));
        params.extend_from_slice(&[0x77; 32]);
        let mut body = (params.len() as u32).to_be_bytes().to_vec();
        body.extend_from_slice(&params);
        body.extend_from_slice(&hex("0000 01 0000"));
        let mut response = hex("8002");
        response.extend_from_slice(&((body.len() + 10) as u32).to_be_bytes());
        response.extend_from_slice(&[0; 4]);
        response.extend_from_slice(&body);
        let quote = parse_quote(&response).unwrap();
        assert_eq!(quote.attest, att);
        assert_eq!(quote.signature.len(), 4 + 34 + 34);
        let info = parse_attest(&quote.attest).unwrap();
        assert_eq!(info.extra_data, &nonce);
        assert_eq!(info.pcr_select, &hex("00000001 000b 03 ff0300")[..]);
        assert_eq!(info.pcr_digest, &[0x44; 32]);
        for n in 0..response.len() {
            assert!(parse_quote(&response[..n]).is_err(), "{n}");
        }
        let mut bad = att.clone();
        bad[2] ^= 1;
        assert!(parse_attest(&bad).is_err());
        assert_eq!(parse_flush_context(&hex("8001 0000000a 00000000")), Ok(()));
        assert!(parse_flush_context(&hex("8001 0000000b 00000000 00")).is_err());
        let _ = vec![0u8; 0];
    }
}
