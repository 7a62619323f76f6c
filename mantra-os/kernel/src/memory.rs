//! The kernel's memory: the frame allocator, the kernel address space (its
//! own page tables) and the heap, wired from the pure logic in
//! `mantra_kernel::mm` to this machine.
//!
//! Layout (see arch::x86_64::layout): a direct map of physical memory
//! (RW, NX), the kernel image with per-section permissions (text RX, rodata
//! R, data/bss RW+NX), guarded kernel stacks and the heap.

// Stack, frame and translation helpers beyond boot are used by the in-guest
// tests now and by thread creation in the kernel issue.
#![cfg_attr(not(feature = "ktest"), allow(dead_code))]

use core::sync::atomic::{AtomicU64, Ordering};

use mantra_bootinfo::{BootInfo, MemoryKind, RuntimeRegion, SEG_W, SEG_X};
use mantra_kernel::efivar;
use mantra_kernel::acpi::PhysRead;
use mantra_kernel::mm::frame::{FrameAllocator, FrameError};
use mantra_kernel::mm::heap::{Heap, HeapStats, LockedHeap};
use mantra_kernel::mm::paging::{AddressSpace, DirectMap, FrameAlloc, MapError, PageFlags, PageSize, PhysAddr, VirtAddr};
use mantra_kernel::sync::SpinLock;

use crate::arch::x86_64::{cpu, layout};

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::new(SpinLock::new(Heap::new()));

static FRAMES: SpinLock<FrameAllocator> = SpinLock::new(FrameAllocator::new());
static KERNEL_SPACE: SpinLock<Option<AddressSpace<DirectMap>>> = SpinLock::new(None);

/// Virtual = physical + this, for physical memory: 0 on the loader's
/// identity map, `PHYS_MAP_BASE` once the kernel's tables are live.
static PHYS_OFFSET: AtomicU64 = AtomicU64::new(0);
/// The CPU has NX and EFER.NXE is on.
static NX: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
/// End of the direct map (physical).
static DIRECT_MAP_END: AtomicU64 = AtomicU64::new(0);

pub fn phys_to_virt(phys: u64) -> u64 {
    phys.wrapping_add(PHYS_OFFSET.load(Ordering::Relaxed))
}

/// What the switch to the kernel's own tables needs.
pub struct KernelSpace {
    pub root: u64,
    pub stack_top: u64,
}

#[derive(Debug)]
pub enum SetupError {
    NoUsableMemory,
    Map(&'static str, MapError),
}

impl core::fmt::Display for SetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SetupError::NoUsableMemory => write!(f, "the memory map has no usable RAM"),
            SetupError::Map(what, e) => write!(f, "mapping {what}: {e}"),
        }
    }
}

fn kernel_flags(writable: bool, executable: bool, nx: bool) -> PageFlags {
    let mut flags = PageFlags::GLOBAL;
    if writable {
        flags |= PageFlags::WRITABLE;
    }
    if !executable && nx {
        flags |= PageFlags::NO_EXECUTE;
    }
    flags
}

const fn round_up(value: u64, align: u64) -> u64 {
    (value + align - 1) & !(align - 1)
}

