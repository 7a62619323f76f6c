//! IDT, the assembly entry stubs and the one Rust dispatcher every vector
//! goes through. The stubs only push a uniform [`TrapFrame`] and call
//! [`trap_dispatch`]; all decisions are made in safe Rust.

use core::arch::global_asm;
use core::mem::size_of;

use super::gdt::{IST_DOUBLE_FAULT, IST_MACHINE_CHECK, IST_NMI, KERNEL_CODE};

/// Vector of the LAPIC timer.
pub const VECTOR_TIMER: u8 = 0x30;
/// LAPIC spurious-interrupt vector.
pub const VECTOR_SPURIOUS: u8 = 0xFF;

/// Registers saved on every trap, lowest address first.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    /// The CPU's error code, or 0 for vectors without one.
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

macro_rules! stubs {
    ($($vector:literal $kind:ident),* $(,)?) => {
        $( stubs!(@one $vector $kind); )*
        global_asm!(
            ".section .rodata.mantra_trap_table, \"a\"",
            ".balign 8",
            ".global mantra_trap_table",
            "mantra_trap_table:",
            $( concat!(".quad ", stringify!($vector), ", mantra_trap_", stringify!($vector)), )*
            ".quad -1, 0",
            ".text",
        );
    };
    (@one $vector:literal err) => {
        global_asm!(
            concat!("mantra_trap_", stringify!($vector), ":"),
            concat!("push ", stringify!($vector)),
            "jmp mantra_trap_common",
        );
    };
    (@one $vector:literal noerr) => {
        global_asm!(
            concat!("mantra_trap_", stringify!($vector), ":"),
            "push 0",
            concat!("push ", stringify!($vector)),
            "jmp mantra_trap_common",
        );
    };
}

// Exceptions 0-31 (the CPU pushes an error code for 8, 10-14, 17, 21, 29, 30),
// the legacy PIC range (spurious IRQs after masking), the timer, the IPIs
// (smp::VECTOR_RESCHEDULE, smp::VECTOR_CALL), the device interrupts routed
// through the I/O APIC (interrupt::VECTOR_BASE.., VECTOR_COUNT of them),
// spurious.
stubs!(
    0 noerr, 1 noerr, 2 noerr, 3 noerr, 4 noerr, 5 noerr, 6 noerr, 7 noerr,
    8 err, 9 noerr, 10 err, 11 err, 12 err, 13 err, 14 err, 15 noerr,
    16 noerr, 17 err, 18 noerr, 19 noerr, 20 noerr, 21 err, 22 noerr, 23 noerr,
    24 noerr, 25 noerr, 26 noerr, 27 noerr, 28 noerr, 29 err, 30 err, 31 noerr,
    32 noerr, 33 noerr, 34 noerr, 35 noerr, 36 noerr, 37 noerr, 38 noerr, 39 noerr,
    40 noerr, 41 noerr, 42 noerr, 43 noerr, 44 noerr, 45 noerr, 46 noerr, 47 noerr,
    48 noerr, 64 noerr, 65 noerr,
    80 noerr, 81 noerr, 82 noerr, 83 noerr, 84 noerr, 85 noerr, 86 noerr, 87 noerr,
    88 noerr, 89 noerr, 90 noerr, 91 noerr, 92 noerr, 93 noerr, 94 noerr, 95 noerr,
    255 noerr,
);

// The common path. Entries from user mode (CS RPL 3) swap GS to the
// kernel's per-CPU area first; SYSCALL enters at `mantra_trap_save` with the
// frame already built (see syscall.rs). Every return to any context — after
// an interrupt, a syscall, or the first run of a new thread — leaves through
// `mantra_trap_return` with RSP at a TrapFrame.
global_asm!(
    "mantra_trap_common:",
    "test byte ptr [rsp + 24], 3",
    "jz 1f",
    "swapgs",
    "1:",
    ".global mantra_trap_save",
    "mantra_trap_save:",
    "push rax", "push rbx", "push rcx", "push rdx", "push rsi", "push rdi", "push rbp",
    "push r8", "push r9", "push r10", "push r11", "push r12", "push r13", "push r14", "push r15",
    "cld",
    "mov rdi, rsp",
    "call {dispatch}",
    ".global mantra_trap_return",
    "mantra_trap_return:",
    "pop r15", "pop r14", "pop r13", "pop r12", "pop r11", "pop r10", "pop r9", "pop r8",
    "pop rbp", "pop rdi", "pop rsi", "pop rdx", "pop rcx", "pop rbx", "pop rax",
    "add rsp, 16",
    "test byte ptr [rsp + 8], 3",
    "jz 2f",
    "swapgs",
    "2:",
    "iretq",
    dispatch = sym trap_dispatch,
);

extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    if frame.vector == SYSCALL_MARKER {
        crate::syscall::dispatch(frame);
    } else {
        super::trap(frame);
    }
}

/// The `vector` value SYSCALL entries put in their frame (not a CPU vector).
pub const SYSCALL_MARKER: u64 = 0x100;

impl TrapFrame {
    /// The frame was saved while running in user mode.
    pub fn from_user(&self) -> bool {
        self.cs & 3 == 3
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    _reserved: u32,
}

impl Gate {
    const MISSING: Self = Self { offset_low: 0, selector: 0, ist: 0, attributes: 0, offset_mid: 0, offset_high: 0, _reserved: 0 };

    fn interrupt(handler: u64, ist: u8) -> Self {
        Self {
            offset_low: handler as u16,
            selector: KERNEL_CODE,
            ist,
            attributes: 0x8E, // present, DPL 0, 64-bit interrupt gate
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            _reserved: 0,
        }
    }
}

#[repr(C, align(16))]
pub struct Idt([Gate; 256]);

impl Idt {
    pub const fn new() -> Self {
        Self([Gate::MISSING; 256])
    }

    /// Fills every gate the stub table provides.
    pub fn populate(&mut self) {
        extern "C" {
            static mantra_trap_table: [u64; 0];
        }
        // SAFETY: the table is emitted above as (vector, address) pairs
        // ending with vector -1; we read until that terminator.
        let mut entry = unsafe { mantra_trap_table.as_ptr() };
        loop {
            // SAFETY: `entry` stays within the table up to the terminator.
            let (vector, handler) = unsafe { (*entry, *entry.add(1)) };
            if vector == u64::MAX {
                break;
            }
            let ist = match vector {
                2 => IST_NMI,
                8 => IST_DOUBLE_FAULT,
                18 => IST_MACHINE_CHECK,
                _ => 0,
            };
            self.0[vector as usize] = Gate::interrupt(handler, ist);
            // SAFETY: see above.
            entry = unsafe { entry.add(2) };
        }
    }

    /// Loads this IDT on the current CPU.
    ///
    /// # Safety
    /// `self` must live forever (a static) and be populated.
    pub unsafe fn load(&'static self) {
        #[repr(C, packed(2))]
        struct Pointer {
            limit: u16,
            base: u64,
        }
        let pointer = Pointer { limit: (size_of::<Self>() - 1) as u16, base: self as *const Self as u64 };
        // SAFETY: the IDT is static and every present gate points at a stub.
        unsafe { core::arch::asm!("lidt [{}]", in(reg) &pointer, options(readonly, nostack, preserves_flags)) };
    }
}

/// Human names of the architectural exceptions.
pub fn exception_name(vector: u64) -> &'static str {
    match vector {
        0 => "#DE divide error",
        1 => "#DB debug",
        2 => "NMI",
        3 => "#BP breakpoint",
        4 => "#OF overflow",
        5 => "#BR bound range",
        6 => "#UD invalid opcode",
        7 => "#NM device not available",
        8 => "#DF double fault",
        10 => "#TS invalid TSS",
        11 => "#NP segment not present",
        12 => "#SS stack fault",
        13 => "#GP general protection",
        14 => "#PF page fault",
        16 => "#MF x87 floating point",
        17 => "#AC alignment check",
        18 => "#MC machine check",
        19 => "#XM SIMD floating point",
        20 => "#VE virtualization",
        21 => "#CP control protection",
        28 => "#HV hypervisor injection",
        29 => "#VC VMM communication",
        30 => "#SX security",
        _ => "reserved exception",
    }
}

/// Writes the decoded page-fault error code bits.
pub fn describe_page_fault(error: u64, out: &mut dyn core::fmt::Write) -> core::fmt::Result {
    let cause = if error & 1 != 0 { "protection violation" } else { "page not present" };
    let access = if error & (1 << 4) != 0 {
        "instruction fetch"
    } else if error & 2 != 0 {
        "write"
    } else {
        "read"
    };
    let mode = if error & 4 != 0 { "user" } else { "supervisor" };
    write!(out, "{cause} on {access} in {mode} mode")?;
    if error & (1 << 3) != 0 {
        write!(out, ", reserved bit set in a paging entry")?;
    }
    if error & (1 << 5) != 0 {
        write!(out, ", protection key")?;
    }
    if error & (1 << 6) != 0 {
        write!(out, ", shadow stack")?;
    }
    Ok(())
}
