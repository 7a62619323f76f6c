//! Local APIC (xAPIC, MMIO through the direct map), the legacy PICs (masked),
//! LAPIC-timer calibration against PIT channel 2, and inter-processor
//! interrupts (INIT, STARTUP, fixed vectors) through the ICR.

use core::sync::atomic::{AtomicU64, Ordering};

use super::cpu::{inb, outb};

const REG_ID: usize = 0x20;
const REG_TPR: usize = 0x80;
const REG_EOI: usize = 0xB0;
const REG_SPURIOUS: usize = 0xF0;
const REG_LVT_TIMER: usize = 0x320;
const REG_TIMER_INITIAL: usize = 0x380;
const REG_TIMER_CURRENT: usize = 0x390;
const REG_TIMER_DIVIDE: usize = 0x3E0;
const REG_ICR_LOW: usize = 0x300;
const REG_ICR_HIGH: usize = 0x310;

const LVT_MASKED: u32 = 1 << 16;
const LVT_PERIODIC: u32 = 1 << 17;
const DIVIDE_BY_16: u32 = 0b0011;

/// The PIT's input clock.
const PIT_HZ: u64 = 1_193_182;
/// Calibration window.
const CALIBRATION_MS: u64 = 10;

/// Virtual address of this machine's LAPIC registers (set once at init).
/// Every CPU sees its own LAPIC at the same address.
static LAPIC_BASE: AtomicU64 = AtomicU64::new(0);
/// Calibrated rates (0 until `calibrate` succeeded): LAPIC timer ticks per
/// second at divide-by-16, TSC ticks per second. APs reuse them.
static TIMER_RATE: AtomicU64 = AtomicU64::new(0);
static TSC_RATE: AtomicU64 = AtomicU64::new(0);

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
    let (timer_rate, tsc_rate) = (elapsed * 1000 / CALIBRATION_MS, tsc * 1000 / CALIBRATION_MS);
    TIMER_RATE.store(timer_rate, Ordering::Relaxed);
    TSC_RATE.store(tsc_rate, Ordering::Relaxed);
    Some((timer_rate, tsc_rate))
}

/// The rates `calibrate` measured on the boot CPU: (LAPIC timer ticks per
/// second at divide-by-16, TSC ticks per second); `None` before calibration.
pub fn calibrated_rates() -> Option<(u64, u64)> {
    let (timer, tsc) = (TIMER_RATE.load(Ordering::Relaxed), TSC_RATE.load(Ordering::Relaxed));
    (timer != 0 && tsc != 0).then_some((timer, tsc))
}

/// Starts the periodic timer at `hz` given the calibrated rate.
pub fn start_periodic(vector: u8, timer_rate: u64, hz: u64) {
    let initial = (timer_rate / hz).clamp(1, u64::from(u32::MAX)) as u32;
    write(REG_TIMER_DIVIDE, DIVIDE_BY_16);
    write(REG_LVT_TIMER, LVT_PERIODIC | u32::from(vector));
    write(REG_TIMER_INITIAL, initial);
}

/// Enables the LAPIC of an application processor (the boot CPU's `init`
/// already set the shared register address and masked the PICs): accept
/// every priority, set the spurious vector, keep the timer masked until
/// `start_periodic`.
pub fn init_ap(spurious_vector: u8) {
    debug_assert!(LAPIC_BASE.load(Ordering::Relaxed) != 0, "apic::init runs on the boot CPU first");
    write(REG_TPR, 0);
    write(REG_SPURIOUS, 0x100 | u32::from(spurious_vector));
    write(REG_LVT_TIMER, LVT_MASKED);
}

// ICR fields (xAPIC: destination in ICR high bits 24-31).
const ICR_FIXED: u32 = 0b000 << 8;
const ICR_INIT: u32 = 0b101 << 8;
const ICR_STARTUP: u32 = 0b110 << 8;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_ALL_EXCLUDING_SELF: u32 = 0b11 << 18;
/// Highest APIC id an xAPIC ICR can name (0xFF is the broadcast id).
pub const MAX_XAPIC_ID: u32 = 0xFE;
/// Polls of the delivery-status bit before an IPI counts as stuck. QEMU
/// clears it at once; real LAPICs within a microsecond or so.
const ICR_POLLS: u32 = 1_000_000;

