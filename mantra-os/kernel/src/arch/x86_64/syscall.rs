//! SYSCALL entry. The shim switches to the thread's kernel stack, builds the
//! same [`TrapFrame`](super::TrapFrame) an interrupt would (vector =
//! `SYSCALL_MARKER`) and joins the common trap path, so syscalls, faults and
//! context switches all see one frame layout and leave through IRETQ.
//!
//! A number outside the syscall table is refused right here, with
//! BAD_SYSCALL, before the general registers are saved: nothing in the
//! kernel runs for it (and it clobbers no register but RAX, RCX, R11).
//! The register calls (CHANNEL_CALL_SHORT, CHANNEL_REPLY_RECEIVE_SHORT)
//! go from here straight to the IPC fast path (fastpath.rs), which falls
//! back to the general dispatcher when it does not apply.

use core::arch::global_asm;

use super::cpu;
use super::gdt::{KERNEL_CODE, USER_DATA_BASE};
use super::percpu::{OFFSET_KERNEL_RSP, OFFSET_USER_RSP};
use super::traps::SYSCALL_MARKER;

const MSR_STAR: u32 = 0xC000_0081;
const MSR_LSTAR: u32 = 0xC000_0082;
const MSR_FMASK: u32 = 0xC000_0084;
const EFER_SCE: u64 = 1;

/// RFLAGS bits cleared on entry: TF, IF, DF, AC (so SMAP is enforced and the
/// kernel runs with interrupts off).
const FMASK: u64 = (1 << 8) | (1 << 9) | (1 << 10) | (1 << 18);

global_asm!(
    ".global mantra_syscall_entry",
    "mantra_syscall_entry:",
    "swapgs",
    "mov gs:[{user_rsp}], rsp",
    "mov rsp, gs:[{kernel_rsp}]",
    "push {user_ss}",
    "push qword ptr gs:[{user_rsp}]",
    "push r11",
    "push {user_cs}",
    "push rcx",
    "push 0",
    "push {marker}",
    // The register calls (0, 1) go to the fast path; the rest of the table
    // straight on; then the refusal.
    "cmp rax, {register_calls}",
    "jb 3f",
    "cmp rax, {count}",
    "jb mantra_trap_save",
    "mov rax, -{bad_syscall}",
    "add rsp, 16",
    "swapgs",
    "iretq",
    // The register calls: the same frame as mantra_trap_save builds, then
    // the IPC fast path, which leaves through mantra_trap_return on the
    // stack of the thread it switched to, or returns after the general
    // path ran.
    "3:",
    "push rax", "push rbx", "push rcx", "push rdx", "push rsi", "push rdi", "push rbp",
    "push r8", "push r9", "push r10", "push r11", "push r12", "push r13", "push r14", "push r15",
    // (No CLD: SYSCALL cleared DF, see FMASK.) The frame is the first
    // argument of extern "rust-preserve-none", which is R12; that
    // convention keeps no register for us: mantra_trap_return reloads all.
    "mov r12, rsp",
    "call {short}",
    "jmp mantra_trap_return",
    register_calls = const mantra_abi::nr::CHANNEL_REPLY_RECEIVE_SHORT + 1,
    short = sym crate::fastpath::syscall_short,
    count = const mantra_abi::nr::COUNT,
    bad_syscall = const mantra_abi::Error::BadSyscall as i64,
    user_rsp = const OFFSET_USER_RSP,
    kernel_rsp = const OFFSET_KERNEL_RSP,
    user_ss = const (USER_DATA_BASE | 3) as u64,
    user_cs = const (USER_DATA_BASE + 8 | 3) as u64,
    marker = const SYSCALL_MARKER,
);

// The entry's check above takes the register calls as the numbers below 2.
const _: () = assert!(mantra_abi::nr::CHANNEL_CALL_SHORT == 0 && mantra_abi::nr::CHANNEL_REPLY_RECEIVE_SHORT == 1);

/// Enables SYSCALL on this CPU.
pub fn init() {
    extern "C" {
        fn mantra_syscall_entry();
    }
    // STAR: SYSCALL loads CS = KERNEL_CODE, SS = KERNEL_CODE + 8; SYSRET
    // (unused: we return with IRETQ) would use USER_DATA_BASE - 8 + 16.
    let star = (u64::from(USER_DATA_BASE - 8) << 48) | (u64::from(KERNEL_CODE) << 32);
    // SAFETY: these MSRs exist on every x86_64 CPU; the entry point is the
    // shim above, which only runs with a valid per-CPU GS area.
    unsafe {
        cpu::wrmsr(cpu::MSR_EFER, cpu::rdmsr(cpu::MSR_EFER) | EFER_SCE);
        cpu::wrmsr(MSR_STAR, star);
        cpu::wrmsr(MSR_LSTAR, mantra_syscall_entry as *const () as u64);
        cpu::wrmsr(MSR_FMASK, FMASK);
    }
}
