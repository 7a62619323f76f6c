//! Local APIC (xAPIC, MMIO through the direct map), the legacy PICs (masked)
//! and LAPIC-timer calibration against PIT channel 2.

use core::sync::atomic::{AtomicU64, Ordering};

use super::cpu::{inb, outb};

const REG_ID: usize = 0x20;
const REG_EOI: usize = 0xB0;
const REG_SPURIOUS: usize = 0xF0;
const REG_LVT_TIMER: usize = 0x320;
const REG_TIMER_INITIAL: usize = 0x380;
const REG_TIMER_CURRENT: usize = 0x390;
const REG_TIMER_DIVIDE: usize = 0x3E0;

const LVT_MASKED: u32 = 1 << 16;
const LVT_PERIODIC: u32 = 1 << 17;
const DIVIDE_BY_16: u32 = 0b0011;

/// The PIT's input clock.
const PIT_HZ: u64 = 1_193_182;
/// Calibration window.
const CALIBRATION_MS: u64 = 10;

/// Virtual address of this machine's LAPIC registers (set once at init).
static LAPIC_BASE: AtomicU64 = AtomicU64::new(0);

fn reg(offset: usize) -> *mut u32 {
    (LAPIC_BASE.load(Ordering::Relaxed) as usize + offset) as *mut u32
}

fn read(offset: usize) -> u32 {
    // SAFETY: LAPIC_BASE maps the LAPIC's 4 KiB register page (set in
    // `init` before any read) and `offset` is a register offset within it.
    unsafe { reg(offset).read_volatile() }
}

fn write(offset: usize, value: u32) {
    // SAFETY: as in `read`.
    unsafe { reg(offset).write_volatile(value) }
}

/// Masks both 8259 PICs after remapping them to 0x20-0x2F, so a stray
/// legacy IRQ lands on a harmless vector instead of an exception's.
fn mask_legacy_pics() {
    // SAFETY: the PIC ports belong to the kernel during bring-up; the
    // sequence is the standard ICW1-4 initialisation followed by masking.
    unsafe {
        outb(0x20, 0x11);
        outb(0xA0, 0x11);
        outb(0x21, 0x20);
        outb(0xA1, 0x28);
        outb(0x21, 0x04);
        outb(0xA1, 0x02);
        outb(0x21, 0x01);
        outb(0xA1, 0x01);
        outb(0x21, 0xFF);
        outb(0xA1, 0xFF);
    }
}

/// Enables this CPU's LAPIC at `base_virt` with the given spurious vector.
pub fn init(base_virt: u64, spurious_vector: u8, has_8259: bool) {
    if has_8259 {
        mask_legacy_pics();
    }
    LAPIC_BASE.store(base_virt, Ordering::Relaxed);
    write(REG_SPURIOUS, 0x100 | u32::from(spurious_vector));
    write(REG_LVT_TIMER, LVT_MASKED);
}

pub fn id() -> u32 {
    read(REG_ID) >> 24
}

pub fn end_of_interrupt() {
    write(REG_EOI, 0);
}

/// Busy-waits `ms` milliseconds on PIT channel 2 (speaker gate), returning
/// false when the PIT does not count (no PIT on this machine).
fn pit_wait(ms: u64) -> bool {
    let count = (PIT_HZ * ms / 1000) as u16;
    // SAFETY: port 0x61 (gate) and 0x42/0x43 (channel 2) are the PIT's,
    // owned by the kernel during calibration; the speaker output stays off.
    unsafe {
        let gate = inb(0x61);
        outb(0x61, (gate & !0x02) | 0x01);
        outb(0x43, 0b1011_0000); // channel 2, lo/hi, mode 0, binary
        outb(0x42, count as u8);
        outb(0x42, (count >> 8) as u8);
        // Restart the count by toggling the gate.
        let gate = inb(0x61);
        outb(0x61, gate & !0x01);
        outb(0x61, gate | 0x01);
        for _ in 0..100_000_000u64 {
            if inb(0x61) & 0x20 != 0 {
                return true;
            }
        }
    }
    false
}

/// Measures the LAPIC timer's rate (ticks per second at divide-by-16) and
/// the TSC's rate over the same window.
pub fn calibrate() -> Option<(u64, u64)> {
    write(REG_TIMER_DIVIDE, DIVIDE_BY_16);
    write(REG_LVT_TIMER, LVT_MASKED);
    write(REG_TIMER_INITIAL, u32::MAX);
    let tsc_start = super::cpu::rdtsc();
    if !pit_wait(CALIBRATION_MS) {
        return None;
    }
    let elapsed = u64::from(u32::MAX - read(REG_TIMER_CURRENT));
    let tsc = super::cpu::rdtsc() - tsc_start;
    write(REG_TIMER_INITIAL, 0);
    Some((elapsed * 1000 / CALIBRATION_MS, tsc * 1000 / CALIBRATION_MS))
}

/// Starts the periodic timer at `hz` given the calibrated rate.
pub fn start_periodic(vector: u8, timer_rate: u64, hz: u64) {
    let initial = (timer_rate / hz).clamp(1, u64::from(u32::MAX)) as u32;
    write(REG_TIMER_DIVIDE, DIVIDE_BY_16);
    write(REG_LVT_TIMER, LVT_PERIODIC | u32::from(vector));
    write(REG_TIMER_INITIAL, initial);
}
