//! x86_64 4-level page tables as pure logic.
//!
//! [`AddressSpace`] builds and edits a tree of page tables (PML4 → PDPT → PD
//! → PT) through two small seams, so the same code runs in the kernel and in
//! host tests:
//!
//! - [`PhysMemory`] says where a physical frame can be read and written (the
//!   kernel's direct map; in tests, a buffer);
//! - [`FrameAlloc`] supplies zero-able frames for new tables (the frame
//!   allocator implements it).
//!
//! Leaf flags decide access: intermediate entries are always
//! `PRESENT | WRITABLE`, plus `USER` once any leaf below needs it, and never
//! `NO_EXECUTE`.
//!
//! Nothing here flushes the TLB or loads CR3. After changing or removing a
//! present mapping of a live address space, the caller must `invlpg` the page
//! (or reload CR3) on every CPU that may have cached it; adding a mapping
//! where none was needs no flush.

use core::fmt;
use core::ops::{BitOr, BitOrAssign};

use super::PAGE_SIZE;

/// Entries per table.
const ENTRIES: usize = 512;
/// Bits 12..52 of an entry: the physical address it points to.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// First PML4 index of the higher (kernel) half.
const KERNEL_HALF_FIRST_INDEX: usize = 256;

/// A physical address: below 2^52, the x86_64 architectural limit.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct PhysAddr(u64);

impl PhysAddr {
    /// Exclusive upper bound of physical addresses.
    pub const LIMIT: u64 = 1 << 52;

    /// `addr` as a physical address, or `None` if it is `>= LIMIT`.
    pub const fn try_new(addr: u64) -> Option<Self> {
        if addr < Self::LIMIT {
            Some(Self(addr))
        } else {
            None
        }
    }

    /// `addr` as a physical address. Panics if it is `>= LIMIT`; use
    /// [`PhysAddr::try_new`] for values that are not known to be valid.
    pub const fn new(addr: u64) -> Self {
        match Self::try_new(addr) {
            Some(a) => a,
            None => panic!("physical address beyond 52 bits"),
        }
    }

    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Whether the address is a multiple of `align` (a power of two).
    pub const fn is_aligned(self, align: u64) -> bool {
        self.0 & (align - 1) == 0
    }
}

impl fmt::Debug for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhysAddr({:#x})", self.0)
    }
}

/// A canonical virtual address: bits 48..64 copy bit 47, so it lies in the
/// lower half `[0, 0x0000_8000_0000_0000)` or the higher half
/// `[0xffff_8000_0000_0000, 2^64)`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct VirtAddr(u64);

impl VirtAddr {
    /// `addr` if it is canonical.
    pub const fn try_new(addr: u64) -> Option<Self> {
        if ((addr << 16) as i64 >> 16) as u64 == addr {
            Some(Self(addr))
        } else {
            None
        }
    }

    /// `addr` as a virtual address. Panics if it is not canonical; use
    /// [`VirtAddr::try_new`] for values that are not known to be valid.
    pub const fn new(addr: u64) -> Self {
        match Self::try_new(addr) {
            Some(a) => a,
            None => panic!("non-canonical virtual address"),
        }
    }

    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Whether the address is a multiple of `align` (a power of two).
    pub const fn is_aligned(self, align: u64) -> bool {
        self.0 & (align - 1) == 0
    }

    /// Index into the table of `level` (4 = PML4 … 1 = PT).
    const fn index(self, level: u8) -> usize {
        ((self.0 >> (12 + 9 * (level as u32 - 1))) & (ENTRIES as u64 - 1)) as usize
    }
}

impl fmt::Debug for VirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VirtAddr({:#x})", self.0)
    }
}

/// Flags of a page-table entry, with their hardware bit positions.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PageFlags(u64);

impl PageFlags {
    /// The entry is valid. [`AddressSpace`] sets it on every entry it writes.
    pub const PRESENT: Self = Self(1 << 0);
    /// Writes allowed (with CR0.WP, also for the kernel).
    pub const WRITABLE: Self = Self(1 << 1);
    /// Ring-3 access allowed (with SMEP/SMAP, the kernel may then not
    /// execute it, nor touch it outside `stac`/`clac`).
    pub const USER: Self = Self(1 << 2);
    /// Write-through caching.
    pub const WRITE_THROUGH: Self = Self(1 << 3);
    /// Caching disabled (MMIO).
    pub const NO_CACHE: Self = Self(1 << 4);
    /// Set by the CPU when the page is accessed.
    pub const ACCESSED: Self = Self(1 << 5);
    /// Set by the CPU when the page is written.
    pub const DIRTY: Self = Self(1 << 6);
    /// The entry maps a 2 MiB/1 GiB page instead of pointing to a table.
    /// [`AddressSpace`] derives it from the [`PageSize`]; callers never pass it.
    pub const HUGE: Self = Self(1 << 7);
    /// Kept in the TLB across CR3 switches (with CR4.PGE): kernel mappings.
    pub const GLOBAL: Self = Self(1 << 8);
    /// Instruction fetches fault. Only valid with EFER.NXE set; on a CPU
    /// without NX the caller must leave it out.
    pub const NO_EXECUTE: Self = Self(1 << 63);

