//! The checking half of the kernel's one user-memory API.
//!
//! Syscall arguments that are user addresses become [`UserPtr<T>`] (one
//! `T`) or [`UserSlice<T>`] (`count` of them) right at the syscall entry;
//! nothing past that point handles raw user addresses. The constructors
//! check, without touching memory, that the range
//!
//! - is not null (for a non-empty range),
//! - is aligned for `T`,
//! - does not wrap around the address space,
//! - lies entirely in user space, `[abi::USER_BASE, abi::USER_END)`, so a
//!   kernel or non-canonical address is refused,
//!
//! and return [`Error::BadPointer`] otherwise. Whether the pages are mapped
//! with the right permissions is found out by the machine side while it
//! copies (SMAP `stac`/`clac` around the copy and a fault fixup that turns a
//! page fault into `BadPointer`); it is not this module's business.
//!
//! # Zero-length ranges
//!
//! A zero-length range touches no memory, so it is accepted at any address
//! from 0 (null) up to and including `USER_END`, provided the address is
//! aligned for `T`. This admits what user code naturally passes for "no
//! data": a null pointer (C) and Rust's dangling pointer for an empty slice
//! (its alignment, e.g. `0x8`, which is below `USER_BASE`). A kernel-half or
//! non-canonical address is refused even with zero length: it is never a
//! sensible user argument, and refusing it catches confused callers early.
//!
//! # Which types may cross
//!
//! `T` must implement [`UserCopy`]: plain data for which every bit pattern
//! is a valid value and which has no padding, so copying bytes from user
//! memory into a `T` is sound and copying a `T` out leaks no kernel bytes.
#![warn(missing_docs)]

use core::marker::PhantomData;
use core::mem::{align_of, size_of};
use core::ops::Range;

use mantra_abi::{CallArgs, Error, Handle, HandleInfo, PortPacket, ReadSizes, USER_BASE, USER_END};

/// Page size used by [`UserSlice::page_chunks`].
const PAGE_SIZE: u64 = crate::mm::PAGE_SIZE;

/// Plain data that may be copied to and from user memory byte for byte.
///
/// # Safety
///
/// Implement only for `Copy` types with no padding bytes, no pointers or
/// references, and for which every bit pattern is a valid value (integers,
/// `#[repr(C)]`/`#[repr(transparent)]` structs and arrays of such).
pub unsafe trait UserCopy: Copy {}

macro_rules! user_copy {
    ($($t:ty),* $(,)?) => {
        $(
            // SAFETY: a primitive integer or an ABI struct made only of
            // integers, `#[repr(C)]`/`#[repr(transparent)]` without padding
            // (field sizes add up to the struct size, checked by the
            // `abi_structs_have_no_padding` test): every bit pattern is valid.
            unsafe impl UserCopy for $t {}
        )*
    };
}

user_copy!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize, Handle, PortPacket, CallArgs, ReadSizes, HandleInfo);

// SAFETY: an array of `UserCopy` elements has no padding between them (the
// element size is a multiple of its alignment) and every element accepts
// every bit pattern.
unsafe impl<T: UserCopy, const N: usize> UserCopy for [T; N] {}

/// Checks a user range of `len` bytes at `addr` whose start must be a
/// multiple of `align` (a power of two; 0 counts as 1) and returns it.
///
/// Errors: [`Error::BadPointer`] when the start is misaligned, or, for
/// `len > 0`: null, below `USER_BASE`, wrapping, or ending past `USER_END`;
/// for `len == 0`: above `USER_END` (see the module docs).
pub fn check(addr: u64, len: u64, align: u64) -> Result<Range<u64>, Error> {
    let align = align.max(1);
    debug_assert!(align.is_power_of_two(), "alignment must be a power of two");
    if addr & (align - 1) != 0 {
        return Err(Error::BadPointer);
    }
    if len == 0 {
        return if addr <= USER_END { Ok(addr..addr) } else { Err(Error::BadPointer) };
    }
    if addr < USER_BASE {
        return Err(Error::BadPointer);
    }
    match addr.checked_add(len) {
        Some(end) if end <= USER_END => Ok(addr..end),
        _ => Err(Error::BadPointer),
    }
}

/// A checked user address of one `T` (an "in" or "out" argument).
pub struct UserPtr<T> {
    addr: u64,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for UserPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for UserPtr<T> {}

impl<T> core::fmt::Debug for UserPtr<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "UserPtr({:#x})", self.addr)
    }
}

