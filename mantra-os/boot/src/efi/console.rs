//! Console output: the UEFI text console (which OVMF mirrors to the serial
//! port) while boot services run, the serial port directly afterwards.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};

static BOOT_SERVICES_EXITED: AtomicBool = AtomicBool::new(false);

/// From now on output goes to the serial port: called right before
/// ExitBootServices, after which ConOut must not be touched.
pub fn switch_to_serial() {
    BOOT_SERVICES_EXITED.store(true, Ordering::SeqCst);
}

pub fn boot_services_active() -> bool {
    !BOOT_SERVICES_EXITED.load(Ordering::SeqCst)
}

pub fn print(args: fmt::Arguments<'_>) {
    if boot_services_active() {
        uefi::system::with_stdout(|out| {
            // Nothing sensible to do if the console fails.
            let _ = out.write_fmt(args);
        });
    } else {
        let _ = Serial.write_fmt(args);
    }
}

/// Prints one line.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::efi::console::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// The 16550 UART the firmware set up (`mantra_config::SERIAL_IO_PORT`),
/// written by polling; for messages after ExitBootServices.
struct Serial;

impl Serial {
    fn put(byte: u8) {
        let port = mantra_config::SERIAL_IO_PORT as u16;
        for _ in 0..100_000 {
            // SAFETY: reading the line status register of the UART has no
            // side effects.
            let status = unsafe { inb(port + 5) };
            if status & 0x20 != 0 {
                break;
            }
        }
        // SAFETY: writing the transmit register sends one byte; the port is
        // the board's console UART, which nothing else uses at this point.
        unsafe { outb(port, byte) };
    }
}

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                Self::put(b'\r');
            }
            Self::put(b);
        }
        Ok(())
    }
}

/// # Safety
/// Reading `port` must have no side effect that breaks the machine's state.
pub(super) unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: the caller vouches for the port; `in` touches no memory.
    unsafe { core::arch::asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags)) };
    value
}

/// # Safety
/// Writing `value` to `port` must be harmless for the device behind it.
pub(super) unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller vouches for the port; `out` touches no memory.
    unsafe { core::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) };
}
