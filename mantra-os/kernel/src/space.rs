//! User address spaces and memory objects.
//!
//! Memory objects commit lazily: a page gets a zeroed frame the first time
//! it is touched, through a page fault in a mapping or `vmo_read/write`.
//! Mappings are recorded per address space (mantra_kernel::vmo::Mappings);
//! page-table entries are created on demand by the fault handler.

use alloc::sync::Arc;
use alloc::vec::Vec;

use mantra_abi::{map, Error};
use mantra_kernel::mm::paging::{AddressSpace, DirectMap, PageFlags, PageSize, PhysAddr, VirtAddr};
use mantra_kernel::sync::SpinLock;
use mantra_kernel::vmo::{Mapping, Mappings, PageList, PAGE_SIZE};

use crate::arch::x86_64::{cpu, smp};
use crate::memory;
use crate::object::next_koid;

/// A memory object: RAM committed lazily, or a window of device memory.
pub struct Vmo {
    pub koid: u64,
    pages: SpinLock<PageList>,
    /// Device memory: the object is the physical range starting here
    /// (never RAM: it owns no frames), mapped uncached; VMO_READ/WRITE are
    /// refused (device registers are accessed through a mapping only).
    device: Option<u64>,
}

impl Vmo {
    pub fn new(size: u64) -> Result<Arc<Self>, Error> {
        Ok(Arc::new(Self { koid: next_koid(), pages: SpinLock::new(PageList::new(size)?), device: None }))
    }

    /// A device-memory object over `[base, base + size)` (page aligned).
    /// The caller checked that the range is a device's registers, not RAM.
    pub fn new_device(base: u64, size: u64) -> Result<Arc<Self>, Error> {
        if base % PAGE_SIZE != 0 || size % PAGE_SIZE != 0 {
            return Err(Error::InvalidArgs);
        }
        Ok(Arc::new(Self { koid: next_koid(), pages: SpinLock::new(PageList::new(size)?), device: Some(base) }))
    }

    /// Whether this is device memory (mapped uncached).
    pub fn is_device(&self) -> bool {
        self.device.is_some()
    }

    pub fn size(&self) -> u64 {
        self.pages.lock().size_bytes()
    }

    /// The frame of `page`, committing a zeroed one on first touch.
    fn commit(&self, page: u64) -> Result<u64, Error> {
        if let Some(base) = self.device {
            let pages = self.pages.lock();
            pages.check_range(page * PAGE_SIZE, PAGE_SIZE)?;
            return Ok(base + page * PAGE_SIZE);
        }
        self.pages.lock().commit(page, || {
            let frame = memory::alloc_frame()?.as_u64();
            // SAFETY: a fresh frame, reached through the direct map.
            unsafe { core::ptr::write_bytes(memory::phys_to_virt(frame) as *mut u8, 0, PAGE_SIZE as usize) };
            Some(frame)
        })
    }

    /// Copies object bytes at `offset` into `out` (uncommitted pages read as zeros).
    pub fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), Error> {
        if self.is_device() {
            return Err(Error::NotSupported);
        }
        let pages = self.pages.lock();
        pages.check_range(offset, out.len() as u64)?;
        let mut done = 0usize;
        while done < out.len() {
            let at = offset + done as u64;
            let in_page = (at % PAGE_SIZE) as usize;
            let chunk = (PAGE_SIZE as usize - in_page).min(out.len() - done);
            match pages.lookup(at / PAGE_SIZE)? {
                Some(frame) => {
                    let src = (memory::phys_to_virt(frame) + in_page as u64) as *const u8;
                    // SAFETY: the frame belongs to this object and is mapped
                    // by the direct map; `chunk` stays inside the page.
                    unsafe { core::ptr::copy_nonoverlapping(src, out[done..].as_mut_ptr(), chunk) };
                }
                None => out[done..done + chunk].fill(0),
            }
            done += chunk;
        }
        Ok(())
    }

    /// Copies `data` into the object at `offset`, committing pages.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), Error> {
        if self.is_device() {
            return Err(Error::NotSupported);
        }
        self.pages.lock().check_range(offset, data.len() as u64)?;
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let in_page = (at % PAGE_SIZE) as usize;
            let chunk = (PAGE_SIZE as usize - in_page).min(data.len() - done);
            let frame = self.commit(at / PAGE_SIZE)?;
            let dst = (memory::phys_to_virt(frame) + in_page as u64) as *mut u8;
            // SAFETY: as in `read`, the other direction.
            unsafe { core::ptr::copy_nonoverlapping(data[done..].as_ptr(), dst, chunk) };
            done += chunk;
        }
        Ok(())
    }
}

impl Drop for Vmo {
    fn drop(&mut self) {
        for frame in self.pages.get_mut().drain_frames() {
            let _ = memory::free_frame(PhysAddr::new(frame));
        }
    }
}

struct SpaceInner {
    tables: AddressSpace<DirectMap>,
    mappings: Mappings<Arc<Vmo>>,
}

/// A user address space: page tables sharing the kernel half, and the
/// mappings that fill them on demand.
pub struct Space {
    pub koid: u64,
    root: u64,
    inner: SpinLock<SpaceInner>,
}

