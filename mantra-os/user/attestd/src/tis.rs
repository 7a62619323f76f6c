//! A TPM 2.0 driver for the TIS/FIFO interface (TCG PC Client Platform TPM
//! Profile, "FIFO Interface"): locality 0's registers at the start of the
//! TPM's MMIO window.
//!
//! One command: request locality 0 (TPM_ACCESS.requestUse, wait for
//! activeLocality), make the TPM ready (TPM_STS.commandReady), write the
//! command into TPM_DATA_FIFO as TPM_STS.burstCount allows (checking
//! Expect before the last byte and after it), start it (tpmGo), wait for
//! dataAvail, read the 10-byte header, then the rest as burstCount allows
//! (dataAvail must drop after the last byte), return the TPM to idle
//! (commandReady) and relinquish the locality. Every wait is bounded by the
//! profile's timeouts and ends in an error naming the register and bits.
//!
//! The registers and the clock are traits so the state machine runs
//! against a simulated TPM in `cargo test`.

use alloc::vec::Vec;

use crate::tpm2;

/// Register offsets within a locality (locality 0 at offset 0).
pub const TPM_ACCESS: usize = 0x00;
pub const TPM_STS: usize = 0x18;
pub const TPM_BURST_COUNT: usize = 0x19;
pub const TPM_DATA_FIFO: usize = 0x24;
pub const TPM_INTERFACE_ID: usize = 0x30;
pub const TPM_DID_VID: usize = 0xF00;

/// TPM_ACCESS bits.
pub const ACCESS_VALID: u8 = 0x80;
pub const ACCESS_ACTIVE_LOCALITY: u8 = 0x20;
pub const ACCESS_REQUEST_USE: u8 = 0x02;

/// TPM_STS bits (low byte).
pub const STS_VALID: u8 = 0x80;
pub const STS_COMMAND_READY: u8 = 0x40;
pub const STS_GO: u8 = 0x20;
pub const STS_DATA_AVAIL: u8 = 0x10;
pub const STS_EXPECT: u8 = 0x08;

/// The profile's timeouts (TIMEOUT_A for locality and status, TIMEOUT_B
/// for commandReady) and a duration long enough for any command,
/// including key generation on a slow TPM.
pub const TIMEOUT_A_NS: u64 = 750_000_000;
pub const TIMEOUT_B_NS: u64 = 2_000_000_000;
pub const COMMAND_DURATION_NS: u64 = 120_000_000_000;

/// The TPM's registers (one locality window; offsets as above).
pub trait Registers {
    fn read8(&mut self, offset: usize) -> u8;
    fn write8(&mut self, offset: usize, value: u8);
    fn read32(&mut self, offset: usize) -> u32;
}

/// Time for the waits.
pub trait Clock {
    fn now_ns(&mut self) -> u64;
    /// Lets time pass between two polls of a register (yield or sleep).
    fn pause(&mut self);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// A wait ran out: what was awaited.
    Timeout(&'static str),
    /// The TPM did not behave as the interface requires.
    Protocol(&'static str),
    /// The response's header is unusable.
    Response(tpm2::Error),
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Timeout(what) => write!(f, "TPM timeout: {what}"),
            Error::Protocol(what) => write!(f, "TPM interface error: {what}"),
            Error::Response(e) => write!(f, "{e}"),
        }
    }
}

pub struct Tis<R, C> {
    regs: R,
    clock: C,
}

impl<R: Registers, C: Clock> Tis<R, C> {
    pub fn new(regs: R, clock: C) -> Self {
        Self { regs, clock }
    }

    /// Whether a TPM answers at all: TPM_ACCESS has tpmRegValidSts and the
    /// vendor id is not all ones (an empty bus reads 0xFF...).
    pub fn present(&mut self) -> bool {
        let access = self.regs.read8(TPM_ACCESS);
        let did_vid = self.regs.read32(TPM_DID_VID);
        access != 0xFF && access & ACCESS_VALID != 0 && did_vid != 0xFFFF_FFFF && did_vid != 0
    }

