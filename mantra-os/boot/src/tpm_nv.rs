//! The TPM NV index that keeps the rollback minimums (docs/boot-state.md,
//! "MantraRollback"): TPM2_NV_DefineSpace, TPM2_NV_Read, TPM2_NV_Write and
//! TPM2_NV_WriteLock, each with one password session (TPM_RS_PW, empty
//! auth), marshalled here and sent through EFI_TCG2_PROTOCOL.SubmitCommand.
//! Big-endian, TPM 2.0 Library Part 2 "Structures" and Part 3 "Commands";
//! responses are parsed strictly.

use core::fmt;

/// The NV index (owner range).
pub const NV_INDEX: u32 = 0x0100_4D42;
/// Bytes of its data: the two u64 minimums.
pub const NV_DATA_SIZE: u16 = 16;
/// TPM_ST_SESSIONS.
pub const TPM_ST_SESSIONS: u16 = 0x8002;
/// TPM_RH_OWNER.
pub const TPM_RH_OWNER: u32 = 0x4000_0001;
/// TPM_RS_PW: the password authorization session.
pub const TPM_RS_PW: u32 = 0x4000_0009;
/// TPM_ALG_SHA256 (the index's name algorithm).
pub const TPM_ALG_SHA256: u16 = 0x000B;
pub const TPM_CC_NV_DEFINE_SPACE: u32 = 0x0000_012A;
pub const TPM_CC_NV_WRITE: u32 = 0x0000_0137;
pub const TPM_CC_NV_WRITE_LOCK: u32 = 0x0000_0138;
pub const TPM_CC_NV_READ: u32 = 0x0000_014E;
/// TPMA_NV bits (Part 2, 13.4).
pub const TPMA_NV_AUTHWRITE: u32 = 1 << 2;
pub const TPMA_NV_WRITE_STCLEAR: u32 = 1 << 14;
pub const TPMA_NV_AUTHREAD: u32 = 1 << 18;
pub const TPMA_NV_NO_DA: u32 = 1 << 25;
/// The index's attributes: AUTHREAD | AUTHWRITE | WRITE_STCLEAR | NO_DA
/// (TPM_NT_ORDINARY).
pub const NV_ATTRIBUTES: u32 = TPMA_NV_AUTHREAD | TPMA_NV_AUTHWRITE | TPMA_NV_WRITE_STCLEAR | TPMA_NV_NO_DA;
/// TPM_RC_NV_UNINITIALIZED: defined but never written.
pub const TPM_RC_NV_UNINITIALIZED: u32 = 0x14A;
/// TPM_RC_NV_LOCKED: write-locked (until the next TPM reset).
pub const TPM_RC_NV_LOCKED: u32 = 0x148;

const HEADER: usize = 10;
/// The password session of every command: sessionHandle TPM_RS_PW, empty
/// nonce, attributes 0 (continueSession is meaningless for TPM_RS_PW),
/// empty hmac (= the empty auth value).
const AUTH: [u8; 9] = [0x40, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, 0x00, 0x00];
/// The response's password session: empty nonce, attributes, empty hmac.
const AUTH_RESPONSE_SIZE: usize = 5;

