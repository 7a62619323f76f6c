//! UEFI runtime services: GetVariable and SetVariable of the firmware,
//! for FIRMWARE_VARIABLE_GET/_SET (syscall.rs).
//!
//! MantraBoot called SetVirtualAddressMap with every EFI_MEMORY_RUNTIME
//! region at its direct-map address, and the kernel maps those regions
//! there (memory.rs: firmware code RWX, data RW/NX, MMIO such as the pflash
//! variable store uncached). A call into the firmware:
//!
//! - is serialized by one lock (the firmware is not reentrant) and runs
//!   with interrupts off on this CPU;
//! - runs on a dedicated 128 KiB stack with a guard page (the firmware's
//!   stack needs are its own business, not a kernel stack's);
//! - saves the caller's x87/SSE state (FXSAVE) and sets the state the UEFI
//!   calling convention promises (FCW 0x037F, MXCSR 0x1F80), because
//!   firmware code may use SSE while the kernel and user programs are
//!   built soft-float and the kernel never switches FPU state: whatever a
//!   thread left in the XMM registers is restored afterwards.
//!
//! The firmware sees the current thread's page tables: the kernel half
//! (where all of the above lives) is the same in every address space.

use core::arch::asm;

use mantra_bootinfo::RuntimeRegion;
use mantra_kernel::efivar::{self, status, Ucs2Name, MANTRA_VENDOR_GUID};
use mantra_kernel::sync::{Once, SpinLock};

use crate::arch::x86_64::{cpu, layout};
use crate::memory;

/// EFI_RUNTIME_SERVICES, as far as MantraCore uses it (UEFI 2.10 4.5).
#[repr(C)]
struct RuntimeServices {
    signature: u64,
    revision: u32,
    header_size: u32,
    crc32: u32,
    reserved: u32,
    get_time: u64,
    set_time: u64,
    get_wakeup_time: u64,
    set_wakeup_time: u64,
    set_virtual_address_map: u64,
    convert_pointer: u64,
    get_variable: u64,
    get_next_variable_name: u64,
    set_variable: u64,
}

/// "RUNTSERV".
const SIGNATURE: u64 = 0x5652_4553_544e_5552;

type GetVariable = unsafe extern "efiapi" fn(*const u16, *const [u8; 16], *mut u32, *mut usize, *mut u8) -> usize;
type SetVariable = unsafe extern "efiapi" fn(*const u16, *const [u8; 16], u32, usize, *const u8) -> usize;

struct Services {
    get_variable: GetVariable,
    set_variable: SetVariable,
}

/// Set once at boot: the services, or why there are none.
static SERVICES: Once<Result<Services, &'static str>> = Once::new();

/// The FXSAVE area of the thread calling into the firmware.
#[repr(C, align(16))]
struct FxArea([u8; 512]);

/// Serializes firmware calls; holds the caller's saved x87/SSE state.
static CALL: SpinLock<FxArea> = SpinLock::new(FxArea([0; 512]));

const CR0_MP: u64 = 1 << 1;
const CR0_EM: u64 = 1 << 2;
const CR0_TS: u64 = 1 << 3;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
/// MXCSR the UEFI x64 calling convention promises: all exceptions masked,
/// round to nearest.
const MXCSR_DEFAULT: u32 = 0x1F80;

/// Finds and checks the runtime services MantraBoot handed over, and
/// prints one console line saying whether firmware variables work.
/// Called once at boot, after the kernel's tables (with the runtime
/// regions) are live.
pub fn init() {
    let result = SERVICES.call_once(find);
    match result {
        Ok(_) => {
            let info = crate::boot::bootinfo();
            let regions = memory::runtime_regions(&info);
            let mmio = regions.iter().filter(|r| r.is_mmio()).count();
            let rev = table().map(|t| t.revision).unwrap_or(0);
            crate::kprintln!(
                "efi: runtime services (UEFI {}.{}), {} runtime regions ({} MMIO) in the direct map; firmware variables available",
                rev >> 16,
                (rev & 0xffff) / 10,
                regions.len(),
                mmio
            );
        }
        Err(why) => crate::kprintln!("efi: no runtime services ({why}); firmware variables unavailable"),
    }
}

