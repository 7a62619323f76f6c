//! The console object: the serial console's input for user mode
//! (CONSOLE_READ) and whole raw lines out (CONSOLE_WRITE).
//!
//! Input is polled from the timer tick ([`poll`]): the UART's receiver is
//! drained into a ring of `console::INPUT_BUFFER` bytes (further bytes are
//! dropped and counted until user mode reads). QEMU's serial back ends only
//! hand the guest a byte when the UART's receiver has room, so nothing is
//! lost under QEMU whatever the tick rate; on hardware a 16-byte FIFO at
//! 115200 baud needs a tick of about 1 kHz (CONFIG_TIMER_HZ).
//!
//! The console raises READABLE while the ring holds bytes. Lock order: the
//! ring → the console's signals → port locks (poll runs with interrupts
//! off, as does every syscall, so a CPU never interrupts itself holding the
//! ring).

use alloc::sync::Arc;

use mantra_abi::{console::INPUT_BUFFER, signals};
use mantra_kernel::signal::SignalState;
use mantra_kernel::sync::{Once, SpinLock};

use crate::arch::{Arch, Machine};
use crate::object::{self, next_koid, Sink};

/// Most bytes one tick takes from the UART.
const BYTES_PER_TICK: usize = 256;

struct Ring {
    bytes: [u8; INPUT_BUFFER],
    head: usize,
    len: usize,
    /// Bytes dropped because the ring was full.
    dropped: u64,
}

impl Ring {
    fn push(&mut self, byte: u8) {
        if self.len == INPUT_BUFFER {
            self.dropped += 1;
            return;
        }
        self.bytes[(self.head + self.len) % INPUT_BUFFER] = byte;
        self.len += 1;
    }

    fn peek_into(&self, out: &mut [u8]) -> usize {
        let n = self.len.min(out.len());
        for (i, slot) in out.iter_mut().take(n).enumerate() {
            *slot = self.bytes[(self.head + i) % INPUT_BUFFER];
        }
        n
    }

    fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        self.head = (self.head + n) % INPUT_BUFFER;
        self.len -= n;
    }
}

static INPUT: SpinLock<Ring> = SpinLock::new(Ring { bytes: [0; INPUT_BUFFER], head: 0, len: 0, dropped: 0 });

/// The one console object (created when init's startup handles are made).
static CONSOLE: Once<Arc<Console>> = Once::new();

pub struct Console {
    pub koid: u64,
    pub signals: SpinLock<SignalState<Sink>>,
    /// Held by CONSOLE_READ from peeking to consuming: two readers never
    /// take the same bytes.
    pub reader: SpinLock<()>,
}

/// The console object, created on first use with READABLE set if input
/// arrived before.
pub fn object() -> Arc<Console> {
    CONSOLE
        .call_once(|| {
            let ring = INPUT.lock();
            let initial = if ring.len > 0 { signals::READABLE } else { 0 };
            Arc::new(Console { koid: next_koid(), signals: SpinLock::new(SignalState::new(initial)), reader: SpinLock::new(()) })
        })
        .clone()
}

/// Drains the UART's receiver into the ring (from the timer tick).
pub fn poll() {
    let mut ring = INPUT.lock();
    let before = ring.len;
    for _ in 0..BYTES_PER_TICK {
        match Machine::console_read_byte() {
            Some(byte) => ring.push(byte),
            None => break,
        }
    }
    if ring.len > before && before == 0 {
        if let Some(console) = CONSOLE.get() {
            object::raise(&console.signals, signals::READABLE);
        }
    }
}

impl Console {
    /// Copies up to `out.len()` buffered bytes without taking them (the
    /// caller holds `reader`, copies them to the user, then [`Self::consume`]s).
    pub fn peek(&self, out: &mut [u8]) -> usize {
        INPUT.lock().peek_into(out)
    }

    /// Takes `n` bytes [`Self::peek`] returned; clears READABLE when the ring
    /// runs empty.
    pub fn consume(&self, n: usize) {
        let mut ring = INPUT.lock();
        ring.consume(n);
        if ring.dropped > 0 {
            let dropped = core::mem::take(&mut ring.dropped);
            crate::kwarn!("console: {dropped} input bytes dropped (the reader fell behind)");
        }
        if ring.len == 0 {
            object::update(&self.signals, signals::READABLE, 0);
        }
    }
}

/// Whether `bytes` are whole raw lines CONSOLE_WRITE accepts: printable
/// ASCII, tab, CR and LF only, ending with LF.
pub fn valid_lines(bytes: &[u8]) -> bool {
    bytes.last() == Some(&b'\n') && bytes.iter().all(|&b| matches!(b, 0x20..=0x7e | b'\t' | b'\r' | b'\n'))
}
