//! MantraLogd's logic that needs no kernel, unit-tested on the host: the
//! ring buffer of recent records, the console line format, and how kernel
//! log records are read.
#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

use alloc::collections::VecDeque;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use mantra_rt::fmt::truncate_str;
use mantra_rt::log::{decode_record, Level, MAX_TEXT};

/// Source name of records drained from the kernel log.
pub const KERNEL_SOURCE: &str = "kernel";

/// One stored record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Monotonic time it arrived (ns).
    pub time: u64,
    /// Service name (the log channel's), or [`KERNEL_SOURCE`].
    pub source: String,
    pub level: Level,
    pub pid: u32,
    pub text: String,
}

/// The last `capacity` records.
#[derive(Debug)]
pub struct Ring {
    entries: VecDeque<Entry>,
    capacity: usize,
    total: u64,
}

impl Ring {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self { entries: VecDeque::with_capacity(capacity), capacity, total: 0 }
    }

    pub fn push(&mut self, entry: Entry) {
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
        self.total += 1;
    }

    /// Oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Records ever pushed.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Records pushed out by newer ones.
    pub fn overwritten(&self) -> u64 {
        self.total - self.entries.len() as u64
    }
}

/// The console lines for a record: `[<source>] <level>: <text>`, one per
/// line of the text (blank lines dropped, a text without any still gives
/// one line), each cut to the kernel's [`MAX_TEXT`] limit.
pub fn console_lines(source: &str, level: Level, text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .map(|l| line(source, level, l))
        .collect();
    if lines.is_empty() {
        lines.push(line(source, level, ""));
    }
    lines
}

fn line(source: &str, level: Level, text: &str) -> String {
    let full = alloc::format!("[{source}] {}: {text}", level.name());
    truncate_str(&full, MAX_TEXT).to_string()
}

/// Reads a record LOG_READ returned: a log record in the channel format when
/// it is one, else plain UTF-8 text at level info. Trailing line breaks go.
pub fn kernel_record(bytes: &[u8]) -> (Level, String) {
    let (level, text) = match decode_record(bytes) {
        Ok(record) => (record.level, record.text.to_string()),
        Err(_) => {
            let valid = match core::str::from_utf8(bytes) {
                Ok(text) => text,
                Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
            };
            (Level::Info, valid.to_string())
        }
    };
    (level, text.trim_end_matches(['\n', '\r']).to_string())
}

/// Whether a kernel record is one of MantraLogd's own console lines coming
/// back (when the kernel log returns what userland wrote to it): `[name] `
/// at the start, `name` one of `sources`.
pub fn is_echo<'a>(text: &str, mut sources: impl Iterator<Item = &'a str>) -> bool {
    let Some(rest) = text.strip_prefix('[') else { return false };
    let Some((name, _)) = rest.split_once("] ") else { return false };
    name == KERNEL_SOURCE || sources.any(|s| s == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    fn entry(n: u64) -> Entry {
        Entry { time: n, source: "demo".into(), level: Level::Info, pid: 7, text: alloc::format!("beat {n}") }
    }

    #[test]
    fn ring_keeps_the_newest() {
        let mut ring = Ring::new(3);
        for n in 0..5 {
            ring.push(entry(n));
        }
        assert_eq!(ring.iter().map(|e| e.time).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!((ring.len(), ring.total(), ring.overwritten(), ring.capacity()), (3, 5, 2, 3));
        assert!(!Ring::new(0).is_empty() || Ring::new(0).capacity() == 1);
    }

    #[test]
    fn console_lines_are_prefixed_split_and_cut() {
        assert_eq!(console_lines("demo", Level::Info, "heartbeat 1"), ["[demo] info: heartbeat 1"]);
        assert_eq!(
            console_lines("crashy", Level::Error, "panic at src/main.rs:3:\nboom\n"),
            ["[crashy] error: panic at src/main.rs:3:", "[crashy] error: boom"]
        );
        assert_eq!(console_lines("x", Level::Warn, ""), ["[x] warn: "]);
        let long = "a".repeat(600);
        assert_eq!(console_lines("x", Level::Debug, &long)[0].len(), MAX_TEXT);
    }

    #[test]
    fn kernel_records_in_both_forms() {
        let mut record = vec![2u8, 0, 0, 0, 0, 0, 0, 0];
        record.extend_from_slice(b"low memory\n");
        assert_eq!(kernel_record(&record), (Level::Warn, "low memory".into()));
        assert_eq!(kernel_record(b"MantraCore ready\r\n"), (Level::Info, "MantraCore ready".into()));
        assert_eq!(kernel_record(b"ok\xff"), (Level::Info, "ok".into()));
    }

    #[test]
    fn own_lines_are_recognised() {
        let sources = ["demo", "init"];
        assert!(is_echo("[demo] info: x", sources.iter().copied()));
        assert!(is_echo("[kernel] info: x", sources.iter().copied()));
        assert!(!is_echo("[other] info: x", sources.iter().copied()));
        assert!(!is_echo("init: started demo", sources.iter().copied()));
    }
}