/// Why an IPI was not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpiError {
    /// The APIC id cannot be addressed in xAPIC mode (above `MAX_XAPIC_ID`).
    BadDestination(u32),
    /// The previous IPI never left the ICR (delivery status stayed pending).
    Stuck,
}

impl core::fmt::Display for IpiError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            IpiError::BadDestination(id) => write!(f, "APIC id {id} cannot be addressed by an xAPIC"),
            IpiError::Stuck => write!(f, "the local APIC did not deliver the previous IPI"),
        }
    }
}

/// Masks interrupts on this CPU until dropped, then restores the previous
/// state: for short sections that must not be interrupted on this CPU
/// (an ICR write pair, per-CPU request slots).
pub struct InterruptsOff {
    were_enabled: bool,
}

impl InterruptsOff {
    pub fn new() -> Self {
        let were_enabled = interrupts_enabled();
        super::cpu::disable_interrupts();
        Self { were_enabled }
    }

    /// Whether interrupts were enabled when this guard was made.
    pub fn were_enabled(&self) -> bool {
        self.were_enabled
    }
}

impl Drop for InterruptsOff {
    fn drop(&mut self) {
        if self.were_enabled {
            // SAFETY: they were enabled before this guard, so the IDT is
            // loaded and every vector that can fire has a handler.
            unsafe { super::cpu::enable_interrupts() };
        }
    }
}

/// Whether maskable interrupts are enabled on this CPU (RFLAGS.IF).
pub fn interrupts_enabled() -> bool {
    let flags: u64;
    // SAFETY: PUSHFQ/POP only read RFLAGS through the stack.
    unsafe { core::arch::asm!("pushfq", "pop {}", out(reg) flags, options(nomem, preserves_flags)) };
    flags & (1 << 9) != 0
}

fn wait_icr_idle() -> Result<(), IpiError> {
    for _ in 0..ICR_POLLS {
        if read(REG_ICR_LOW) & ICR_DELIVERY_PENDING == 0 {
            return Ok(());
        }
        core::hint::spin_loop();
    }
    Err(IpiError::Stuck)
}

/// Writes one IPI command: destination first, then the low word, which
/// sends. Interrupts stay masked in between, so a handler that sends an IPI
/// of its own cannot change the destination under us.
fn send_icr(destination: u32, low: u32) -> Result<(), IpiError> {
    if destination > MAX_XAPIC_ID {
        return Err(IpiError::BadDestination(destination));
    }
    let _masked = InterruptsOff::new();
    wait_icr_idle()?;
    write(REG_ICR_HIGH, destination << 24);
    write(REG_ICR_LOW, low);
    wait_icr_idle()
}

/// INIT (level assert) to one CPU: it resets into wait-for-SIPI. The caller
/// waits 10 ms before the first STARTUP (Intel SDM MP initialisation).
pub fn send_init(apic_id: u32) -> Result<(), IpiError> {
    send_icr(apic_id, ICR_INIT | ICR_LEVEL_ASSERT)
}

/// STARTUP to one CPU in wait-for-SIPI: it starts in real mode at CS:IP =
/// `page << 8`:0, i.e. at physical address `page * 4096` (below 1 MiB).
pub fn send_startup(apic_id: u32, page: u8) -> Result<(), IpiError> {
    send_icr(apic_id, ICR_STARTUP | ICR_LEVEL_ASSERT | u32::from(page))
}

/// A fixed-vector interrupt to one CPU (edge, physical destination); the
/// own APIC id makes a self-IPI.
pub fn send_fixed(apic_id: u32, vector: u8) -> Result<(), IpiError> {
    send_icr(apic_id, ICR_FIXED | ICR_LEVEL_ASSERT | u32::from(vector))
}

/// A fixed-vector interrupt to every CPU but this one (destination
/// shorthand "all excluding self"): it also reaches CPUs the kernel did not
/// start, so use it only when every present CPU is online.
pub fn broadcast_fixed_others(vector: u8) -> Result<(), IpiError> {
    let _masked = InterruptsOff::new();
    wait_icr_idle()?;
    write(REG_ICR_HIGH, 0);
    write(REG_ICR_LOW, ICR_FIXED | ICR_LEVEL_ASSERT | ICR_ALL_EXCLUDING_SELF | u32::from(vector));
    wait_icr_idle()
}
