//! In-guest kernel tests (`--features ktest`): run after "ready" on the real
//! machine, print one line each, and report the result to QEMU through
//! isa-debug-exit (exit code 33 = all passed, 35 = some failed).
//!
//! Fault tests provoke the fault on purpose and check what the trap handler
//! saw; the recovery hook makes the faulting code resume in the test.

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use alloc::format;
use core::sync::atomic::Ordering;

use mantra_abi::{signals, Error, PortPacket};
use mantra_kernel::irq::LineMode;
use mantra_kernel::sync::SpinLock;

use crate::arch::x86_64::recover::{self, JumpBuffer};
use crate::arch::x86_64::{self as cpu_arch, apic, cpu, ioapic, layout, Fault, FaultRecovery, TrapFrame};
use crate::interrupt::{self, Interrupt};
use crate::ipc::Port;
use crate::arch::{Arch, Machine};
use crate::{kprintln, memory};

type TestResult = Result<(), String>;

const TESTS: &[(&str, fn() -> TestResult)] = &[
    ("guard_page_overflow_caught", guard_page_overflow_caught),
    ("write_to_kernel_text_faults", write_to_kernel_text_faults),
    ("write_to_rodata_faults", write_to_rodata_faults),
    ("execute_from_data_faults", execute_from_data_faults),
    ("direct_map_is_not_executable", direct_map_is_not_executable),
    ("null_dereference_faults", null_dereference_faults),
    ("boot_stack_has_guard_page", boot_stack_has_guard_page),
    ("cpu_protections_enabled", cpu_protections_enabled),
    ("heap_stress", heap_stress),
    ("frame_exhaustion_handled", frame_exhaustion_handled),
    ("timer_ticks", timer_ticks),
    ("kernel_image_in_memory_map", kernel_image_in_memory_map),
    ("tpm_boot_fact_recorded", tpm_boot_fact_recorded),
    ("rtc_interrupt_reaches_its_port", rtc_interrupt_reaches_its_port),
    ("smp", cpu_arch::smp::self_test),
];

pub fn run() -> ! {
    cpu_arch::set_fault_recovery(Some(&HOOK));
    let mut failed = 0;
    for (name, test) in TESTS {
        match test() {
            Ok(()) => kprintln!("ktest: {name} ... ok"),
            Err(why) => {
                failed += 1;
                kprintln!("ktest: {name} ... FAILED: {why}");
            }
        }
    }
    kprintln!("ktest: {} passed, {} failed", TESTS.len() - failed, failed);
    let cmdline = crate::boot::bootinfo().cmdline();
    if let Some(kind) = cmdline.split_whitespace().find_map(|arg| arg.strip_prefix("ktest.crash=")) {
        crash(kind);
    }
    Machine::exit_emulator(failed == 0)
}

/// `ktest.crash=KIND` on the command line: after the tests, provoke a fault
/// nobody expects, so the host can check the fatal report (and that a stack
/// overflow is reported, not a triple fault).
fn crash(kind: &str) {
    cpu_arch::set_fault_recovery(None);
    kprintln!("ktest: crashing on purpose: {kind}");
    match kind {
        "null" => read_null(),
        "overflow" => overflow_stack(),
        "text-write" => write_text(),
        other => kprintln!("ktest: unknown crash kind {other:?} (null, overflow, text-write)"),
    }
}

/// The armed expectation: where to resume and what the handler saw.
struct Expectation {
    buffer: *const JumpBuffer,
    fault: Option<Fault>,
}

// SAFETY: the raw pointer is only dereferenced by the trap handler while the
// try_call that owns the buffer is running on the same CPU.
unsafe impl Send for Expectation {}

static EXPECTED: SpinLock<Option<Expectation>> = SpinLock::new(None);

struct Hook;
static HOOK: Hook = Hook;

impl FaultRecovery for Hook {
    fn recover(&self, fault: &Fault, frame: &mut TrapFrame) -> bool {
        let mut expected = EXPECTED.lock();
        match expected.as_mut() {
            Some(e) if e.fault.is_none() => {
                e.fault = Some(*fault);
                recover::redirect(frame, e.buffer);
                true
            }
            _ => false,
        }
    }
}