/// Initialises the frame allocator from the usable RAM in the memory map
/// and builds the kernel's page tables (not yet loaded).
///
/// Runs on the loader's identity map, before the heap exists.
pub fn build_kernel_space(info: &BootInfo<'_>, features: &cpu::Features) -> Result<KernelSpace, SetupError> {
    let runtime = runtime_regions(info);
    // Free RAM, except anything the firmware's runtime services still use
    // (never the case in a sane memory map, but never worth the risk).
    let usable = info
        .memory_map()
        .iter()
        .filter(|r| r.kind() == MemoryKind::Usable)
        .filter(|r| runtime.iter().all(|rt| rt.end() <= r.start || rt.phys >= r.end()))
        .map(|r| (r.start, r.end()));
    // RAM only: MMIO windows can sit far above it and need no bitmap.
    let span_end = info
        .memory_map()
        .iter()
        .filter(|r| {
            matches!(
                r.kind(),
                MemoryKind::Usable | MemoryKind::Reclaimable | MemoryKind::Kernel | MemoryKind::BootData | MemoryKind::AcpiReclaimable
            )
        })
        .map(|r| r.end())
        .max()
        .unwrap_or(0);
    NX.store(features.nx, Ordering::Relaxed);
    let mut frames = FRAMES.lock();
    // SAFETY: the Usable regions are free RAM nobody else uses, reachable
    // at offset 0 through the loader's identity map.
    unsafe { frames.init(usable, span_end, 0) }.map_err(|_| SetupError::NoUsableMemory)?;
    reserve_low_frames(&mut frames);
    let alloc = &mut *frames;

    // SAFETY: the loader identity-maps all physical memory, and the new
    // tables' frames come fresh from the allocator.
    let mem = unsafe { DirectMap::new(0) };
    let mut space = AddressSpace::new(mem, alloc).map_err(|e| SetupError::Map("the root table", e))?;

    // Direct map of physical memory, at least the low 4 GiB (MMIO: LAPIC,
    // I/O APIC, framebuffer live below 4 GiB on PCs).
    let direct_end = round_up(span_end.max(4 << 30), 1 << 30);
    let largest = if features.gib_pages { PageSize::Size1G } else { PageSize::Size2M };
    let plain = kernel_flags(true, false, features.nx);
    let map_direct = |space: &mut AddressSpace<DirectMap>, alloc: &mut FrameAllocator, start: u64, end: u64, flags: PageFlags| {
        space
            .map_range(alloc, VirtAddr::new(layout::PHYS_MAP_BASE + start), PhysAddr::new(start), end - start, flags, largest)
            .map_err(|e| SetupError::Map("the direct map", e))
    };
    // The UEFI runtime regions sit in the direct map at their direct-map
    // address (MantraBoot's SetVirtualAddressMap put them there) with
    // their own attributes; the rest of the direct map is plain RW/NX.
    let mut cursor = 0;
    for region in runtime {
        let start = region.phys.min(direct_end);
        if start > cursor {
            map_direct(&mut space, alloc, cursor, start, plain)?;
        }
        map_direct(&mut space, alloc, region.phys, region.end(), runtime_flags(region, features.nx))?;
        cursor = cursor.max(region.end());
    }
    if cursor < direct_end {
        map_direct(&mut space, alloc, cursor, direct_end, plain)?;
    }
    DIRECT_MAP_END.store(direct_end, Ordering::Relaxed);
    if !runtime.is_empty() {
        // One stack for firmware calls (they run under one lock), with an
        // unmapped guard page below: deep enough for any runtime service.
        for page in 0..layout::FIRMWARE_STACK_PAGES {
            let frame = alloc.alloc_frame().ok_or(SetupError::Map("the firmware stack", MapError::OutOfFrames))?;
            let va = layout::FIRMWARE_STACK_TOP - (layout::FIRMWARE_STACK_PAGES - page) * layout::PAGE_SIZE;
            space
                .map(alloc, VirtAddr::new(va), frame, PageSize::Size4K, plain)
                .map_err(|e| SetupError::Map("the firmware stack", e))?;
        }
    }

    // The kernel image, W^X per segment.
    for seg in info.kernel_segments() {
        let start = seg.vaddr & !(layout::PAGE_SIZE - 1);
        let len = round_up(seg.vaddr + seg.mem_size, layout::PAGE_SIZE) - start;
        let phys = seg.paddr & !(layout::PAGE_SIZE - 1);
        let flags = kernel_flags(seg.flags & SEG_W != 0, seg.flags & SEG_X != 0, features.nx);
        space
            .map_range(alloc, VirtAddr::new(start), PhysAddr::new(phys), len, flags, PageSize::Size4K)
            .map_err(|e| SetupError::Map("the kernel image", e))?;
    }

    // The boot CPU's stack: slot 0, with the unmapped guard below it.
    let stack_top = map_stack_pages(&mut space, alloc, 0, features.nx)?;

    // The heap: individual frames, contiguous in virtual memory.
    let heap_pages = (mantra_config::KERNEL_HEAP_KIB as u64 * 1024).div_ceil(layout::PAGE_SIZE);
    for page in 0..heap_pages {
        let frame = alloc.alloc_frame().ok_or(SetupError::Map("the heap", MapError::OutOfFrames))?;
        space
            .map(alloc, VirtAddr::new(layout::HEAP_BASE + page * layout::PAGE_SIZE), frame, PageSize::Size4K, kernel_flags(true, false, features.nx))
            .map_err(|e| SetupError::Map("the heap", e))?;
    }

    let root = space.root().as_u64();
    *KERNEL_SPACE.lock() = Some(space);
    Ok(KernelSpace { root, stack_top })
}

