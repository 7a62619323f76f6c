//! Device-interrupt routing, the machine-independent part: I/O APIC
//! redirection entries, the trigger mode and polarity of a global system
//! interrupt (GSI), which I/O APIC serves a GSI, and the pool of CPU
//! vectors handed to device interrupts. The kernel binary's
//! `arch::x86_64::ioapic` writes what this module computes.

use mantra_abi::interrupt;

use crate::acpi::InterruptOverride;

/// Signal level that means "asserted".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Polarity {
    High,
    Low,
}

/// Edge- or level-triggered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Edge,
    Level,
}

/// How a line signals an interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineMode {
    pub trigger: Trigger,
    pub polarity: Polarity,
}

impl LineMode {
    /// ISA lines: edge-triggered, active high.
    pub const ISA: Self = Self { trigger: Trigger::Edge, polarity: Polarity::High };
    /// PCI lines: level-triggered, active low.
    pub const PCI: Self = Self { trigger: Trigger::Level, polarity: Polarity::Low };

    /// The mode `interrupt::MODE_*` asks for: `Ok(None)` for MODE_DEFAULT
    /// (the firmware's), `Err(())` for an unknown value.
    pub fn from_flags(flags: u32) -> Result<Option<Self>, ()> {
        let (trigger, polarity) = match flags {
            interrupt::MODE_DEFAULT => return Ok(None),
            interrupt::MODE_EDGE_HIGH => (Trigger::Edge, Polarity::High),
            interrupt::MODE_EDGE_LOW => (Trigger::Edge, Polarity::Low),
            interrupt::MODE_LEVEL_HIGH => (Trigger::Level, Polarity::High),
            interrupt::MODE_LEVEL_LOW => (Trigger::Level, Polarity::Low),
            _ => return Err(()),
        };
        Ok(Some(Self { trigger, polarity }))
    }

    /// The mode of an ISA interrupt source override's MPS INTI flags
    /// (bits 0-1 polarity, 2-3 trigger; 0 = conforming to the bus: ISA's).
    pub fn from_override_flags(flags: u16) -> Self {
        let polarity = match flags & 0b11 {
            0b11 => Polarity::Low,
            _ => Polarity::High,
        };
        let trigger = match (flags >> 2) & 0b11 {
            0b11 => Trigger::Level,
            _ => Trigger::Edge,
        };
        Self { trigger, polarity }
    }
}

/// GSIs below this are ISA IRQs unless an override says otherwise.
pub const ISA_IRQS: u32 = 16;

/// The firmware's mode for `gsi`: that of an override routing an ISA IRQ
/// to it; else ISA's for GSIs below 16 and PCI's above.
pub fn firmware_mode(gsi: u32, overrides: &[InterruptOverride]) -> LineMode {
    match overrides.iter().find(|o| o.gsi == gsi) {
        Some(o) => LineMode::from_override_flags(o.flags),
        None if gsi < ISA_IRQS => LineMode::ISA,
        None => LineMode::PCI,
    }
}

/// The GSI ISA IRQ `irq` arrives on (identity unless overridden).
pub fn isa_gsi(irq: u8, overrides: &[InterruptOverride]) -> u32 {
    overrides.iter().find(|o| o.bus_irq == irq).map_or(u32::from(irq), |o| o.gsi)
}

/// One I/O APIC as routing sees it: the GSIs `[gsi_base, gsi_base + pins)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub gsi_base: u32,
    pub pins: u32,
}

/// Which I/O APIC (position in `spans`) and pin serve `gsi`.
pub fn locate(gsi: u32, spans: impl IntoIterator<Item = Span>) -> Option<(usize, u32)> {
    spans.into_iter().enumerate().find_map(|(index, span)| {
        let pin = gsi.checked_sub(span.gsi_base)?;
        (pin < span.pins).then_some((index, pin))
    })
}

