//! Per-CPU state, reached through the GS base while in the kernel.
//!
//! The first fields have fixed offsets the assembly entry paths use
//! (`gs:[0]` self pointer, `gs:[8]` kernel stack top for SYSCALL, `gs:[16]`
//! scratch for the user RSP). User mode runs with GS base = 0 and the kernel's
//! value in KERNEL_GS_BASE; entries from user mode SWAPGS.

use core::sync::atomic::{AtomicUsize, Ordering};

use super::cpu;
use super::gdt::CpuTables;

pub const MSR_GS_BASE: u32 = 0xC000_0101;
pub const MSR_KERNEL_GS_BASE: u32 = 0xC000_0102;

/// Offsets used by assembly.
pub const OFFSET_KERNEL_RSP: usize = 8;
pub const OFFSET_USER_RSP: usize = 16;
/// Of `index`, read by `current_index`.
const OFFSET_INDEX: usize = 24;

#[repr(C, align(64))]
pub struct PerCpu {
    self_ptr: u64,
    /// Top of the running thread's kernel stack (SYSCALL switches to it).
    pub kernel_rsp: u64,
    /// The user RSP while a SYSCALL runs on the kernel stack.
    pub user_rsp: u64,
    /// Dense CPU index: 0 for the boot CPU, then in start order.
    pub index: usize,
    pub apic_id: u32,
    tables: CpuTables,
}

const _: () = assert!(core::mem::offset_of!(PerCpu, kernel_rsp) == OFFSET_KERNEL_RSP);
const _: () = assert!(core::mem::offset_of!(PerCpu, user_rsp) == OFFSET_USER_RSP);
const _: () = assert!(core::mem::offset_of!(PerCpu, index) == OFFSET_INDEX);

static mut BSP: PerCpu = PerCpu::new(0, 0);
static ONLINE: AtomicUsize = AtomicUsize::new(0);

impl PerCpu {
    const fn new(index: usize, apic_id: u32) -> Self {
        Self { self_ptr: 0, kernel_rsp: 0, user_rsp: 0, index, apic_id, tables: CpuTables::new() }
    }

    /// Loads this CPU's GDT/TSS and points GS at this structure.
    ///
    /// # Safety
    /// Runs once per CPU, on that CPU, with interrupts off; `self` is never
    /// freed (a static or a leaked box).
    unsafe fn activate(&'static mut self) {
        self.self_ptr = self as *mut Self as u64;
        let me = self.self_ptr;
        // SAFETY: guaranteed by the caller: this CPU's own tables, loaded once.
        unsafe {
            self.tables.load();
            cpu::wrmsr(MSR_GS_BASE, me);
            cpu::wrmsr(MSR_KERNEL_GS_BASE, 0);
        }
        ONLINE.fetch_add(1, Ordering::Release);
    }

    /// Sets the stack the CPU switches to on entries from user mode
    /// (TSS.RSP0 for interrupts, `kernel_rsp` for SYSCALL).
    pub fn set_kernel_stack(&mut self, top: u64) {
        self.kernel_rsp = top;
        self.tables.set_rsp0(top);
    }
}

/// Sets up the boot CPU's per-CPU area.
pub fn init_bsp() {
    // SAFETY: called once on the boot CPU during early boot, interrupts off.
    unsafe { (*core::ptr::addr_of_mut!(BSP)).activate() };
}

/// Sets up the per-CPU area of an application processor, on that CPU.
///
/// The area (48 KiB, mostly IST stacks) is built in place in zeroed heap
/// memory: a `PerCpu` value would not fit the AP's small boot stack.
pub fn init_ap(index: usize, apic_id: u32) -> &'static mut PerCpu {
    let layout = core::alloc::Layout::new::<PerCpu>();
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { alloc::alloc::alloc_zeroed(layout) }.cast::<PerCpu>();
    if ptr.is_null() {
        alloc::alloc::handle_alloc_error(layout);
    }
    // SAFETY: a fresh zeroed allocation of PerCpu's layout, never freed
    // (leaked): all-zero is a valid value for every field but the tables,
    // which init_zeroed completes; activated once on the CPU that calls this.
    unsafe {
        core::ptr::addr_of_mut!((*ptr).index).write(index);
        core::ptr::addr_of_mut!((*ptr).apic_id).write(apic_id);
        CpuTables::init_zeroed(core::ptr::addr_of_mut!((*ptr).tables));
        (*ptr).activate();
    }
    // SAFETY: as above; the reference is this CPU's only handle on it.
    unsafe { &mut *ptr }
}

/// This CPU's dense index (`PerCpu::index`), in one GS-relative load.
/// Only valid after `init_bsp`/`init_ap` on this CPU.
#[inline(always)]
pub fn current_index() -> usize {
    let index: usize;
    // SAFETY: GS base points at this CPU's PerCpu whenever kernel code runs;
    // `index` sits at OFFSET_INDEX and is written once, before activation.
    unsafe {
        core::arch::asm!("mov {}, gs:[{off}]", out(reg) index, off = const OFFSET_INDEX,
                         options(nostack, readonly, preserves_flags))
    };
    index
}

/// This CPU's area. Only valid after `init_bsp`/`init_ap` on this CPU.
#[allow(clippy::mut_from_ref)]
pub fn current() -> &'static mut PerCpu {
    let ptr: u64;
    // SAFETY: GS base points at this CPU's PerCpu (whose first field points
    // to itself) whenever kernel code runs.
    unsafe { core::arch::asm!("mov {}, gs:[0]", out(reg) ptr, options(nostack, readonly, preserves_flags)) };
    // SAFETY: per-CPU data is only touched by its own CPU with interrupts
    // off or from code that does not migrate (the kernel is not preemptible).
    unsafe { &mut *(ptr as *mut PerCpu) }
}

/// CPUs that have activated their per-CPU area.
pub fn online() -> usize {
    ONLINE.load(Ordering::Acquire)
}
