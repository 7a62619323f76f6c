//! I/O APICs: the MADT's interrupt controllers for device lines (GSIs),
//! reached through the direct map like the LAPIC. Every pin starts masked;
//! `route` points a GSI at a vector on the boot CPU (still masked), and
//! `set_masked` opens or closes it. The entry encoding and the GSI → mode
//! rules are `mantra_kernel::irq`'s (host-tested).

use alloc::vec::Vec;

use mantra_kernel::acpi::{InterruptOverride, Madt};
use mantra_kernel::irq::{self, LineMode, RedirectionEntry, Span};
use mantra_kernel::sync::SpinLock;

use crate::memory;

/// Register select and data window (MMIO offsets).
const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
/// Registers behind the window.
const REG_VERSION: u32 = 0x01;
const REG_TABLE: u32 = 0x10;

struct Chip {
    /// Virtual address of the register page (direct map).
    base: u64,
    span: Span,
}

impl Chip {
    /// Reads register `reg` through the select/window pair.
    ///
    /// Contract: the caller holds `ROUTING` (the pair must not interleave).
    fn read(&self, reg: u32) -> u32 {
        // SAFETY: `base` maps this I/O APIC's register page (from the MADT,
        // inside the direct map); IOREGSEL and IOWIN are 32-bit registers in it.
        unsafe {
            ((self.base + IOREGSEL) as *mut u32).write_volatile(reg);
            ((self.base + IOWIN) as *const u32).read_volatile()
        }
    }

    /// Writes register `reg`. Contract: as `read`.
    fn write(&self, reg: u32, value: u32) {
        // SAFETY: as in `read`.
        unsafe {
            ((self.base + IOREGSEL) as *mut u32).write_volatile(reg);
            ((self.base + IOWIN) as *mut u32).write_volatile(value);
        }
    }

    fn read_entry(&self, pin: u32) -> u64 {
        let low = self.read(REG_TABLE + 2 * pin);
        let high = self.read(REG_TABLE + 2 * pin + 1);
        u64::from(low) | (u64::from(high) << 32)
    }

    /// Writes an entry masked first, so the pin never fires half-programmed.
    fn write_entry(&self, pin: u32, raw: u64) {
        self.write(REG_TABLE + 2 * pin, irq::MASKED as u32);
        self.write(REG_TABLE + 2 * pin + 1, (raw >> 32) as u32);
        self.write(REG_TABLE + 2 * pin, raw as u32);
    }
}

struct Routing {
    chips: Vec<Chip>,
    overrides: Vec<InterruptOverride>,
    /// Where routed interrupts go: the boot CPU's APIC id.
    destination: u8,
}

static ROUTING: SpinLock<Routing> = SpinLock::new(Routing { chips: Vec::new(), overrides: Vec::new(), destination: 0 });

/// Finds the I/O APICs of the MADT and masks every pin. Runs once, on the
/// boot CPU, before interrupts are enabled.
pub fn init(madt: &Madt, boot_apic_id: u32) {
    let mut routing = ROUTING.lock();
    routing.destination = boot_apic_id as u8; // xAPIC ids fit in 8 bits (apic::MAX_XAPIC_ID)
    routing.overrides = madt.overrides.clone();
    for io in &madt.io_apics {
        let mut chip = Chip { base: memory::phys_to_virt(io.address), span: Span { gsi_base: io.gsi_base, pins: 0 } };
        chip.span.pins = ((chip.read(REG_VERSION) >> 16) & 0xFF) + 1;
        for pin in 0..chip.span.pins {
            chip.write_entry(pin, irq::MASKED);
        }
        routing.chips.push(chip);
    }
}

impl Routing {
    fn locate(&self, gsi: u32) -> Option<(&Chip, u32)> {
        irq::locate(gsi, self.chips.iter().map(|c| c.span)).map(|(index, pin)| (&self.chips[index], pin))
    }
}

/// Whether an I/O APIC serves `gsi`.
pub fn serves(gsi: u32) -> bool {
    ROUTING.lock().locate(gsi).is_some()
}

/// The GSI ISA IRQ `irq` arrives on (MADT overrides applied).
#[cfg(feature = "ktest")]
pub fn isa_gsi(isa_irq: u8) -> u32 {
    irq::isa_gsi(isa_irq, &ROUTING.lock().overrides)
}

/// Points `gsi` at `vector` on the boot CPU, masked, with `mode` or the
/// firmware's mode for it. Returns false when no I/O APIC serves `gsi`.
pub fn route(gsi: u32, vector: u8, mode: Option<LineMode>) -> bool {
    let routing = ROUTING.lock();
    let mode = mode.unwrap_or_else(|| irq::firmware_mode(gsi, &routing.overrides));
    let Some((chip, pin)) = routing.locate(gsi) else { return false };
    let entry = RedirectionEntry { vector, mode, masked: true, destination: routing.destination };
    chip.write_entry(pin, entry.encode());
    true
}

/// Masks or unmasks `gsi` (no-op when no I/O APIC serves it).
pub fn set_masked(gsi: u32, masked: bool) {
    let routing = ROUTING.lock();
    if let Some((chip, pin)) = routing.locate(gsi) {
        let raw = chip.read_entry(pin);
        let raw = if masked { raw | irq::MASKED } else { raw & !irq::MASKED };
        // The low word alone carries the mask bit.
        chip.write(REG_TABLE + 2 * pin, raw as u32);
    }
}

/// The current redirection entry of `gsi`.
#[cfg(feature = "ktest")]
pub fn entry(gsi: u32) -> Option<RedirectionEntry> {
    let routing = ROUTING.lock();
    routing.locate(gsi).map(|(chip, pin)| RedirectionEntry::decode(chip.read_entry(pin)))
}

/// (I/O APICs, GSIs they serve) for the boot report.
pub fn summary() -> (usize, u32) {
    let routing = ROUTING.lock();
    (routing.chips.len(), routing.chips.iter().map(|c| c.span.pins).sum())
}