    /// The vendor and device id (TPM_DID_VID): vendor in the low 16 bits.
    pub fn did_vid(&mut self) -> u32 {
        self.regs.read32(TPM_DID_VID)
    }

    fn wait(&mut self, timeout: u64, what: &'static str, mut done: impl FnMut(&mut R) -> bool) -> Result<(), Error> {
        let start = self.clock.now_ns();
        loop {
            if done(&mut self.regs) {
                return Ok(());
            }
            if self.clock.now_ns().saturating_sub(start) > timeout {
                return Err(Error::Timeout(what));
            }
            self.clock.pause();
        }
    }

    fn status(&mut self) -> u8 {
        self.regs.read8(TPM_STS)
    }

    fn burst_count(&mut self) -> usize {
        ((self.regs.read32(TPM_STS) >> 8) & 0xFFFF) as usize
    }

    /// Waits for a non-zero burstCount.
    fn wait_burst(&mut self, what: &'static str) -> Result<usize, Error> {
        let start = self.clock.now_ns();
        loop {
            let n = self.burst_count();
            if n > 0 {
                return Ok(n);
            }
            if self.clock.now_ns().saturating_sub(start) > TIMEOUT_A_NS {
                return Err(Error::Timeout(what));
            }
            self.clock.pause();
        }
    }

    fn request_locality(&mut self) -> Result<(), Error> {
        let active = |regs: &mut R| {
            let a = regs.read8(TPM_ACCESS);
            a & (ACCESS_VALID | ACCESS_ACTIVE_LOCALITY) == ACCESS_VALID | ACCESS_ACTIVE_LOCALITY
        };
        if active(&mut self.regs) {
            return Ok(());
        }
        self.regs.write8(TPM_ACCESS, ACCESS_REQUEST_USE);
        self.wait(TIMEOUT_A_NS, "locality 0 not granted (TPM_ACCESS.activeLocality)", active)
    }

    fn relinquish_locality(&mut self) {
        self.regs.write8(TPM_ACCESS, ACCESS_ACTIVE_LOCALITY);
    }

    /// Sends `command` and returns the whole response (header included).
    pub fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, Error> {
        if command.len() < tpm2::HEADER_LEN {
            return Err(Error::Protocol("command shorter than its header"));
        }
        self.request_locality()?;
        let result = self.exchange(command);
        // Back to idle whatever happened (aborts a half-sent command).
        self.regs.write8(TPM_STS, STS_COMMAND_READY);
        self.relinquish_locality();
        result
    }

    fn exchange(&mut self, command: &[u8]) -> Result<Vec<u8>, Error> {
        self.regs.write8(TPM_STS, STS_COMMAND_READY);
        self.wait(TIMEOUT_B_NS, "TPM not ready for a command (TPM_STS.commandReady)", |r| {
            r.read8(TPM_STS) & STS_COMMAND_READY != 0
        })?;

        // All but the last byte as burstCount allows; the TPM must still
        // expect data before the last one and no more after it.
        let (body, last) = command.split_at(command.len() - 1);
        let mut sent = 0;
        while sent < body.len() {
            let burst = self.wait_burst("TPM_STS.burstCount stayed 0 while sending")?;
            for &byte in &body[sent..(sent + burst).min(body.len())] {
                self.regs.write8(TPM_DATA_FIFO, byte);
            }
            sent = (sent + burst).min(body.len());
        }
        self.wait(TIMEOUT_A_NS, "TPM_STS.stsValid while sending", |r| r.read8(TPM_STS) & STS_VALID != 0)?;
        if self.status() & STS_EXPECT == 0 {
            return Err(Error::Protocol("the TPM expects no more bytes before the command's last byte"));
        }
        self.wait_burst("TPM_STS.burstCount stayed 0 before the last byte")?;
        self.regs.write8(TPM_DATA_FIFO, last[0]);
        self.wait(TIMEOUT_A_NS, "TPM_STS.stsValid after the last byte", |r| r.read8(TPM_STS) & STS_VALID != 0)?;
        if self.status() & STS_EXPECT != 0 {
            return Err(Error::Protocol("the TPM still expects bytes after the whole command"));
        }

        self.regs.write8(TPM_STS, STS_GO);
        self.wait(COMMAND_DURATION_NS, "no response (TPM_STS.dataAvail)", |r| {
            r.read8(TPM_STS) & (STS_VALID | STS_DATA_AVAIL) == STS_VALID | STS_DATA_AVAIL
        })?;

        let mut response = Vec::with_capacity(256);
        self.read_fifo(&mut response, tpm2::HEADER_LEN)?;
        let size = tpm2::response_size(&response).map_err(Error::Response)?;
        self.read_fifo(&mut response, size)?;
        self.wait(TIMEOUT_A_NS, "TPM_STS.stsValid after the response", |r| r.read8(TPM_STS) & STS_VALID != 0)?;
        if self.status() & STS_DATA_AVAIL != 0 {
            return Err(Error::Protocol("the TPM has more data than its response's size field says"));
        }
        Ok(response)
    }

