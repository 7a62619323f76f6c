//! A polled 16550 UART at the board's console port
//! (`CONFIG_SERIAL_IO_PORT`, clocked for `CONFIG_SERIAL_UART_BASE_BAUD` at
//! divisor 1), for flash mode: bytes in and out without the firmware's
//! console in between, the divisor for SET_BAUD, and a monotonic clock
//! (the TSC, calibrated against the firmware's Stall) for timeouts.

use super::console::{inb, outb};
use super::platform::rdtsc;

const RBR_THR: u16 = 0;
const IER: u16 = 1;
const LCR: u16 = 3;
const LSR: u16 = 5;
const LCR_DLAB: u8 = 0x80;
const LSR_DATA_READY: u8 = 0x01;
const LSR_THR_EMPTY: u8 = 0x20;
const LSR_TX_IDLE: u8 = 0x40;

/// The console UART.
pub struct Uart {
    base: u16,
    base_baud: u32,
}

impl Uart {
    /// The board's console UART, as the firmware set it up (line format
    /// and rate kept; interrupts off: flash mode polls).
    pub fn board() -> Self {
        let uart = Self { base: mantra_config::SERIAL_IO_PORT as u16, base_baud: mantra_config::SERIAL_UART_BASE_BAUD as u32 };
        // SAFETY: IER of the board's console UART; flash mode owns the
        // port (the firmware's terminal driver is disconnected from it).
        unsafe { outb(uart.base + IER, 0) };
        uart
    }

    fn lsr(&self) -> u8 {
        // SAFETY: reading LSR only reports status (it clears error bits,
        // which nobody else reads while flash mode owns the port).
        unsafe { inb(self.base + LSR) }
    }

    /// One received byte, if there is one.
    pub fn read(&mut self) -> Option<u8> {
        if self.lsr() & LSR_DATA_READY == 0 {
            return None;
        }
        // SAFETY: RBR holds a byte (data ready); reading takes it.
        Some(unsafe { inb(self.base + RBR_THR) })
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            while self.lsr() & LSR_THR_EMPTY == 0 {
                core::hint::spin_loop();
            }
            // SAFETY: THR is empty; writing it sends one byte.
            unsafe { outb(self.base + RBR_THR, b) };
        }
    }

    /// Waits until the transmitter has sent everything (FIFO and shift
    /// register), e.g. before the rate changes.
    pub fn drain(&mut self) {
        while self.lsr() & LSR_TX_IDLE == 0 {
            core::hint::spin_loop();
        }
    }

    fn divisor(&self) -> u16 {
        // SAFETY: DLAB set, the divisor latch read, LCR restored: the
        // line format is unchanged and nothing else uses the port.
        unsafe {
            let lcr = inb(self.base + LCR);
            outb(self.base + LCR, lcr | LCR_DLAB);
            let divisor = u16::from(inb(self.base)) | (u16::from(inb(self.base + 1)) << 8);
            outb(self.base + LCR, lcr & !LCR_DLAB);
            divisor
        }
    }

    /// The current rate (base rate / divisor).
    pub fn baud(&self) -> u32 {
        self.base_baud / u32::from(self.divisor().max(1))
    }

    /// Whether the UART's clock makes exactly this rate.
    pub fn supports(&self, baud: u32) -> bool {
        baud != 0 && self.base_baud % baud == 0 && self.base_baud / baud <= 0xFFFF
    }

    /// Drains the transmitter, then sets the divisor for `baud` (one the
    /// UART [`supports`](Self::supports)).
    pub fn set_baud(&mut self, baud: u32) {
        if !self.supports(baud) {
            return;
        }
        self.drain();
        let divisor = (self.base_baud / baud) as u16;
        // SAFETY: as in `divisor`, writing the latch instead of reading it.
        unsafe {
            let lcr = inb(self.base + LCR);
            outb(self.base + LCR, lcr | LCR_DLAB);
            outb(self.base, divisor as u8);
            outb(self.base + 1, (divisor >> 8) as u8);
            outb(self.base + LCR, lcr & !LCR_DLAB);
        }
    }
}

/// Milliseconds from the TSC, calibrated once against the firmware's Stall.
pub struct Clock {
    ticks_per_ms: u64,
}

impl Clock {
    pub fn calibrate() -> Self {
        let start = rdtsc();
        uefi::boot::stall(5_000);
        let ticks = rdtsc().wrapping_sub(start) / 5;
        Self { ticks_per_ms: ticks.max(1) }
    }

    pub fn now_ms(&self) -> u64 {
        rdtsc() / self.ticks_per_ms
    }
}
