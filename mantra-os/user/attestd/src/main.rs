//! attestd: answers attestation requests on the console (docs/boot-state.md,
//! "Attestation console protocol") with the TCG event log and a TPM quote
//! over the host's nonce.
//!
//! Capabilities (product.toml `caps`): `console` (read requests, write the
//! answer), `eventlog` (the log MantraBoot handed over) and `tpm` (the
//! TIS/FIFO registers). On a machine without a TPM the kernel hands out no
//! `tpm`/`eventlog`: attestd says so once and answers every request with
//! `MANTRA-ATTEST-ERROR no TPM`.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use mantra_abi::{console::MAX_WRITE, map, signals, Error, PortPacket};
use mantra_attestd::protocol::{self, Line, LineBuffer};
use mantra_attestd::quote::{self, Transport};
use mantra_attestd::tis::{self, Tis};
use mantra_rt::{error, info, sys, warn, AsHandle, OwnedHandle, Port, Startup, Vmo};

mantra_rt::main!(main);

/// Port key of the console's READABLE.
const KEY_CONSOLE: u64 = 1;

/// The TPM's registers through an uncached mapping of the `tpm` object.
struct Mmio {
    base: u64,
}

impl tis::Registers for Mmio {
    fn read8(&mut self, offset: usize) -> u8 {
        // SAFETY: `base` maps the TPM's register window (5 pages, device
        // memory, uncached) for the life of the process; every offset the
        // driver uses lies in locality 0's page.
        unsafe { core::ptr::read_volatile((self.base + offset as u64) as *const u8) }
    }
    fn write8(&mut self, offset: usize, value: u8) {
        // SAFETY: as in read8.
        unsafe { core::ptr::write_volatile((self.base + offset as u64) as *mut u8, value) }
    }
    fn read32(&mut self, offset: usize) -> u32 {
        // SAFETY: as in read8; the 32-bit registers are 4-byte aligned.
        unsafe { core::ptr::read_volatile((self.base + offset as u64) as *const u32) }
    }
}

/// The monotonic clock; between two polls of a register the driver yields
/// the CPU (a TPM command takes milliseconds: sleeping a 10 ms tick would
/// add more than it takes).
struct RtClock;

impl tis::Clock for RtClock {
    fn now_ns(&mut self) -> u64 {
        sys::clock_get()
    }
    fn pause(&mut self) {
        sys::thread_yield();
    }
}

struct Tpm(Tis<Mmio, RtClock>);

impl Transport for Tpm {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, String> {
        self.0.transmit(command).map_err(|e| alloc::format!("{e}"))
    }
    fn pause(&mut self) {
        let _ = mantra_rt::time::sleep_ms(10);
    }
}

struct Service {
    console: OwnedHandle,
    tpm: Option<Tpm>,
    event_log: Option<Vec<u8>>,
    /// Why there is no TPM (said once, answered to every request).
    no_tpm: &'static str,
}

fn main(mut startup: Startup) -> Result<(), Error> {
    let Some(console) = startup.take("console") else {
        error!("attestd: no `console` capability: grant caps = [\"console\", \"eventlog\", \"tpm\"] in product.toml");
        return Err(Error::BadHandle);
    };
    let event_log = startup.take_as::<Vmo>("eventlog").and_then(|vmo| match read_event_log(&vmo) {
        Ok(log) => Some(log),
        Err(why) => {
            warn!("attestd: the event log is unusable: {why}");
            None
        }
    });
    let (tpm, no_tpm) = match startup.take_as::<Vmo>("tpm") {
        None => (None, "no TPM"),
        Some(vmo) => match map_tpm(&vmo).map(|mut d| (d.present(), d)) {
            Ok((true, mut driver)) => {
                let id = driver.did_vid();
                info!(
                    "attestd: TPM (TIS/FIFO, vendor {:#06x} device {:#06x}), event log {} bytes; answering MANTRA-ATTEST-REQUEST on the console",
                    id & 0xFFFF,
                    id >> 16,
                    event_log.as_ref().map_or(0, Vec::len)
                );
                core::mem::forget(vmo); // the mapping stays for the process's life
                (Some(Tpm(driver)), "")
            }
            Ok((false, _)) => (None, "no TPM (its registers do not answer)"),
            Err(e) => {
                warn!("attestd: cannot map the TPM's registers: {e:?}");
                (None, "no TPM (its registers cannot be mapped)")
            }
        },
    };
    if tpm.is_none() {
        info!("attestd: {no_tpm}: attestation requests will be refused");
    }
    let mut service = Service { console, tpm, event_log, no_tpm };
    service.serve()
}

