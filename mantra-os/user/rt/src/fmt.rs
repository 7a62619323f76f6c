//! Formatting without allocation: [`FixedBuf`] collects `core::fmt` output
//! in a fixed array and silently truncates (at a character boundary) when
//! it is full, so log lines and panic messages can be built with no heap.

use core::fmt;

/// A fixed-capacity UTF-8 buffer that truncates instead of failing.
pub struct FixedBuf<const N: usize> {
    bytes: [u8; N],
    len: usize,
    truncated: bool,
}

impl<const N: usize> FixedBuf<N> {
    pub const fn new() -> Self {
        Self { bytes: [0; N], len: 0, truncated: false }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    pub fn as_str(&self) -> &str {
        // Only whole characters are ever copied in.
        core::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether output was cut off.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    pub fn clear(&mut self) {
        self.len = 0;
        self.truncated = false;
    }
}

impl<const N: usize> Default for FixedBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Write for FixedBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = N - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.bytes[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        if take < s.len() {
            self.truncated = true;
        }
        Ok(())
    }
}

/// Cuts `text` to at most `max` bytes at a character boundary.
pub fn truncate_str(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    #[test]
    fn truncates_at_character_boundaries() {
        let mut buf = FixedBuf::<5>::new();
        write!(buf, "ab{}", "çdé").unwrap();
        assert_eq!(buf.as_str(), "abçd");
        assert!(buf.truncated());
        buf.clear();
        write!(buf, "{}", 12345).unwrap();
        assert_eq!((buf.as_str(), buf.truncated()), ("12345", false));
        assert_eq!(truncate_str("héllo", 2), "h");
        assert_eq!(truncate_str("hi", 5), "hi");
    }
}
