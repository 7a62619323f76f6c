//! MantraCore. Architecture-independent logic lives in modules that build and
//! test on the host (`cargo test -p mantra-kernel`); everything that touches
//! the machine is under `arch` and only builds for the bare-metal target.
#![cfg_attr(not(test), no_std)]

pub mod mm;
pub mod sync;
