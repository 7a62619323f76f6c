//! A cursor over a byte slice that refuses to read past its end; every
//! failure names the structure, the field and the byte offset.

use crate::decode::{DecodeError, Problem, Structure};
use crate::MAX_STR;

pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    structure: Structure,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8], structure: Structure) -> Self {
        Self { data, pos: 0, structure }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    /// An error at byte `at` of this structure.
    pub fn fail_at(&self, at: usize, problem: Problem) -> DecodeError {
        DecodeError { structure: self.structure, at, problem }
    }

    pub fn fail(&self, problem: Problem) -> DecodeError {
        self.fail_at(self.pos, problem)
    }

    pub fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let left = self.data.len() - self.pos;
        if n > left {
            return Err(self.fail(Problem::Truncated { field, need: n, left }));
        }
        let chunk = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(chunk)
    }

    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// A reserved field: must be zero.
    pub fn reserved(&mut self, size: usize, field: &'static str) -> Result<(), DecodeError> {
        let at = self.pos;
        let bytes = self.take(size, field)?;
        let mut value = [0u8; 8];
        value[..size].copy_from_slice(bytes);
        let value = u64::from_le_bytes(value);
        if value != 0 {
            return Err(self.fail_at(at, Problem::Reserved { field, value }));
        }
        Ok(())
    }

    /// `str`: u16 length (at most MAX_STR), then that many printable ASCII bytes.
    pub fn str(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let at = self.pos;
        let length = self.u16(field)?;
        if usize::from(length) > MAX_STR {
            return Err(self.fail_at(at, Problem::StrTooLong { field, length }));
        }
        let bytes = self.take(usize::from(length), field)?;
        if !bytes.iter().all(|b| (0x20..=0x7e).contains(b)) {
            return Err(self.fail_at(at, Problem::StrNotAscii { field }));
        }
        // Printable ASCII is UTF-8.
        core::str::from_utf8(bytes).map_err(|_| self.fail_at(at, Problem::StrNotAscii { field }))
    }

    /// Every byte consumed.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.data.len() - self.pos {
            0 => Ok(()),
            n => Err(self.fail(Problem::Trailing(n))),
        }
    }
}