/// Runs `f` (on `stack_top` when non-zero) and returns the fault it caused.
fn expect_fault(f: extern "C" fn(), stack_top: u64) -> Result<Fault, String> {
    let mut buffer = JumpBuffer::default();
    *EXPECTED.lock() = Some(Expectation { buffer: &buffer, fault: None });
    // SAFETY: stack_top is 0 or the top of a freshly mapped, unused stack;
    // the buffer outlives the call.
    let returned = unsafe { recover::try_call(f, stack_top, &mut buffer) };
    let fault = EXPECTED.lock().take().and_then(|e| e.fault);
    match (returned, fault) {
        (false, Some(fault)) => Ok(fault),
        (true, _) => Err("no fault: the operation succeeded".to_string()),
        (false, None) => Err("recovered without a recorded fault".to_string()),
    }
}

fn check(cond: bool, what: impl FnOnce() -> String) -> TestResult {
    if cond { Ok(()) } else { Err(what()) }
}

const PF: u64 = 14;
const PF_PRESENT: u64 = 1;
const PF_WRITE: u64 = 2;
const PF_FETCH: u64 = 16;

#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let pad = [depth; 32];
    // black_box keeps the frame and the recursion from being optimised away.
    core::hint::black_box(&pad);
    if depth == u64::MAX { 0 } else { recurse(depth + 1) + core::hint::black_box(pad[3]) }
}

extern "C" fn overflow_stack() {
    core::hint::black_box(recurse(0));
}

fn guard_page_overflow_caught() -> TestResult {
    const TEST_SLOT: u64 = 1;
    let top = memory::map_kernel_stack(TEST_SLOT).map_err(|e| format!("cannot map a test stack: {e}"))?;
    let fault = expect_fault(overflow_stack, top)?;
    let result = check(fault.stack_overflow_slot == Some(TEST_SLOT), || {
        format!("fault {} at CR2 {:#x} not reported as an overflow of stack {TEST_SLOT}", fault.vector, fault.cr2)
    });
    memory::unmap_kernel_stack(TEST_SLOT);
    result?;
    kprintln!("ktest:   overflow reported as: stack overflow of kernel stack {TEST_SLOT} at {:#x} (vector {})", fault.cr2, fault.vector);
    Ok(())
}

#[inline(never)]
extern "C" fn text_target() {
    core::hint::black_box(1);
}

extern "C" fn write_text() {
    let target = text_target as *const () as usize as *mut u8;
    // SAFETY: deliberately invalid: the write must fault (text is RX).
    unsafe { target.write_volatile(0xCC) };
}

fn write_to_kernel_text_faults() -> TestResult {
    let fault = expect_fault(write_text, 0)?;
    let addr = text_target as *const () as usize as u64;
    check(fault.vector == PF && fault.error_code & (PF_PRESENT | PF_WRITE) == PF_PRESENT | PF_WRITE && fault.cr2 == addr, || {
        format!("expected a write protection fault at {addr:#x}, got vector {} error {:#x} CR2 {:#x}", fault.vector, fault.error_code, fault.cr2)
    })
}

static READ_ONLY: [u8; 64] = [7; 64];

extern "C" fn write_rodata() {
    let target = core::hint::black_box(READ_ONLY.as_ptr()) as *mut u8;
    // SAFETY: deliberately invalid: rodata is mapped read-only.
    unsafe { target.write_volatile(0) };
}

fn write_to_rodata_faults() -> TestResult {
    let fault = expect_fault(write_rodata, 0)?;
    check(fault.vector == PF && fault.error_code & PF_WRITE != 0 && fault.cr2 == READ_ONLY.as_ptr() as u64, || {
        format!("got vector {} error {:#x} CR2 {:#x}", fault.vector, fault.error_code, fault.cr2)
    })
}

/// `ret` instructions in a writable data section.
static mut DATA_CODE: [u8; 16] = [0xC3; 16];

extern "C" fn execute_data() {
    // SAFETY: deliberately invalid: data is mapped NX, the call must fault.
    let f: extern "C" fn() = unsafe { core::mem::transmute(core::ptr::addr_of_mut!(DATA_CODE) as *const u8) };
    f();
}

fn execute_from_data_faults() -> TestResult {
    let fault = expect_fault(execute_data, 0)?;
    let addr = core::ptr::addr_of!(DATA_CODE) as u64;
    check(fault.vector == PF && fault.error_code & PF_FETCH != 0 && fault.rip == addr, || {
        format!("expected an instruction-fetch fault at {addr:#x}, got vector {} error {:#x} RIP {:#x}", fault.vector, fault.error_code, fault.rip)
    })
}

