//! Kernel-stack context switching and user-memory copies with fault fixup.

use core::arch::global_asm;
use core::sync::atomic::AtomicBool;

use super::gdt::{USER_CODE, USER_DATA};
use super::TrapFrame;
use crate::task::Thread;

// mantra_switch(save_rsp: *mut u64, load_rsp: u64): saves the callee-saved
// registers on the current stack, stores RSP, loads the other stack and
// restores its registers. Returns on the other thread's stack.
global_asm!(
    ".global mantra_switch",
    "mantra_switch:",
    "push rbp", "push rbx", "push r12", "push r13", "push r14", "push r15",
    "mov [rdi], rsp",
    "mov rsp, rsi",
    "pop r15", "pop r14", "pop r13", "pop r12", "pop rbx", "pop rbp",
    "ret",
);

// mantra_copy_user(dst, src, len) -> 0, or 1 when a fault was not resolvable
// (the page-fault handler moves RIP to the fixup). SMAP is lifted only for
// the copy itself.
// Whole words first: a REP iteration is one guest instruction under
// -icount, so word copies make small IPC messages cheap.
global_asm!(
    ".global mantra_copy_user",
    "mantra_copy_user:",
    "stac",
    "mov rcx, rdx",
    "shr rcx, 3",
    ".global mantra_copy_user_words_insn",
    "mantra_copy_user_words_insn:",
    "rep movsq",
    "mov ecx, edx",
    "and ecx, 7",
    ".global mantra_copy_user_insn",
    "mantra_copy_user_insn:",
    "rep movsb",
    "clac",
    "xor eax, eax",
    "ret",
    ".global mantra_copy_user_fixup",
    "mantra_copy_user_fixup:",
    "clac",
    "mov eax, 1",
    "ret",
);

// First run of a new thread: finish the scheduler's switch bookkeeping,
// then enter user mode through the common trap return.
global_asm!(
    "mantra_thread_first_run:",
    "call {finish}",
    "jmp mantra_trap_return",
    finish = sym first_run_finish,
);

extern "C" fn first_run_finish() {
    crate::sched::finish_switch();
}

// Resumption of a parked thread by the scheduler (see
// `prepare_parked_resume`): finish the switch, complete the receive the
// thread waits for, return to user mode.
global_asm!(
    "mantra_parked_resume:",
    "call {finish}",
    "mov rdi, rsp",
    "call {resume}",
    "jmp mantra_trap_return",
    finish = sym first_run_finish,
    resume = sym parked_resume,
);

extern "C" fn parked_resume(frame: &mut TrapFrame) {
    crate::syscall::resume_parked(frame);
}

// mantra_enter_frame(frame, on_cpu): the IPC fast path's exit. Moves onto
// the thread whose TrapFrame is at `frame` (top of its kernel stack), then
// lets the thread just left go (clears the `on_cpu` flag at `on_cpu`: x86
// stores have release semantics), and returns to user mode.
// The frame is a thread's saved user state (a parked thread waits in a
// syscall): the return is mantra_trap_return's, to user mode.
// mantra_enter_frame_completing(thread, on_cpu, frame), the register fast
// path's, also completes the receive of `thread`, the thread entered
// (fastpath::complete_receive, C ABI), once on its stack with the flag
// cleared: work that may not run while this CPU is still on the old
// stack. Every register is reloaded from the frame afterwards.
global_asm!(
    ".global mantra_enter_frame",
    ".global mantra_enter_frame_completing",
    "mantra_enter_frame:",
    "mov rsp, rdi",
    "mov byte ptr [rsi], 0",
    "jmp 2f",
    "mantra_enter_frame_completing:",
    "mov rsp, rdx",
    "mov byte ptr [rsi], 0",
    // The frame's start is 16-byte aligned (stack tops are, and the frame is
    // 11 pairs of words), as the call needs; `thread` is its argument.
    "call {complete}",
    "2:",
    "pop r15", "pop r14", "pop r13", "pop r12", "pop r11", "pop r10", "pop r9", "pop r8",
    "pop rbp", "pop rdi", "pop rsi", "pop rdx", "pop rcx", "pop rbx", "pop rax",
    "add rsp, 16",
    "swapgs",
    "iretq",
    complete = sym crate::fastpath::complete_receive,
);

extern "C" {
    fn mantra_thread_first_run();
    fn mantra_parked_resume();
    fn mantra_enter_frame(frame: *mut TrapFrame, on_cpu: *const AtomicBool) -> !;
    // (`thread` is a *const Thread: an opaque pointer for the assembly.)
    fn mantra_enter_frame_completing(thread: *const (), on_cpu: *const AtomicBool, frame: *mut TrapFrame) -> !;
    fn mantra_copy_user_words_insn();
    fn mantra_switch(save_rsp: *mut u64, load_rsp: u64);
    fn mantra_copy_user(dst: *mut u8, src: *const u8, len: usize) -> u64;
    fn mantra_copy_user_insn();
    fn mantra_copy_user_fixup();
}

/// Switches kernel stacks: saves the current context into `*save_rsp` and
/// resumes the one saved at `load_rsp`.
///
/// # Safety
/// `load_rsp` must be a context saved by `switch` or built by
/// [`prepare_user_entry`], whose stack stays mapped while it runs; interrupts
/// must be off.
pub unsafe fn switch(save_rsp: *mut u64, load_rsp: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe { mantra_switch(save_rsp, load_rsp) }
}

