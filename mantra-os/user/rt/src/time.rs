//! Time: the monotonic clock and sleeping.

use mantra_abi::{Error, PortPacket};

use crate::handle::Port;
use crate::sys;

pub const NS_PER_MS: u64 = 1_000_000;

/// Nanoseconds since boot (CLOCK_GET).
pub fn now() -> u64 {
    sys::clock_get()
}

/// The deadline `ms` milliseconds from now.
pub fn after_ms(ms: u64) -> u64 {
    now().saturating_add(ms.saturating_mul(NS_PER_MS))
}

/// Blocks until `deadline` (ns of the monotonic clock): waits on an empty
/// port of its own with that deadline.
pub fn sleep_until(deadline: u64) -> Result<(), Error> {
    let port = Port::create(&crate::process::current())?;
    let mut packets = [PortPacket::default(); 1];
    match port.wait(deadline, &mut packets) {
        Err(Error::TimedOut) | Ok(_) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Blocks for `ms` milliseconds.
pub fn sleep_ms(ms: u64) -> Result<(), Error> {
    sleep_until(after_ms(ms))
}
