//! `mantra_attestd`: the attestation service's logic, host-testable.
//!
//! - [`tpm2`]: marshalling of TPM2_CreatePrimary (the attestation key),
//!   TPM2_Quote and TPM2_FlushContext, and strict parsing of their responses;
//! - [`tis`]: the TIS/FIFO driver state machine over a register trait;
//! - [`protocol`]: the console protocol's request line, blob and answer lines;
//! - [`quote`]: one attestation: create the AK, quote, flush, check, build the blob.
//!
//! The program (`main.rs`) maps the TPM's registers and the event log the
//! kernel hands over and talks to the console.
#![no_std]

extern crate alloc;

pub mod protocol;
pub mod quote;
pub mod tis;
pub mod tpm2;