/// Reads the event log out of its (page-sized) memory object.
fn read_event_log(vmo: &Vmo) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    let mut page = vec![0u8; 4096];
    // The object's size is not told: read pages until the kernel says the
    // range is past its end.
    loop {
        match vmo.read(bytes.len() as u64, &mut page) {
            Ok(()) => bytes.extend_from_slice(&page),
            Err(Error::OutOfRange) => break,
            Err(e) => return Err(alloc::format!("reading it: {e:?}")),
        }
        if bytes.len() > 16 << 20 {
            return Err("larger than 16 MiB".into());
        }
    }
    let len = mantra_bootinfo::eventlog::used_length(&bytes).map_err(|e| alloc::format!("{e}"))?;
    bytes.truncate(len);
    Ok(bytes)
}

/// The TIS register window the `tpm` object covers: five localities of 4 KiB.
const TPM_WINDOW: u64 = 5 * 4096;

/// Maps the TPM's registers (uncached: the kernel maps device memory so).
fn map_tpm(vmo: &Vmo) -> Result<Tis<Mmio, RtClock>, Error> {
    let base = sys::vmar_map(mantra_rt::process::space(), vmo.raw(), 0, TPM_WINDOW, map::READ | map::WRITE, 0)?;
    Ok(Tis::new(Mmio { base }, RtClock))
}

impl Service {
    fn serve(&mut self) -> Result<(), Error> {
        let me = mantra_rt::process::current();
        let port = Port::create(&me)?;
        let mut lines = LineBuffer::new();
        let mut buffer = [0u8; 512];
        let mut packets = [PortPacket::default(); 4];
        loop {
            port.watch(&self.console, KEY_CONSOLE, signals::READABLE)?;
            port.wait(sys::NO_DEADLINE, &mut packets)?;
            loop {
                let n = match sys::console_read(self.console.raw(), &mut buffer) {
                    Ok(n) => n,
                    Err(Error::ShouldWait) => break,
                    Err(e) => return Err(e),
                };
                let mut requests: Vec<Line> = Vec::new();
                lines.feed(&buffer[..n], |line| {
                    let parsed = protocol::parse_line(line);
                    if parsed != Line::Other {
                        requests.push(parsed);
                    }
                });
                for request in requests {
                    self.answer(request);
                }
            }
        }
    }

    fn answer(&mut self, request: Line) {
        let nonce = match request {
            Line::Request(nonce) => nonce,
            Line::BadRequest(why) => {
                self.write(&[protocol::error_line(&alloc::format!(
                    "bad request: {why}; send {} <64 hex digits>",
                    protocol::REQUEST
                ))]);
                return;
            }
            Line::Other => return,
        };
        let Some(tpm) = self.tpm.as_mut() else {
            self.write(&[protocol::error_line(self.no_tpm)]);
            return;
        };
        let Some(event_log) = self.event_log.as_ref() else {
            self.write(&[protocol::error_line("no event log (MantraBoot handed none to the kernel; see its console lines)")]);
            return;
        };
        let start = sys::clock_get();
        match quote::attest(tpm, &nonce, event_log) {
            Ok(blob) => {
                let quoted = sys::clock_get() - start;
                self.write(&protocol::answer_lines(&nonce, &blob));
                info!(
                    "attestd: answered a request: blob {} bytes (event log {} bytes), quote {} us, with the answer written {} us",
                    blob.len(),
                    event_log.len(),
                    quoted / 1000,
                    (sys::clock_get() - start) / 1000
                );
            }
            Err(why) => {
                warn!("attestd: {why}");
                self.write(&[protocol::error_line(&why)]);
            }
        }
    }

    /// Writes lines in CONSOLE_WRITE-sized batches of whole lines.
    fn write(&self, lines: &[String]) {
        let mut batch = String::new();
        for line in lines {
            if !batch.is_empty() && batch.len() + line.len() > MAX_WRITE {
                self.flush(&batch);
                batch.clear();
            }
            batch.push_str(line);
        }
        if !batch.is_empty() {
            self.flush(&batch);
        }
    }

    fn flush(&self, batch: &str) {
        if let Err(e) = sys::console_write(self.console.raw(), batch.as_bytes()) {
            error!("attestd: CONSOLE_WRITE failed: {e:?}");
        }
    }
}