    const ALL: u64 = 0x1ff | 1 << 63;
    const NAMES: [(Self, &'static str); 10] = [
        (Self::PRESENT, "PRESENT"),
        (Self::WRITABLE, "WRITABLE"),
        (Self::USER, "USER"),
        (Self::WRITE_THROUGH, "WRITE_THROUGH"),
        (Self::NO_CACHE, "NO_CACHE"),
        (Self::ACCESSED, "ACCESSED"),
        (Self::DIRTY, "DIRTY"),
        (Self::HUGE, "HUGE"),
        (Self::GLOBAL, "GLOBAL"),
        (Self::NO_EXECUTE, "NO_EXECUTE"),
    ];

    pub const fn empty() -> Self {
        Self(0)
    }

    /// The raw entry bits.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// The flags among `bits`; address and unknown bits are dropped.
    pub const fn from_bits_truncate(bits: u64) -> Self {
        Self(bits & Self::ALL)
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// `self | other`, usable in `const` items.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The flags of `self` that are not in `other`.
    pub const fn difference(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }
}

impl BitOr for PageFlags {
    type Output = Self;
    fn bitor(self, other: Self) -> Self {
        self.union(other)
    }
}

impl BitOrAssign for PageFlags {
    fn bitor_assign(&mut self, other: Self) {
        *self = self.union(other);
    }
}

impl fmt::Debug for PageFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PageFlags(")?;
        let mut first = true;
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str(" | ")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        f.write_str(")")
    }
}

/// Size of a page, i.e. the level its leaf entry sits at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PageSize {
    /// 4 KiB, a PT entry.
    Size4K,
    /// 2 MiB, a PD entry with `HUGE`.
    Size2M,
    /// 1 GiB, a PDPT entry with `HUGE` (needs CPUID pdpe1gb).
    Size1G,
}

impl PageSize {
    /// Largest first, the order [`AddressSpace::map_range`] tries them in.
    const DESCENDING: [Self; 3] = [Self::Size1G, Self::Size2M, Self::Size4K];

    pub const fn bytes(self) -> u64 {
        match self {
            Self::Size4K => PAGE_SIZE,
            Self::Size2M => 2 << 20,
            Self::Size1G => 1 << 30,
        }
    }

    /// Level of the table holding the leaf entry (1 = PT).
    const fn level(self) -> u8 {
        match self {
            Self::Size4K => 1,
            Self::Size2M => 2,
            Self::Size1G => 3,
        }
    }

    /// The size of a leaf found at `level` (1..=3).
    const fn of_level(level: u8) -> Self {
        match level {
            1 => Self::Size4K,
            2 => Self::Size2M,
            _ => Self::Size1G,
        }
    }
}

/// Access to physical frames that hold page tables.
///
/// # Safety
///
/// For every RAM frame (4 KiB-aligned physical address) an [`AddressSpace`]
/// using this accessor reaches — its tables and the frames its
/// [`FrameAlloc`] hands out — `table` must return a pointer through which
/// that frame can be read and written for as long as the accessor is used,
/// and through which nothing else holds a Rust reference to it.
pub unsafe trait PhysMemory {
    /// Where the 4 KiB frame at `frame` is accessible.
    fn table(&self, frame: PhysAddr) -> *mut [u64; ENTRIES];
}

/// Physical memory reached through a linear mapping: frame `p` is at virtual
/// address `p + offset` (wrapping). The kernel's direct map, or the
/// firmware's identity map (offset 0) before the kernel has its own tables.
#[derive(Clone, Copy, Debug)]
pub struct DirectMap {
    offset: u64,
}

impl DirectMap {
    /// # Safety
    ///
    /// Every physical RAM address `p` must be mapped readable and writable at
    /// virtual `p + offset` (wrapping) for as long as this value or a copy is
    /// used, and page-table frames must not be accessed through Rust
    /// references elsewhere.
    pub const unsafe fn new(offset: u64) -> Self {
        Self { offset }
    }
}

// SAFETY: `DirectMap::new`'s contract is exactly this trait's.
unsafe impl PhysMemory for DirectMap {
    fn table(&self, frame: PhysAddr) -> *mut [u64; ENTRIES] {
        frame.0.wrapping_add(self.offset) as *mut [u64; ENTRIES]
    }
}

/// A source of frames for new page tables.
///
/// # Safety
///
/// `alloc_frame` must return 4 KiB-aligned frames of RAM that nothing else
/// uses; the caller owns them from then on.
pub unsafe trait FrameAlloc {
    fn alloc_frame(&mut self) -> Option<PhysAddr>;
}

/// Why a page-table operation failed. The tables are unchanged, except that
/// a failed [`AddressSpace::map`] may leave new, empty intermediate tables
/// (harmless, reused by the next mapping there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// An address or length is not a multiple of the page size, or the
    /// address given to `unmap`/`protect` is inside a page, not at its start.
    Misaligned,
    /// The range runs past the end of its canonical half.
    NonCanonical,
    /// The physical range reaches beyond [`PhysAddr::LIMIT`].
    PhysOutOfRange,
    /// A page is already mapped at that address.
    AlreadyMapped,
    /// A larger page already covers the address, or the new huge page would
    /// cover an existing table of smaller pages.
    HugePageConflict,
    /// The frame allocator ran dry while creating tables.
    OutOfFrames,
    /// Nothing is mapped at that address.
    NotMapped,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Misaligned => "address or length not aligned to the page size",
            Self::NonCanonical => "range leaves the canonical address half",
            Self::PhysOutOfRange => "physical range beyond 52 bits",
            Self::AlreadyMapped => "page already mapped",
            Self::HugePageConflict => "conflicts with a huge page or a table of smaller pages",
            Self::OutOfFrames => "out of frames for page tables",
            Self::NotMapped => "nothing mapped there",
        })
    }
}

/// What a virtual address maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Physical address of the virtual address itself (page base + offset).
    pub phys: PhysAddr,
    /// Size of the page that maps it.
    pub size: PageSize,
    /// The leaf's flags: `PRESENT` included, `HUGE` never (see `size`).
    pub flags: PageFlags,
}

