//! Run a function and survive a fault it provokes on purpose: a setjmp-like
//! context saved by [`try_call`] and a recovery entry the trap handler
//! redirects to. Used only by the in-guest kernel tests, which must check
//! that faults happen (guard pages, W^X) without stopping the machine.

use core::arch::global_asm;

/// Callee-saved registers and stack pointer at the call of [`try_call`].
#[repr(C)]
#[derive(Default)]
pub struct JumpBuffer {
    rbx: u64,
    rbp: u64,
    r12: u64,
    r13: u64,
    r14: u64,
    r15: u64,
    rsp: u64,
}

extern "C" {
    fn mantra_try_call(f: extern "C" fn(), stack_top: u64, buffer: *mut JumpBuffer) -> u64;
    fn mantra_try_recover();
}

// mantra_try_call(f, stack_top, buffer): saves the context into `buffer`,
// switches to `stack_top` when non-zero, calls f, switches back, returns 0.
// mantra_try_recover is entered by IRETQ with RSP = buffer.rsp and RDI =
// buffer; it restores the context and returns 1 from mantra_try_call.
global_asm!(
    ".global mantra_try_call",
    "mantra_try_call:",
    "mov [rdx], rbx", "mov [rdx + 8], rbp", "mov [rdx + 16], r12", "mov [rdx + 24], r13",
    "mov [rdx + 32], r14", "mov [rdx + 40], r15", "mov [rdx + 48], rsp",
    "mov r12, rdx",
    "test rsi, rsi",
    "jz 2f",
    "mov rsp, rsi",
    "2:",
    "call rdi",
    "mov rsp, [r12 + 48]",
    "mov rdi, r12",
    "xor eax, eax",
    "jmp 3f",
    ".global mantra_try_recover",
    "mantra_try_recover:",
    "mov eax, 1",
    "3:",
    "mov rbx, [rdi]", "mov rbp, [rdi + 8]", "mov r12, [rdi + 16]", "mov r13, [rdi + 24]",
    "mov r14, [rdi + 32]", "mov r15, [rdi + 40]",
    "ret",
);

/// Calls `f` (on the stack ending at `stack_top`, or the current one when 0).
/// Returns true when `f` returned, false when a fault was recovered via
/// [`redirect`].
///
/// # Safety
/// `stack_top` must be 0 or the 16-byte aligned top of a mapped kernel stack
/// not otherwise in use; `buffer` must stay valid until this returns.
pub unsafe fn try_call(f: extern "C" fn(), stack_top: u64, buffer: &mut JumpBuffer) -> bool {
    // SAFETY: the assembly preserves every callee-saved register on both
    // paths and returns on the caller's stack; the caller guarantees the stack.
    unsafe { mantra_try_call(f, stack_top, buffer) == 0 }
}

/// Makes `frame` resume in the recovery entry of the `try_call` that filled
/// `buffer` (which must still be running).
pub fn redirect(frame: &mut super::TrapFrame, buffer: *const JumpBuffer) {
    // SAFETY: the caller passes the buffer of a live try_call; only its
    // saved RSP is read.
    frame.rsp = unsafe { (*buffer).rsp };
    frame.rip = mantra_try_recover as *const () as u64;
    frame.rdi = buffer as u64;
    frame.cs = u64::from(super::gdt::KERNEL_CODE);
    frame.ss = u64::from(super::gdt::KERNEL_DATA);
}
