//! MantraInit's logic that needs no kernel, unit-tested on the host:
//!
//! - [`manifest`]: the `init.manifest` line format `./mantra build` writes
//!   from the product's product.toml, parsed and validated;
//! - [`order`]: the start order (dependencies first, the log server before
//!   everyone);
//! - [`supervisor`]: the restart policy — exponential backoff, the
//!   crash-loop limit, and the console lines tests read;
//! - [`confirm`]: the boot confirmation's variable layouts and the
//!   `MantraSlots` update;
//! - [`loader`]: the plan for loading an ELF program into a new address
//!   space (which memory object goes where with which permissions).
//!
//! The binary (src/main.rs) does the syscalls.
#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod confirm;
pub mod loader;
pub mod manifest;
pub mod order;
pub mod supervisor;
