//! TPM 2.0 commands MantraBoot sends itself (through
//! EFI_TCG2_PROTOCOL.SubmitCommand): TPM2_PCR_Read of PCR 8 and 9 in the
//! SHA-256 bank, to print what measured boot left in them. TPM structures
//! are big-endian (TPM 2.0 Library, Part 2 "Structures", Part 3 "Commands").

use core::fmt;

/// TPM_ST_NO_SESSIONS: a command or response without authorization area.
pub const TPM_ST_NO_SESSIONS: u16 = 0x8001;
/// TPM_CC_PCR_Read.
pub const TPM_CC_PCR_READ: u32 = 0x0000_017E;
/// TPM_ALG_SHA256.
pub const TPM_ALG_SHA256: u16 = 0x000B;
/// TPM_RC_SUCCESS.
pub const TPM_RC_SUCCESS: u32 = 0;
/// Size of a SHA-256 digest.
pub const SHA256_SIZE: usize = 32;
/// PCRs MantraBoot extends: the manifest, then each component it loads.
pub const PCR_MANIFEST: u32 = 8;
pub const PCR_COMPONENTS: u32 = 9;
/// Bytes of a PCR selection bitmap (PCR 0-23, the PC Client minimum).
const SIZE_OF_SELECT: u8 = 3;
/// The selection of PCR 8 and 9: bits 0 and 1 of the second byte.
const SELECT_8_9: [u8; SIZE_OF_SELECT as usize] = [0x00, 0x03, 0x00];
/// Response header: tag (2), size (4), response code (4).
const HEADER_SIZE: usize = 10;
/// The whole response to our command: header, pcrUpdateCounter (4), one
/// TPMS_PCR_SELECTION (count 4, hash 2, sizeofSelect 1, 3 bytes), a TPML_DIGEST
/// of two (count 4, each size 2 + 32).
pub const PCR_READ_RESPONSE_SIZE: usize = HEADER_SIZE + 4 + (4 + 2 + 1 + 3) + 4 + 2 * (2 + SHA256_SIZE);

/// TPM2_PCR_Read of PCR 8 and 9, SHA-256 bank.
pub fn pcr_read_command() -> [u8; 20] {
    let mut c = [0u8; 20];
    c[0..2].copy_from_slice(&TPM_ST_NO_SESSIONS.to_be_bytes());
    c[2..6].copy_from_slice(&20u32.to_be_bytes());
    c[6..10].copy_from_slice(&TPM_CC_PCR_READ.to_be_bytes());
    // TPML_PCR_SELECTION pcrSelectionIn: one TPMS_PCR_SELECTION.
    c[10..14].copy_from_slice(&1u32.to_be_bytes());
    c[14..16].copy_from_slice(&TPM_ALG_SHA256.to_be_bytes());
    c[16] = SIZE_OF_SELECT;
    c[17..20].copy_from_slice(&SELECT_8_9);
    c
}

/// PCR 8 and 9 (SHA-256) as TPM2_PCR_Read returned them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pcrs {
    pub pcr8: [u8; SHA256_SIZE],
    pub pcr9: [u8; SHA256_SIZE],
}

/// Why a TPM2_PCR_Read response is not the one we asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseError {
    /// Shorter than `needed` bytes where the response says there is more.
    Truncated { needed: usize, got: usize },
    /// The header's tag is not TPM_ST_NO_SESSIONS.
    Tag(u16),
    /// The header's size is not what the command's response must be.
    Size { said: u32, expected: usize },
    /// The TPM refused the command.
    ResponseCode(u32),
    /// `field` is `got`, the command asked for `expected`.
    Field { field: &'static str, got: u32, expected: u32 },
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Truncated { needed, got } => write!(f, "response is {got} bytes, at least {needed} expected"),
            Self::Tag(tag) => write!(f, "response tag {tag:#06x}, not TPM_ST_NO_SESSIONS"),
            Self::Size { said, expected } => write!(f, "response size {said}, {expected} expected"),
            Self::ResponseCode(rc) => write!(f, "TPM response code {rc:#x}"),
            Self::Field { field, got, expected } => write!(f, "response {field} is {got:#x}, {expected:#x} expected"),
        }
    }
}

