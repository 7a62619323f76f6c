//! Fatal errors: `MantraBoot: error: <what>; <what to try>`, then halt.
//! Never return to the firmware (it would open its setup menu) and never
//! hang silently.

use alloc::string::String;
use core::fmt::Display;
use core::sync::atomic::{AtomicBool, Ordering};

use super::console;

/// A failure that stops the boot.
pub struct Fatal {
    /// What failed, with the facts needed to understand it.
    pub what: String,
    /// What the user can do about it.
    pub hint: &'static str,
}

impl Fatal {
    pub fn new(what: impl Into<String>, hint: &'static str) -> Self {
        Self { what: what.into(), hint }
    }
}

/// Reports `fatal` and halts.
pub fn halt_with(fatal: &Fatal) -> ! {
    report(&fatal.what, fatal.hint)
}

/// Prints the error line and halts.
pub fn report(what: &dyn Display, hint: &str) -> ! {
    say!("MantraBoot: error: {what}; {hint}");
    halt()
}

/// Stops the CPU for good: no watchdog reset, no return to the firmware.
pub fn halt() -> ! {
    if console::boot_services_active() {
        // The firmware arms a 5-minute watchdog for boot applications: a
        // reset would boot into the same error again and scroll it away.
        let _ = uefi::boot::set_watchdog_timer(0, 0x1_0000, None);
    }
    loop {
        // SAFETY: masking interrupts and halting only stops this CPU, which
        // is what we want; nothing else is running on it.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    if PANICKING.swap(true, Ordering::SeqCst) {
        // A panic while reporting a panic: do not recurse.
        halt();
    }
    match info.location() {
        Some(at) => say!(
            "MantraBoot: error: internal error at {}:{}: {}; please report this MantraBoot bug",
            at.file(),
            at.line(),
            info.message()
        ),
        None => say!("MantraBoot: error: internal error: {}; please report this MantraBoot bug", info.message()),
    }
    halt()
}