/// Builds a fresh thread's kernel stack so that the first `switch` to it
/// enters user mode at `entry` with `stack` and the two arguments.
/// Returns the context RSP to switch to.
///
/// # Safety
/// `[stack_top - 4096, stack_top)` must be mapped writable kernel memory not
/// in use.
pub unsafe fn prepare_user_entry(stack_top: u64, entry: u64, user_stack: u64, arg0: u64, arg1: u64) -> u64 {
    let frame_ptr = (stack_top - core::mem::size_of::<TrapFrame>() as u64) as *mut TrapFrame;
    let frame = TrapFrame {
        r15: 0, r14: 0, r13: 0, r12: 0, r11: 0, r10: 0, r9: 0, r8: 0, rbp: 0,
        rdi: arg0,
        rsi: arg1,
        rdx: 0, rcx: 0, rbx: 0, rax: 0,
        vector: 0,
        error_code: 0,
        rip: entry,
        cs: u64::from(USER_CODE),
        rflags: 0x202, // IF set, reserved bit 1
        rsp: user_stack,
        ss: u64::from(USER_DATA),
    };
    // SAFETY: the caller guarantees the top of the stack is ours to write.
    unsafe {
        frame_ptr.write(frame);
        // Below the frame: the return address mantra_switch's `ret` takes,
        // and six zeroed callee-saved registers it pops first.
        let ret = (frame_ptr as *mut u64).sub(1);
        ret.write(mantra_thread_first_run as *const () as u64);
        let regs = ret.sub(6);
        for i in 0..6 {
            regs.add(i).write(0);
        }
        regs as u64
    }
}

/// Builds the context a parked thread is resumed from: below its
/// TrapFrame, six zeroed callee-saved registers and the return address of
/// `mantra_parked_resume`. Returns the context RSP to switch to.
///
/// # Safety
/// The thread must be parked (its stack holds nothing live below the
/// frame) and no CPU may run on its stack.
pub unsafe fn prepare_parked_resume(stack_top: u64) -> u64 {
    let frame_ptr = (stack_top - core::mem::size_of::<TrapFrame>() as u64) as *mut u64;
    // SAFETY: guaranteed by the caller: the words below the frame are free.
    unsafe {
        let ret = frame_ptr.sub(1);
        ret.write(mantra_parked_resume as *const () as u64);
        let regs = ret.sub(6);
        for i in 0..6 {
            regs.add(i).write(0);
        }
        regs as u64
    }
}

/// Leaves the current kernel stack for the thread whose TrapFrame is at
/// `frame` and returns to its user mode; once off the old stack, clears
/// `on_cpu`, the flag of the thread left (`sched::hand_off`).
///
/// # Safety
/// `frame` must be the TrapFrame at the top of the kernel stack of this
/// CPU's (new) current thread, saved on an entry from user mode (it
/// returns there), and the stack must hold nothing else live; `on_cpu`
/// must be the flag of the thread whose stack this runs on, kept alive by
/// the scheduler (its `released` slot) or by `Thread`'s Drop, which waits
/// for the flag; the caller must hold nothing that
/// needs dropping (this never returns).
#[inline(always)]
pub unsafe fn enter_frame(frame: *mut TrapFrame, on_cpu: *const AtomicBool) -> ! {
    // SAFETY: guaranteed by the caller.
    unsafe { mantra_enter_frame(frame, on_cpu) }
}

/// `enter_frame` into `thread`, this CPU's new current thread, that
/// completes its register receive (`fastpath::complete_receive`) once off
/// the old stack (its `on_cpu` flag cleared), on `thread`'s kernel stack
/// below its TrapFrame, with interrupts off, before returning to user mode.
///
/// # Safety
/// As `enter_frame`; and `thread` must be the thread whose TrapFrame
/// `frame` is, parked in a register receive this CPU completes.
#[inline(always)]
pub unsafe fn enter_frame_completing(thread: *const Thread, on_cpu: *const AtomicBool, frame: *mut TrapFrame) -> ! {
    // SAFETY: guaranteed by the caller.
    unsafe { mantra_enter_frame_completing(thread.cast(), on_cpu, frame) }
}

/// Copies `len` bytes between user and kernel memory (one side must be a
/// range the caller validated as user space). Returns false when a page
/// could not be made present (the copy stopped part-way).
///
/// # Safety
/// The kernel-side range must be valid for the access; the user range must
/// lie entirely in user space (the fault handler resolves or fixes up only
/// faults on user addresses inside this copy).
pub unsafe fn copy_user(dst: *mut u8, src: *const u8, len: usize) -> bool {
    // SAFETY: guaranteed by the caller; faults inside are fixed up.
    unsafe { mantra_copy_user(dst, src, len) == 0 }
}

/// When a kernel-mode fault happened inside the user copy, makes it fail
/// instead (returns true when the frame was redirected).
pub fn fixup_user_copy(frame: &mut TrapFrame) -> bool {
    if in_user_copy_insn(frame.rip) {
        frame.rip = mantra_copy_user_fixup as *const () as u64;
        true
    } else {
        false
    }
}

/// True when `frame` is a kernel-mode fault inside the user copy.
pub fn in_user_copy(frame: &TrapFrame) -> bool {
    !frame.from_user() && in_user_copy_insn(frame.rip)
}

fn in_user_copy_insn(rip: u64) -> bool {
    rip == mantra_copy_user_insn as *const () as u64 || rip == mantra_copy_user_words_insn as *const () as u64
}