/// A command of at most `N` bytes.
pub struct Command<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> Command<N> {
    fn new(code: u32, handles: &[u32]) -> Self {
        let mut c = Self { bytes: [0; N], len: 0 };
        c.u16(TPM_ST_SESSIONS);
        c.u32(0); // size, set by finish()
        c.u32(code);
        for &h in handles {
            c.u32(h);
        }
        c.u32(AUTH.len() as u32);
        c.put(&AUTH);
        c
    }
    fn put(&mut self, bytes: &[u8]) {
        self.bytes[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }
    fn u16(&mut self, v: u16) {
        self.put(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.put(&v.to_be_bytes());
    }
    fn finish(mut self) -> Self {
        let size = (self.len as u32).to_be_bytes();
        self.bytes[2..6].copy_from_slice(&size);
        self
    }
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// TPM2_NV_DefineSpace(TPM_RH_OWNER, auth = empty, publicInfo = the index).
pub fn define_space_command() -> Command<45> {
    let mut c = Command::new(TPM_CC_NV_DEFINE_SPACE, &[TPM_RH_OWNER]);
    c.u16(0); // auth: TPM2B_AUTH, empty
    c.u16(14); // publicInfo: TPM2B_NV_PUBLIC size
    c.u32(NV_INDEX);
    c.u16(TPM_ALG_SHA256);
    c.u32(NV_ATTRIBUTES);
    c.u16(0); // authPolicy: empty
    c.u16(NV_DATA_SIZE);
    c.finish()
}

/// TPM2_NV_Read(authHandle = the index, the index, size 16, offset 0).
pub fn read_command() -> Command<35> {
    let mut c = Command::new(TPM_CC_NV_READ, &[NV_INDEX, NV_INDEX]);
    c.u16(NV_DATA_SIZE);
    c.u16(0);
    c.finish()
}

/// TPM2_NV_Write(authHandle = the index, the index, data, offset 0).
pub fn write_command(data: &[u8; NV_DATA_SIZE as usize]) -> Command<51> {
    let mut c = Command::new(TPM_CC_NV_WRITE, &[NV_INDEX, NV_INDEX]);
    c.u16(NV_DATA_SIZE);
    c.put(data);
    c.u16(0);
    c.finish()
}

/// TPM2_NV_WriteLock(authHandle = the index, the index).
pub fn write_lock_command() -> Command<31> {
    Command::new(TPM_CC_NV_WRITE_LOCK, &[NV_INDEX, NV_INDEX]).finish()
}

/// Why a response is not what the command must return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NvError {
    /// The TPM answered with this response code.
    ResponseCode(u32),
    /// Shorter than the header or than its size says.
    Truncated { needed: usize, got: usize },
    Tag(u16),
    /// `field` is `got`, `expected` was required.
    Field { field: &'static str, got: u32, expected: u32 },
}

impl NvError {
    /// TPM_RC_HANDLE (format 1, any handle number): the index is not defined.
    pub fn is_undefined(&self) -> bool {
        matches!(*self, NvError::ResponseCode(rc) if rc & 0x80 != 0 && rc & 0x3F == 0x0B)
    }
    pub fn is_uninitialized(&self) -> bool {
        *self == NvError::ResponseCode(TPM_RC_NV_UNINITIALIZED)
    }
}

impl fmt::Display for NvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            NvError::ResponseCode(rc) => write!(f, "TPM response code {rc:#x}"),
            NvError::Truncated { needed, got } => write!(f, "response is {got} bytes, {needed} expected"),
            NvError::Tag(tag) => write!(f, "response tag {tag:#06x}, not TPM_ST_SESSIONS"),
            NvError::Field { field, got, expected } => write!(f, "response {field} is {got:#x}, {expected:#x} expected"),
        }
    }
}

/// The response's header checks; returns the parameter area and the
/// response's session area (`parameterSize` u32 first).
fn check(response: &[u8], parameters: usize) -> Result<&[u8], NvError> {
    if response.len() < HEADER {
        return Err(NvError::Truncated { needed: HEADER, got: response.len() });
    }
    let tag = u16::from_be_bytes([response[0], response[1]]);
    let size = u32::from_be_bytes([response[2], response[3], response[4], response[5]]) as usize;
    let code = u32::from_be_bytes([response[6], response[7], response[8], response[9]]);
    if code != 0 {
        return Err(NvError::ResponseCode(code));
    }
    if tag != TPM_ST_SESSIONS {
        return Err(NvError::Tag(tag));
    }
    let expected = HEADER + 4 + parameters + AUTH_RESPONSE_SIZE;
    if size != expected {
        return Err(NvError::Field { field: "size", got: size as u32, expected: expected as u32 });
    }
    if response.len() < expected {
        return Err(NvError::Truncated { needed: expected, got: response.len() });
    }
    let body = &response[HEADER..expected];
    let parameter_size = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    if parameter_size as usize != parameters {
        return Err(NvError::Field { field: "parameterSize", got: parameter_size, expected: parameters as u32 });
    }
    let session = &body[4 + parameters..];
    // nonceTPM (empty), sessionAttributes (continueSession may be set), hmac (empty).
    if session[0..2] != [0, 0] || session[3..5] != [0, 0] || session[2] & !1 != 0 {
        return Err(NvError::Field { field: "password session", got: u32::from(session[2]), expected: 0 });
    }
    Ok(&body[4..4 + parameters])
}

/// The response to a command without response parameters (DefineSpace,
/// Write, WriteLock).
pub fn parse_response(response: &[u8]) -> Result<(), NvError> {
    check(response, 0).map(|_| ())
}

