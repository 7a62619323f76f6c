//! The log client and the record format (contract/USERLAND.md).
//!
//! A record is one channel message: `[level u8 (1 error .. 5 trace), 0, 0, 0,
//! pid-ish u32 LE (0 = unknown)]` followed by at most [`MAX_TEXT`] bytes of
//! UTF-8. Services send records over their `log` channel to MantraLogd,
//! which knows the service from the channel.
//!
//! The runtime's logger writes to one sink: the `log` channel of the
//! bootstrap message, or — when `log` is the kernel log object, as for
//! MantraInit and MantraLogd — straight to the kernel with LOG_WRITE. If the
//! channel's peer is gone, the logger falls back to the kernel log when the
//! process has one (MantraInit keeps it for that), else drops the record.
//! Formatting needs no heap (lines are built in a fixed buffer and cut at
//! [`MAX_TEXT`] bytes), so logging works in the allocator and panic paths.

use core::fmt::{self, Write};

use mantra_abi::{Error, Handle};

use crate::fmt::FixedBuf;
use crate::sync::Lock;
use crate::sys;

/// Most text bytes in one record (the kernel's LOG_WRITE limit too).
pub const MAX_TEXT: usize = 512;
/// Bytes before the text.
pub const HEADER_LEN: usize = 8;
/// Largest encoded record.
pub const MAX_RECORD: usize = HEADER_LEN + MAX_TEXT;

/// How often a full channel (SHOULD_WAIT) is retried, yielding in between,
/// before the record is dropped.
const FULL_RETRIES: u32 = 64;

/// Record levels: the ABI's (LOG_WRITE takes the same numbers).
pub use mantra_abi::LogLevel as Level;

/// A decoded record; `text` borrows from the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub level: Level,
    pub pid: u32,
    pub text: &'a str,
}

/// Why a message is not a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// Shorter than the 8-byte header.
    Short,
    /// The level byte is not 1..=5.
    BadLevel(u8),
    /// The reserved bytes are not zero.
    BadHeader,
    /// The text is longer than [`MAX_TEXT`].
    TooLong(usize),
}

/// Encodes a record into `out`; the text is cut to [`MAX_TEXT`] bytes at a
/// character boundary. Returns the record's length.
pub fn encode_record(level: Level, pid: u32, text: &str, out: &mut [u8; MAX_RECORD]) -> usize {
    let text = crate::fmt::truncate_str(text, MAX_TEXT);
    out[0] = level as u8;
    out[1..4].fill(0);
    out[4..8].copy_from_slice(&pid.to_le_bytes());
    out[HEADER_LEN..HEADER_LEN + text.len()].copy_from_slice(text.as_bytes());
    HEADER_LEN + text.len()
}

/// Decodes a record. Text that is not valid UTF-8 is cut at the first
/// invalid byte (a record is never refused for its text).
pub fn decode_record(bytes: &[u8]) -> Result<Record<'_>, RecordError> {
    if bytes.len() < HEADER_LEN {
        return Err(RecordError::Short);
    }
    let level = Level::from_u8(bytes[0]).ok_or(RecordError::BadLevel(bytes[0]))?;
    if bytes[1..4] != [0, 0, 0] {
        return Err(RecordError::BadHeader);
    }
    let pid = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let raw = &bytes[HEADER_LEN..];
    if raw.len() > MAX_TEXT {
        return Err(RecordError::TooLong(raw.len()));
    }
    let text = match core::str::from_utf8(raw) {
        Ok(text) => text,
        // The first `valid_up_to` bytes are valid UTF-8 by definition.
        Err(e) => core::str::from_utf8(&raw[..e.valid_up_to()]).unwrap_or(""),
    };
    Ok(Record { level, pid, text })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sink {
    /// Nowhere (before start-up, or after every sink failed).
    None,
    /// LOG_WRITE to a kernel log object.
    Kernel(Handle),
    /// Records over a channel to MantraLogd.
    Channel(Handle),
}