/// The runtime regions of `info` when they are well formed, else none
/// (the firmware's runtime services then stay unused; efirt says why).
pub fn runtime_regions<'a>(info: &BootInfo<'a>) -> &'a [RuntimeRegion] {
    let regions = info.runtime_regions();
    if info.efi_runtime_services().is_none() || efivar::check_runtime_regions(regions).is_err() {
        return &[];
    }
    regions
}

/// Page flags of a runtime region: firmware images (code and their data,
/// one allocation) RWX; runtime data RW/NX; device memory RW/NX uncached.
fn runtime_flags(region: &RuntimeRegion, nx: bool) -> PageFlags {
    if region.is_mmio() {
        return kernel_flags(true, false, nx) | PageFlags::NO_CACHE | PageFlags::WRITE_THROUGH;
    }
    kernel_flags(true, region.is_code(), nx)
}

fn map_stack_pages(
    space: &mut AddressSpace<DirectMap>,
    alloc: &mut FrameAllocator,
    slot: u64,
    nx: bool,
) -> Result<u64, SetupError> {
    let top = layout::stack_top(slot);
    let bottom = top - layout::stack_size();
    for page in (bottom..top).step_by(layout::PAGE_SIZE as usize) {
        let frame = alloc.alloc_frame().ok_or(SetupError::Map("a kernel stack", MapError::OutOfFrames))?;
        space
            .map(alloc, VirtAddr::new(page), frame, PageSize::Size4K, kernel_flags(true, false, nx))
            .map_err(|e| SetupError::Map("a kernel stack", e))?;
    }
    Ok(top)
}

/// Finishes set-up on the kernel's own tables: physical memory is now
/// reached through the direct map, the heap becomes usable, and the memory
/// the firmware and loader used is given to the frame allocator.
pub fn finish_after_switch() {
    PHYS_OFFSET.store(layout::PHYS_MAP_BASE, Ordering::Relaxed);
    {
        let mut space = KERNEL_SPACE.lock();
        let root = space.as_ref().expect("kernel space built").root();
        // SAFETY: the direct map (now live) covers every RAM frame at
        // PHYS_MAP_BASE + phys, and this is the only handle on the tree.
        *space = Some(unsafe { AddressSpace::from_root(DirectMap::new(layout::PHYS_MAP_BASE), root) });
    }
    let mut frames = FRAMES.lock();
    // SAFETY: the allocator's bitmap is RAM, now at PHYS_MAP_BASE + phys.
    unsafe { frames.set_phys_offset(layout::PHYS_MAP_BASE) };
    // SAFETY: the heap range was mapped RW in build_kernel_space and is used
    // by nothing else.
    unsafe { HEAP.add_region(layout::HEAP_BASE as *mut u8, mantra_config::KERNEL_HEAP_KIB as usize * 1024) };
    HEAP_READY.store(true, Ordering::Release);
    // Boot-services and loader memory are dead now: the kernel runs on its
    // own tables and stack, and the BootInfo lives in BootData memory.
    let info = crate::boot::bootinfo();
    let runtime = runtime_regions(&info);
    for region in info.memory_map().iter().filter(|r| r.kind() == MemoryKind::Reclaimable) {
        efivar::outside_runtime(region.start, region.end(), runtime, |start, end| {
            // SAFETY: Reclaimable regions are RAM no one uses any more (see
            // above); the parts the firmware's runtime services use are cut out.
            if let Err(e) = unsafe { frames.add_range(start, end) } {
                crate::kwarn!("cannot reclaim {:#x}..{:#x}: {e:?}", start, end);
            }
        });
    }
}