/// Loads the address space whose root table is `root` into CR3 unless CR3
/// holds exactly that value already (the kernel sets no flag bits in CR3,
/// so the compare needs no mask; a mismatch would only cost a reload). The
/// IPC fast path's `Space::activate`, from `Thread::space_root`.
///
/// # Safety
/// `root` must be the root of a live Space (`Space::root`) that stays alive
/// while it is loaded (e.g. the space of the thread this CPU switches to).
#[inline(always)]
pub unsafe fn activate_root(root: u64) {
    if cpu::read_cr3() != root {
        // SAFETY: a live space's root (caller's contract), which shares the
        // kernel half: the running kernel code, stacks and data stay mapped.
        unsafe { cpu::write_cr3(root) };
    }
}

impl Space {
    pub fn new() -> Result<Arc<Self>, Error> {
        let tables = memory::new_user_tables().map_err(|_| Error::NoMemory)?;
        let root = tables.root().as_u64();
        Ok(Arc::new(Self { koid: next_koid(), root, inner: SpinLock::new(SpaceInner { tables, mappings: Mappings::new() }) }))
    }

    /// The physical address of the root table (what CR3 holds while the
    /// space is loaded); fixed for the space's life.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// Loads this space into CR3 if it is not already there.
    pub fn activate(&self) {
        if cpu::read_cr3() & !0xFFF != self.root {
            // SAFETY: the root shares the kernel half, so the running kernel
            // code, stacks and data stay mapped.
            unsafe { cpu::write_cr3(self.root) };
        }
    }

    /// `vmar_map`: records a mapping (pages appear on first touch).
    pub fn map(&self, vmo: Arc<Vmo>, vmo_offset: u64, len: u64, flags: u32, max_flags: u32, fixed: Option<u64>) -> Result<u64, Error> {
        let rounded = mantra_kernel::vmo::page_round_up(len).ok_or(Error::InvalidArgs)?;
        if len == 0 || vmo_offset % PAGE_SIZE != 0 {
            return Err(Error::InvalidArgs);
        }
        let end = vmo_offset.checked_add(rounded).ok_or(Error::OutOfRange)?;
        if end > vmo.size() {
            return Err(Error::OutOfRange);
        }
        let mapping = Mapping::new(fixed.unwrap_or(0), rounded, vmo, vmo_offset, flags & !map::FIXED, max_flags);
        self.inner.lock().mappings.map(mapping, fixed.is_some())
    }

    /// `vmar_unmap`: removes whole mappings and their page-table entries.
    pub fn unmap(&self, addr: u64, len: u64) -> Result<(), Error> {
        let removed = {
            let mut inner = self.inner.lock();
            let removed = inner.mappings.remove_range(addr, len)?;
            for m in &removed {
                for page in (m.start..m.end()).step_by(PAGE_SIZE as usize) {
                    let _ = inner.tables.unmap(VirtAddr::new(page));
                }
                // Every CPU may cache these translations (threads of this
                // space run anywhere): flush them all before the frames can
                // be reused.
                smp::shootdown(m.start..m.end());
            }
            removed
        };
        drop(removed); // drops the memory-object references outside the lock
        Ok(())
    }

    /// `vmar_protect`: changes protection; present pages are updated now.
    pub fn protect(&self, addr: u64, len: u64, flags: u32) -> Result<(), Error> {
        let mut inner = self.inner.lock();
        for (start, len) in inner.mappings.protect(addr, len, flags)? {
            for page in (start..start + len).step_by(PAGE_SIZE as usize) {
                let _ = inner.tables.protect(VirtAddr::new(page), page_flags(flags));
            }
            smp::shootdown(start..start + len);
        }
        Ok(())
    }

    /// Resolves a user page fault at `addr` for `access` (map::* bits) by
    /// committing and mapping the page. False when the access is not allowed
    /// by any mapping (the caller kills the process or fails the copy).
    pub fn handle_fault(&self, addr: u64, access: u32) -> bool {
        let mut inner = self.inner.lock();
        let Some(mapping) = inner.mappings.find(addr) else { return false };
        if !mapping.allows(access) {
            return false;
        }
        let page = addr & !(PAGE_SIZE - 1);
        let vmo = mapping.object.clone();
        let mut flags = page_flags(mapping.flags);
        if vmo.is_device() {
            // Registers: every access reaches the device.
            flags |= PageFlags::NO_CACHE | PageFlags::WRITE_THROUGH;
        }
        let Ok(frame) = vmo.commit(mapping.object_page(addr)) else { return false };
        let mut frames = memory::FrameSource;
        match inner.tables.map(&mut frames, VirtAddr::new(page), PhysAddr::new(frame), PageSize::Size4K, flags) {
            Ok(()) => true,
            // Present already (another thread won, or a stale TLB entry):
            // retrying the access is right.
            Err(mantra_kernel::mm::paging::MapError::AlreadyMapped) => {
                cpu::invlpg(page);
                true
            }
            Err(_) => false,
        }
    }
}

impl Drop for Space {
    fn drop(&mut self) {
        let inner = self.inner.get_mut();
        let mappings: Vec<_> = inner.mappings.drain();
        drop(mappings);
        memory::free_user_tables(&mut inner.tables);
    }
}

fn page_flags(flags: u32) -> PageFlags {
    let mut out = PageFlags::USER;
    if flags & map::WRITE != 0 {
        out |= PageFlags::WRITABLE;
    }
    if flags & map::EXECUTE == 0 && memory::nx_enabled() {
        out |= PageFlags::NO_EXECUTE;
    }
    out
}
