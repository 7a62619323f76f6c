//! `mantra_rt`: the runtime every MantraOS user program links.
//!
//! - [`sys`]: one typed wrapper per syscall of [`abi::nr`], returning
//!   `Result<_, abi::Error>`;
//! - [`handle`]: [`OwnedHandle`] (closes on drop) and the typed objects
//!   [`Channel`], [`Port`], [`Vmo`], [`Process`], [`Thread`],
//!   [`AddressSpace`], [`Timer`], [`Log`], [`Interrupt`], [`Resource`];
//! - [`startup`]: the bootstrap message (`MANTRA-STARTUP 1`, see
//!   contract/USERLAND.md) — parsed for the program, built by MantraInit;
//! - [`heap`]: the allocator (a first-fit free list over memory objects
//!   mapped into the program's own address space, grown on demand);
//! - [`log`]: log records to MantraLogd (or the kernel log) and the
//!   [`error!`]/[`warn!`]/[`info!`]/[`debug!`]/[`trace!`] macros;
//! - [`exit`]: what a process's exit code means (exit code or CPU fault);
//! - the entry point `_start`, the panic handler (logs the message, exits
//!   with [`PANIC_EXIT_CODE`]) and [`main!`], which names the program's main.
//!
//! A program:
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! mantra_rt::main!(main);
//! fn main(startup: mantra_rt::Startup) -> Result<(), mantra_rt::Error> {
//!     mantra_rt::info!("hello from {}", startup.arg(0).unwrap_or("?"));
//!     Ok(())
//! }
//! ```
//!
//! The pure parts (startup message, log records, heap, exit codes) build and
//! run their tests on the host; everything that issues a syscall is only
//! meaningful on the bare-metal target (on the host every syscall fails with
//! `NotSupported`).
#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub use mantra_abi as abi;
pub use mantra_abi::{Error, Handle};

pub mod exit;
pub mod fmt;
pub mod handle;
pub mod heap;
pub mod log;
pub mod process;
pub mod startup;
pub mod sync;
pub mod sys;
pub mod time;

#[cfg(target_os = "none")]
mod entry;

pub use handle::{
    AddressSpace, AsHandle, Channel, Interrupt, Log, Message, OwnedHandle, Port, Process, Resource, Thread, Timer, Vmo,
};
pub use startup::Startup;

/// Exit code of a process whose code panicked.
pub const PANIC_EXIT_CODE: i64 = 101;
/// Exit code when the runtime could not read the bootstrap message.
pub const NO_STARTUP_EXIT_CODE: i64 = 120;
/// Exit code when the bootstrap message is malformed.
pub const BAD_STARTUP_EXIT_CODE: i64 = 121;

/// What a program's main may return: `()` and `Ok(())` exit with 0, an
/// `i64` is the exit code, an `Err` is logged and exits with 1.
pub trait Termination {
    fn report(self) -> i64;
}

impl Termination for () {
    fn report(self) -> i64 {
        0
    }
}

impl Termination for i64 {
    fn report(self) -> i64 {
        self
    }
}

impl Termination for core::convert::Infallible {
    fn report(self) -> i64 {
        match self {}
    }
}

impl<T: Termination, E: core::fmt::Debug> Termination for Result<T, E> {
    fn report(self) -> i64 {
        match self {
            Ok(value) => value.report(),
            Err(error) => {
                error!("main failed: {:?}", error);
                1
            }
        }
    }
}

/// Names the program's main function: `mantra_rt::main!(main);` where
/// `fn main(startup: Startup) -> impl Termination`. The runtime's `_start`
/// reads the bootstrap message, sets up the allocator and the log, calls it
/// and exits the process with the code it returns.
#[macro_export]
macro_rules! main {
    ($main:path) => {
        #[doc(hidden)]
        #[no_mangle]
        pub fn __mantra_rt_main(startup: $crate::Startup) -> i64 {
            $crate::Termination::report($main(startup))
        }
    };
}
