//! Memory management, as pure logic the arch layer drives:
//!
//! - [`paging`]: physical/virtual address types and x86_64 4-level page
//!   tables ([`paging::AddressSpace`]);
//! - [`frame`]: the physical frame allocator ([`frame::FrameAllocator`]);
//! - [`heap`]: the phase-1 kernel heap ([`heap::LockedHeap`]).
//!
//! Nothing here executes privileged instructions: loading CR3, flushing the
//! TLB and masking interrupts around locks are the arch layer's job.

pub mod frame;
pub mod heap;
pub mod paging;

/// Size of a physical frame and of a small page.
pub const PAGE_SIZE: u64 = 4096;

/// Fake physical memory for host tests: a zeroed, heap-backed buffer whose
/// byte `p` is "physical address" `p`, reached through an offset like the
/// kernel's direct map.
#[cfg(test)]
pub(crate) mod fake {
    use super::PAGE_SIZE;

    pub struct FakePhys {
        words: Vec<u64>,
    }

    impl FakePhys {
        /// `frames` frames of zeroed memory, physical addresses `0..frames * 4096`.
        pub fn new(frames: usize) -> Self {
            Self { words: vec![0; frames * PAGE_SIZE as usize / 8] }
        }

        /// The `phys_to_virt` offset: virtual = physical + offset (wrapping).
        pub fn offset(&mut self) -> u64 {
            self.words.as_mut_ptr() as u64
        }

        /// Reads the u64 at physical address `phys`, independently of the
        /// code under test.
        pub fn read(&self, phys: u64) -> u64 {
            assert_eq!(phys % 8, 0);
            self.words[(phys / 8) as usize]
        }
    }
}