impl<T: UserCopy> UserPtr<T> {
    /// Checks `addr` as the address of one `T` ([`check`] with
    /// `size_of::<T>()` and `align_of::<T>()`).
    ///
    /// Errors: [`Error::BadPointer`].
    pub fn new(addr: u64) -> Result<Self, Error> {
        check(addr, size_of::<T>() as u64, align_of::<T>() as u64)?;
        Ok(Self { addr, _type: PhantomData })
    }

    /// The checked address.
    pub fn addr(self) -> u64 {
        self.addr
    }

    /// The bytes it covers.
    pub fn range(self) -> Range<u64> {
        self.addr..self.addr + size_of::<T>() as u64
    }
}

/// A checked user array of `len` elements of type `T` (bytes for
/// `UserSlice<u8>`, handles for `UserSlice<Handle>`...).
pub struct UserSlice<T> {
    addr: u64,
    len: u64,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for UserSlice<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for UserSlice<T> {}

impl<T> core::fmt::Debug for UserSlice<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "UserSlice({:#x}, {} elements)", self.addr, self.len)
    }
}

/// A checked user byte buffer.
pub type UserBytes = UserSlice<u8>;

impl<T: UserCopy> UserSlice<T> {
    /// Checks `count` elements of `T` at `addr` ([`check`] with
    /// `count * size_of::<T>()` bytes and `align_of::<T>()`). Limits on
    /// `count` (message sizes...) are the syscall's to check first, with
    /// `InvalidArgs`.
    ///
    /// Errors: [`Error::BadPointer`], including when the byte length
    /// overflows.
    pub fn new(addr: u64, count: u64) -> Result<Self, Error> {
        let bytes = count.checked_mul(size_of::<T>() as u64).ok_or(Error::BadPointer)?;
        check(addr, bytes, align_of::<T>() as u64)?;
        Ok(Self { addr, len: count, _type: PhantomData })
    }

    /// The checked start address.
    pub fn addr(self) -> u64 {
        self.addr
    }

    /// Number of elements.
    pub fn len(self) -> u64 {
        self.len
    }

    /// Whether there are no elements.
    pub fn is_empty(self) -> bool {
        self.len == 0
    }

    /// Length in bytes.
    pub fn byte_len(self) -> u64 {
        self.len * size_of::<T>() as u64
    }

    /// The bytes it covers.
    pub fn range(self) -> Range<u64> {
        self.addr..self.addr + self.byte_len()
    }

    /// The element at `index`, if in bounds.
    pub fn get(self, index: u64) -> Option<UserPtr<T>> {
        (index < self.len).then(|| UserPtr { addr: self.addr + index * size_of::<T>() as u64, _type: PhantomData })
    }

    /// The first `count` elements (e.g. the part a short copy fills), if
    /// in bounds.
    pub fn prefix(self, count: u64) -> Option<UserSlice<T>> {
        (count <= self.len).then_some(UserSlice { addr: self.addr, len: count, _type: PhantomData })
    }

    /// Elements `[start, start + count)`, if in bounds.
    pub fn subslice(self, start: u64, count: u64) -> Option<UserSlice<T>> {
        let end = start.checked_add(count)?;
        (end <= self.len).then(|| UserSlice { addr: self.addr + start * size_of::<T>() as u64, len: count, _type: PhantomData })
    }

    /// The byte range cut at page boundaries, as `(address, length)` pieces
    /// in order (for copies that translate page by page). Empty for an
    /// empty slice.
    pub fn page_chunks(self) -> PageChunks {
        PageChunks { next: self.addr, end: self.addr + self.byte_len() }
    }
}

/// Iterator of [`UserSlice::page_chunks`].
#[derive(Clone, Debug)]
pub struct PageChunks {
    next: u64,
    end: u64,
}

impl Iterator for PageChunks {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        if self.next >= self.end {
            return None;
        }
        let page_end = (self.next & !(PAGE_SIZE - 1)) + PAGE_SIZE;
        let piece_end = page_end.min(self.end);
        let piece = (self.next, piece_end - self.next);
        self.next = piece_end;
        Some(piece)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cap::test_rng::Rng;

    const KERNEL: u64 = 0xFFFF_8000_0000_0000;
    const NON_CANONICAL: u64 = 0x0000_8000_0000_0000;