/// An I/O APIC redirection-table entry: fixed delivery, physical
/// destination mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedirectionEntry {
    pub vector: u8,
    pub mode: LineMode,
    pub masked: bool,
    /// APIC id of the CPU that takes the interrupt.
    pub destination: u8,
}

const POLARITY_LOW: u64 = 1 << 13;
const TRIGGER_LEVEL: u64 = 1 << 15;
/// The mask bit of an entry's low word.
pub const MASKED: u64 = 1 << 16;
const DESTINATION_SHIFT: u32 = 56;

impl RedirectionEntry {
    /// The 64-bit register value (low word: table register 0x10 + 2 * pin;
    /// high word: the next one).
    pub fn encode(self) -> u64 {
        let mut raw = u64::from(self.vector); // delivery mode 000 fixed, destination mode 0 physical
        if self.mode.polarity == Polarity::Low {
            raw |= POLARITY_LOW;
        }
        if self.mode.trigger == Trigger::Level {
            raw |= TRIGGER_LEVEL;
        }
        if self.masked {
            raw |= MASKED;
        }
        raw | (u64::from(self.destination) << DESTINATION_SHIFT)
    }

    /// Reads back an entry (the read-only status bits are ignored).
    pub fn decode(raw: u64) -> Self {
        Self {
            vector: raw as u8,
            mode: LineMode {
                trigger: if raw & TRIGGER_LEVEL != 0 { Trigger::Level } else { Trigger::Edge },
                polarity: if raw & POLARITY_LOW != 0 { Polarity::Low } else { Polarity::High },
            },
            masked: raw & MASKED != 0,
            destination: (raw >> DESTINATION_SHIFT) as u8,
        }
    }
}

/// Vectors handed to device interrupts: `[base, base + len)`, `len <= 64`.
#[derive(Debug)]
pub struct VectorPool {
    base: u8,
    len: u8,
    /// Bit i: vector `base + i` is taken.
    used: u64,
}

impl VectorPool {
    /// A pool of `len` vectors from `base` (`len` capped at 64 and at the
    /// end of the vector space).
    pub const fn new(base: u8, len: u8) -> Self {
        let room = 256 - base as u16;
        let len = if (len as u16) > room { room as u8 } else { len };
        let len = if len > 64 { 64 } else { len };
        Self { base, len, used: 0 }
    }

    /// Takes the lowest free vector.
    pub fn allocate(&mut self) -> Option<u8> {
        let index = (0..self.len).find(|&i| self.used & (1 << i) == 0)?;
        self.used |= 1 << index;
        Some(self.base + index)
    }

    /// Gives `vector` back (ignored when it is not taken from this pool).
    pub fn release(&mut self, vector: u8) {
        if let Some(index) = self.index(vector) {
            self.used &= !(1 << index);
        }
    }

    /// Whether `vector` lies in the pool's range.
    pub fn contains(&self, vector: u8) -> bool {
        self.index(vector).is_some()
    }

    /// `vector`'s position in the pool, when it lies in its range.
    pub fn index(&self, vector: u8) -> Option<usize> {
        let index = vector.checked_sub(self.base)?;
        (index < self.len).then_some(usize::from(index))
    }

