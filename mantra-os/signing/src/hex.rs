//! Lower-case hex of byte strings for messages (no allocation).

use core::fmt;

/// Displays its bytes as lower-case hex; with a precision (`{:.8}`), only
/// that many hex digits.
#[derive(Clone, Copy)]
pub struct Hex<'a>(pub &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = f.precision().unwrap_or(usize::MAX);
        for (i, byte) in self.0.iter().enumerate() {
            let (hi, lo) = (byte >> 4, byte & 0xf);
            for (j, nibble) in [hi, lo].into_iter().enumerate() {
                if 2 * i + j >= digits {
                    return Ok(());
                }
                write!(f, "{nibble:x}")?;
            }
        }
        Ok(())
    }
}