/// One tree of page tables, identified by its root (the value for CR3).
///
/// Not locked internally: the caller serialises edits of one tree (and of
/// kernel-half tables shared by several, see
/// [`AddressSpace::copy_kernel_half_from`]), e.g. with a `SpinLock` around
/// each address space.
///
/// Invariant: every present, non-leaf entry reachable from `root` points to a
/// page-table frame that `mem` can access.
pub struct AddressSpace<M: PhysMemory> {
    root: PhysAddr,
    mem: M,
}

impl<M: PhysMemory> AddressSpace<M> {
    /// An empty address space: a fresh, zeroed PML4 from `frames`.
    pub fn new(mem: M, frames: &mut impl FrameAlloc) -> Result<Self, MapError> {
        let root = frames.alloc_frame().ok_or(MapError::OutOfFrames)?;
        let space = Self { root, mem };
        space.zero(root);
        Ok(space)
    }

    /// Adopts an existing tree, e.g. the one CR3 holds.
    ///
    /// # Safety
    ///
    /// `root` must be a PML4 whose tree satisfies the invariant above (every
    /// present non-leaf entry points to a page table `mem` can access), and
    /// nothing else may edit that tree while this value does.
    pub unsafe fn from_root(mem: M, root: PhysAddr) -> Self {
        Self { root, mem }
    }

    /// Physical address of the PML4: what the arch layer loads into CR3.
    pub fn root(&self) -> PhysAddr {
        self.root
    }

    /// Maps the page of `size` at `virt` to `phys` with `flags` (`PRESENT` is
    /// implied, `HUGE` is derived from `size`), creating missing tables from
    /// `frames`.
    ///
    /// Errors: `Misaligned` if `virt` or `phys` is not a multiple of the page
    /// size; `AlreadyMapped`; `HugePageConflict`; `OutOfFrames`.
    /// No TLB flush is needed: the address was unmapped.
    pub fn map(
        &mut self,
        frames: &mut impl FrameAlloc,
        virt: VirtAddr,
        phys: PhysAddr,
        size: PageSize,
        flags: PageFlags,
    ) -> Result<(), MapError> {
        if !virt.is_aligned(size.bytes()) || !phys.is_aligned(size.bytes()) {
            return Err(MapError::Misaligned);
        }
        let user = flags.contains(PageFlags::USER);
        let mut table = self.root;
        for level in (size.level() + 1..=4).rev() {
            let index = virt.index(level);
            let entry = self.load(table, index);
            table = if entry & PageFlags::PRESENT.0 == 0 {
                let frame = frames.alloc_frame().ok_or(MapError::OutOfFrames)?;
                self.zero(frame);
                self.store(table, index, frame.0 | table_flags(user));
                frame
            } else if is_huge_leaf(entry, level) {
                return Err(MapError::HugePageConflict);
            } else {
                if user && entry & PageFlags::USER.0 == 0 {
                    self.store(table, index, entry | PageFlags::USER.0);
                }
                PhysAddr(entry & ADDR_MASK)
            };
        }
        let index = virt.index(size.level());
        let entry = self.load(table, index);
        if entry & PageFlags::PRESENT.0 != 0 {
            return Err(if is_huge_leaf(entry, size.level()) || size == PageSize::Size4K {
                MapError::AlreadyMapped
            } else {
                MapError::HugePageConflict
            });
        }
        self.store(table, index, phys.0 | leaf_flags(flags, size));
        Ok(())
    }

    /// Maps `len` bytes at `virt` to `phys` (all multiples of 4 KiB) with
    /// `flags`, each step with the largest page size up to `max_size` that
    /// both addresses are aligned to and that fits: 1 GiB and 2 MiB pages for
    /// a direct map. Pass `max_size = Size2M` on CPUs without 1 GiB pages.
    ///
    /// All or nothing: on error, the pages this call mapped are unmapped again.
    /// Errors: as [`AddressSpace::map`], plus `NonCanonical` and `PhysOutOfRange`.
    pub fn map_range(
        &mut self,
        frames: &mut impl FrameAlloc,
        virt: VirtAddr,
        phys: PhysAddr,
        len: u64,
        flags: PageFlags,
        max_size: PageSize,
    ) -> Result<(), MapError> {
        if len == 0 {
            return Ok(());
        }
        if !virt.is_aligned(PAGE_SIZE) || !phys.is_aligned(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
            return Err(MapError::Misaligned);
        }
        let last = virt.0.checked_add(len - 1).and_then(VirtAddr::try_new).ok_or(MapError::NonCanonical)?;
        if (last.0 ^ virt.0) >> 63 != 0 {
            // Both ends canonical but in different halves: spans the hole.
            return Err(MapError::NonCanonical);
        }
        if phys.0.checked_add(len - 1).and_then(PhysAddr::try_new).is_none() {
            return Err(MapError::PhysOutOfRange);
        }
        let mut done = 0;
        while done < len {
            let (v, p) = (virt.0 + done, phys.0 + done);
            let size = PageSize::DESCENDING
                .into_iter()
                .find(|s| *s <= max_size && (v | p) & (s.bytes() - 1) == 0 && len - done >= s.bytes())
                .unwrap_or(PageSize::Size4K);
            if let Err(e) = self.map(frames, VirtAddr(v), PhysAddr(p), size, flags) {
                self.unmap_mapped(virt, done);
                return Err(e);
            }
            done += size.bytes();
        }
        Ok(())
    }

    /// Undoes the first `len` bytes of a `map_range` that mapped them.
    fn unmap_mapped(&mut self, virt: VirtAddr, len: u64) {
        let mut done = 0;
        while done < len {
            // Every page here was just mapped, so unmap succeeds; stepping by
            // 4 KiB on a (impossible) failure still terminates.
            done += self.unmap(VirtAddr(virt.0 + done)).map_or(PAGE_SIZE, |(_, size)| size.bytes());
        }
    }