struct Logger {
    sink: Sink,
    /// A kernel log to fall back to when the channel fails.
    kernel: Option<Handle>,
    pid: u32,
    max_level: Level,
    dropped: u64,
}

static LOGGER: Lock<Logger> =
    Lock::new(Logger { sink: Sink::None, kernel: None, pid: 0, max_level: Level::Info, dropped: 0 });

/// Logs to the kernel log object `log` (LOG_WRITE); it stays the fallback
/// for a channel set later. The runtime calls this when the bootstrap `log`
/// handle is a log object.
pub fn set_kernel_log(log: Handle) {
    let mut logger = LOGGER.lock();
    logger.sink = Sink::Kernel(log);
    logger.kernel = Some(log);
}

/// Logs as records over `channel` (the runtime owns the handle from now on;
/// a previous channel is closed).
pub fn set_channel(channel: Handle) {
    let mut logger = LOGGER.lock();
    if let Sink::Channel(old) = logger.sink {
        let _ = sys::handle_close(old);
    }
    logger.sink = Sink::Channel(channel);
}

/// The pid-ish number put in records (the process's kernel object id).
pub fn set_pid(pid: u32) {
    LOGGER.lock().pid = pid;
}

/// Records above `level` are not sent (default: Info).
pub fn set_max_level(level: Level) {
    LOGGER.lock().max_level = level;
}

/// Whether records of `level` are sent.
pub fn enabled(level: Level) -> bool {
    level <= LOGGER.lock().max_level
}

/// Records dropped so far (no sink, or the channel stayed full).
pub fn dropped() -> u64 {
    LOGGER.lock().dropped
}

/// The kernel log the logger falls back to, if any.
pub fn kernel_log() -> Option<Handle> {
    LOGGER.lock().kernel
}

/// Logs a formatted message (what the macros call).
pub fn log(level: Level, args: fmt::Arguments<'_>) {
    let mut logger = LOGGER.lock();
    if level > logger.max_level {
        return;
    }
    emit(&mut logger, level, args);
}

/// Logs from the panic path: never waits for the lock (the panic may have
/// happened while it was held) and ignores the level filter.
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
pub(crate) fn log_emergency(level: Level, args: fmt::Arguments<'_>) {
    if let Some(mut logger) = LOGGER.try_lock() {
        emit(&mut logger, level, args);
    }
}

fn emit(logger: &mut Logger, level: Level, args: fmt::Arguments<'_>) {
    let mut text = FixedBuf::<MAX_TEXT>::new();
    let _ = text.write_fmt(args);
    loop {
        let result = match logger.sink {
            Sink::None => {
                logger.dropped += 1;
                return;
            }
            Sink::Kernel(log) => sys::log_write(log, level as u8, text.as_bytes()),
            Sink::Channel(channel) => send_record(channel, level, logger.pid, text.as_str()),
        };
        match result {
            Ok(()) => return,
            // The channel is gone: fall back to the kernel log, if any.
            Err(Error::PeerClosed | Error::BadHandle) if matches!(logger.sink, Sink::Channel(_)) => {
                if let Sink::Channel(channel) = logger.sink {
                    let _ = sys::handle_close(channel);
                }
                logger.sink = logger.kernel.map_or(Sink::None, Sink::Kernel);
            }
            Err(_) => {
                logger.dropped += 1;
                return;
            }
        }
    }
}

fn send_record(channel: Handle, level: Level, pid: u32, text: &str) -> Result<(), Error> {
    let mut record = [0u8; MAX_RECORD];
    let len = encode_record(level, pid, text, &mut record);
    let mut tries = 0;
    loop {
        match sys::channel_write(channel, &record[..len], &[]) {
            // The log server is behind: let it run, then try again.
            Err(Error::ShouldWait) if tries < FULL_RETRIES => {
                tries += 1;
                sys::thread_yield();
            }
            other => return other,
        }
    }
}