    #[test]
    fn plain_ranges() {
        assert_eq!(check(USER_BASE, 1, 1), Ok(USER_BASE..USER_BASE + 1));
        assert_eq!(check(0x40_0000, 4096, 8), Ok(0x40_0000..0x40_1000));
        assert_eq!(check(USER_END - 8, 8, 8), Ok(USER_END - 8..USER_END));
        assert_eq!(check(USER_BASE, USER_END - USER_BASE, 4096), Ok(USER_BASE..USER_END));
    }

    #[test]
    fn null_and_low_addresses() {
        assert_eq!(check(0, 1, 1), Err(Error::BadPointer));
        assert_eq!(check(0, 8, 8), Err(Error::BadPointer));
        assert_eq!(check(8, 8, 8), Err(Error::BadPointer));
        assert_eq!(check(USER_BASE - 1, 1, 1), Err(Error::BadPointer));
        assert_eq!(check(USER_BASE - 1, 2, 1), Err(Error::BadPointer));
    }

    #[test]
    fn kernel_and_non_canonical_addresses() {
        for addr in [KERNEL, 0xFFFF_FFFF_8000_0000, u64::MAX - 7, NON_CANONICAL, USER_END, 0x0000_7FFF_FFFF_F000] {
            assert_eq!(check(addr, 8, 8), Err(Error::BadPointer), "{addr:#x}");
            assert_eq!(check(addr, 1, 1), Err(Error::BadPointer), "{addr:#x}");
        }
        // Crossing into the last page / the hole.
        assert_eq!(check(USER_END - 4, 8, 4), Err(Error::BadPointer));
        assert_eq!(check(USER_END - 1, 2, 1), Err(Error::BadPointer));
        // A huge length from a user address reaching the kernel half.
        assert_eq!(check(USER_BASE, KERNEL, 1), Err(Error::BadPointer));
    }

    #[test]
    fn overflowing_ranges() {
        assert_eq!(check(u64::MAX, 1, 1), Err(Error::BadPointer));
        assert_eq!(check(USER_BASE, u64::MAX, 1), Err(Error::BadPointer));
        assert_eq!(check(0x10_0000, u64::MAX - 0x10_0000 + 1, 1), Err(Error::BadPointer));
        assert_eq!(check(u64::MAX - 15, 16, 16), Err(Error::BadPointer));
        assert_eq!(UserSlice::<u64>::new(0x10_0000, u64::MAX / 8 + 1).unwrap_err(), Error::BadPointer);
        assert_eq!(UserSlice::<u64>::new(0x10_0000, u64::MAX).unwrap_err(), Error::BadPointer);
        assert_eq!(UserSlice::<PortPacket>::new(0x10_0000, 1 << 60).unwrap_err(), Error::BadPointer);
    }

    #[test]
    fn misaligned() {
        assert_eq!(check(0x10_0001, 8, 8), Err(Error::BadPointer));
        assert_eq!(check(0x10_0004, 8, 8), Err(Error::BadPointer));
        assert_eq!(check(0x10_0002, 4, 4), Err(Error::BadPointer));
        assert_eq!(check(0x10_0001, 1, 1), Ok(0x10_0001..0x10_0002));
        assert_eq!(check(0x10_0001, 1, 0), Ok(0x10_0001..0x10_0002));
        assert_eq!(UserPtr::<u64>::new(0x10_0004).unwrap_err(), Error::BadPointer);
        assert_eq!(UserPtr::<u32>::new(0x10_0004).unwrap().addr(), 0x10_0004);
        assert_eq!(UserPtr::<Handle>::new(0x10_0002).unwrap_err(), Error::BadPointer);
        assert_eq!(UserPtr::<PortPacket>::new(0x10_0004).unwrap_err(), Error::BadPointer);
        assert_eq!(UserSlice::<u16>::new(0x10_0001, 0).unwrap_err(), Error::BadPointer);
        assert!(UserSlice::<u8>::new(0x10_0001, 3).is_ok());
    }

