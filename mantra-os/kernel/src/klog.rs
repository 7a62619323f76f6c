//! The kernel log object: the console sink userland writes records to
//! (LOG_WRITE) and the ring of kernel records MantraLogd drains (LOG_READ).

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering};

use mantra_kernel::sync::SpinLock;

/// Kernel records kept for LOG_READ; older ones are dropped (counted).
const RING_RECORDS: usize = 256;
pub const MAX_RECORD: usize = 512;

struct Ring {
    records: VecDeque<(u64, Vec<u8>)>,
    next_seq: u64,
}

static RING: SpinLock<Ring> = SpinLock::new(Ring { records: VecDeque::new(), next_seq: 0 });

/// A log object: handles to it write to the console; each object has its
/// own read cursor into the kernel ring.
pub struct Log {
    pub koid: u64,
    cursor: AtomicU64,
}

impl Log {
    pub fn new(koid: u64) -> Self {
        Self { koid, cursor: AtomicU64::new(0) }
    }

    /// Writes a user record to the console as is: MantraLogd formats the
    /// records of every service (`[<service>] <level>: <text>`), and the
    /// few processes that write before it runs (init) format their own.
    /// Records less severe than the configured console level (Kconfig
    /// LOG_LEVEL_*) are not printed.
    pub fn write(&self, level: u8, text: &[u8]) {
        if level > crate::console::MAX_LEVEL as u8 {
            return;
        }
        let text = String::from_utf8_lossy(text);
        crate::kprintln!("{}", text.trim_end());
    }

    /// The oldest kernel record this object has not returned yet.
    pub fn read(&self) -> Option<Vec<u8>> {
        let ring = RING.lock();
        let cursor = self.cursor.load(Ordering::Relaxed);
        let (seq, record) = ring.records.iter().find(|(seq, _)| *seq >= cursor)?;
        self.cursor.store(seq + 1, Ordering::Relaxed);
        Some(record.clone())
    }
}

/// Keeps a kernel message for userland's log service.
pub fn record(level: u8, args: core::fmt::Arguments<'_>) {
    let mut text = String::new();
    let _ = text.write_fmt(args);
    text.truncate(MAX_RECORD - 1);
    let mut bytes = Vec::with_capacity(text.len() + 1);
    bytes.push(level);
    bytes.extend_from_slice(text.as_bytes());
    let mut ring = RING.lock();
    let seq = ring.next_seq;
    ring.next_seq += 1;
    if ring.records.len() == RING_RECORDS {
        ring.records.pop_front();
    }
    ring.records.push_back((seq, bytes));
}
