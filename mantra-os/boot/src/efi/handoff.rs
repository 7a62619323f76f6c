//! The hand-over: page tables, ExitBootServices, the BootInfo blob and the
//! jump into the kernel.

use alloc::format;
use alloc::vec::Vec;
use core::mem::size_of;
use mantra_boot::layout::table_frames_needed;
use mantra_boot::memmap;
use mantra_boot::paging::{Access, FrameSource, PageTables};
use mantra_bootinfo::{encode, encoded_size, Fixed, Framebuffer, KernelSegment, MemoryRegion, RuntimeRegion};
use uefi::boot::{self, AllocateType, MemoryType};
use uefi::mem::memory_map::{MemoryMap, MemoryMapMut};

use super::console;
use super::fail::{self, Fatal};
use super::kernel::LoadedKernel;
use super::platform;

/// Page-table frames carved from one boot-data allocation, identity mapped
/// (a frame's physical address is its pointer).
struct Pool {
    base: u64,
    count: u64,
    used: u64,
}

impl FrameSource for Pool {
    fn alloc_frame(&mut self) -> Option<u64> {
        if self.used == self.count {
            return None;
        }
        let frame = self.base + self.used * 4096;
        self.used += 1;
        // The whole pool was zeroed when it was allocated.
        Some(frame)
    }

    fn table(&mut self, phys: u64) -> &mut [u64; 512] {
        assert!(
            phys >= self.base && phys < self.base + self.used * 4096 && phys % 4096 == 0,
            "frame {phys:#x} is not from the pool"
        );
        // SAFETY: `phys` is a frame of the pool (checked above): identity
        // mapped, 4 KiB aligned, owned by the page-table builder, which holds
        // `&mut self` for the lifetime of the returned reference.
        unsafe { &mut *(phys as *mut [u64; 512]) }
    }
}

pub struct BuiltTables {
    pub root: u64,
    pub frames_used: u64,
}

/// Builds the hand-over tables: `[0, identity_end)` identity mapped with
/// 2 MiB pages (RWX: the loader runs from there during the switch), and
/// every kernel segment at its virtual address with 4 KiB pages and its
/// own permissions (NX only when the CPU has it).
pub fn build_page_tables(identity_end: u64, kernel: &LoadedKernel, nx: bool) -> Result<BuiltTables, Fatal> {
    let count = table_frames_needed(identity_end, kernel.segments.iter().map(|s| (s.page_vaddr, s.pages * 4096)));
    let base = platform::allocate(count * 4096, "page tables")?;
    let bug = "please report this MantraBoot bug";
    let mut tables =
        PageTables::new(Pool { base, count, used: 0 }, nx).map_err(|e| Fatal::new(format!("page tables: {e}"), bug))?;
    tables.identity_map(identity_end).map_err(|e| Fatal::new(format!("identity map: {e}"), bug))?;
    for s in &kernel.segments {
        tables
            .map_range(s.page_vaddr, s.page_paddr, s.pages * 4096, s.access())
            .map_err(|e| Fatal::new(format!("mapping kernel segment at {:#x}: {e}", s.vaddr), bug))?;
    }
    // Walk the result like the MMU will: the entry must be executable and
    // every segment must land where it was copied.
    match tables.translate(kernel.entry) {
        Some((_, access)) if access.executable => {}
        _ => return Err(Fatal::new(format!("entry {:#x} is not executable in the page tables", kernel.entry), bug)),
    }
    for s in &kernel.segments {
        let last = s.page_vaddr + (s.pages - 1) * 4096;
        let expect = s.page_paddr + (s.pages - 1) * 4096;
        // Without NX every mapping is executable.
        let access = Access { executable: s.access().executable || !nx, ..s.access() };
        if tables.translate(last).map(|t| t.0) != Some(expect) || tables.translate(s.vaddr).map(|t| t.1) != Some(access)
        {
            return Err(Fatal::new(format!("kernel segment at {:#x} is mapped wrongly", s.vaddr), bug));
        }
    }
    let root = tables.root();
    let frames_used = tables.frames().used;
    Ok(BuiltTables { root, frames_used })
}

/// Memory the hand-over writes after ExitBootServices, when it can no
/// longer allocate.
pub struct Buffers {
    /// Room for the converted memory map, `capacity` regions (loader data).
    scratch: &'static mut [MemoryRegion],
    /// Room for the runtime regions, `capacity` of them (loader data).
    runtime: &'static mut [RuntimeRegion],
    /// The BootInfo blob (boot data: the kernel keeps it).
    bootinfo: &'static mut [u8],
}