/// End of the memory real-mode code can reach (a STARTUP IPI's vector
/// names a page below 1 MiB).
pub const LOW_MEMORY_END: u64 = 1 << 20;
/// Frames below 1 MiB set aside at init for real-mode code: the AP start
/// trampoline and its temporary page tables (arch::x86_64::smp).
pub const LOW_RESERVED_FRAMES: u64 = 5;
/// The reserved run's first frame, until `alloc_low_frames` takes it.
static LOW_FRAMES: SpinLock<Option<PhysAddr>> = SpinLock::new(None);

/// Takes the lowest free run of `LOW_RESERVED_FRAMES` frames if it lies below
/// 1 MiB, before the page tables and the heap (whose allocations start at
/// the bottom of memory) use up low memory.
fn reserve_low_frames(frames: &mut FrameAllocator) {
    let Some(first) = frames.alloc_contiguous(LOW_RESERVED_FRAMES, 1) else { return };
    if first.as_u64() + LOW_RESERVED_FRAMES * layout::PAGE_SIZE <= LOW_MEMORY_END {
        *LOW_FRAMES.lock() = Some(first);
    } else {
        let _ = frames.free_contiguous(first, LOW_RESERVED_FRAMES);
    }
}

/// `count` (at most `LOW_RESERVED_FRAMES`) physically contiguous frames
/// below 1 MiB, for real-mode code: the run reserved at init, or else a run
/// found now (memory reclaimed from the firmware may lie that low). The
/// frames are the caller's for good; their contents are undefined.
pub fn alloc_low_frames(count: u64) -> Option<PhysAddr> {
    if count == 0 || count > LOW_RESERVED_FRAMES {
        return None;
    }
    if let Some(first) = LOW_FRAMES.lock().take() {
        let mut frames = FRAMES.lock();
        let spare = PhysAddr::new(first.as_u64() + count * layout::PAGE_SIZE);
        let _ = frames.free_contiguous(spare, LOW_RESERVED_FRAMES - count);
        return Some(first);
    }
    let mut frames = FRAMES.lock();
    let first = frames.alloc_contiguous(count, 1)?;
    if first.as_u64() + count * layout::PAGE_SIZE <= LOW_MEMORY_END {
        Some(first)
    } else {
        let _ = frames.free_contiguous(first, count);
        None
    }
}

/// Physical address of the kernel's PML4 (the root every CPU loads while
/// in the kernel's own address space).
pub fn kernel_root() -> u64 {
    KERNEL_SPACE.lock().as_ref().expect("kernel space built").root().as_u64()
}

/// Maps kernel stack `slot` (fresh frames) and returns its top.
pub fn map_kernel_stack(slot: u64) -> Result<u64, SetupError> {
    let nx = cpu::Features::detect().nx;
    let mut space = KERNEL_SPACE.lock();
    let space = space.as_mut().expect("kernel space built");
    let mut frames = FRAMES.lock();
    map_stack_pages(space, &mut frames, slot, nx)
}

/// Unmaps kernel stack `slot` and frees its frames.
pub fn unmap_kernel_stack(slot: u64) {
    let top = layout::stack_top(slot);
    let mut space = KERNEL_SPACE.lock();
    let space = space.as_mut().expect("kernel space built");
    let mut frames = FRAMES.lock();
    for page in (top - layout::stack_size()..top).step_by(layout::PAGE_SIZE as usize) {
        if let Ok((frame, _)) = space.unmap(VirtAddr::new(page)) {
            cpu::invlpg(page);
            let _ = frames.free(frame);
        }
    }
}

pub fn virt_to_phys(virt: u64) -> Option<u64> {
    let virt = VirtAddr::try_new(virt)?;
    KERNEL_SPACE.lock().as_ref()?.translate(virt).map(|t| t.phys.as_u64())
}

pub fn alloc_frame() -> Option<PhysAddr> {
    FRAMES.lock().alloc()
}

pub fn free_frame(frame: PhysAddr) -> Result<(), FrameError> {
    FRAMES.lock().free(frame)
}

/// (free, total) frames.
pub fn frame_counts() -> (usize, usize) {
    let frames = FRAMES.lock();
    (frames.free_frames(), frames.total_frames())
}