    /// Removes the page that starts at `virt`; returns its physical base and
    /// size (the frame is the caller's to free). Intermediate tables stay.
    ///
    /// Errors: `NotMapped`; `Misaligned` if `virt` is inside a page, not at
    /// its start. The caller must flush the TLB entry on every CPU using
    /// this address space.
    pub fn unmap(&mut self, virt: VirtAddr) -> Result<(PhysAddr, PageSize), MapError> {
        let (table, index, size) = self.find_leaf(virt).ok_or(MapError::NotMapped)?;
        if !virt.is_aligned(size.bytes()) {
            return Err(MapError::Misaligned);
        }
        let entry = self.load(table, index);
        self.store(table, index, 0);
        Ok((PhysAddr(entry & ADDR_MASK & !(size.bytes() - 1)), size))
    }

    /// What `virt` maps to, or `None` if it is unmapped.
    pub fn translate(&self, virt: VirtAddr) -> Option<Translation> {
        let (table, index, size) = self.find_leaf(virt)?;
        let entry = self.load(table, index);
        let offset_mask = size.bytes() - 1;
        Some(Translation {
            phys: PhysAddr((entry & ADDR_MASK & !offset_mask) | (virt.0 & offset_mask)),
            size,
            flags: PageFlags::from_bits_truncate(entry).difference(PageFlags::HUGE),
        })
    }

    /// Replaces the flags of the page that starts at `virt` (`PRESENT`
    /// implied, `HUGE` derived), keeping its frame; returns the page's size.
    ///
    /// Errors: `NotMapped`; `Misaligned` as for `unmap`. The caller must
    /// flush the TLB entry on every CPU using this address space.
    pub fn protect(&mut self, virt: VirtAddr, flags: PageFlags) -> Result<PageSize, MapError> {
        let (table, index, size) = self.find_leaf(virt).ok_or(MapError::NotMapped)?;
        if !virt.is_aligned(size.bytes()) {
            return Err(MapError::Misaligned);
        }
        if flags.contains(PageFlags::USER) {
            self.grant_user_above(virt, size.level());
        }
        let base = self.load(table, index) & ADDR_MASK & !(size.bytes() - 1);
        self.store(table, index, base | leaf_flags(flags, size));
        Ok(size)
    }

    /// Makes this space share `other`'s kernel half: copies PML4 entries
    /// 256..512, so both use the same lower-level tables there. Later changes
    /// under those entries show in both; new PML4 entries do not, so the
    /// kernel should create all its upper-half PML4 entries before cloning
    /// its half into user spaces. Edits to the shared tables must then be
    /// serialised across all spaces (the kernel address-space lock).
    pub fn copy_kernel_half_from(&mut self, other: &Self) {
        for index in KERNEL_HALF_FIRST_INDEX..ENTRIES {
            let entry = other.load(other.root, index);
            self.store(self.root, index, entry);
        }
    }

    /// The leaf entry that maps `virt`: (its table, its index, page size).
    fn find_leaf(&self, virt: VirtAddr) -> Option<(PhysAddr, usize, PageSize)> {
        let mut table = self.root;
        for level in (1..=4).rev() {
            let index = virt.index(level);
            let entry = self.load(table, index);
            if entry & PageFlags::PRESENT.0 == 0 {
                return None;
            }
            if level == 1 || is_huge_leaf(entry, level) {
                return Some((table, index, PageSize::of_level(level)));
            }
            table = PhysAddr(entry & ADDR_MASK);
        }
        unreachable!("level 1 always returns")
    }

    /// Sets `USER` on the intermediate entries above the leaf of `virt` at
    /// `leaf_level`, which must exist.
    fn grant_user_above(&mut self, virt: VirtAddr, leaf_level: u8) {
        let mut table = self.root;
        for level in (leaf_level + 1..=4).rev() {
            let index = virt.index(level);
            let entry = self.load(table, index);
            self.store(table, index, entry | PageFlags::USER.0);
            table = PhysAddr(entry & ADDR_MASK);
        }
    }

    fn load(&self, table: PhysAddr, index: usize) -> u64 {
        debug_assert!(index < ENTRIES);
        // SAFETY: `table` is the root or was reached through present non-leaf
        // entries, so by the struct invariant it is a page table that `mem`
        // maps (PhysMemory contract); `index < 512` stays inside it.
        unsafe { self.mem.table(table).cast::<u64>().add(index).read() }
    }

    fn store(&self, table: PhysAddr, index: usize, entry: u64) {
        debug_assert!(index < ENTRIES);
        // SAFETY: as in `load`; page tables are only accessed through raw
        // pointers, so no Rust reference aliases the write.
        unsafe { self.mem.table(table).cast::<u64>().add(index).write(entry) }
    }

    /// Zeroes a frame that is about to become a page table.
    fn zero(&self, frame: PhysAddr) {
        // SAFETY: `frame` comes from the FrameAlloc, so it is unused RAM we
        // now own, and the PhysMemory contract makes it writable here.
        unsafe { self.mem.table(frame).write_bytes(0, 1) }
    }
}

/// Flags of an intermediate entry: permissive, so the leaf decides.
const fn table_flags(user: bool) -> u64 {
    let flags = PageFlags::PRESENT.union(PageFlags::WRITABLE);
    if user {
        flags.union(PageFlags::USER).0
    } else {
        flags.0
    }
}

