//! Memory management: frames, heap, page tables.
