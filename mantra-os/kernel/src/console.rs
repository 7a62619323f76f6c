//! The kernel console: formatted printing and leveled logging on the boot
//! console. Later issues forward kernel records to MantraLogd as well.

use core::fmt::{self, Write};

use crate::arch::{Arch, Machine};
use mantra_kernel::sync::SpinLock;

pub use mantra_abi::LogLevel as Level;

/// The most verbose level printed (Kconfig LOG_LEVEL_* choice).
pub const MAX_LEVEL: Level = if mantra_config::LOG_LEVEL_TRACE {
    Level::Trace
} else if mantra_config::LOG_LEVEL_DEBUG {
    Level::Debug
} else if mantra_config::LOG_LEVEL_INFO {
    Level::Info
} else if mantra_config::LOG_LEVEL_WARN {
    Level::Warn
} else {
    Level::Error
};

/// Serialises whole lines from different contexts.
static LINE_LOCK: SpinLock<()> = SpinLock::new(());

struct ConsoleWriter;

impl Write for ConsoleWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        Machine::console_write(s.as_bytes());
        Ok(())
    }
}

/// Writes without taking the line lock: for fault and panic paths, which may
/// interrupt a holder of the lock.
pub struct EmergencyWriter;

impl Write for EmergencyWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        Machine::console_write(s.as_bytes());
        Ok(())
    }
}

#[doc(hidden)]
pub fn print(args: fmt::Arguments<'_>) {
    let _line = LINE_LOCK.lock();
    let _ = ConsoleWriter.write_fmt(args);
}

/// Writes `bytes` as they are, holding the line lock: whole lines from
/// user mode (CONSOLE_WRITE) never interleave with kernel output.
pub fn write_lines(bytes: &[u8]) {
    let _line = LINE_LOCK.lock();
    Machine::console_write(bytes);
}

#[doc(hidden)]
pub fn log(level: Level, args: fmt::Arguments<'_>) {
    if level <= MAX_LEVEL {
        let _line = LINE_LOCK.lock();
        let _ = write!(ConsoleWriter, "[{}] ", level.name());
        let _ = ConsoleWriter.write_fmt(args);
        let _ = ConsoleWriter.write_str("\n");
        drop(_line);
        if crate::memory::heap_ready() {
            crate::klog::record(level as u8, args);
        }
    }
}

#[macro_export]
macro_rules! kprint {
    ($($arg:tt)*) => { $crate::console::print(format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! kprintln {
    () => { $crate::kprint!("\n") };
    ($($arg:tt)*) => { $crate::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}

#[macro_export]
macro_rules! kerror { ($($arg:tt)*) => { $crate::console::log($crate::console::Level::Error, format_args!($($arg)*)) }; }
#[macro_export]
macro_rules! kwarn { ($($arg:tt)*) => { $crate::console::log($crate::console::Level::Warn, format_args!($($arg)*)) }; }
#[macro_export]
macro_rules! kinfo { ($($arg:tt)*) => { $crate::console::log($crate::console::Level::Info, format_args!($($arg)*)) }; }
#[macro_export]
macro_rules! kdebug { ($($arg:tt)*) => { $crate::console::log($crate::console::Level::Debug, format_args!($($arg)*)) }; }

impl EmergencyWriter {
    pub fn write_line(line: &str) {
        Machine::console_write(line.as_bytes());
        Machine::console_write(b"\n");
    }
}
