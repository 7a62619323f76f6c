//! Kernel microbenchmarks, read by `./mantra bench`. Under QEMU
//! `-icount shift=0` the TSC counts guest instructions, so every figure is
//! a deterministic instruction count: the median over `iterations=N`
//! (default 2000) runs after 200 warm-up runs, minus the cost of an empty
//! `rdtsc` pair. One line per benchmark:
//! `bench: <name> <median> (<iterations> iterations)`.
//!
//! `mode=local` (default, boot with one CPU) runs the same-core benchmarks;
//! `mode=cross` (boot with two CPUs) only the cross-core call, so that no
//! second CPU can steal the partner of a same-core benchmark.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use core::arch::x86_64::_rdtsc;

use mantra_abi::{nr, signals, Handle, PortPacket, ReadSizes};
use mantra_rt::{info, sys, Error, Startup};

mantra_rt::main!(main);

const WARMUP: usize = 200;

fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects (CR4.TSD is off for user mode).
    unsafe { _rdtsc() }
}

/// Median of `samples` (sorted in place).
fn median(samples: &mut [u64]) -> u64 {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// Runs `body` WARMUP + n times, timing each run with rdtsc; returns the median.
fn measure(n: usize, mut body: impl FnMut()) -> u64 {
    let mut samples = Vec::with_capacity(n);
    for i in 0..WARMUP + n {
        let start = rdtsc();
        body();
        let end = rdtsc();
        if i >= WARMUP {
            samples.push(end - start);
        }
    }
    median(&mut samples)
}

// A thread that yields forever (the other side of the switch benchmark).
core::arch::global_asm!(
    ".global bench_yield_start",
    ".global bench_yield_end",
    "bench_yield_start:",
    "mov eax, {yield_}",
    "syscall",
    "jmp bench_yield_start",
    "bench_yield_end:",
    yield_ = const nr::THREAD_YIELD,
);

extern "C" {
    static bench_yield_start: u8;
    static bench_yield_end: u8;
}

/// A benchmark's call must really have worked: the echo of `sent`.
fn check_echo(answer: Result<sys::ShortMessage, Error>, sent: &sys::ShortMessage) -> Result<(), Error> {
    match answer {
        Ok(echo) if echo == *sent => Ok(()),
        Ok(echo) => {
            info!("bench: the echo server answered {echo:?} to {sent:?}");
            Err(Error::BadState)
        }
        Err(e) => Err(e),
    }
}

fn report(name: &str, median: u64, overhead: u64, n: usize) {
    info!("bench: {name} {} ({n} iterations)", median.saturating_sub(overhead));
}

fn main(startup: Startup) -> Result<(), Error> {
    let n: usize = startup.arg_value("iterations").and_then(|v| v.parse().ok()).unwrap_or(2000).max(1000);
    let me = mantra_rt::process::current();
    let overhead = measure(n, || {});
    info!("bench: rdtsc_pair {overhead} (subtracted from every figure)");
    if startup.arg_value("mode") == Some("cross") {
        return cross_core(me, n, overhead);
    }

    // The shortest way into the kernel and out: an unknown syscall number,
    // refused by the entry stub.
    let null = measure(n, || {
        // SAFETY: no pointer arguments.
        let _ = unsafe { sys::raw::syscall(nr::COUNT, 0, 0, 0, 0, 0, 0) };
    });
    report("null_syscall", null, overhead, n);
    // The shortest call through the whole path (register save, dispatcher,
    // current thread, return): CLOCK_GET.
    let dispatch = measure(n, || {
        // SAFETY: no pointer arguments.
        let _ = unsafe { sys::raw::syscall(nr::CLOCK_GET, 0, 0, 0, 0, 0, 0) };
    });
    report("syscall_dispatch", dispatch, overhead, n);

    let (a, b) = sys::channel_create(me)?;
    let mut buffer = [0u8; 64];
    let mut handles = [Handle::INVALID; 1];
    let mut sizes = ReadSizes::default();
    let write_read = measure(n, || {
        let _ = sys::channel_write(a, &buffer[..8], &[]);
        let _ = sys::channel_read(b, &mut buffer, &mut handles, &mut sizes);
    });
    report("channel_write_read", write_read, overhead, n);

    // Call/reply with an echo server in another process and address space:
    // an 8-byte message in registers (CHANNEL_CALL_SHORT against a server
    // looping on CHANNEL_REPLY_RECEIVE_SHORT), then the same with the
    // message in memory (CHANNEL_CALL with CallArgs buffers against a server
    // looping on CHANNEL_REPLY_RECEIVE).
    let (short_client, short_end) = sys::channel_create(me)?;
    let short_server =
        mantra_rt::process::spawn_raw(b"bench-echo-short", mantra_rt::process::short_echo_server_code(), Some(short_end))?;
    let message = sys::ShortMessage { len: 8, words: [7, 0, 0, 0] };
    let short_call = measure(n, || {
        let _ = sys::channel_call_short(short_client, &message);
    });
    report("ipc_call_roundtrip", short_call, overhead, n);
    check_echo(sys::channel_call_short(short_client, &message), &message)?;
    let _ = sys::process_kill(short_server.process);

    let (client, server_end) = sys::channel_create(me)?;
    let server = mantra_rt::process::spawn_raw(b"bench-echo", mantra_rt::process::echo_server_code(), Some(server_end))?;
    let request = [7u8; 8];
    let mut reply = [0u8; 64];
    let args = sys::call_args(&request, &mut reply);
    let call = measure(n, || {
        // SAFETY: args points at live buffers of the stated sizes.
        let _ = unsafe { sys::channel_call(client, &args, sys::NO_DEADLINE) };
    });
    report("ipc_call_roundtrip_buffers", call, overhead, n);

    // Port wake-up: a READABLE packet for the server's echo.
    let port = sys::port_create(me)?;
    let mut packets = [PortPacket::default(); 4];
    let wakeup = measure(n, || {
        let _ = sys::object_wait_async(client, port, 1, signals::READABLE);
        let _ = sys::channel_write(client, &request, &[]);
        let _ = sys::port_wait(port, sys::NO_DEADLINE, &mut packets);
        let _ = sys::channel_read(client, &mut reply, &mut handles, &mut sizes);
    });
    report("port_wait_wakeup", wakeup, overhead, n);

    // Context switch: yield to a thread of another process that yields back;
    // one round trip is two switches (and two yields).
    // SAFETY: the labels are defined in the global_asm above.
    let yielder = unsafe {
        mantra_rt::process::code_between(core::ptr::addr_of!(bench_yield_start), core::ptr::addr_of!(bench_yield_end))
    };
    let other = mantra_rt::process::spawn_raw(b"bench-yield", yielder, None)?;
    let round_trip = measure(n, sys::thread_yield);
    report("context_switch", round_trip / 2, overhead / 2, n);
    // The yielder never blocks: stop it, or its CPU would never halt (and
    // under -icount a CPU that does not halt holds the others off).
    let _ = sys::process_kill(other.process);

    info!("bench: ipc_call_roundtrip_cross_core n/a (measured in a separate two-CPU boot: mode=cross)");
    let _ = sys::process_kill(server.process);
    info!("bench: done");
    Ok(())
}

/// The call of `ipc_call_roundtrip` to an echo server pinned to CPU 1 while
/// this thread runs on another CPU. Under -icount both CPUs' instructions
/// count, in sequence.
fn cross_core(me: Handle, n: usize, overhead: u64) -> Result<(), Error> {
    let message = sys::ShortMessage { len: 8, words: [7, 0, 0, 0] };
    let (far_client, far_end) = sys::channel_create(me)?;
    let far =
        mantra_rt::process::spawn_raw(b"bench-echo-far", mantra_rt::process::short_echo_server_code(), Some(far_end))?;
    if sys::thread_set_priority(far.thread, mantra_abi::Priority::Normal, Some(1)).is_ok() {
        let cross = measure(n, || {
            let _ = sys::channel_call_short(far_client, &message);
        });
        report("ipc_call_roundtrip_cross_core", cross, overhead, n);
        check_echo(sys::channel_call_short(far_client, &message), &message)?;
    } else {
        info!("bench: ipc_call_roundtrip_cross_core n/a (one CPU: boot with two or more)");
    }
    let _ = sys::process_kill(far.process);
    info!("bench: done");
    Ok(())
}