    /// Reads from the FIFO until `out` holds `total` bytes.
    fn read_fifo(&mut self, out: &mut Vec<u8>, total: usize) -> Result<(), Error> {
        while out.len() < total {
            if self.status() & STS_DATA_AVAIL == 0 {
                return Err(Error::Protocol("the response ended before its size field says (TPM_STS.dataAvail dropped)"));
            }
            let burst = self.wait_burst("TPM_STS.burstCount stayed 0 while receiving")?;
            for _ in 0..burst.min(total - out.len()) {
                out.push(self.regs.read8(TPM_DATA_FIFO));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub mod sim {
    //! A simulated FIFO TPM: records the command, answers a canned response.
    extern crate std;
    use super::*;
    use std::vec::Vec;

    pub struct SimTpm {
        pub locality: bool,
        pub ready: bool,
        pub command: Vec<u8>,
        pub response: Vec<u8>,
        pub sent: usize,
        pub executing: bool,
        /// Burst the simulated TPM allows.
        pub burst: usize,
        /// Never grant the locality (for the timeout test).
        pub deaf: bool,
        pub answer: Vec<u8>,
        pub commands: usize,
        /// The last command started (tpmGo).
        pub last_command: Vec<u8>,
    }

    impl SimTpm {
        pub fn new(answer: Vec<u8>) -> Self {
            Self {
                locality: false,
                ready: false,
                command: Vec::new(),
                response: Vec::new(),
                sent: 0,
                executing: false,
                burst: 7,
                deaf: false,
                answer,
                commands: 0,
                last_command: Vec::new(),
            }
        }
        fn expected_len(&self) -> Option<usize> {
            (self.command.len() >= 6).then(|| u32::from_be_bytes(self.command[2..6].try_into().unwrap()) as usize)
        }
        fn status(&self) -> u8 {
            let mut s = STS_VALID;
            if self.ready {
                s |= STS_COMMAND_READY;
            }
            if self.executing && self.sent < self.response.len() {
                s |= STS_DATA_AVAIL;
            }
            if self.ready && self.expected_len().is_none_or(|n| self.command.len() < n) {
                s |= STS_EXPECT;
            }
            s
        }
    }

    impl Registers for SimTpm {
        fn read8(&mut self, offset: usize) -> u8 {
            match offset {
                TPM_ACCESS => ACCESS_VALID | if self.locality { ACCESS_ACTIVE_LOCALITY } else { 0 },
                TPM_STS => self.status(),
                TPM_DATA_FIFO => {
                    let b = self.response.get(self.sent).copied().unwrap_or(0xFF);
                    self.sent += 1;
                    b
                }
                _ => 0,
            }
        }
        fn write8(&mut self, offset: usize, value: u8) {
            match offset {
                TPM_ACCESS if value == ACCESS_REQUEST_USE && !self.deaf => self.locality = true,
                TPM_ACCESS if value == ACCESS_ACTIVE_LOCALITY => self.locality = false,
                TPM_STS if value == STS_COMMAND_READY => {
                    self.ready = true;
                    self.executing = false;
                    self.command.clear();
                    self.response.clear();
                    self.sent = 0;
                }
                TPM_STS if value == STS_GO => {
                    self.commands += 1;
                    self.last_command = self.command.clone();
                    self.executing = true;
                    self.ready = false;
                    self.response = self.answer.clone();
                }
                TPM_DATA_FIFO if self.locality && self.ready => self.command.push(value),
                _ => {}
            }
        }
        fn read32(&mut self, offset: usize) -> u32 {
            match offset {
                TPM_STS => u32::from(self.status()) | ((self.burst as u32) << 8),
                TPM_DID_VID => 0x0001_1014,
                _ => 0,
            }
        }
    }

    pub struct FakeClock(pub u64);

    impl Clock for FakeClock {
        fn now_ns(&mut self) -> u64 {
            self.0
        }
        fn pause(&mut self) {
            self.0 += 1_000_000;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sim::{FakeClock, SimTpm};
    use super::*;

    #[test]
    fn sends_a_command_and_reads_the_response() {
        let answer = crate::tpm2::flush_context_command(0); // any 14-byte frame
        let mut answer = answer;
        answer[0..2].copy_from_slice(&tpm2::TPM_ST_NO_SESSIONS.to_be_bytes());
        answer[6..10].copy_from_slice(&[0; 4]);
        let mut tis = Tis::new(SimTpm::new(answer.clone()), FakeClock(0));
        assert!(tis.present());
        let command = tpm2::quote_command(0x8000_0000, &[1; 32]);
        let response = tis.transmit(&command).unwrap();
        assert_eq!(response, answer);
        assert_eq!(tis.regs.last_command, command);
        assert!(!tis.regs.locality, "locality relinquished");
        // A second command works the same (the TPM went back to idle).
        assert_eq!(tis.transmit(&command).unwrap(), answer);
        assert_eq!(tis.regs.commands, 2);
    }

    #[test]
    fn locality_timeout_is_a_clear_error() {
        let mut sim = SimTpm::new(alloc::vec![]);
        sim.deaf = true;
        let mut tis = Tis::new(sim, FakeClock(0));
        let err = tis.transmit(&tpm2::flush_context_command(1)).unwrap_err();
        assert_eq!(err, Error::Timeout("locality 0 not granted (TPM_ACCESS.activeLocality)"));
        assert!(alloc::format!("{err}").contains("activeLocality"));
    }

    #[test]
    fn short_or_long_responses_are_refused() {
        // The header says 20 bytes but the TPM has 14.
        let mut answer = alloc::vec![0x80, 0x01, 0, 0, 0, 20, 0, 0, 0, 0, 1, 2, 3, 4];
        let mut tis = Tis::new(SimTpm::new(answer.clone()), FakeClock(0));
        assert!(matches!(tis.transmit(&tpm2::flush_context_command(1)), Err(Error::Protocol(_))));
        // The header says 10 but 14 are there.
        answer[5] = 10;
        let mut tis = Tis::new(SimTpm::new(answer), FakeClock(0));
        assert!(matches!(tis.transmit(&tpm2::flush_context_command(1)), Err(Error::Protocol(_))));
        // A garbage header.
        let mut tis = Tis::new(SimTpm::new(alloc::vec![0xFF; 12]), FakeClock(0));
        assert!(matches!(tis.transmit(&tpm2::flush_context_command(1)), Err(Error::Response(_))));
    }

    #[test]
    fn absent_tpm_reads_all_ones() {
        struct Empty;
        impl Registers for Empty {
            fn read8(&mut self, _: usize) -> u8 {
                0xFF
            }
            fn write8(&mut self, _: usize, _: u8) {}
            fn read32(&mut self, _: usize) -> u32 {
                u32::MAX
            }
        }
        assert!(!Tis::new(Empty, FakeClock(0)).present());
    }
}
