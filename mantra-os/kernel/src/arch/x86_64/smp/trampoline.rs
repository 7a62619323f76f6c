//! The AP start trampoline: the code a STARTUP IPI runs, copied at run time
//! into a page below 1 MiB, plus the parameter block the boot CPU fills at a
//! fixed offset of that page.
//!
//! Path of an application processor after STARTUP (CS:IP = page:0, real
//! mode, interrupts off, caches possibly off):
//!
//! 1. real mode: DS = CS, EBX = the page's physical address; claim the
//!    parameter block (`lock bts`; a second CPU arriving on the same block
//!    parks itself with `cli; hlt`), stage 1, load the trampoline GDT, set
//!    CR0.PE and far-jump to 32-bit code;
//! 2. protected mode (flat, paging off): stage 2, CR4 = PAE, CR3 = the
//!    temporary PML4 (below 4 GiB: CR3 is loaded with a 32-bit move), EFER =
//!    LME (+ NXE), CR0 = the boot CPU's CR0 (PG, WP, caches on), far-jump
//!    into the 64-bit code segment;
//! 3. long mode, still on the temporary tables (the trampoline page
//!    identity-mapped plus the kernel's upper half): stage 3, load a GDT in
//!    the kernel image (same selectors as the kernel's), load the kernel's
//!    CR3, stack, argument and entry into registers and jump to
//!    `mantra_ap_entry` in the kernel image, which switches CR3 and calls Rust.
//!
//! The code is position independent: it addresses the parameter block
//! relative to DS (real mode) or EBX (later), and far pointers with the
//! run-time addresses are filled by the boot CPU.

use core::arch::global_asm;
use core::mem::offset_of;

/// Where the parameter block starts in the trampoline page; the code must
/// end before it (checked when the page is prepared).
pub const PARAMS_OFFSET: usize = 0xE00;

/// Trampoline GDT selectors. 0x08/0x10 match the kernel's own GDT (gdt.rs),
/// so IDT gates stay valid from the moment the AP loads the IDT.
pub const CODE64: u16 = 0x08;
pub const DATA: u16 = 0x10;
pub const CODE32: u16 = 0x18;

/// Descriptors (base 0, limit 4 GiB, accessed bit preset so the CPU never
/// writes to a GDT in read-only memory): null, 64-bit code, data, 32-bit code.
pub const GDT: [u64; 4] = [0, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF, 0x00CF_9B00_0000_FFFF];

/// The GDT the AP switches to in long mode, before it leaves the
/// trampoline's tables: it lives in the kernel image, mapped on every CPU.
pub static KERNEL_GDT: [u64; 4] = GDT;

/// The parameter block at `PARAMS_OFFSET` of the trampoline page. Written
/// by the boot CPU through the direct map before each STARTUP; the AP writes
/// only `claim` and `stage`.
#[repr(C)]
pub struct Params {
    /// The trampoline GDT (the real-mode LGDT needs it below 16 MiB).
    pub gdt: [u64; 4],
    /// Pseudo-descriptor: limit in bits 0-15, 32-bit base in bits 16-47.
    pub gdtr: u64,
    /// Far pointer to the 32-bit code: offset in bits 0-31, selector 32-47.
    pub far32: u64,
    /// Far pointer to the 64-bit code, same layout.
    pub far64: u64,
    /// CR0 loaded with paging: the boot CPU's value (PE, PG, WP, cache bits).
    pub cr0: u64,
    /// CR4 before paging: PAE.
    pub cr4: u64,
    /// EFER before paging: LME, plus NXE when the kernel's tables use NX.
    pub efer: u64,
    /// Physical address (below 4 GiB) of the temporary PML4.
    pub temp_cr3: u64,
    /// Physical address of the kernel's PML4.
    pub kernel_cr3: u64,
    /// Top of the AP's kernel stack (mapped in the kernel's tables).
    pub stack_top: u64,
    /// Virtual address of `mantra_ap_entry`.
    pub entry: u64,
    /// Passed to the Rust entry in RDI: the CPU index.
    pub arg: u64,
    /// Bit 0 set by the AP that took this block.
    pub claim: u64,
    /// Progress the AP reports: 0 not started, 1 real mode, 2 protected
    /// mode, 3 long mode (then the kernel side takes over).
    pub stage: u64,
    /// LGDT operand for `KERNEL_GDT`: limit (2 bytes), 64-bit base (8 bytes).
    pub kernel_gdtr: [u8; 16],
}

pub const STAGE_REAL: u8 = 1;
pub const STAGE_PROTECTED: u8 = 2;
pub const STAGE_LONG: u8 = 3;

extern "C" {
    static mantra_ap_trampoline_start: u8;
    static mantra_ap_trampoline_pm32: u8;
    static mantra_ap_trampoline_lm64: u8;
    static mantra_ap_trampoline_end: u8;
    fn mantra_ap_entry();
}

/// The trampoline code (to be copied to offset 0 of the page).
pub fn code() -> &'static [u8] {
    let start = core::ptr::addr_of!(mantra_ap_trampoline_start);
    let end = core::ptr::addr_of!(mantra_ap_trampoline_end) as usize;
    // SAFETY: start..end is the trampoline blob emitted below, in the
    // kernel's read-only data, never written.
    unsafe { core::slice::from_raw_parts(start, end - start as usize) }
}

