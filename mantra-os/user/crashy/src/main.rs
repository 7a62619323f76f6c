//! A service that crashes on purpose, for the supervision and fault tests.
//!
//! Arguments:
//! - `fault=KIND`, one or more: `null` (read address 0), `divide` (integer
//!   division by zero), `stack-overflow` (run off the stack into its guard
//!   gap), `illegal-instruction` (`ud2`), `kernel-address` (read the
//!   kernel's half of the address space), `panic` (a Rust panic: exit code
//!   101), `exit` (exit code 3). With several, start number `k` (the
//!   `restarts` line of the bootstrap message) uses the `k mod n`-th, so a
//!   restarted crashy goes through them all. Default: `null`.
//! - `delay_ms=MS`: wait this long before crashing (default 0).
//!
//! It logs `start K: crashing with FAULT` before it crashes.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use core::arch::asm;

use mantra_rt::{error, info, Error, Startup};

mantra_rt::main!(main);

const FAULTS: &[&str] = &["null", "divide", "stack-overflow", "illegal-instruction", "kernel-address", "panic", "exit"];

fn main(startup: Startup) -> Result<(), Error> {
    let mut faults: Vec<&str> = startup.arg_values("fault").collect();
    if faults.is_empty() {
        faults.push("null");
    }
    if let Some(bad) = faults.iter().find(|f| !FAULTS.contains(f)) {
        error!("unknown fault '{bad}' (faults: {})", FAULTS.join(", "));
        return Err(Error::InvalidArgs);
    }
    let start = startup.restarts();
    let fault = faults[start as usize % faults.len()];
    if let Some(ms) = startup.arg_value("delay_ms").and_then(|v| v.parse().ok()) {
        mantra_rt::time::sleep_ms(ms)?;
    }
    info!("start {}: crashing with {fault}", start + 1);
    crash(fault)
}

fn crash(fault: &str) -> Result<(), Error> {
    // Each asm block faults on purpose: the kernel kills the process, so
    // nothing after it runs, and none touches memory the compiler uses.
    match fault {
        // SAFETY: reads address 0, which is never mapped (page fault).
        "null" => unsafe {
            asm!("xor eax, eax", "mov rax, qword ptr [rax]", out("rax") _, options(nostack));
        },
        // SAFETY: `div` by zero raises #DE; registers are declared clobbered.
        "divide" => unsafe {
            asm!("xor edx, edx", "mov eax, 1", "xor ecx, ecx", "div ecx", out("rax") _, out("rcx") _, out("rdx") _,
                 options(nostack, nomem));
        },
        // SAFETY: walks down the stack a page at a time, touching each page,
        // until it reaches the unmapped guard gap below the stack.
        "stack-overflow" => unsafe {
            asm!("2:", "sub rsp, 4096", "mov qword ptr [rsp], 0", "jmp 2b", options(noreturn));
        },
        // SAFETY: `ud2` raises #UD.
        "illegal-instruction" => unsafe {
            asm!("ud2", options(noreturn, nostack, nomem));
        },
        // SAFETY: reads the kernel's half of the address space, which user
        // mode may not touch (page fault).
        "kernel-address" => unsafe {
            asm!("mov rax, qword ptr [rcx]", in("rcx") 0xFFFF_FFFF_8000_0000u64, out("rax") _, options(nostack));
        },
        "panic" => panic!("panicking on purpose"),
        "exit" => mantra_rt::process::exit(3),
        _ => {}
    }
    error!("the {fault} fault did not stop the process");
    Err(Error::BadState)
}
