//! The one typed user-memory API. Syscall handlers never touch a user
//! pointer directly: they build a [`UserPtr`] or [`UserSlice`], which checks
//! range, alignment and overflow against user space (mantra_kernel::usermem)
//! and then copies through the fault-fixup routine, so an unmapped page (or
//! one the user may not access) turns into `BadPointer`, never a kernel fault.

use alloc::vec::Vec;
use core::marker::PhantomData;
use core::mem::{align_of, size_of};

use mantra_abi::Error;
use mantra_kernel::usermem;

use crate::arch::x86_64::context;

/// A user address of one `T` (plain data: any bit pattern valid).
#[derive(Clone, Copy)]
pub struct UserPtr<T> {
    addr: u64,
    _type: PhantomData<T>,
}

impl<T: Copy> UserPtr<T> {
    pub fn new(addr: u64) -> Self {
        Self { addr, _type: PhantomData }
    }

    fn checked(&self) -> Result<u64, Error> {
        usermem::check(self.addr, size_of::<T>() as u64, align_of::<T>() as u64).map(|r| r.start)
    }

    pub fn read(&self) -> Result<T, Error> {
        let addr = self.checked()?;
        let mut value = core::mem::MaybeUninit::<T>::uninit();
        // SAFETY: the user range was checked to lie in user space; the
        // destination is a local of the right size. T is plain data.
        if unsafe { context::copy_user(value.as_mut_ptr().cast(), addr as *const u8, size_of::<T>()) } {
            // SAFETY: fully written by the successful copy.
            Ok(unsafe { value.assume_init() })
        } else {
            Err(Error::BadPointer)
        }
    }

    pub fn write(&self, value: &T) -> Result<(), Error> {
        let addr = self.checked()?;
        // SAFETY: as in `read`, the other direction.
        if unsafe { context::copy_user(addr as *mut u8, (value as *const T).cast(), size_of::<T>()) } {
            Ok(())
        } else {
            Err(Error::BadPointer)
        }
    }
}

/// `len` consecutive `T`s at a user address.
#[derive(Clone, Copy)]
pub struct UserSlice<T> {
    addr: u64,
    len: usize,
    _type: PhantomData<T>,
}

impl<T: Copy> UserSlice<T> {
    pub fn new(addr: u64, len: usize) -> Self {
        Self { addr, len, _type: PhantomData }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    fn checked(&self) -> Result<u64, Error> {
        let bytes = (self.len as u64).checked_mul(size_of::<T>() as u64).ok_or(Error::BadPointer)?;
        usermem::check(self.addr, bytes, align_of::<T>() as u64).map(|r| r.start)
    }

    /// Copies the user data into a new vector.
    pub fn read_vec(&self) -> Result<Vec<T>, Error> {
        let addr = self.checked()?;
        let mut out: Vec<T> = Vec::new();
        out.try_reserve_exact(self.len).map_err(|_| Error::NoMemory)?;
        if self.len == 0 {
            return Ok(out);
        }
        // SAFETY: checked user range; `out` has capacity for len Ts.
        if unsafe { context::copy_user(out.as_mut_ptr().cast(), addr as *const u8, self.len * size_of::<T>()) } {
            // SAFETY: the copy initialised len elements of plain data.
            unsafe { out.set_len(self.len) };
            Ok(out)
        } else {
            Err(Error::BadPointer)
        }
    }

    /// Copies the user data into `out`, which must be exactly `len` long
    /// (no allocation: the IPC fast path's small messages).
    pub fn read_into(&self, out: &mut [T]) -> Result<(), Error> {
        if out.len() != self.len {
            return Err(Error::InvalidArgs);
        }
        let addr = self.checked()?;
        // SAFETY: checked user range; `out` holds len plain-data elements.
        if unsafe { context::copy_user(out.as_mut_ptr().cast(), addr as *const u8, core::mem::size_of_val(out)) } {
            Ok(())
        } else {
            Err(Error::BadPointer)
        }
    }

    /// Copies `data` (at most `len` elements) to the user.
    pub fn write_from(&self, data: &[T]) -> Result<(), Error> {
        if data.len() > self.len {
            return Err(Error::BufferTooSmall);
        }
        let addr = self.checked()?;
        if data.is_empty() {
            return Ok(());
        }
        // SAFETY: checked user range, at least data.len() elements long.
        if unsafe { context::copy_user(addr as *mut u8, data.as_ptr().cast(), core::mem::size_of_val(data)) } {
            Ok(())
        } else {
            Err(Error::BadPointer)
        }
    }
}