pub fn heap_stats() -> HeapStats {
    HEAP.stats()
}

/// Reads physical memory through the direct map (for ACPI tables).
pub struct PhysReader;

impl PhysRead for PhysReader {
    fn read(&self, phys: u64, buf: &mut [u8]) -> Result<(), ()> {
        let end = phys.checked_add(buf.len() as u64).ok_or(())?;
        if end > DIRECT_MAP_END.load(Ordering::Relaxed) {
            return Err(());
        }
        // SAFETY: [phys, end) lies inside the direct map, which maps all of
        // it readable; firmware tables are not Rust objects, so copying out
        // of them aliases nothing.
        unsafe { core::ptr::copy_nonoverlapping(phys_to_virt(phys) as *const u8, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }
}

pub fn nx_enabled() -> bool {
    NX.load(Ordering::Relaxed)
}

/// Frames for page tables, taking the allocator's lock per frame (for
/// callers holding an address-space lock: that lock comes first).
pub struct FrameSource;

// SAFETY: the frame allocator hands out each free frame once.
unsafe impl FrameAlloc for FrameSource {
    fn alloc_frame(&mut self) -> Option<PhysAddr> {
        FRAMES.lock().alloc()
    }
}

/// Page tables for a new user address space: an empty lower half and the
/// kernel's upper half (shared tables, so later kernel mappings under the
/// existing top-level entries appear in every space).
pub fn new_user_tables() -> Result<AddressSpace<DirectMap>, MapError> {
    // SAFETY: the direct map is live (user spaces are created after boot).
    let mem = unsafe { DirectMap::new(layout::PHYS_MAP_BASE) };
    let mut space = AddressSpace::new(mem, &mut FrameSource)?;
    let kernel = KERNEL_SPACE.lock();
    space.copy_kernel_half_from(kernel.as_ref().expect("kernel space built"));
    Ok(space)
}

/// Frees the page-table frames of a user space's lower half and its root.
/// Leaf frames belong to memory objects and are not touched.
///
/// Contract: no CPU may have this root loaded (the space is being dropped
/// because no thread can run in it any more).
pub fn free_user_tables(space: &mut AddressSpace<DirectMap>) {
    const PRESENT: u64 = 1;
    const HUGE: u64 = 1 << 7;
    const ADDR: u64 = 0x000F_FFFF_FFFF_F000;
    fn table(phys: u64) -> &'static [u64; 512] {
        // SAFETY: page-table frames are RAM under the direct map, owned by
        // the space being torn down; only read here.
        unsafe { &*(phys_to_virt(phys) as *const [u64; 512]) }
    }
    /// Frees the tables below `entry` at `level` (4 = PML4 entry).
    fn free_below(entry: u64, level: u8, frames: &mut FrameAllocator) {
        if entry & PRESENT == 0 || (level < 4 && entry & HUGE != 0) || level == 1 {
            return;
        }
        let phys = entry & ADDR;
        for &child in table(phys).iter() {
            free_below(child, level - 1, frames);
        }
        let _ = frames.free(PhysAddr::new(phys));
    }
    let root = space.root().as_u64();
    let mut frames = FRAMES.lock();
    for &entry in table(root)[..256].iter() {
        free_below(entry, 4, &mut frames);
    }
    let _ = frames.free(PhysAddr::new(root));
}

/// Loads the kernel's own page tables (no user half) on this CPU.
///
/// Contract: interrupts off; used when a CPU goes idle so it never keeps a
/// freed user root in CR3.
pub fn activate_kernel_space() {
    let root = KERNEL_SPACE.lock().as_ref().expect("kernel space built").root().as_u64();
    if cpu::read_cr3() & !0xFFF != root {
        // SAFETY: the kernel tables map the kernel image, stacks, heap and
        // the direct map: everything kernel code touches.
        unsafe { cpu::write_cr3(root) };
    }
}

static HEAP_READY: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Whether the kernel heap can be used (after the switch to the kernel's tables).
pub fn heap_ready() -> bool {
    HEAP_READY.load(Ordering::Acquire)
}