/// Flag bits of a leaf entry of `size`.
const fn leaf_flags(flags: PageFlags, size: PageSize) -> u64 {
    // On a 4 KiB entry bit 7 would be PAT, so HUGE is never passed through.
    let flags = flags.difference(PageFlags::HUGE).union(PageFlags::PRESENT);
    match size {
        PageSize::Size4K => flags.0,
        PageSize::Size2M | PageSize::Size1G => flags.union(PageFlags::HUGE).0,
    }
}

/// Whether a present `entry` at `level` maps a page rather than a table.
const fn is_huge_leaf(entry: u64, level: u8) -> bool {
    (level == 2 || level == 3) && entry & PageFlags::HUGE.0 != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::fake::FakePhys;

    const KERNEL_BASE: u64 = 0xffff_ffff_8000_0000;
    const DIRECT_MAP: u64 = 0xffff_8000_0000_0000;
    const TEXT: PageFlags = PageFlags::GLOBAL;
    const RODATA: PageFlags = PageFlags::GLOBAL.union(PageFlags::NO_EXECUTE);
    const DATA: PageFlags = PageFlags::WRITABLE.union(PageFlags::GLOBAL).union(PageFlags::NO_EXECUTE);

    /// Hands out frames `next..end` of the fake memory, in order.
    struct Bump {
        next: u64,
        end: u64,
    }

    // SAFETY: frames `next..end` are fake memory used by nothing else.
    unsafe impl FrameAlloc for Bump {
        fn alloc_frame(&mut self) -> Option<PhysAddr> {
            (self.next < self.end).then(|| {
                self.next += 1;
                PhysAddr::new((self.next - 1) * PAGE_SIZE)
            })
        }
    }

    /// Fake memory of `frames` frames; page tables come from frames 1.. .
    struct Setup {
        phys: FakePhys,
        frames: Bump,
    }

    impl Setup {
        fn new(frames: u64) -> Self {
            Self { phys: FakePhys::new(frames as usize), frames: Bump { next: 1, end: frames } }
        }

        fn space(&mut self) -> AddressSpace<DirectMap> {
            // SAFETY: the fake memory lives as long as the test's `Setup`.
            let mem = unsafe { DirectMap::new(self.phys.offset()) };
            AddressSpace::new(mem, &mut self.frames).unwrap()
        }
    }

    /// An independent software page walker: (physical address, raw leaf
    /// entry, page bytes) for `va`, reading the fake memory directly.
    fn soft_walk(phys: &FakePhys, root: PhysAddr, va: u64) -> Option<(u64, u64, u64)> {
        let mut table = root.as_u64();
        for shift in [39u32, 30, 21, 12] {
            let entry = phys.read(table + ((va >> shift) & 0x1ff) * 8);
            if entry & 1 == 0 {
                return None;
            }
            let leaf = shift == 12 || (shift != 39 && entry & 0x80 != 0);
            let addr = entry & 0x000f_ffff_ffff_f000;
            if leaf {
                let page = 1u64 << shift;
                return Some(((addr & !(page - 1)) | (va & (page - 1)), entry, page));
            }
            table = addr;
        }
        unreachable!()
    }

    /// Every leaf of the tree as (virtual address, physical base, page bytes).
    fn leaves(phys: &FakePhys, root: PhysAddr) -> Vec<(u64, u64, u64)> {
        fn walk(phys: &FakePhys, table: u64, shift: u32, va: u64, out: &mut Vec<(u64, u64, u64)>) {
            for i in 0..512u64 {
                let entry = phys.read(table + i * 8);
                if entry & 1 == 0 {
                    continue;
                }
                let mut va = va | (i << shift);
                if shift == 39 && i >= 256 {
                    va |= 0xffff_0000_0000_0000;
                }
                let addr = entry & 0x000f_ffff_ffff_f000;
                if shift == 12 || (shift != 39 && entry & 0x80 != 0) {
                    out.push((va, addr & !((1u64 << shift) - 1), 1 << shift));
                } else {
                    walk(phys, addr, shift - 9, va, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(phys, root.as_u64(), 39, 0, &mut out);
        out
    }

    fn check_against_walker(setup: &Setup, space: &AddressSpace<DirectMap>, va: u64) {
        let ours = space.translate(VirtAddr::new(va));
        let theirs = soft_walk(&setup.phys, space.root(), va);
        match (ours, theirs) {
            (None, None) => {}
            (Some(t), Some((pa, entry, page))) => {
                assert_eq!(t.phys.as_u64(), pa, "va {va:#x}");
                assert_eq!(t.size.bytes(), page, "va {va:#x}");
                assert_eq!(t.flags.bits(), entry & (0x1ff | 1 << 63) & !0x80, "va {va:#x}");
            }
            other => panic!("va {va:#x}: translate and walker disagree: {other:?}"),
        }
    }

    #[test]
    fn addresses_are_checked() {
        assert!(VirtAddr::try_new(0x0000_7fff_ffff_ffff).is_some());
        assert!(VirtAddr::try_new(0x0000_8000_0000_0000).is_none());
        assert!(VirtAddr::try_new(0xffff_7fff_ffff_ffff).is_none());
        assert!(VirtAddr::try_new(0xffff_8000_0000_0000).is_some());
        assert!(PhysAddr::try_new(PhysAddr::LIMIT - 1).is_some());
        assert!(PhysAddr::try_new(PhysAddr::LIMIT).is_none());
        assert_eq!(format!("{:?}", PhysAddr::new(0x1000)), "PhysAddr(0x1000)");
        assert_eq!(format!("{:?}", DATA), "PageFlags(WRITABLE | GLOBAL | NO_EXECUTE)");
    }

    #[test]
    fn map_translate_unmap_every_size() {
        let mut s = Setup::new(64);
        let mut space = s.space();
        let cases = [
            (KERNEL_BASE + 0x5000, 0x3000_0000u64, PageSize::Size4K),
            (KERNEL_BASE + 0x4000_0000, 0x8000_0000, PageSize::Size2M),
            (DIRECT_MAP + (1 << 30), 1 << 30, PageSize::Size1G),
            (0x40_0000, 0x20_0000, PageSize::Size2M),
            (0x1000, 0x7000, PageSize::Size4K),
        ];
        for &(va, pa, size) in &cases {
            space.map(&mut s.frames, VirtAddr::new(va), PhysAddr::new(pa), size, DATA).unwrap();
        }
        for &(va, pa, size) in &cases {
            for off in [0, 8, size.bytes() / 2, size.bytes() - 1] {
                let t = space.translate(VirtAddr::new(va + off)).unwrap();
                assert_eq!((t.phys.as_u64(), t.size), (pa + off, size));
                assert_eq!(t.flags, DATA | PageFlags::PRESENT);
                check_against_walker(&s, &space, va + off);
            }
            assert!(space.translate(VirtAddr::new(va + size.bytes())).is_none());
        }
        for &(va, pa, size) in &cases {
            assert_eq!(space.unmap(VirtAddr::new(va)), Ok((PhysAddr::new(pa), size)));
            assert!(space.translate(VirtAddr::new(va)).is_none());
            assert_eq!(space.unmap(VirtAddr::new(va)), Err(MapError::NotMapped));
        }
        assert!(leaves(&s.phys, space.root()).is_empty());
    }

    #[test]
    fn flags_encode_w_xor_x_and_permissive_intermediates() {
        let mut s = Setup::new(64);
        let mut space = s.space();
        let root = space.root().as_u64();
        let map = |space: &mut AddressSpace<DirectMap>, frames: &mut Bump, va, pa, flags| {
            space.map(frames, VirtAddr::new(va), PhysAddr::new(pa), PageSize::Size4K, flags).unwrap();
        };
        map(&mut space, &mut s.frames, KERNEL_BASE, 0x10_0000, TEXT);
        map(&mut space, &mut s.frames, KERNEL_BASE + 0x1000, 0x10_1000, RODATA);
        map(&mut space, &mut s.frames, KERNEL_BASE + 0x2000, 0x10_2000, DATA);
        // text R-X, rodata R--, data RW- (bit 63 = NX, bit 1 = W, bit 8 = G).
        assert_eq!(soft_walk(&s.phys, space.root(), KERNEL_BASE).unwrap().1, 0x10_0000 | 0x101);
        assert_eq!(soft_walk(&s.phys, space.root(), KERNEL_BASE + 0x1000).unwrap().1, 0x10_1000 | 0x101 | 1 << 63);
        assert_eq!(soft_walk(&s.phys, space.root(), KERNEL_BASE + 0x2000).unwrap().1, 0x10_2000 | 0x103 | 1 << 63);
        // Kernel intermediates: PRESENT | WRITABLE only.
        let pml4e = s.phys.read(root + 511 * 8);
        assert_eq!(pml4e & 0xfff, 0x3);
        assert_eq!(pml4e >> 63, 0);

        // A user page makes its intermediates USER, still never NX.
        map(&mut space, &mut s.frames, 0x40_0000, 0x20_0000, PageFlags::USER | PageFlags::NO_EXECUTE);
        let pml4e = s.phys.read(root);
        assert_eq!(pml4e & 0xfff, 0x7);
        assert_eq!(pml4e >> 63, 0);
        let t = space.translate(VirtAddr::new(0x40_0000)).unwrap();
        assert_eq!(t.flags, PageFlags::PRESENT | PageFlags::USER | PageFlags::NO_EXECUTE);

        // HUGE passed by the caller is ignored on 4 KiB pages (bit 7 is PAT there).
        map(&mut space, &mut s.frames, 0x40_1000, 0x20_1000, PageFlags::HUGE | PageFlags::WRITABLE);
        assert_eq!(soft_walk(&s.phys, space.root(), 0x40_1000).unwrap().1 & 0x80, 0);
        // ... and set on huge pages.
        space
            .map(&mut s.frames, VirtAddr::new(0x80_0000), PhysAddr::new(0x60_0000), PageSize::Size2M, PageFlags::empty())
            .unwrap();
        assert_eq!(soft_walk(&s.phys, space.root(), 0x80_0000).unwrap().1, 0x60_0000 | 0x81);
    }

    #[test]
    fn map_errors() {
        let mut s = Setup::new(64);
        let mut space = s.space();
        let f = &mut s.frames;
        let va = VirtAddr::new;
        let pa = PhysAddr::new;
        use MapError::*;
        use PageSize::*;
        assert_eq!(space.map(f, va(0x1234), pa(0x1000), Size4K, DATA), Err(Misaligned));
        assert_eq!(space.map(f, va(0x1000), pa(0x1234), Size4K, DATA), Err(Misaligned));
        assert_eq!(space.map(f, va(0x20_0000), pa(0x1000), Size2M, DATA), Err(Misaligned));
        assert_eq!(space.map(f, va(0x4000_0000), pa(0x20_0000), Size1G, DATA), Err(Misaligned));

        space.map(f, va(0x1000), pa(0x1000), Size4K, DATA).unwrap();
        assert_eq!(space.map(f, va(0x1000), pa(0x2000), Size4K, DATA), Err(AlreadyMapped));
        // A 2 MiB page over the table holding that 4 KiB page.
        assert_eq!(space.map(f, va(0), pa(0), Size2M, DATA), Err(HugePageConflict));
        // A 1 GiB page over the directory holding it.
        assert_eq!(space.map(f, va(0), pa(0), Size1G, DATA), Err(HugePageConflict));

        space.map(f, va(0x4000_0000), pa(0x4000_0000), Size1G, DATA).unwrap();
        assert_eq!(space.map(f, va(0x4000_0000), pa(0), Size1G, DATA), Err(AlreadyMapped));
        assert_eq!(space.map(f, va(0x4020_0000), pa(0), Size2M, DATA), Err(HugePageConflict));
        assert_eq!(space.map(f, va(0x4000_1000), pa(0), Size4K, DATA), Err(HugePageConflict));
        // Inside a huge page is not the page's start.
        assert_eq!(space.unmap(va(0x4000_1000)), Err(Misaligned));
        assert_eq!(space.protect(va(0x4000_1000), RODATA), Err(Misaligned));
        assert_eq!(space.protect(va(0x8000_0000), RODATA), Err(NotMapped));
        // Failed operations changed nothing.
        assert_eq!(space.translate(va(0x4000_1000)).unwrap().phys, pa(0x4000_1000));
        assert_eq!(space.translate(va(0x1000)).unwrap().phys, pa(0x1000));
    }

    #[test]
    fn out_of_frames_is_an_error() {
        let mut s = Setup::new(4);
        let mut space = s.space(); // frame 1
        let f = &mut s.frames;
        // Needs PDPT + PD + PT: only frames 2 and 3 are left.
        let r = space.map(f, VirtAddr::new(0x1000), PhysAddr::new(0x1000), PageSize::Size4K, DATA);
        assert_eq!(r, Err(MapError::OutOfFrames));
        // The PDPT and PD it created are reused by a 2 MiB page.
        space.map(f, VirtAddr::new(0x20_0000), PhysAddr::new(0), PageSize::Size2M, DATA).unwrap();
        assert!(space.translate(VirtAddr::new(0x1000)).is_none());
        let mut none = Bump { next: 0, end: 0 };
        assert!(matches!(AddressSpace::new(space.mem, &mut none), Err(MapError::OutOfFrames)));
    }

    #[test]
    fn map_range_uses_largest_pages() {
        let mut s = Setup::new(64);
        let mut space = s.space();
        const G: u64 = 1 << 30;
        const M2: u64 = 2 << 20;
        // 4 KiB below a 2 MiB boundary below a 1 GiB boundary, through 1 GiB,
        // then 2 MiB pages and a 4 KiB tail.
        let start = G - M2 - 0x1000;
        let len = 0x1000 + M2 + G + 2 * M2 + 0x2000;
        let va = VirtAddr::new(DIRECT_MAP + start);
        space.map_range(&mut s.frames, va, PhysAddr::new(start), len, DATA, PageSize::Size1G).unwrap();
        let mut got = leaves(&s.phys, space.root());
        got.sort();
        let expected = vec![
            (DIRECT_MAP + start, start, 0x1000),
            (DIRECT_MAP + G - M2, G - M2, M2),
            (DIRECT_MAP + G, G, G),
            (DIRECT_MAP + 2 * G, 2 * G, M2),
            (DIRECT_MAP + 2 * G + M2, 2 * G + M2, M2),
            (DIRECT_MAP + 2 * G + 2 * M2, 2 * G + 2 * M2, 0x1000),
            (DIRECT_MAP + 2 * G + 2 * M2 + 0x1000, 2 * G + 2 * M2 + 0x1000, 0x1000),
        ];
        assert_eq!(got, expected);
        for probe in [start, G - 1, G, G + 12345, 2 * G + M2 + 7, start + len - 1, start + len] {
            check_against_walker(&s, &space, DIRECT_MAP + probe);
        }

        // Without 1 GiB pages the gigabyte becomes 512 2 MiB pages.
        let mut s = Setup::new(64);
        let mut space = s.space();
        space.map_range(&mut s.frames, VirtAddr::new(DIRECT_MAP), PhysAddr::new(0), G, DATA, PageSize::Size2M).unwrap();
        let got = leaves(&s.phys, space.root());
        assert_eq!(got.len(), 512);
        assert!(got.iter().all(|&(_, _, size)| size == M2));

        // Virtual and physical alignment must agree for a large page.
        let mut s = Setup::new(64);
        let mut space = s.space();
        space.map_range(&mut s.frames, VirtAddr::new(M2), PhysAddr::new(0x1000), M2, DATA, PageSize::Size1G).unwrap();
        assert!(leaves(&s.phys, space.root()).iter().all(|&(_, _, size)| size == 0x1000));
    }

    #[test]
    fn map_range_errors_and_rollback() {
        // Frames for the PML4, one PDPT, one PD and one PT.
        let mut s = Setup::new(5);
        let mut space = s.space();
        let f = &mut s.frames;
        let va = VirtAddr::new;
        let pa = PhysAddr::new;
        assert_eq!(space.map_range(f, va(0x1000), pa(0x1000), 0x1001, DATA, PageSize::Size4K), Err(MapError::Misaligned));
        assert_eq!(
            space.map_range(f, va(0x7fff_ffff_f000), pa(0), 0x2000, DATA, PageSize::Size4K),
            Err(MapError::NonCanonical)
        );
        assert_eq!(
            space.map_range(f, va(0xffff_ffff_ffff_f000), pa(0), 0x2000, DATA, PageSize::Size4K),
            Err(MapError::NonCanonical)
        );
        assert_eq!(
            space.map_range(f, va(0x1000), pa(PhysAddr::LIMIT - 0x1000), 0x2000, DATA, PageSize::Size4K),
            Err(MapError::PhysOutOfRange)
        );
        assert_eq!(space.map_range(f, va(0x1000), pa(0x1000), 0, DATA, PageSize::Size4K), Ok(()));

        // Collides with a page in the middle: everything before is undone.
        space.map(f, va(0x5000), pa(0), PageSize::Size4K, DATA).unwrap();
        assert_eq!(space.map_range(f, va(0x1000), pa(0x1000), 0x8000, DATA, PageSize::Size1G), Err(MapError::AlreadyMapped));
        assert_eq!(leaves(&s.phys, space.root()), vec![(0x5000, 0, 0x1000)]);

        // Runs out of frames for the table of the second 2 MiB region.
        let r = space.map_range(f, va(0x10_0000), pa(0x10_0000), 0x20_0000, DATA, PageSize::Size4K);
        assert_eq!(r, Err(MapError::OutOfFrames));
        assert_eq!(leaves(&s.phys, space.root()), vec![(0x5000, 0, 0x1000)]);
    }

    #[test]
    fn protect_changes_flags_only() {
        let mut s = Setup::new(64);
        let mut space = s.space();
        let va = VirtAddr::new(0x60_0000);
        space.map(&mut s.frames, va, PhysAddr::new(0xa0_0000), PageSize::Size2M, DATA).unwrap();
        assert_eq!(space.protect(va, RODATA), Ok(PageSize::Size2M));
        let t = space.translate(va).unwrap();
        assert_eq!((t.phys.as_u64(), t.size, t.flags), (0xa0_0000, PageSize::Size2M, RODATA | PageFlags::PRESENT));
        assert_eq!(s.phys.read(space.root().as_u64()) & PageFlags::USER.bits(), 0);
        space.protect(va, PageFlags::USER).unwrap();
        assert_ne!(s.phys.read(space.root().as_u64()) & PageFlags::USER.bits(), 0);
        check_against_walker(&s, &space, va.as_u64() + 0x1234);
    }

    #[test]
    fn kernel_half_is_shared() {
        let mut s = Setup::new(64);
        let mut kernel = s.space();
        kernel.map(&mut s.frames, VirtAddr::new(KERNEL_BASE), PhysAddr::new(0x10_0000), PageSize::Size4K, TEXT).unwrap();
        kernel.map(&mut s.frames, VirtAddr::new(0x1000), PhysAddr::new(0x1000), PageSize::Size4K, DATA).unwrap();
        let mut user = s.space();
        user.copy_kernel_half_from(&kernel);
        assert_eq!(user.translate(VirtAddr::new(KERNEL_BASE)).unwrap().phys.as_u64(), 0x10_0000);
        assert!(user.translate(VirtAddr::new(0x1000)).is_none());
        // Shared tables: a later kernel mapping under the same PML4 entry shows in both.
        kernel
            .map(&mut s.frames, VirtAddr::new(KERNEL_BASE + 0x1000), PhysAddr::new(0x10_1000), PageSize::Size4K, RODATA)
            .unwrap();
        assert_eq!(user.translate(VirtAddr::new(KERNEL_BASE + 0x1000)), kernel.translate(VirtAddr::new(KERNEL_BASE + 0x1000)));
        // SAFETY: the tree was built above and nothing else edits it now.
        let adopted = unsafe { AddressSpace::from_root(kernel.mem, kernel.root()) };
        assert_eq!(adopted.translate(VirtAddr::new(0x1000)).unwrap().phys.as_u64(), 0x1000);
    }

    /// Random maps and unmaps of every size, checked against a model and
    /// against the independent walker.
    #[test]
    fn random_mappings_match_walker() {
        let mut s = Setup::new(2048);
        let mut space = s.space();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut model: Vec<(u64, u64, PageSize)> = Vec::new();
        let sizes = [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G];
        // Virtual addresses in 4 GiB of each half, so pages collide often.
        let pick_va = |r: u64, size: PageSize| {
            let base = if r & 1 == 0 { 0 } else { DIRECT_MAP };
            base + ((r >> 1) % (4 << 30)) / size.bytes() * size.bytes()
        };
        for _ in 0..3000 {
            let r = next();
            if r % 4 == 0 && !model.is_empty() {
                let (va, pa, size) = model.swap_remove((next() % model.len() as u64) as usize);
                assert_eq!(space.unmap(VirtAddr::new(va)), Ok((PhysAddr::new(pa), size)));
                continue;
            }
            let size = sizes[(next() % 3) as usize];
            let va = pick_va(next(), size);
            let pa = (next() % (1 << 40)) / size.bytes() * size.bytes();
            let overlaps = model.iter().any(|&(v, _, sz)| va < v + sz.bytes() && v < va + size.bytes());
            let flags = [TEXT, RODATA, DATA, PageFlags::USER][(r >> 8) as usize % 4];
            let result = space.map(&mut s.frames, VirtAddr::new(va), PhysAddr::new(pa), size, flags);
            if overlaps {
                assert!(matches!(result, Err(MapError::AlreadyMapped | MapError::HugePageConflict)), "{result:?}");
            } else if result.is_ok() {
                model.push((va, pa, size));
            } else {
                // Only a table standing where a huge page should go may refuse.
                assert_eq!(result, Err(MapError::HugePageConflict));
                assert_ne!(size, PageSize::Size4K);
            }
        }
        for &(va, pa, size) in &model {
            let probe = va + next() % size.bytes();
            let t = space.translate(VirtAddr::new(probe)).unwrap();
            assert_eq!((t.phys.as_u64(), t.size), (pa + (probe - va), size));
        }
        for _ in 0..3000 {
            check_against_walker(&s, &space, pick_va(next(), PageSize::Size4K) + next() % 4096);
        }
        let mut got = leaves(&s.phys, space.root());
        let mut want: Vec<_> = model.iter().map(|&(va, pa, size)| (va, pa, size.bytes())).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want);
    }
}