extern "C" fn execute_direct_map() {
    let phys = memory::virt_to_phys(text_target as *const () as usize as u64).expect("text is mapped");
    // SAFETY: deliberately invalid: the direct map is NX.
    let f: extern "C" fn() = unsafe { core::mem::transmute(memory::phys_to_virt(phys) as *const u8) };
    f();
}

fn direct_map_is_not_executable() -> TestResult {
    let fault = expect_fault(execute_direct_map, 0)?;
    check(fault.vector == PF && fault.error_code & PF_FETCH != 0 && fault.cr2 >= layout::PHYS_MAP_BASE, || {
        format!("got vector {} error {:#x} CR2 {:#x}", fault.vector, fault.error_code, fault.cr2)
    })
}

extern "C" fn read_null() {
    // SAFETY: deliberately invalid: nothing is mapped at 0.
    core::hint::black_box(unsafe { core::ptr::read_volatile(core::hint::black_box(0usize) as *const u64) });
}

fn null_dereference_faults() -> TestResult {
    let fault = expect_fault(read_null, 0)?;
    check(fault.vector == PF && fault.error_code & PF_PRESENT == 0 && fault.cr2 == 0, || {
        format!("got vector {} error {:#x} CR2 {:#x}", fault.vector, fault.error_code, fault.cr2)
    })
}

fn boot_stack_has_guard_page() -> TestResult {
    let top = layout::stack_top(0);
    let bottom = top - layout::stack_size();
    check(memory::virt_to_phys(bottom).is_some() && memory::virt_to_phys(bottom - 1).is_none(), || {
        format!("stack 0 [{bottom:#x}, {top:#x}) is not bounded by an unmapped guard page")
    })?;
    check(layout::stack_guard_slot(bottom - 8) == Some(0), || "guard page not recognised as stack 0's".to_string())
}

fn cpu_protections_enabled() -> TestResult {
    let f = cpu::Features::detect();
    let cr4 = cpu::read_cr4();
    // SAFETY: EFER exists on every x86_64 CPU.
    let efer = unsafe { cpu::rdmsr(cpu::MSR_EFER) };
    check(cpu::read_cr0() & cpu::CR0_WP != 0, || "CR0.WP off".to_string())?;
    check(!f.nx || efer & cpu::EFER_NXE != 0, || "NX supported but EFER.NXE off".to_string())?;
    check(!f.smep || cr4 & cpu::CR4_SMEP != 0, || "SMEP supported but off".to_string())?;
    check(!f.smap || cr4 & cpu::CR4_SMAP != 0, || "SMAP supported but off".to_string())?;
    check(!f.umip || cr4 & cpu::CR4_UMIP != 0, || "UMIP supported but off".to_string())?;
    check(f.nx && f.smep && f.smap && f.umip, || format!("QEMU -cpu max should offer all protections: {f:?}"))
}

fn heap_stress() -> TestResult {
    let before = memory::heap_stats();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut live: Vec<(Box<[u8]>, u8)> = Vec::new();
    for round in 0..20_000u32 {
        let r = next();
        if live.len() > 400 || (r % 3 == 0 && !live.is_empty()) {
            let (block, fill) = live.swap_remove((r >> 8) as usize % live.len());
            if block.iter().any(|&b| b != fill) {
                return Err(format!("block of {} bytes corrupted (round {round})", block.len()));
            }
        } else {
            let size = 1 + (r >> 16) as usize % if r % 16 == 0 { 65536 } else { 512 };
            let fill = round as u8;
            live.push((alloc::vec![fill; size].into_boxed_slice(), fill));
        }
    }
    for (block, fill) in &live {
        if block.iter().any(|b| b != fill) {
            return Err("block corrupted at the end".to_string());
        }
    }
    drop(live);
    let after = memory::heap_stats();
    check(after.used == before.used && after.free_blocks <= before.free_blocks, || {
        format!("heap not restored after freeing everything: before {before:?}, after {after:?}")
    })?;
    kprintln!("ktest:   heap after stress: {} bytes used, {} free blocks, largest {} bytes", after.used, after.free_blocks, after.largest_free);
    Ok(())
}