    #[test]
    fn zero_length_rules() {
        // Null, Rust's dangling pointers and any user address: fine.
        for addr in [0, 1, 8, 16, USER_BASE, 0x1234_5678, USER_END - 1, USER_END] {
            assert_eq!(check(addr, 0, 1), Ok(addr..addr), "{addr:#x}");
        }
        assert!(UserSlice::<u64>::new(0, 0).is_ok());
        assert!(UserSlice::<u64>::new(8, 0).unwrap().is_empty());
        assert!(UserSlice::<Handle>::new(4, 0).is_ok());
        // Kernel and non-canonical: refused. Misaligned: refused.
        for addr in [USER_END + 1, NON_CANONICAL, KERNEL, u64::MAX] {
            assert_eq!(check(addr, 0, 1), Err(Error::BadPointer), "{addr:#x}");
        }
        assert_eq!(check(3, 0, 8), Err(Error::BadPointer));
    }

    #[test]
    fn pointer_and_slice_accessors() {
        let p = UserPtr::<PortPacket>::new(0x20_0000).unwrap();
        assert_eq!(p.range(), 0x20_0000..0x20_0010);
        let s = UserSlice::<u32>::new(0x20_0000, 10).unwrap();
        assert_eq!((s.len(), s.byte_len(), s.range()), (10, 40, 0x20_0000..0x20_0028));
        assert_eq!(s.get(9).unwrap().addr(), 0x20_0024);
        assert!(s.get(10).is_none());
        assert_eq!(s.prefix(3).unwrap().byte_len(), 12);
        assert!(s.prefix(11).is_none());
        let sub = s.subslice(2, 3).unwrap();
        assert_eq!((sub.addr(), sub.len()), (0x20_0008, 3));
        assert!(s.subslice(8, 3).is_none());
        assert!(s.subslice(u64::MAX, 2).is_none());
        assert_eq!(s.subslice(10, 0).unwrap().len(), 0);
        assert_eq!(format!("{p:?}"), "UserPtr(0x200000)");
    }

    #[test]
    fn page_chunks_cut_at_boundaries() {
        let s = UserBytes::new(0x20_0F00, 0x1200).unwrap();
        let chunks: Vec<_> = s.page_chunks().collect();
        assert_eq!(chunks, [(0x20_0F00, 0x100), (0x20_1000, 0x1000), (0x20_2000, 0x100)]);
        assert_eq!(UserBytes::new(0x20_0000, 0x1000).unwrap().page_chunks().count(), 1);
        assert_eq!(UserBytes::new(0, 0).unwrap().page_chunks().count(), 0);
        let top = UserBytes::new(USER_END - 10, 10).unwrap();
        assert_eq!(top.page_chunks().collect::<Vec<_>>(), [(USER_END - 10, 10)]);
    }

    #[test]
    fn abi_structs_have_no_padding() {
        assert_eq!(size_of::<PortPacket>(), 8 + 4 + 4);
        assert_eq!(size_of::<CallArgs>(), 8 + 4 + 4 + 8 + 8 + 4 + 4 + 8);
        assert_eq!(size_of::<ReadSizes>(), 4 + 4);
        assert_eq!(size_of::<HandleInfo>(), 4 + 4 + 8);
        assert_eq!(size_of::<Handle>(), 4);
    }

    #[test]
    fn random_ranges_match_the_definition() {
        let mut rng = Rng::new(77);
        let interesting =
            [0, 1, 8, USER_BASE - 1, USER_BASE, USER_END - 4096, USER_END - 1, USER_END, USER_END + 1, NON_CANONICAL, KERNEL, u64::MAX];
        for _ in 0..200_000 {
            let addr = match rng.below(3) {
                0 => interesting[rng.index(interesting.len())].wrapping_add(rng.below(16)).wrapping_sub(8),
                1 => rng.next() >> rng.below(64),
                _ => rng.next(),
            };
            let len = match rng.below(4) {
                0 => 0,
                1 => rng.below(64),
                2 => rng.next() >> rng.below(64),
                _ => u64::MAX - rng.below(16),
            };
            let align = 1u64 << rng.below(5);
            // The definition, in 128-bit arithmetic.
            let end = addr as u128 + len as u128;
            let ok = addr % align == 0
                && if len == 0 { addr <= USER_END } else { addr >= USER_BASE && end <= USER_END as u128 };
            let got = check(addr, len, align);
            assert_eq!(got.is_ok(), ok, "check({addr:#x}, {len:#x}, {align})");
            if let Ok(r) = got {
                assert_eq!((r.start, r.end as u128), (addr, end));
            } else {
                assert_eq!(got, Err(Error::BadPointer));
            }
        }
    }
}
