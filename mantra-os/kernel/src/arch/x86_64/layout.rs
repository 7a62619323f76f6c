//! MantraCore's x86_64 virtual address layout (higher half only; the lower
//! half belongs to user address spaces).

/// Direct map of all physical memory (RW, NX), and of the UEFI runtime
/// regions at the addresses MantraBoot gave them (the shared constant).
pub const PHYS_MAP_BASE: u64 = mantra_bootinfo::DIRECT_MAP_BASE;
/// Kernel heap (RW, NX), grown page by page from the frame allocator.
pub const HEAP_BASE: u64 = 0xFFFF_C000_0000_0000;
/// Kernel stacks: one slot per stack; the stack sits at the top of its slot
/// and the rest of the slot stays unmapped, so an overflow hits a guard page.
pub const STACKS_BASE: u64 = 0xFFFF_E000_0000_0000;
pub const STACK_SLOT_SIZE: u64 = 1 << 20;
pub const STACK_SLOTS: u64 = 4096;
/// The stack UEFI runtime service calls run on (efirt): 2 MiB below the
/// stack slots, with unmapped pages below it. Mapped at boot, before any
/// user address space copies the kernel half.
pub const FIRMWARE_STACK_TOP: u64 = STACKS_BASE - 2 * STACK_SLOT_SIZE;
pub const FIRMWARE_STACK_PAGES: u64 = 32;
// The kernel image is linked at 0xFFFF_FFFF_8000_0000 (x86_64.ld).

pub const PAGE_SIZE: u64 = 4096;

/// Size in bytes of one kernel stack (Kconfig KERNEL_STACK_PAGES).
pub const fn stack_size() -> u64 {
    mantra_config::KERNEL_STACK_PAGES as u64 * PAGE_SIZE
}

/// Top (exclusive) of stack slot `slot`.
pub const fn stack_top(slot: u64) -> u64 {
    STACKS_BASE + (slot + 1) * STACK_SLOT_SIZE
}

/// When `addr` lies in the unmapped guard part of a stack slot, the slot.
pub fn stack_guard_slot(addr: u64) -> Option<u64> {
    if !(STACKS_BASE..STACKS_BASE + STACK_SLOTS * STACK_SLOT_SIZE).contains(&addr) {
        return None;
    }
    let slot = (addr - STACKS_BASE) / STACK_SLOT_SIZE;
    (addr < stack_top(slot) - stack_size()).then_some(slot)
}