/// `count` zeroed elements of plain data `T` in fresh loader-data pages.
fn zeroed_pages<T>(count: usize, what: &str) -> Result<&'static mut [T], Fatal> {
    let pages = (count * size_of::<T>()).div_ceil(4096).max(1);
    let ptr = boot::allocate_pages(AllocateType::AnyPages, MemoryType::LOADER_DATA, pages).map_err(|e| {
        Fatal::new(format!("cannot allocate {pages} pages for {what}: {}", e.status()), "give the machine more memory")
    })?;
    // SAFETY: a fresh, page-aligned allocation big enough for `count`
    // elements; T is plain data (MemoryRegion, RuntimeRegion) for which
    // all-zero bytes are a valid value.
    Ok(unsafe {
        core::ptr::write_bytes(ptr.as_ptr(), 0, pages * 4096);
        core::slice::from_raw_parts_mut(ptr.as_ptr().cast::<T>(), count)
    })
}

impl Buffers {
    /// `event_log`: the most bytes of TCG event log the blob must hold.
    pub fn allocate(capacity: usize, segments: usize, cmdline: usize, event_log: usize) -> Result<Self, Fatal> {
        let scratch = zeroed_pages::<MemoryRegion>(capacity, "the memory map")?;
        let runtime = zeroed_pages::<RuntimeRegion>(capacity, "the runtime regions")?;
        let size = encoded_size(capacity, segments, cmdline, event_log, capacity);
        let addr = platform::allocate(size as u64, "BootInfo")?;
        // SAFETY: a fresh, zeroed, page-aligned allocation of at least
        // `size` bytes that only this slice refers to.
        let bootinfo = unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, size) };
        Ok(Self { scratch, runtime, bootinfo })
    }
}

/// Everything the jump needs, gathered while boot services still run.
pub struct Handoff {
    pub entry: u64,
    pub page_table: u64,
    pub nx: bool,
    pub stack_base: u64,
    pub stack_size: u64,
    pub bootfs_addr: u64,
    pub bootfs_size: u64,
    pub framebuffer: Framebuffer,
    pub rsdp: u64,
    pub segments: Vec<KernelSegment>,
    pub cmdline: Vec<u8>,
    /// The TCG event log, completed after ExitBootServices (None: no TPM).
    pub event_log: Option<super::measure::EventLog>,
    pub buffers: Buffers,
}

/// Exits boot services, writes BootInfo and enters the kernel. From the
/// ExitBootServices call on nothing may allocate or touch a protocol;
/// errors go to the serial port.
pub fn enter_kernel(h: Handoff) -> ! {
    say!(
        "MantraBoot: exiting boot services, entering the kernel ({} tsc since MantraBoot start)",
        platform::tsc_since_start()
    );
    console::switch_to_serial();
    // SAFETY: every protocol we opened has been closed (the ESP and GOP
    // handles were scoped to their functions); the allocations the kernel
    // uses are pages of our own memory types; nothing below allocates.
    let mut map = unsafe { boot::exit_boot_services(Some(MemoryType::LOADER_DATA)) };

    let Buffers { scratch, runtime, bootinfo } = h.buffers;
    let (runtime_count, runtime_services) = set_virtual_address_map(&mut map, runtime);
    let mut n = 0;
    for d in map.entries() {
        if n == scratch.len() {
            fail::report(
                &format_args!("the final memory map has more than {} entries", scratch.len()),
                "please report this MantraBoot bug (raise MAP_HEADROOM)",
            );
        }
        scratch[n] = MemoryRegion::new(d.phys_start, d.page_count, memmap::kind_of(d.ty.0));
        n += 1;
    }
    let regions = memmap::normalize(&mut scratch[..n]);
    // The firmware's final events (ExitBootServices) join the log now.
    let event_log: &[u8] = h.event_log.map_or(&[], super::measure::EventLog::finish);
    // The map's buffer is loader data that the kernel may reclaim; never
    // hand it back to the (gone) pool allocator.
    core::mem::forget(map);

    if h.nx {
        enable_nxe();
    }
    let fixed = Fixed {
        framebuffer: h.framebuffer,
        rsdp: h.rsdp,
        bootfs_addr: h.bootfs_addr,
        bootfs_size: h.bootfs_size,
        boot_stack_base: h.stack_base,
        boot_stack_size: h.stack_size,
        boot_page_table: h.page_table,
        loader_exit_tsc: platform::rdtsc(),
        efi_runtime_services: runtime_services,
    };
    if let Err(e) = encode(
        bootinfo,
        &fixed,
        &scratch[..regions],
        &h.segments,
        &h.cmdline,
        event_log,
        &runtime[..runtime_count],
    ) {
        fail::report(&format_args!("cannot encode BootInfo: {e}"), "please report this MantraBoot bug");
    }
    let stack_top = (h.stack_base + h.stack_size) & !0xf;
    // SAFETY: the tables map the loader (identity) and the kernel; the
    // stack, BootInfo and the kernel image are allocations of our own
    // memory types that nothing else uses; boot services are gone, so
    // nothing else runs on this CPU.
    unsafe { jump(h.page_table, stack_top, h.entry, bootinfo.as_ptr() as u64) }
}

