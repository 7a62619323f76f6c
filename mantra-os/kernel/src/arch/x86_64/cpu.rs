//! Thin wrappers over x86_64 instructions and registers. Each is one
//! instruction; the safety contracts say what the caller must guarantee.

use core::arch::asm;

pub fn cpuid(leaf: u32, subleaf: u32) -> core::arch::x86_64::CpuidResult {
    core::arch::x86_64::__cpuid_count(leaf, subleaf)
}

pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC is unprivileged-safe and has no side effects (CR4.TSD is never set).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// # Safety
/// The MSR must exist on this CPU (check CPUID first).
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists; RDMSR only reads.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// # Safety
/// The MSR must exist and the value must not break the kernel's invariants
/// (e.g. clearing EFER.LME, moving the APIC base under live mappings).
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe { asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, preserves_flags)) };
}

pub const MSR_EFER: u32 = 0xC000_0080;
pub const EFER_NXE: u64 = 1 << 11;

macro_rules! control_register {
    ($read:ident, $write:ident, $reg:literal) => {
        pub fn $read() -> u64 {
            let value: u64;
            // SAFETY: reading a control register has no side effects.
            unsafe { asm!(concat!("mov {}, ", $reg), out(reg) value, options(nomem, nostack, preserves_flags)) };
            value
        }

        /// # Safety
        /// The new value must keep the CPU in a state the kernel can run in
        /// (paging on, valid page tables mapping the running code and stack).
        pub unsafe fn $write(value: u64) {
            // SAFETY: guaranteed by the caller.
            unsafe { asm!(concat!("mov ", $reg, ", {}"), in(reg) value, options(nostack, preserves_flags)) };
        }
    };
}

control_register!(read_cr0, write_cr0, "cr0");
control_register!(read_cr3, write_cr3, "cr3");
control_register!(read_cr4, write_cr4, "cr4");

pub fn read_cr2() -> u64 {
    let value: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

pub const CR0_WP: u64 = 1 << 16;
pub const CR4_UMIP: u64 = 1 << 11;
pub const CR4_PGE: u64 = 1 << 7;
pub const CR4_SMEP: u64 = 1 << 20;
pub const CR4_SMAP: u64 = 1 << 21;

/// # Safety
/// The port must belong to a device this code owns; writes have device side effects.
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: guaranteed by the caller.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) };
}

/// # Safety
/// As [`outb`]: reads can have device side effects.
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: guaranteed by the caller.
    unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags)) };
    value
}

/// # Safety
/// As [`outb`].
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: guaranteed by the caller.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags)) };
}

/// Masks interrupts on this CPU.
pub fn disable_interrupts() {
    // SAFETY: masking interrupts cannot break memory safety.
    unsafe { asm!("cli", options(nomem, nostack)) };
}

/// # Safety
/// The IDT must be loaded and every vector that can fire must have a handler.
pub unsafe fn enable_interrupts() {
    // SAFETY: guaranteed by the caller.
    unsafe { asm!("sti", options(nomem, nostack)) };
}

/// Halts until the next interrupt. With interrupts enabled `sti; hlt` would
/// race; callers that check a condition first use [`enable_and_halt`].
pub fn halt() {
    // SAFETY: HLT only waits.
    unsafe { asm!("hlt", options(nomem, nostack, preserves_flags)) };
}

/// Atomically enables interrupts and halts (STI's one-instruction shadow
/// covers HLT), so a wake-up cannot slip between the check and the halt.
///
/// # Safety
/// As [`enable_interrupts`].
pub unsafe fn enable_and_halt() {
    // SAFETY: guaranteed by the caller.
    unsafe { asm!("sti; hlt", options(nomem, nostack)) };
}

/// Invalidates the TLB entry of one page on this CPU.
#[cfg_attr(not(feature = "ktest"), allow(dead_code))]
pub fn invlpg(addr: u64) {
    // SAFETY: INVLPG only drops a cached translation.
    unsafe { asm!("invlpg [{}]", in(reg) addr, options(nostack, preserves_flags)) };
}

/// CPU features the kernel decides on at boot.
#[derive(Clone, Copy, Debug)]
pub struct Features {
    pub nx: bool,
    pub smep: bool,
    pub smap: bool,
    pub umip: bool,
    pub pge: bool,
    pub gib_pages: bool,
}

impl Features {
    pub fn detect() -> Self {
        let max_ext = cpuid(0x8000_0000, 0).eax;
        let ext = if max_ext >= 0x8000_0001 { cpuid(0x8000_0001, 0) } else { cpuid(0, 0) };
        let leaf1 = cpuid(1, 0);
        let leaf7 = if cpuid(0, 0).eax >= 7 { cpuid(7, 0) } else { core::arch::x86_64::CpuidResult { eax: 0, ebx: 0, ecx: 0, edx: 0 } };
        Self {
            nx: max_ext >= 0x8000_0001 && ext.edx & (1 << 20) != 0,
            gib_pages: max_ext >= 0x8000_0001 && ext.edx & (1 << 26) != 0,
            smep: leaf7.ebx & (1 << 7) != 0,
            smap: leaf7.ebx & (1 << 20) != 0,
            umip: leaf7.ecx & (1 << 2) != 0,
            pge: leaf1.edx & (1 << 13) != 0,
        }
    }
}
