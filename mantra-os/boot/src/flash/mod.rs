//! MantraBoot's flash mode, the device side of MantraFlash 1
//! (docs/flash-protocol.md): frames ([`frame`]), the session state machine
//! ([`session`]) and the console request that enters it ([`LineWatch`]).
//! Pure logic, host-tested (`cargo test -p mantra-boot`); `efi/flash.rs`
//! drives it with the UART, BlockIo and the firmware variables.

pub mod frame;
pub mod session;

#[cfg(test)]
mod tests;

/// The console line that asks for flash mode at boot.
pub const REQUEST: &[u8] = b"MANTRA-FLASH";

/// Watches console input for the line `MANTRA-FLASH` (any line ending;
/// surrounding spaces ignored, nothing else on the line).
#[derive(Default)]
pub struct LineWatch {
    line: [u8; 32],
    len: usize,
    overflow: bool,
}

impl LineWatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one character; true when it ends a `MANTRA-FLASH` line.
    pub fn push(&mut self, c: u8) -> bool {
        if c == b'\r' || c == b'\n' {
            let line = &self.line[..self.len];
            let start = line.iter().position(|&b| b != b' ').unwrap_or(line.len());
            let end = line.iter().rposition(|&b| b != b' ').map_or(start, |e| e + 1);
            let hit = !self.overflow && &line[start..end] == REQUEST;
            self.len = 0;
            self.overflow = false;
            return hit;
        }
        if self.len < self.line.len() {
            self.line[self.len] = c;
            self.len += 1;
        } else {
            self.overflow = true;
        }
        false
    }
}