/// Gives every EFI_MEMORY_RUNTIME region of the final memory map the
/// kernel's direct-map address and calls SetVirtualAddressMap, so the
/// kernel can call runtime services (variables) on its own page tables.
/// Returns the regions written to `out` and the physical address of the
/// runtime services table, or 0 when the runtime services cannot be used
/// (the console says why; the boot goes on without them).
///
/// Contract: boot services are gone, the firmware's identity map is still
/// active (the firmware converts its pointers in physical mode), and this
/// is called exactly once.
fn set_virtual_address_map(map: &mut uefi::mem::memory_map::MemoryMapOwned, out: &mut [RuntimeRegion]) -> (usize, u64) {
    let Some(system_table) = uefi::table::system_table_raw() else {
        return (0, 0);
    };
    // SAFETY: the system table stays valid (runtime services data) after
    // ExitBootServices; nothing else touches it now.
    let rt = unsafe { system_table.as_ref() }.runtime_services;
    if rt.is_null() {
        say!("MantraBoot: the firmware has no runtime services table; firmware variables unavailable");
        return (0, 0);
    }
    let mut count = 0;
    let mut unreachable = 0;
    for i in 0..map.len() {
        let Some(d) = map.get_mut(i) else { break };
        if !d.att.contains(uefi::boot::MemoryAttribute::RUNTIME) {
            continue;
        }
        match memmap::runtime_region(d.phys_start, d.page_count, d.ty.0, d.att.bits()) {
            Some(region) if count < out.len() => {
                d.virt_start = region.virt;
                out[count] = region;
                count += 1;
            }
            _ => unreachable += 1,
        }
    }
    // Sorted by address (the kernel checks they are sorted and disjoint).
    out[..count].sort_unstable_by_key(|r| r.phys);
    if unreachable != 0 {
        say!("MantraBoot: {unreachable} runtime regions cannot be mapped; firmware variables unavailable");
        return (0, 0);
    }
    let meta = map.meta();
    // SAFETY: the map buffer holds `meta.map_size` bytes of descriptors of
    // `meta.desc_size` each, as the firmware wrote them at
    // ExitBootServices (only VirtualStart of runtime descriptors changed);
    // `rt` is the firmware's runtime services table; boot services are
    // gone and the identity map is live, as SetVirtualAddressMap requires.
    let status = unsafe {
        let buffer = map.buffer_mut().as_mut_ptr().cast::<uefi::mem::memory_map::MemoryDescriptor>();
        ((*rt).set_virtual_address_map)(meta.map_size, meta.desc_size, meta.desc_version, buffer)
    };
    if status != uefi::Status::SUCCESS {
        say!("MantraBoot: SetVirtualAddressMap failed ({status}); firmware variables unavailable");
        return (0, 0);
    }
    (count, rt as u64)
}

/// Sets EFER.NXE so the NX bits of our tables are valid (not reserved).
fn enable_nxe() {
    const IA32_EFER: u32 = 0xc000_0080;
    const NXE: u64 = 1 << 11;
    let (lo, hi): (u32, u32);
    // SAFETY: EFER exists on every x86-64 CPU; reading it has no effect.
    unsafe {
        core::arch::asm!("rdmsr", in("ecx") IA32_EFER, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    let efer = (u64::from(hi) << 32 | u64::from(lo)) | NXE;
    // SAFETY: only called when CPUID reports NX support, so NXE is a valid
    // bit; setting it changes nothing for the current tables (they were
    // already valid without it).
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") IA32_EFER, in("eax") efer as u32, in("edx") (efer >> 32) as u32, options(nomem, nostack, preserves_flags))
    };
}

/// Switches to the hand-over tables and stack and jumps to the kernel:
/// `extern "sysv64" fn(bootinfo: u64) -> !`, interrupts disabled.
///
/// # Safety
/// `pml4` must map the currently running code (identity) and `entry`;
/// `stack_top` must be the 16-byte aligned top of a mapped, writable stack;
/// `bootinfo` must be a valid BootInfo blob. Boot services must be gone.
unsafe fn jump(pml4: u64, stack_top: u64, entry: u64, bootinfo: u64) -> ! {
    // SAFETY: per the function contract. After `push 0` RSP is 8 mod 16, as
    // the SysV ABI expects at function entry, with a null return address.
    unsafe {
        core::arch::asm!(
            "cli",
            "cld",
            "mov cr3, {pml4}",
            "mov rsp, {stack}",
            "xor ebp, ebp",
            "push 0",
            "jmp {entry}",
            pml4 = in(reg) pml4,
            stack = in(reg) stack_top,
            entry = in(reg) entry,
            in("rdi") bootinfo,
            options(noreturn)
        )
    }
}
