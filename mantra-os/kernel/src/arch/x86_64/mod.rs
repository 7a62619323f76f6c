//! x86_64 (UEFI PCs, QEMU q35): CPU setup, descriptor tables, traps, the
//! LAPIC timer and the kernel's address space.

pub mod apic;
pub mod context;
pub mod cpu;
pub mod gdt;
pub mod ioapic;
pub mod layout;
pub mod percpu;
#[cfg(feature = "ktest")]
pub mod recover;
pub mod serial;
pub mod smp;
pub mod syscall;
pub mod traps;

use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering};

pub use traps::TrapFrame;

use crate::arch::Arch;
use mantra_kernel::sync::SpinLock;

/// The x86_64 implementation of [`Arch`].
pub struct Machine;

const CONSOLE: serial::Uart = serial::Uart::new(mantra_config::SERIAL_IO_PORT as u16);

impl Arch for Machine {
    const NAME: &'static str = "x86_64";

    fn console_write(bytes: &[u8]) {
        CONSOLE.write(bytes);
    }

    fn console_read_byte() -> Option<u8> {
        CONSOLE.read_byte()
    }

    fn timestamp() -> u64 {
        cpu::rdtsc()
    }

    fn wait_for_interrupt() {
        // SAFETY: interrupts are only ever enabled after the IDT is loaded.
        unsafe { cpu::enable_and_halt() };
    }

    fn halt() -> ! {
        loop {
            cpu::disable_interrupts();
            cpu::halt();
        }
    }

    fn exit_emulator(success: bool) -> ! {
        #[cfg(mantra_qemu_debug_exit)]
        // SAFETY: isa-debug-exit at this port ends the QEMU run; on a board
        // without it Kconfig leaves QEMU_DEBUG_EXIT off and this is not built.
        unsafe {
            cpu::outl(mantra_config::DEBUG_EXIT_IO_PORT as u16, if success { 0x10 } else { 0x11 });
        }
        let _ = success;
        Self::halt()
    }
}

/// Programs the console UART.
pub fn init_console() {
    CONSOLE.init(mantra_config::SERIAL_BAUD as u32);
}

static IDT: SpinLock<traps::Idt> = SpinLock::new(traps::Idt::new());

/// Loads the GDT, TSS and IDT on the boot CPU, so every fault from here on
/// is reported.
pub fn init_cpu() {
    percpu::init_bsp();
    load_idt();
}

/// Loads the shared IDT on this CPU (filling it on first use).
pub fn load_idt() {
    let mut idt = IDT.lock();
    idt.populate();
    // SAFETY: the IDT lives in a static and is never moved or changed after
    // this; every present gate points at a stub in `traps`.
    unsafe { (*(&*idt as *const traps::Idt)).load() };
}

/// Turns on NX (EFER.NXE), write protection in ring 0 (CR0.WP) and global
/// pages; must run before the kernel's page tables (which use NX) are loaded.
pub fn enable_paging_features() -> cpu::Features {
    let features = cpu::Features::detect();
    // SAFETY: setting NXE/WP/PGE only adds checks; the loader's tables stay valid.
    unsafe {
        if features.nx {
            cpu::wrmsr(cpu::MSR_EFER, cpu::rdmsr(cpu::MSR_EFER) | cpu::EFER_NXE);
        }
        cpu::write_cr0(cpu::read_cr0() | cpu::CR0_WP);
        if features.pge {
            cpu::write_cr4(cpu::read_cr4() | cpu::CR4_PGE);
        }
    }
    features
}

/// Turns on SMEP, SMAP and UMIP when the CPU has them; only safe once the
/// kernel runs on its own tables (no user-accessible kernel mappings).
pub fn enable_user_isolation(features: &cpu::Features) {
    let mut cr4 = cpu::read_cr4();
    if features.smep {
        cr4 |= cpu::CR4_SMEP;
    }
    if features.smap {
        cr4 |= cpu::CR4_SMAP;
    }
    if features.umip {
        cr4 |= cpu::CR4_UMIP;
    }
    // SAFETY: the kernel's page tables have no USER mappings, so these
    // checks cannot fire on kernel code.
    unsafe { cpu::write_cr4(cr4) };
}

/// Timer interrupts taken since boot on this CPU.
pub static TICKS: AtomicU64 = AtomicU64::new(0);

/// Details of an exception, as reported and as the test harness sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub rsp: u64,
    pub cr2: u64,
    /// The faulting address hit the guard page of this kernel stack slot.
    pub stack_overflow_slot: Option<u64>,
}

/// Where a fault the in-guest tests provoke on purpose resumes.
pub trait FaultRecovery {
    /// Called with interrupts off on the faulting CPU; returns true when the
    /// fault was expected and `frame` now resumes at a recovery point.
    fn recover(&self, fault: &Fault, frame: &mut TrapFrame) -> bool;
}

static RECOVERY: SpinLock<Option<&'static (dyn FaultRecovery + Sync)>> = SpinLock::new(None);

/// Installs the recovery hook used by the kernel test build.
#[cfg(feature = "ktest")]
pub fn set_fault_recovery(hook: Option<&'static (dyn FaultRecovery + Sync)>) {
    *RECOVERY.lock() = hook;
}