/// Offsets of the 32-bit and 64-bit parts inside the code.
pub fn part_offsets() -> (u64, u64) {
    let start = core::ptr::addr_of!(mantra_ap_trampoline_start) as u64;
    let pm32 = core::ptr::addr_of!(mantra_ap_trampoline_pm32) as u64;
    let lm64 = core::ptr::addr_of!(mantra_ap_trampoline_lm64) as u64;
    (pm32 - start, lm64 - start)
}

/// Virtual address of the kernel-side entry.
pub fn entry_address() -> u64 {
    mantra_ap_entry as *const () as u64
}

// The blob lives in .rodata: it is only ever executed from its copy.
global_asm!(
    ".pushsection .rodata.mantra_ap_trampoline, \"a\"",
    ".balign 16",
    ".global mantra_ap_trampoline_start",
    ".global mantra_ap_trampoline_pm32",
    ".global mantra_ap_trampoline_lm64",
    ".global mantra_ap_trampoline_end",
    ".code16",
    "mantra_ap_trampoline_start:",
    "cli",
    "cld",
    "movw %cs, %ax",
    "movw %ax, %ds",
    "xorl %ebx, %ebx",
    "movw %ax, %bx",
    "shll $4, %ebx",
    "lock btsw $0, {claim}",
    "jc 2f",
    "movb ${stage_real}, {stage}",
    "lgdtl {gdtr}",
    "movl %cr0, %eax",
    "orl $1, %eax",
    "movl %eax, %cr0",
    "ljmpl *{far32}",
    // Somebody else took this parameter block: stop here for good.
    "2:",
    "cli",
    "hlt",
    "jmp 2b",
    ".code32",
    "mantra_ap_trampoline_pm32:",
    "movw ${data}, %ax",
    "movw %ax, %ds",
    "movw %ax, %es",
    "movw %ax, %ss",
    "xorw %ax, %ax",
    "movw %ax, %fs",
    "movw %ax, %gs",
    "movb ${stage_protected}, {stage}(%ebx)",
    "movl {cr4}(%ebx), %eax",
    "movl %eax, %cr4",
    "movl {temp_cr3}(%ebx), %eax",
    "movl %eax, %cr3",
    "movl $0xC0000080, %ecx",
    "movl {efer}(%ebx), %eax",
    "xorl %edx, %edx",
    "wrmsr",
    "movl {cr0}(%ebx), %eax",
    "movl %eax, %cr0",
    "ljmpl *{far64}(%ebx)",
    ".code64",
    "mantra_ap_trampoline_lm64:",
    // Upper halves of registers are undefined after the mode switch.
    "movl %ebx, %ebx",
    "movb ${stage_long}, {stage}(%rbx)",
    "lgdt {kernel_gdtr}(%rbx)",
    "movw ${data}, %ax",
    "movw %ax, %ds",
    "movw %ax, %es",
    "movw %ax, %ss",
    "movq {kernel_cr3}(%rbx), %rcx",
    "movq {stack_top}(%rbx), %rsp",
    "movq {arg}(%rbx), %rdi",
    "movq {entry}(%rbx), %rax",
    "jmpq *%rax",
    "mantra_ap_trampoline_end:",
    ".popsection",
    claim = const PARAMS_OFFSET + offset_of!(Params, claim),
    stage = const PARAMS_OFFSET + offset_of!(Params, stage),
    gdtr = const PARAMS_OFFSET + offset_of!(Params, gdtr),
    far32 = const PARAMS_OFFSET + offset_of!(Params, far32),
    far64 = const PARAMS_OFFSET + offset_of!(Params, far64),
    cr0 = const PARAMS_OFFSET + offset_of!(Params, cr0),
    cr4 = const PARAMS_OFFSET + offset_of!(Params, cr4),
    efer = const PARAMS_OFFSET + offset_of!(Params, efer),
    temp_cr3 = const PARAMS_OFFSET + offset_of!(Params, temp_cr3),
    kernel_cr3 = const PARAMS_OFFSET + offset_of!(Params, kernel_cr3),
    stack_top = const PARAMS_OFFSET + offset_of!(Params, stack_top),
    entry = const PARAMS_OFFSET + offset_of!(Params, entry),
    arg = const PARAMS_OFFSET + offset_of!(Params, arg),
    kernel_gdtr = const PARAMS_OFFSET + offset_of!(Params, kernel_gdtr),
    data = const DATA,
    stage_real = const STAGE_REAL,
    stage_protected = const STAGE_PROTECTED,
    stage_long = const STAGE_LONG,
    options(att_syntax)
);

// The kernel-side entry, in the kernel's text: runs on the temporary tables
// until the CR3 write, which is why it is not Rust. RCX = kernel CR3, RSP =
// the AP's stack top (16-byte aligned), RDI = the CPU index.
global_asm!(
    ".global mantra_ap_entry",
    "mantra_ap_entry:",
    "movq %rcx, %cr3",
    "xorl %ebp, %ebp",
    "callq {main}",
    "ud2",
    main = sym super::ap_main,
    options(att_syntax)
);
