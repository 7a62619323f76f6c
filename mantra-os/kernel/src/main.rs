//! MantraCore, the kernel binary: boot flow, console, memory set-up and the
//! in-guest test runner. Portable logic lives in the `mantra_kernel` library
//! (host-tested); CPU specifics behind `arch`.
#![no_std]
#![no_main]
// The IPC fast path's entry (fastpath::syscall_short) saves no registers:
// the SYSCALL shim that calls it restores all of them from the TrapFrame.
#![feature(rust_preserve_none_cc)]
// The kernel test build runs its tests instead of starting MantraInit, so
// the parts only user space reaches are unused there.
#![cfg_attr(feature = "ktest", allow(dead_code))]

extern crate alloc;

mod arch;
mod boot;
mod conio;
mod console;
mod efirt;
mod fastpath;
mod interrupt;
mod ipc;
mod klog;
mod memory;
mod object;
mod sched;
mod space;
mod syscall;
mod task;
mod uaccess;
mod userboot;

#[cfg(feature = "ktest")]
mod ktest;

use arch::{Arch, Machine};

/// Tells MantraBoot which BootInfo version this kernel speaks (checked before
/// it jumps here).
#[used]
#[link_section = ".note.mantra"]
static BOOTINFO_NOTE: mantra_bootinfo::KernelNote = mantra_bootinfo::KernelNote::CURRENT;

/// Stops the machine after a fatal kernel error: the test build reports a
/// failure to QEMU, a normal build halts with the report on the console.
pub fn fatal_stop() -> ! {
    console::EmergencyWriter::write_line("MantraCore halted.");
    if cfg!(feature = "ktest") {
        Machine::exit_emulator(false)
    }
    Machine::halt()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use core::fmt::Write;
    let _ = writeln!(console::EmergencyWriter, "\nKERNEL PANIC: {info}");
    fatal_stop()
}
