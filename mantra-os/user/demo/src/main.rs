//! A demo service: logs a heartbeat `count` times (default 3), every
//! `interval_ms` milliseconds (default 1000), then exits with code 0.
//! Arguments: `count=N`, `interval_ms=MS`.
#![no_std]
#![no_main]

use mantra_rt::{info, Error, Startup};

mantra_rt::main!(main);

fn main(startup: Startup) -> Result<(), Error> {
    let count: u32 = startup.arg_value("count").and_then(|v| v.parse().ok()).unwrap_or(3);
    let interval_ms: u64 = startup.arg_value("interval_ms").and_then(|v| v.parse().ok()).unwrap_or(1000);
    info!("hello from koid {} (start {}): {count} heartbeats every {interval_ms} ms", mantra_rt::process::koid(), startup.restarts() + 1);
    for beat in 1..=count {
        mantra_rt::time::sleep_ms(interval_ms)?;
        info!("heartbeat {beat} of {count}");
    }
    info!("done");
    Ok(())
}