    /// Vectors taken now.
    pub fn in_use(&self) -> usize {
        self.used.count_ones() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ovr(bus_irq: u8, gsi: u32, flags: u16) -> InterruptOverride {
        InterruptOverride { bus_irq, gsi, flags }
    }

    /// What QEMU q35's MADT lists: IRQ 0 on GSI 2, and the PCI-routed ISA
    /// IRQs 5, 9, 10, 11 level-triggered, active high.
    fn q35() -> Vec<InterruptOverride> {
        vec![ovr(0, 2, 0), ovr(5, 5, 0xD), ovr(9, 9, 0xD), ovr(10, 10, 0xD), ovr(11, 11, 0xD)]
    }

    #[test]
    fn modes_follow_overrides_then_isa_and_pci_defaults() {
        let overrides = q35();
        assert_eq!(firmware_mode(8, &overrides), LineMode::ISA, "RTC: no override, ISA default");
        assert_eq!(firmware_mode(2, &overrides), LineMode::ISA, "conforming override");
        assert_eq!(firmware_mode(9, &overrides), LineMode { trigger: Trigger::Level, polarity: Polarity::High });
        assert_eq!(firmware_mode(16, &overrides), LineMode::PCI);
        assert_eq!(firmware_mode(23, &[]), LineMode::PCI);
        assert_eq!(LineMode::from_override_flags(0b0111), LineMode { trigger: Trigger::Edge, polarity: Polarity::Low });
        assert_eq!(isa_gsi(0, &overrides), 2);
        assert_eq!(isa_gsi(8, &overrides), 8);
    }

    #[test]
    fn flags_pick_a_mode_or_are_refused() {
        assert_eq!(LineMode::from_flags(interrupt::MODE_DEFAULT), Ok(None));
        assert_eq!(LineMode::from_flags(interrupt::MODE_LEVEL_LOW), Ok(Some(LineMode::PCI)));
        assert_eq!(LineMode::from_flags(interrupt::MODE_EDGE_HIGH), Ok(Some(LineMode::ISA)));
        for bad in [5, 8, u32::MAX] {
            assert_eq!(LineMode::from_flags(bad), Err(()));
        }
    }

    #[test]
    fn redirection_entries_encode_the_intel_layout() {
        let entry = RedirectionEntry { vector: 0x50, mode: LineMode::ISA, masked: true, destination: 3 };
        assert_eq!(entry.encode(), 0x0300_0000_0001_0050);
        let level_low = RedirectionEntry { vector: 0x5F, mode: LineMode::PCI, masked: false, destination: 0 };
        assert_eq!(level_low.encode(), 0xA05F);
        for e in [entry, level_low] {
            assert_eq!(RedirectionEntry::decode(e.encode()), e);
        }
        // Read-only status bits (delivery status 12, remote IRR 14) are ignored.
        assert_eq!(RedirectionEntry::decode(level_low.encode() | 1 << 12 | 1 << 14), level_low);
        assert_eq!(entry.encode() & MASKED, MASKED);
    }

    #[test]
    fn gsis_are_located_on_their_io_apic() {
        let spans = [Span { gsi_base: 0, pins: 24 }, Span { gsi_base: 24, pins: 8 }];
        assert_eq!(locate(0, spans), Some((0, 0)));
        assert_eq!(locate(23, spans), Some((0, 23)));
        assert_eq!(locate(24, spans), Some((1, 0)));
        assert_eq!(locate(31, spans), Some((1, 7)));
        assert_eq!(locate(32, spans), None);
        assert_eq!(locate(u32::MAX, spans), None);
        assert_eq!(locate(5, []), None);
        assert_eq!(locate(3, [Span { gsi_base: 8, pins: 8 }]), None);
    }

    #[test]
    fn vector_pool_hands_out_each_vector_once() {
        let mut pool = VectorPool::new(0x50, 16);
        let taken: Vec<u8> = (0..16).map(|_| pool.allocate().unwrap()).collect();
        assert_eq!(taken, (0x50..0x60).collect::<Vec<u8>>());
        assert_eq!(pool.allocate(), None);
        assert_eq!(pool.in_use(), 16);
        pool.release(0x57);
        pool.release(0x57);
        pool.release(0x40); // not ours: ignored
        assert_eq!(pool.in_use(), 15);
        assert_eq!(pool.allocate(), Some(0x57));
        assert!(pool.contains(0x5F) && !pool.contains(0x60) && !pool.contains(0x4F));
        assert_eq!(pool.index(0x52), Some(2));
        // Capped at the end of the vector space and at 64.
        let mut top = VectorPool::new(0xFE, 16);
        assert_eq!((top.allocate(), top.allocate(), top.allocate()), (Some(0xFE), Some(0xFF), None));
        assert_eq!(VectorPool::new(0x20, 200).len, 64);
    }
}
