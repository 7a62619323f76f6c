//! The architecture boundary (Hubris-style): the rest of the kernel talks to
//! the CPU only through [`Arch`] and the items each arch module exports under
//! the same names. Adding ARM64 means adding `aarch64/` with the same surface.

#[cfg(target_arch = "x86_64")]
pub mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::Machine;

/// What the portable kernel needs from a CPU architecture.
pub trait Arch {
    /// Name printed in the banner.
    const NAME: &'static str;
    /// Writes bytes to the boot console by polling; lock-free, so fault and
    /// panic paths can always print.
    fn console_write(bytes: &[u8]);
    /// One byte the boot console received, if any (polled, never blocks).
    fn console_read_byte() -> Option<u8>;
    /// A monotonic cycle-ish counter (TSC on x86_64). Under QEMU
    /// `-icount shift=0` it counts guest instructions.
    fn timestamp() -> u64;
    /// Sleeps until the next interrupt (HLT / WFI): idle CPUs never spin.
    fn wait_for_interrupt();
    /// Stops this CPU for good (interrupts off).
    fn halt() -> !;
    /// Ends an emulator run with a pass/fail status (QEMU isa-debug-exit);
    /// halts when the board has no such device.
    fn exit_emulator(success: bool) -> !;
}