fn table() -> Option<&'static RuntimeServices> {
    let phys = crate::boot::bootinfo().efi_runtime_services()?;
    // SAFETY: only called after `find` checked that the table lies inside a
    // runtime data region, which the kernel maps (RW) at its direct-map
    // address for good and never hands to the frame allocator.
    Some(unsafe { &*(memory::phys_to_virt(phys) as *const RuntimeServices) })
}

fn find() -> Result<Services, &'static str> {
    let info = crate::boot::bootinfo();
    let phys = info.efi_runtime_services().ok_or("MantraBoot passed none: no UEFI firmware, or SetVirtualAddressMap failed")?;
    if let Err(_e) = efivar::check_runtime_regions(info.runtime_regions()) {
        return Err("the runtime regions MantraBoot passed are malformed");
    }
    let regions: &[RuntimeRegion] = memory::runtime_regions(&info);
    let size = core::mem::size_of::<RuntimeServices>() as u64;
    let virt = memory::phys_to_virt(phys);
    if phys % 8 != 0 || !efivar::in_runtime_region(regions, virt, size, |r| !r.is_code() && !r.is_mmio()) {
        return Err("the runtime services table is not in runtime data memory");
    }
    let rt = table().ok_or("no table")?;
    if rt.signature != SIGNATURE || (rt.header_size as u64) < size {
        return Err("the runtime services table has a bad signature or size");
    }
    let in_code = |f: u64| efivar::in_runtime_region(regions, f, 1, RuntimeRegion::is_code);
    if !in_code(rt.get_variable) || !in_code(rt.set_variable) {
        return Err("GetVariable/SetVariable do not point into runtime code");
    }
    // SAFETY: both addresses lie in runtime services code mapped executable
    // at the addresses SetVirtualAddressMap relocated the firmware to; the
    // table says they are these services, with these UEFI signatures.
    let (get_variable, set_variable) = unsafe {
        (
            core::mem::transmute::<u64, GetVariable>(rt.get_variable),
            core::mem::transmute::<u64, SetVariable>(rt.set_variable),
        )
    };
    Ok(Services { get_variable, set_variable })
}

fn services() -> Option<&'static Services> {
    SERVICES.get().and_then(|r| r.as_ref().ok())
}


/// What a GetVariable returned.
pub struct Got {
    pub status: usize,
    /// The value's size (on BUFFER_TOO_SMALL: the size needed).
    pub size: usize,
    pub attributes: u32,
}

/// GetVariable of `name` under the MantraOS vendor GUID into `buffer`.
/// None when there are no runtime services.
pub fn get_variable(name: &Ucs2Name, buffer: &mut [u8]) -> Option<Got> {
    let services = services()?;
    let mut attributes = 0u32;
    let mut size = buffer.len();
    let status = firmware_call(|| {
        // SAFETY: every pointer is to live kernel memory (heap or this
        // stack frame's captures) mapped in every address space; the name
        // is NUL-terminated; `size` is the buffer's length.
        unsafe { (services.get_variable)(name.as_ptr(), &MANTRA_VENDOR_GUID, &mut attributes, &mut size, buffer.as_mut_ptr()) }
    });
    Some(Got { status, size, attributes })
}

/// SetVariable of `name` under the MantraOS vendor GUID (`data` empty:
/// delete). None when there are no runtime services.
pub fn set_variable(name: &Ucs2Name, attributes: u32, data: &[u8]) -> Option<usize> {
    let services = services()?;
    Some(firmware_call(|| {
        // SAFETY: as in get_variable; the firmware only reads `data`.
        unsafe { (services.set_variable)(name.as_ptr(), &MANTRA_VENDOR_GUID, attributes, data.len(), data.as_ptr()) }
    }))
}