/// Parses the response to [`pcr_read_command`] strictly: header, success,
/// exactly the selection we asked for (SHA-256, PCR 8 and 9) and two 32-byte
/// digests, nothing more. `response` is the output buffer; only the bytes
/// the header's size covers are read.
pub fn parse_pcr_read_response(response: &[u8]) -> Result<Pcrs, ResponseError> {
    if response.len() < HEADER_SIZE {
        return Err(ResponseError::Truncated { needed: HEADER_SIZE, got: response.len() });
    }
    let tag = u16::from_be_bytes([response[0], response[1]]);
    let size = u32::from_be_bytes([response[2], response[3], response[4], response[5]]);
    let code = u32::from_be_bytes([response[6], response[7], response[8], response[9]]);
    // An error response is a bare header (tag TPM_ST_NO_SESSIONS, size 10).
    if code != TPM_RC_SUCCESS {
        return Err(ResponseError::ResponseCode(code));
    }
    if tag != TPM_ST_NO_SESSIONS {
        return Err(ResponseError::Tag(tag));
    }
    if size as usize != PCR_READ_RESPONSE_SIZE {
        return Err(ResponseError::Size { said: size, expected: PCR_READ_RESPONSE_SIZE });
    }
    if response.len() < PCR_READ_RESPONSE_SIZE {
        return Err(ResponseError::Truncated { needed: PCR_READ_RESPONSE_SIZE, got: response.len() });
    }
    let mut r = Reader { bytes: &response[HEADER_SIZE..PCR_READ_RESPONSE_SIZE], at: 0 };
    let _update_counter = r.u32();
    expect("pcrSelectionOut.count", r.u32(), 1)?;
    expect("pcrSelectionOut.hash", u32::from(r.u16()), u32::from(TPM_ALG_SHA256))?;
    expect("pcrSelectionOut.sizeofSelect", u32::from(r.u8()), u32::from(SIZE_OF_SELECT))?;
    let select = u32::from_be_bytes([0, r.u8(), r.u8(), r.u8()]);
    expect("pcrSelectionOut.pcrSelect", select, u32::from_be_bytes([0, SELECT_8_9[0], SELECT_8_9[1], SELECT_8_9[2]]))?;
    expect("pcrValues.count", r.u32(), 2)?;
    expect("pcrValues[0].size", u32::from(r.u16()), SHA256_SIZE as u32)?;
    let pcr8 = r.digest();
    expect("pcrValues[1].size", u32::from(r.u16()), SHA256_SIZE as u32)?;
    let pcr9 = r.digest();
    debug_assert_eq!(r.at, r.bytes.len());
    Ok(Pcrs { pcr8, pcr9 })
}

fn expect(field: &'static str, got: u32, expected: u32) -> Result<(), ResponseError> {
    if got == expected {
        Ok(())
    } else {
        Err(ResponseError::Field { field, got, expected })
    }
}

/// Big-endian reads from a slice already checked to be long enough.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.bytes[self.at..self.at + N]);
        self.at += N;
        out
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take())
    }
    fn digest(&mut self) -> [u8; SHA256_SIZE] {
        self.take()
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn response(pcr8: u8, pcr9: u8) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(&TPM_ST_NO_SESSIONS.to_be_bytes());
        r.extend_from_slice(&(PCR_READ_RESPONSE_SIZE as u32).to_be_bytes());
        r.extend_from_slice(&0u32.to_be_bytes());
        r.extend_from_slice(&7u32.to_be_bytes()); // pcrUpdateCounter
        r.extend_from_slice(&1u32.to_be_bytes());
        r.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        r.push(3);
        r.extend_from_slice(&[0, 3, 0]);
        r.extend_from_slice(&2u32.to_be_bytes());
        for fill in [pcr8, pcr9] {
            r.extend_from_slice(&32u16.to_be_bytes());
            r.extend_from_slice(&[fill; 32]);
        }
        r
    }

    #[test]
    fn command_bytes() {
        assert_eq!(
            pcr_read_command(),
            [0x80, 0x01, 0, 0, 0, 20, 0, 0, 0x01, 0x7E, 0, 0, 0, 1, 0x00, 0x0B, 3, 0x00, 0x03, 0x00]
        );
    }

    #[test]
    fn parses_a_good_response_in_a_larger_buffer() {
        let mut r = response(0xAA, 0xBB);
        assert_eq!(r.len(), PCR_READ_RESPONSE_SIZE);
        r.extend_from_slice(&[0x55; 100]); // the rest of the output buffer
        assert_eq!(parse_pcr_read_response(&r), Ok(Pcrs { pcr8: [0xAA; 32], pcr9: [0xBB; 32] }));
    }

    #[test]
    fn refuses_error_codes_and_bad_headers() {
        let mut err = response(0, 0)[..10].to_vec();
        err[2..6].copy_from_slice(&10u32.to_be_bytes());
        err[6..10].copy_from_slice(&0x101u32.to_be_bytes());
        assert_eq!(parse_pcr_read_response(&err), Err(ResponseError::ResponseCode(0x101)));
        assert_eq!(parse_pcr_read_response(&err[..9]), Err(ResponseError::Truncated { needed: 10, got: 9 }));
        let mut r = response(1, 2);
        r[0] = 0x80;
        r[1] = 0x02;
        assert_eq!(parse_pcr_read_response(&r), Err(ResponseError::Tag(0x8002)));
        let mut r = response(1, 2);
        r[5] += 1;
        assert!(matches!(parse_pcr_read_response(&r), Err(ResponseError::Size { .. })));
        let r = response(1, 2);
        assert!(matches!(parse_pcr_read_response(&r[..r.len() - 1]), Err(ResponseError::Truncated { .. })));
    }

    #[test]
    fn refuses_another_selection_or_digest_shape() {
        // (a byte of the field, field) for every field the command fixes.
        for (at, field) in [
            (15, "pcrSelectionOut.count"),
            (19, "pcrSelectionOut.hash"),
            (20, "pcrSelectionOut.sizeofSelect"),
            (22, "pcrSelectionOut.pcrSelect"),
            (25, "pcrValues.count"),
            (29, "pcrValues[0].size"),
            (63, "pcrValues[1].size"),
        ] {
            let mut r = response(1, 2);
            r[at] ^= 0x10;
            match parse_pcr_read_response(&r) {
                Err(ResponseError::Field { field: got, .. }) => assert_eq!(got, field, "byte {at}"),
                other => panic!("byte {at}: {other:?}"),
            }
        }
    }
}