/// The log server's control protocol (MantraInit -> MantraLogd over the
/// `logctl` channel): one message per log channel, bytes `attach <service>`
/// with exactly one handle, the server end of that service's log channel.
pub mod control {
    use alloc::vec::Vec;

    const ATTACH: &str = "attach ";

    pub fn encode_attach(service: &str) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(ATTACH.len() + service.len());
        bytes.extend_from_slice(ATTACH.as_bytes());
        bytes.extend_from_slice(service.as_bytes());
        bytes
    }

    /// The service name of an `attach` message (non-empty, no blanks).
    pub fn parse_attach(bytes: &[u8]) -> Option<&str> {
        let name = core::str::from_utf8(bytes).ok()?.strip_prefix(ATTACH)?;
        crate::startup::valid_name(name).then_some(name)
    }
}

/// Stops logging over a channel: closes it and goes back to the kernel log
/// (if the process has one) — MantraInit does this when MantraLogd exits.
pub fn use_kernel_log() {
    let mut logger = LOGGER.lock();
    if let Sink::Channel(channel) = logger.sink {
        let _ = sys::handle_close(channel);
    }
    logger.sink = logger.kernel.map_or(Sink::None, Sink::Kernel);
}

/// `log!(Level::Info, "...", args)`.
#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)*) => {
        $crate::log::log($level, format_args!($($arg)*))
    };
}

#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Error, format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Warn, format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Info, format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Debug, format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! trace {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Trace, format_args!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let mut buf = [0u8; MAX_RECORD];
        let len = encode_record(Level::Warn, 0x1234_5678, "disk almost full", &mut buf);
        assert_eq!(&buf[..8], &[2, 0, 0, 0, 0x78, 0x56, 0x34, 0x12]);
        assert_eq!(
            decode_record(&buf[..len]),
            Ok(Record { level: Level::Warn, pid: 0x1234_5678, text: "disk almost full" })
        );
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        let text = "é".repeat(300); // 600 bytes
        let mut buf = [0u8; MAX_RECORD];
        let len = encode_record(Level::Info, 0, &text, &mut buf);
        assert_eq!(len, HEADER_LEN + 512);
        assert_eq!(decode_record(&buf[..len]).unwrap().text.chars().count(), 256);
    }

    #[test]
    fn malformed_records_are_refused() {
        assert_eq!(decode_record(&[3, 0, 0]), Err(RecordError::Short));
        assert_eq!(decode_record(&[9, 0, 0, 0, 0, 0, 0, 0]), Err(RecordError::BadLevel(9)));
        assert_eq!(decode_record(&[3, 1, 0, 0, 0, 0, 0, 0]), Err(RecordError::BadHeader));
        let mut long = std::vec![3u8, 0, 0, 0, 0, 0, 0, 0];
        long.extend(std::iter::repeat_n(b'a', 513));
        assert_eq!(decode_record(&long), Err(RecordError::TooLong(513)));
        let bad_utf8 = [1u8, 0, 0, 0, 0, 0, 0, 0, b'o', b'k', 0xff, b'x'];
        assert_eq!(decode_record(&bad_utf8).unwrap().text, "ok");
    }

    #[test]
    fn attach_messages() {
        let bytes = control::encode_attach("demo");
        assert_eq!(bytes, b"attach demo");
        assert_eq!(control::parse_attach(&bytes), Some("demo"));
        assert_eq!(control::parse_attach(b"attach "), None);
        assert_eq!(control::parse_attach(b"attach a b"), None);
        assert_eq!(control::parse_attach(b"detach demo"), None);
    }

    #[test]
    fn level_names() {
        let names: std::vec::Vec<_> = (1..=5).map(|n| Level::from_u8(n).unwrap().name()).collect();
        assert_eq!(names, ["error", "warn", "info", "debug", "trace"]);
        assert_eq!(Level::from_u8(0), None);
    }
}