/// The 16 bytes TPM2_NV_Read returned.
pub fn parse_read_response(response: &[u8]) -> Result<[u8; NV_DATA_SIZE as usize], NvError> {
    let parameters = check(response, 2 + NV_DATA_SIZE as usize)?;
    let size = u16::from_be_bytes([parameters[0], parameters[1]]);
    if size != NV_DATA_SIZE {
        return Err(NvError::Field { field: "data.size", got: u32::from(size), expected: u32::from(NV_DATA_SIZE) });
    }
    let mut data = [0u8; NV_DATA_SIZE as usize];
    data.copy_from_slice(&parameters[2..]);
    Ok(data)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn response(parameters: &[u8], attributes: u8) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(&TPM_ST_SESSIONS.to_be_bytes());
        r.extend_from_slice(&((HEADER + 4 + parameters.len() + 5) as u32).to_be_bytes());
        r.extend_from_slice(&0u32.to_be_bytes());
        r.extend_from_slice(&(parameters.len() as u32).to_be_bytes());
        r.extend_from_slice(parameters);
        r.extend_from_slice(&[0, 0, attributes, 0, 0]);
        r
    }

    #[test]
    fn command_bytes() {
        let auth = [0, 0, 0, 9, 0x40, 0, 0, 9, 0, 0, 0, 0, 0];
        let c = read_command();
        let mut expected = std::vec![0x80, 0x02, 0, 0, 0, 35, 0, 0, 0x01, 0x4E, 0x01, 0x00, 0x4D, 0x42, 0x01, 0x00, 0x4D, 0x42];
        expected.extend_from_slice(&auth);
        expected.extend_from_slice(&[0, 16, 0, 0]);
        assert_eq!(c.bytes(), &expected[..]);

        let c = define_space_command();
        let mut expected = std::vec![0x80, 0x02, 0, 0, 0, 45, 0, 0, 0x01, 0x2A, 0x40, 0, 0, 0x01];
        expected.extend_from_slice(&auth);
        expected.extend_from_slice(&[0, 0, 0, 14, 0x01, 0x00, 0x4D, 0x42, 0x00, 0x0B, 0x02, 0x04, 0x40, 0x04, 0, 0, 0, 16]);
        assert_eq!(c.bytes(), &expected[..]);

        let data = [7u8; 16];
        let c = write_command(&data);
        assert_eq!(c.bytes().len(), 51);
        assert_eq!(c.bytes()[6..10], TPM_CC_NV_WRITE.to_be_bytes());
        assert_eq!(c.bytes()[31..33], [0, 16]);
        assert_eq!(c.bytes()[33..49], data);
        assert_eq!(c.bytes()[49..51], [0, 0]);

        let c = write_lock_command();
        let mut expected = std::vec![0x80, 0x02, 0, 0, 0, 31, 0, 0, 0x01, 0x38, 0x01, 0x00, 0x4D, 0x42, 0x01, 0x00, 0x4D, 0x42];
        expected.extend_from_slice(&auth);
        assert_eq!(c.bytes(), &expected[..]);
    }

    #[test]
    fn parses_good_responses_in_larger_buffers() {
        let mut r = response(&[], 1);
        r.extend_from_slice(&[0xEE; 40]);
        assert_eq!(parse_response(&r), Ok(()));
        let mut params = std::vec![0, 16];
        params.extend_from_slice(&[0xAB; 16]);
        let mut r = response(&params, 0);
        r.extend_from_slice(&[0xEE; 40]);
        assert_eq!(parse_read_response(&r), Ok([0xAB; 16]));
    }

    #[test]
    fn refuses_errors_and_malformed_responses() {
        let mut undefined = std::vec![0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x01, 0x8B];
        let e = parse_read_response(&undefined).unwrap_err();
        assert!(e.is_undefined() && !e.is_uninitialized(), "{e:?}");
        undefined[8..10].copy_from_slice(&0x28Bu16.to_be_bytes());
        assert!(parse_read_response(&undefined).unwrap_err().is_undefined());
        undefined[8..10].copy_from_slice(&0x14Au16.to_be_bytes());
        assert!(parse_read_response(&undefined).unwrap_err().is_uninitialized());
        assert!(matches!(parse_response(&undefined[..9]), Err(NvError::Truncated { .. })));

        let mut params = std::vec![0, 16];
        params.extend_from_slice(&[1; 16]);
        let good = response(&params, 0);
        for (at, field) in [(0, "tag"), (5, "size"), (13, "parameterSize"), (15, "data.size"), (34, "session")] {
            let mut r = good.clone();
            r[at] ^= 0x04;
            assert!(parse_read_response(&r).is_err(), "byte {at} ({field})");
        }
        assert!(matches!(parse_read_response(&good[..good.len() - 1]), Err(NvError::Truncated { .. })));
        // A parameterless response is not a read response, and vice versa.
        assert!(parse_read_response(&response(&[], 0)).is_err());
        assert!(parse_response(&good).is_err());
    }
}
