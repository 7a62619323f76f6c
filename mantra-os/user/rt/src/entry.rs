//! The program entry (`_start`), the start-up sequence and the panic handler.
//!
//! The creator starts the first thread at `_start` with RSP 16-byte aligned
//! and RDI = the handle of the bootstrap channel (contract/USERLAND.md).
//! `_start` clears the frame pointer (end of the frame chain) and calls
//! [`start`], which:
//! 1. receives the bootstrap message (blocking: the creator may write it
//!    after starting the thread) into a stack buffer;
//! 2. parses it; keeps `self` and `space` for the process's lifetime
//!    ([`crate::process`]) and gives `log` to the logger (a kernel log
//!    object or a channel to MantraLogd, told apart with HANDLE_INFO);
//! 3. calls the program's main (named by [`crate::main!`]) and exits the
//!    process with the code it returns.

use core::arch::global_asm;

use alloc::vec::Vec;
use mantra_abi::{Handle, ObjectKind, ReadSizes};

use crate::handle::{AsHandle, Channel, OwnedHandle};
use crate::startup::Startup;
use crate::{log, process, sys};

// `call` pushes the return address, so `start` sees RSP = 8 (mod 16), as
// the System V ABI wants at function entry. It never returns; `ud2` traps if
// it ever did.
global_asm!(
    ".section .text.entry, \"ax\", @progbits",
    ".global _start",
    ".type _start, @function",
    "_start:",
    "    xor ebp, ebp",
    "    call {start}",
    "    ud2",
    ".size _start, . - _start",
    start = sym start,
);

extern "Rust" {
    /// The program's main, defined by `mantra_rt::main!`.
    fn __mantra_rt_main(startup: Startup) -> i64;
}

/// Largest bootstrap message the runtime accepts.
const STARTUP_BYTES: usize = 4096;

extern "C" fn start(bootstrap: u64) -> ! {
    let bootstrap = Handle(bootstrap as u32);
    let mut bytes = [0u8; STARTUP_BYTES];
    let mut handles = [Handle::INVALID; mantra_abi::MAX_MESSAGE_HANDLES];
    let mut sizes = ReadSizes::default();
    if sys::channel_receive(bootstrap, &mut bytes, &mut handles, &mut sizes).is_err() {
        sys::process_exit(crate::NO_STARTUP_EXIT_CODE);
    }
    let received: Vec<OwnedHandle> =
        handles[..sizes.handles as usize].iter().map(|&h| OwnedHandle::from_raw(h)).collect();
    let mut startup = match Startup::parse(&bytes[..sizes.bytes as usize], received) {
        Ok(startup) => startup,
        Err(_) => sys::process_exit(crate::BAD_STARTUP_EXIT_CODE),
    };
    startup.set_bootstrap(Channel::from_handle(OwnedHandle::from_raw(bootstrap)));

    let own = startup.take("self").map_or(Handle::INVALID, OwnedHandle::into_raw);
    let space = startup.take("space").map_or(Handle::INVALID, OwnedHandle::into_raw);
    let koid = sys::handle_info(own).map_or(0, |info| info.koid);
    process::set(own, space, koid);
    log::set_pid(koid as u32);
    if let Some(sink) = startup.take("log") {
        match sys::handle_info(sink.raw()).ok().and_then(|i| ObjectKind::from_raw(i.kind)) {
            Some(ObjectKind::Log) => log::set_kernel_log(sink.into_raw()),
            _ => log::set_channel(sink.into_raw()),
        }
    }

    // SAFETY: `__mantra_rt_main` is defined by `main!` in the program with
    // exactly this signature; a program without it does not link.
    let code = unsafe { __mantra_rt_main(startup) };
    sys::process_exit(code)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    match info.location() {
        Some(at) => log::log_emergency(
            log::Level::Error,
            format_args!("panic at {}:{}: {}", at.file(), at.line(), info.message()),
        ),
        None => log::log_emergency(log::Level::Error, format_args!("panic: {}", info.message())),
    }
    sys::process_exit(crate::PANIC_EXIT_CODE)
}