fn frame_exhaustion_handled() -> TestResult {
    let (free_before, _) = memory::frame_counts();
    let mut taken = Vec::with_capacity(free_before);
    while let Some(frame) = memory::alloc_frame() {
        taken.push(frame);
        if taken.len() > free_before {
            return Err("allocator handed out more frames than it had free".to_string());
        }
    }
    let exhausted_at = taken.len();
    let double_free_refused = {
        let first = taken[0];
        memory::free_frame(first).map_err(|e| format!("free failed: {e:?}"))?;
        let refused = memory::free_frame(first).is_err();
        taken[0] = memory::alloc_frame().ok_or("frame just freed is not allocatable")?;
        refused
    };
    for frame in taken {
        memory::free_frame(frame).map_err(|e| format!("free failed: {e:?}"))?;
    }
    let (free_after, _) = memory::frame_counts();
    check(exhausted_at == free_before && free_after == free_before && double_free_refused, || {
        format!("free {free_before}, allocated {exhausted_at} before exhaustion, free after {free_after}, double free refused: {double_free_refused}")
    })?;
    kprintln!("ktest:   {exhausted_at} frames allocated until exhaustion, all returned");
    Ok(())
}

fn timer_ticks() -> TestResult {
    let start = cpu_arch::TICKS.load(Ordering::Relaxed);
    let tsc = Machine::timestamp();
    while cpu_arch::TICKS.load(Ordering::Relaxed) < start + 5 {
        Machine::wait_for_interrupt();
    }
    check(Machine::timestamp() > tsc, || "TSC did not advance".to_string())
}

fn kernel_image_in_memory_map() -> TestResult {
    let info = crate::boot::bootinfo();
    for seg in info.kernel_segments() {
        let inside = info.memory_map().iter().any(|r| {
            r.kind() == mantra_bootinfo::MemoryKind::Kernel && r.start <= seg.paddr && seg.paddr + seg.mem_size <= r.end()
        });
        if !inside {
            return Err(format!("segment at {:#x} not inside a Kernel region of the memory map", seg.paddr));
        }
        if memory::virt_to_phys(seg.vaddr) != Some(seg.paddr) {
            return Err(format!("segment {:#x} not mapped to {:#x}", seg.vaddr, seg.paddr));
        }
    }
    check(!info.kernel_segments().is_empty(), || "no kernel segments in BootInfo".to_string())
}

/// The CMOS RTC (ISA IRQ 8): register index and data ports, and its
/// registers A (rate), B (enables) and C (flags; reading acknowledges).
const CMOS_INDEX: u16 = 0x70;
const CMOS_DATA: u16 = 0x71;
const CMOS_NMI_OFF: u8 = 0x80;
const RTC_A: u8 = 0x0A;
const RTC_B: u8 = 0x0B;
const RTC_C: u8 = 0x0C;
const RTC_B_PERIODIC: u8 = 0x40;
/// Rate 6: 1024 periodic interrupts per second.
const RTC_RATE_1024_HZ: u8 = 6;
const RTC_ISA_IRQ: u8 = 8;

fn cmos_read(reg: u8) -> u8 {
    // SAFETY: the CMOS index/data ports; the kernel test owns the RTC.
    unsafe {
        cpu::outb(CMOS_INDEX, CMOS_NMI_OFF | reg);
        cpu::inb(CMOS_DATA)
    }
}

fn cmos_write(reg: u8, value: u8) {
    // SAFETY: as in cmos_read.
    unsafe {
        cpu::outb(CMOS_INDEX, CMOS_NMI_OFF | reg);
        cpu::outb(CMOS_DATA, value);
    }
}

/// Halts (interrupts on) until `port` holds a packet or `ticks` timer
/// ticks passed; returns the packets taken. Interrupts are off again on
/// return (the port's lock is shared with the interrupt path).
fn wait_for_packets(port: &Port, ticks: u64) -> Vec<PortPacket> {
    let mut out = [PortPacket::default(); 8];
    let end = cpu_arch::TICKS.load(Ordering::Relaxed) + ticks;
    loop {
        let n = port.take_packets(&mut out);
        if n > 0 || cpu_arch::TICKS.load(Ordering::Relaxed) >= end {
            return out[..n].to_vec();
        }
        Machine::wait_for_interrupt();
        cpu::disable_interrupts();
    }
}

