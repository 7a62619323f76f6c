//! 16550 UART console on an I/O port (the port and baud rate are board data
//! from Kconfig: SERIAL_IO_PORT, SERIAL_BAUD).

use super::cpu::{inb, outb};

pub struct Uart {
    base: u16,
}

const LINE_STATUS: u16 = 5;
const THR_EMPTY: u8 = 1 << 5;
const DATA_READY: u8 = 1 << 0;

impl Uart {
    pub const fn new(base: u16) -> Self {
        Self { base }
    }

    /// Programs 8N1 at `baud`, FIFOs on, device interrupts off (the console
    /// polls; a userland driver takes the UART over later).
    pub fn init(&self, baud: u32) {
        let divisor = (115_200 / baud.clamp(1, 115_200)) as u16;
        // SAFETY: the UART at `base` is the board's console, owned by the kernel.
        unsafe {
            outb(self.base + 1, 0x00); // interrupts off
            outb(self.base + 3, 0x80); // DLAB on
            outb(self.base, divisor as u8);
            outb(self.base + 1, (divisor >> 8) as u8);
            outb(self.base + 3, 0x03); // 8N1, DLAB off
            outb(self.base + 2, 0xC7); // FIFO on, clear, 14-byte threshold
            outb(self.base + 4, 0x03); // DTR, RTS
        }
    }

    pub fn write_byte(&self, byte: u8) {
        // Bounded wait: a missing or wedged UART must not hang the kernel.
        for _ in 0..100_000 {
            // SAFETY: reading the line status register has no side effects.
            if unsafe { inb(self.base + LINE_STATUS) } & THR_EMPTY != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        // SAFETY: writing the transmit register sends one byte.
        unsafe { outb(self.base, byte) };
    }

    /// The next received byte, if one is waiting (the kernel polls the
    /// receiver from the timer tick).
    pub fn read_byte(&self) -> Option<u8> {
        // SAFETY: reading the line status register has no side effects.
        if unsafe { inb(self.base + LINE_STATUS) } & DATA_READY == 0 {
            return None;
        }
        // SAFETY: with data ready, reading the receive buffer takes one byte.
        Some(unsafe { inb(self.base) })
    }

    pub fn write(&self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.write_byte(b'\r');
            }
            self.write_byte(b);
        }
    }
}