/// Runs `call` (a firmware service) under the firmware lock, interrupts
/// off, on the firmware stack, with this thread's x87/SSE state saved.
fn firmware_call(call: impl FnOnce() -> usize) -> usize {
    let flags = save_flags_and_disable_interrupts();
    let mut area = CALL.lock();
    let (cr0, cr4) = (cpu::read_cr0(), cpu::read_cr4());
    // SAFETY: enabling FXSAVE/SSE and clearing EM/TS only allow more
    // instructions; the original values come back below.
    unsafe {
        cpu::write_cr4(cr4 | CR4_OSFXSR | CR4_OSXMMEXCPT);
        cpu::write_cr0((cr0 & !(CR0_EM | CR0_TS)) | CR0_MP);
    }
    // SAFETY: `area` is a 16-byte aligned 512-byte buffer this CPU owns
    // under the lock; FXSAVE/FNINIT/LDMXCSR touch only it and the FPU.
    unsafe {
        asm!("fxsave64 [{}]", in(reg) area.0.as_mut_ptr(), options(nostack, preserves_flags));
        asm!("fninit", "ldmxcsr [{}]", in(reg) &MXCSR_DEFAULT, options(nostack, preserves_flags));
    }
    let mut call = Some(call);
    let mut status = status::DEVICE_ERROR;
    let mut run = || {
        if let Some(call) = call.take() {
            status = call();
        }
    };
    // SAFETY: the firmware stack was mapped at boot (memory.rs) whenever
    // runtime services exist, which `services()` checked before any call;
    // it is used only under CALL with interrupts off, so by one call at a time.
    unsafe { run_on_stack(layout::FIRMWARE_STACK_TOP, &mut run) };
    // SAFETY: restores exactly what FXSAVE stored, then the control
    // registers as they were.
    unsafe {
        asm!("fxrstor64 [{}]", in(reg) area.0.as_ptr(), options(nostack, preserves_flags));
        cpu::write_cr0(cr0);
        cpu::write_cr4(cr4);
    }
    drop(area);
    restore_flags(flags);
    status
}

fn save_flags_and_disable_interrupts() -> u64 {
    let flags: u64;
    // SAFETY: reads RFLAGS, then masks interrupts: no memory effects.
    unsafe { asm!("pushfq", "pop {}", "cli", out(reg) flags, options(nomem)) };
    flags
}

fn restore_flags(flags: u64) {
    const IF: u64 = 1 << 9;
    if flags & IF != 0 {
        // SAFETY: interrupts were on when firmware_call started, so the
        // IDT and handlers are in place.
        unsafe { cpu::enable_interrupts() };
    }
}

extern "sysv64" fn trampoline(run: *mut &mut dyn FnMut()) {
    // SAFETY: run_on_stack passes a pointer to a live `&mut dyn FnMut()`
    // that nothing else uses during the call.
    unsafe { (*run)() }
}

/// Calls `run` with RSP at `top`, then returns to the current stack.
///
/// # Safety
/// `top` must be the 16-byte aligned top of a mapped, writable stack that
/// nothing else uses during the call, large enough for `run`.
unsafe fn run_on_stack(top: u64, run: &mut dyn FnMut()) {
    let mut run = run;
    let run_ptr: *mut &mut dyn FnMut() = &mut run;
    // SAFETY: per the contract; R12 (callee-saved in the SysV ABI, so the
    // trampoline preserves it) keeps the old RSP across the call, and the
    // asm declares every caller-saved register clobbered.
    unsafe {
        asm!(
            "mov r12, rsp",
            "mov rsp, {top}",
            "call {tramp}",
            "mov rsp, r12",
            top = in(reg) top,
            tramp = sym trampoline,
            in("rdi") run_ptr,
            out("r12") _,
            clobber_abi("sysv64"),
        )
    }
}