/// End to end through the hardware: the RTC's periodic interrupt, routed
/// through the I/O APIC to an interrupt object bound to a port, delivers
/// exactly one packet per ACK; the line stays masked in between; closing
/// the object masks the line and frees its GSI and vector.
fn rtc_interrupt_reaches_its_port() -> TestResult {
    const KEY: u64 = 0x1_2345;
    // Kernel code runs with interrupts off (earlier tests' halts leave them
    // on): the interrupt path takes the port's and the I/O APIC's locks,
    // so only the halts in wait_for_packets may let it in.
    cpu::disable_interrupts();
    let gsi = ioapic::isa_gsi(RTC_ISA_IRQ);
    let irq = Interrupt::new_physical(gsi, None).map_err(|e| format!("create for GSI {gsi}: {}", e.name()))?;
    check(Interrupt::new_physical(gsi, None).err() == Some(Error::BadState), || "a second object for the GSI".to_string())?;
    check(Interrupt::new_physical(1 << 20, None).err() == Some(Error::OutOfRange), || "GSI 2^20 accepted".to_string())?;
    let entry = ioapic::entry(gsi).ok_or("no redirection entry")?;
    check(
        entry.masked && interrupt::is_device_vector(u64::from(entry.vector)) && entry.mode == LineMode::ISA && u32::from(entry.destination) == apic::id(),
        || format!("GSI {gsi} routed as {entry:?} before bind"),
    )?;
    let port = Arc::new(Port::new());
    irq.bind(port.clone(), KEY).map_err(|e| format!("bind: {}", e.name()))?;
    check(irq.bind(port.clone(), KEY) == Err(Error::BadState), || "bound twice".to_string())?;
    check(ioapic::entry(gsi).is_some_and(|e| !e.masked), || "line still masked after bind".to_string())?;

    let (saved_a, saved_b) = (cmos_read(RTC_A), cmos_read(RTC_B));
    cmos_write(RTC_A, (saved_a & 0xF0) | RTC_RATE_1024_HZ);
    cmos_write(RTC_B, saved_b | RTC_B_PERIODIC);
    cmos_read(RTC_C);
    let result = (|| {
        let first = wait_for_packets(&port, 50);
        check(first.len() == 1 && first[0].key == KEY && first[0].observed == signals::INTERRUPT, || format!("first firing: {first:?}"))?;
        check(irq.signals.lock().active() & signals::INTERRUPT != 0, || "INTERRUPT not raised".to_string())?;
        check(ioapic::entry(gsi).is_some_and(|e| e.masked), || "line not masked after firing".to_string())?;
        // The RTC raises again within a millisecond, but the line is masked.
        cmos_read(RTC_C);
        let masked = wait_for_packets(&port, 5);
        check(masked.is_empty(), || format!("{} packets while masked", masked.len()))?;
        irq.ack().map_err(|e| format!("ack: {}", e.name()))?;
        check(irq.ack() == Err(Error::BadState), || "acked twice".to_string())?;
        check(irq.signals.lock().active() & signals::INTERRUPT == 0, || "INTERRUPT not cleared by ack".to_string())?;
        cmos_read(RTC_C);
        let second = wait_for_packets(&port, 50);
        check(second.len() == 1 && second[0].key == KEY, || format!("after ack: {second:?}"))
    })();
    cmos_write(RTC_B, saved_b & !RTC_B_PERIODIC);
    cmos_write(RTC_A, saved_a);
    cmos_read(RTC_C);
    result?;

    drop(irq);
    check(ioapic::entry(gsi).is_some_and(|e| e.masked), || "line open after the object closed".to_string())?;
    let again = Interrupt::new_physical(gsi, None).map_err(|e| format!("GSI not freed: {}", e.name()))?;
    drop(again);
    kprintln!("ktest:   RTC IRQ {RTC_ISA_IRQ} on GSI {gsi}, vector {:#x}: one packet per ack", entry.vector);
    Ok(())
}

/// Boot recorded what the TPM2 table says (or that there is none), and a
/// TPM's registers have an address.
fn tpm_boot_fact_recorded() -> TestResult {
    match crate::boot::TPM.get() {
        None => Err("boot::TPM was never set".to_string()),
        Some(Some(tpm)) if tpm.registers == 0 => Err(format!("TPM without a register address: {tpm:?}")),
        Some(_) => Ok(()),
    }
}
