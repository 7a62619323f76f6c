//! The calling process's own handles, kept by the runtime for the process's
//! lifetime: `self` (its process, used to charge new objects) and `space`
//! (its address space, used by the allocator to map memory). The runtime
//! takes them from the bootstrap message before `main` runs; programs
//! borrow them through [`current`] and [`space`].

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use mantra_abi::Handle;

static SELF: AtomicU32 = AtomicU32::new(0);
static SPACE: AtomicU32 = AtomicU32::new(0);
static KOID: AtomicU64 = AtomicU64::new(0);

/// The process's own handle (`self`); `Handle::INVALID` if it got none.
pub fn current() -> Handle {
    Handle(SELF.load(Ordering::Relaxed))
}

/// The process's address space (`space`); `Handle::INVALID` if it got none.
pub fn space() -> Handle {
    Handle(SPACE.load(Ordering::Relaxed))
}

/// The process's kernel object id (0 if unknown).
pub fn koid() -> u64 {
    KOID.load(Ordering::Relaxed)
}

#[cfg_attr(not(target_os = "none"), allow(dead_code))]
pub(crate) fn set(process: Handle, space: Handle, koid: u64) {
    SELF.store(process.0, Ordering::Relaxed);
    SPACE.store(space.0, Ordering::Relaxed);
    KOID.store(koid, Ordering::Relaxed);
}

/// Ends the process with `code`.
pub fn exit(code: i64) -> ! {
    crate::sys::process_exit(code)
}