/// Every trap lands here (called from the assembly stub).
pub(crate) fn trap(frame: &mut TrapFrame) {
    match frame.vector {
        v if v == u64::from(traps::VECTOR_TIMER) => {
            TICKS.fetch_add(1, Ordering::Relaxed);
            apic::end_of_interrupt();
            // Deadlines are global; whichever CPU ticks first runs them
            // (wake-ups go to each thread's own CPU, see sched::wake).
            crate::ipc::on_tick();
            crate::sched::tick(frame.from_user());
        }
        v if v == u64::from(traps::VECTOR_SPURIOUS) => {}
        v if smp::is_ipi_vector(v) => smp::handle_ipi(v as u8),
        v if crate::interrupt::is_device_vector(v) => crate::interrupt::on_vector(v as u8),
        32..=47 => {} // spurious legacy-PIC IRQ: the PICs are masked, no EOI
        v if v < 32 => exception(frame),
        v => crate::kwarn!("unexpected interrupt vector {v}"),
    }
}

/// `map::*` access bits of a page fault's error code.
fn page_fault_access(error: u64) -> u32 {
    if error & (1 << 4) != 0 {
        mantra_abi::map::EXECUTE
    } else if error & 2 != 0 {
        mantra_abi::map::WRITE
    } else {
        mantra_abi::map::READ
    }
}

fn exception(frame: &mut TrapFrame) {
    let cr2 = cpu::read_cr2();
    // Faults on user addresses: lazy commit first (from user mode, or from
    // the kernel's user-copy routine), then the process's own fault.
    if frame.vector == 14 && (frame.from_user() || context::in_user_copy(frame)) {
        if let Some(thread) = crate::sched::current() {
            if cr2 < mantra_abi::USER_END && thread.process().space().handle_fault(cr2, page_fault_access(frame.error_code)) {
                return;
            }
        }
        if context::fixup_user_copy(frame) {
            return;
        }
    }
    if frame.from_user() {
        user_fault(frame, cr2);
    }
    let uses_cr2 = frame.vector == 14 || frame.vector == 8;
    let fault = Fault {
        vector: frame.vector,
        error_code: frame.error_code,
        rip: frame.rip,
        rsp: frame.rsp,
        cr2,
        stack_overflow_slot: if uses_cr2 { layout::stack_guard_slot(cr2) } else { None },
    };
    // Copy the hook out so the lock is not held while it runs.
    let hook = *RECOVERY.lock();
    if let Some(hook) = hook {
        if hook.recover(&fault, frame) {
            return;
        }
    }
    report_fault(&fault, frame);
    crate::fatal_stop();
}

/// A user thread faulted: its process dies (reported), the kernel goes on.
fn user_fault(frame: &TrapFrame, cr2: u64) -> ! {
    let thread = crate::sched::current().expect("user mode runs a thread");
    let process = thread.process().clone();
    let mut detail = alloc::string::String::new();
    if frame.vector == 14 {
        let _ = traps::describe_page_fault(frame.error_code, &mut detail);
        let _ = write!(detail, " at {cr2:#x}");
    }
    crate::kprintln!(
        "process {} (koid {}) killed: {} (vector {}) at RIP {:#x}{}{}",
        process.name,
        process.koid,
        traps::exception_name(frame.vector),
        frame.vector,
        frame.rip,
        if detail.is_empty() { "" } else { ": " },
        detail
    );
    process.terminate(-(1000 + frame.vector as i64));
    drop(process);
    drop(thread);
    crate::sched::exit_current()
}

/// Prints a fault report: vector, error code, RIP, CR2, decoded bits.
pub fn report_fault(fault: &Fault, frame: &TrapFrame) {
    let mut out = crate::console::EmergencyWriter;
    if let Some(slot) = fault.stack_overflow_slot {
        let _ = writeln!(out, "\nKERNEL FAULT: stack overflow: kernel stack {slot} ran into its guard page at {:#x}", fault.cr2);
    }
    let _ = writeln!(
        out,
        "\nKERNEL FAULT: {} (vector {}), error code {:#x}, RIP {:#018x}, RSP {:#018x}, CR2 {:#018x}",
        traps::exception_name(fault.vector),
        fault.vector,
        fault.error_code,
        fault.rip,
        fault.rsp,
        fault.cr2
    );
    if fault.vector == 14 {
        let _ = write!(out, "  page fault: ");
        let _ = traps::describe_page_fault(fault.error_code, &mut out);
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "  rax {:#x} rbx {:#x} rcx {:#x} rdx {:#x} rsi {:#x} rdi {:#x} rbp {:#x} cs {:#x} rflags {:#x}",
        frame.rax, frame.rbx, frame.rcx, frame.rdx, frame.rsi, frame.rdi, frame.rbp, frame.cs, frame.rflags
    );
}

/// Loads `root` into CR3, moves to `stack_top` and calls `next`.
///
/// # Safety
/// `root` must map the running kernel image, `stack_top` (16-byte aligned,
/// mapped) and everything `next` touches; nothing on the current stack may
/// be used afterwards.
pub unsafe fn switch_to(root: u64, stack_top: u64, next: extern "C" fn() -> !) -> ! {
    // SAFETY: guaranteed by the caller; `next` never returns.
    unsafe {
        core::arch::asm!(
            "mov cr3, {root}",
            "mov rsp, {stack}",
            "xor ebp, ebp",
            "call {next}",
            "ud2",
            root = in(reg) root,
            stack = in(reg) stack_top,
            next = in(reg) next,
            options(noreturn)
        )
    }
}
