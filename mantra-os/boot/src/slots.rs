//! A/B slots and rollback minimums (docs/boot-state.md): the UEFI variable
//! records `MantraSlots`, `MantraBootCurrent` and `MantraRollback`, encoded
//! and decoded strictly, and MantraBoot's decision, [`decide`]: which state
//! each slot moves to this boot, whether the rollback minimums rise, and
//! which slot boots. Pure logic, host-tested; `efi/ab.rs` does the I/O.

/// `MantraSlots`: magic, size.
pub const SLOTS_MAGIC: [u8; 8] = *b"MTRA-ABS";
pub const SLOTS_SIZE: usize = 112;
/// `MantraBootCurrent`: magic, size.
pub const CURRENT_MAGIC: [u8; 8] = *b"MTRA-CUR";
pub const CURRENT_SIZE: usize = 56;
/// `MantraRollback`: magic, size.
pub const ROLLBACK_MAGIC: [u8; 8] = *b"MTRA-RBK";
pub const ROLLBACK_SIZE: usize = 32;
/// The version of all three records.
pub const VERSION: u16 = 1;
/// Bytes of one slot record in `MantraSlots`.
const RECORD_SIZE: usize = 48;

/// A slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    A = 0,
    B = 1,
}

impl Slot {
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Slot::A),
            1 => Some(Slot::B),
            _ => None,
        }
    }
    /// `a` or `b`, as the console and the tools name it.
    pub fn name(self) -> char {
        match self {
            Slot::A => 'a',
            Slot::B => 'b',
        }
    }
    pub fn other(self) -> Self {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// A slot's state in `MantraSlots`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Nothing bootable seen.
    Empty = 0,
    /// Confirmed healthy.
    Active = 1,
    /// Installed, not yet confirmed.
    Pending = 2,
    /// Failed a check, or ran out of tries.
    Bad = 3,
    /// Being written by flash mode (docs/flash-protocol.md): set by BEGIN,
    /// replaced by ACTIVATE (pending). Never booted, and never changed by
    /// the boot logic ([`decide`] keeps it as it is), so an interrupted
    /// flash leaves it unbootable until a flash of it finishes.
    Flashing = 4,
}

impl State {
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(State::Empty),
            1 => Some(State::Active),
            2 => Some(State::Pending),
            3 => Some(State::Bad),
            4 => Some(State::Flashing),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "empty",
            State::Active => "active",
            State::Pending => "pending",
            State::Bad => "bad",
            State::Flashing => "flashing",
        }
    }
}

/// One slot's record (48 bytes in `MantraSlots`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotRecord {
    pub state: State,
    /// Tries left (pending only; 0 otherwise).
    pub tries: u8,
    pub security_counter: u64,
    /// SHA-256 of the slot's `MANTRA/MANIFEST.SIG`.
    pub envelope_hash: [u8; 32],
}

impl SlotRecord {
    pub const EMPTY: Self = Self { state: State::Empty, tries: 0, security_counter: 0, envelope_hash: [0; 32] };

    fn encode(&self, out: &mut [u8]) {
        out[0] = self.state as u8;
        out[1] = self.tries;
        out[2..8].fill(0);
        out[8..16].copy_from_slice(&self.security_counter.to_le_bytes());
        out[16..48].copy_from_slice(&self.envelope_hash);
    }

    fn decode(raw: &[u8]) -> Option<Self> {
        let state = State::from_u8(raw[0])?;
        let tries = raw[1];
        if raw[2..8].iter().any(|&b| b != 0) || (state != State::Pending && tries != 0) {
            return None;
        }
        Some(Self { state, tries, security_counter: u64_at(raw, 8), envelope_hash: array_at(raw, 16) })
    }
}

/// `MantraSlots`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slots {
    /// The slot last confirmed healthy.
    pub preferred: Slot,
    pub records: [SlotRecord; 2],
}

impl Slots {
    pub fn record(&self, slot: Slot) -> &SlotRecord {
        &self.records[slot.index()]
    }

    pub fn encode(&self) -> [u8; SLOTS_SIZE] {
        let mut out = [0u8; SLOTS_SIZE];
        out[0..8].copy_from_slice(&SLOTS_MAGIC);
        out[8..10].copy_from_slice(&VERSION.to_le_bytes());
        out[10] = self.preferred as u8;
        for slot in Slot::ALL {
            let at = 16 + slot.index() * RECORD_SIZE;
            self.records[slot.index()].encode(&mut out[at..at + RECORD_SIZE]);
        }
        out
    }

    /// The variable's bytes, or `None` when they are not a well-formed
    /// version 1 record (wrong size, magic, version, preferred slot, state,
    /// tries of a slot that is not pending, or a nonzero reserved byte).
    pub fn decode(raw: &[u8]) -> Option<Self> {
        if raw.len() != SLOTS_SIZE || raw[0..8] != SLOTS_MAGIC || u16_at(raw, 8) != VERSION {
            return None;
        }
        let preferred = Slot::from_u8(raw[10])?;
        if raw[11..16].iter().any(|&b| b != 0) {
            return None;
        }
        let a = SlotRecord::decode(&raw[16..64])?;
        let b = SlotRecord::decode(&raw[64..112])?;
        Some(Self { preferred, records: [a, b] })
    }
}

/// `MantraBootCurrent`: what MantraBoot booted (for MantraInit's confirmation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootCurrent {
    pub slot: Slot,
    /// Active or pending.
    pub state: State,
    /// Tries left after this boot.
    pub tries_left: u8,
    pub security_counter: u64,
    pub envelope_hash: [u8; 32],
}

impl BootCurrent {
    pub fn encode(&self) -> [u8; CURRENT_SIZE] {
        let mut out = [0u8; CURRENT_SIZE];
        out[0..8].copy_from_slice(&CURRENT_MAGIC);
        out[8..10].copy_from_slice(&VERSION.to_le_bytes());
        out[10] = self.slot as u8;
        out[11] = self.state as u8;
        out[12] = self.tries_left;
        out[16..24].copy_from_slice(&self.security_counter.to_le_bytes());
        out[24..56].copy_from_slice(&self.envelope_hash);
        out
    }

    pub fn decode(raw: &[u8]) -> Option<Self> {
        if raw.len() != CURRENT_SIZE || raw[0..8] != CURRENT_MAGIC || u16_at(raw, 8) != VERSION {
            return None;
        }
        let slot = Slot::from_u8(raw[10])?;
        let state = State::from_u8(raw[11]).filter(|s| matches!(s, State::Active | State::Pending))?;
        if raw[13..16].iter().any(|&b| b != 0) {
            return None;
        }
        Some(Self {
            slot,
            state,
            tries_left: raw[12],
            security_counter: u64_at(raw, 16),
            envelope_hash: array_at(raw, 24),
        })
    }
}

/// The rollback minimums (`MantraRollback`, and the TPM NV index).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rollback {
    pub security_counter: u64,
    pub revocations: u64,
}

/// Size of the TPM NV index's data: the two minimums.
pub const NV_SIZE: usize = 16;

impl Rollback {
    pub fn encode(&self) -> [u8; ROLLBACK_SIZE] {
        let mut out = [0u8; ROLLBACK_SIZE];
        out[0..8].copy_from_slice(&ROLLBACK_MAGIC);
        out[8..10].copy_from_slice(&VERSION.to_le_bytes());
        out[16..24].copy_from_slice(&self.security_counter.to_le_bytes());
        out[24..32].copy_from_slice(&self.revocations.to_le_bytes());
        out
    }

    pub fn decode(raw: &[u8]) -> Option<Self> {
        if raw.len() != ROLLBACK_SIZE || raw[0..8] != ROLLBACK_MAGIC || u16_at(raw, 8) != VERSION {
            return None;
        }
        if raw[10..16].iter().any(|&b| b != 0) {
            return None;
        }
        Some(Self { security_counter: u64_at(raw, 16), revocations: u64_at(raw, 24) })
    }

    /// The TPM NV index's 16 bytes: the two minimums, little-endian.
    pub fn to_nv(&self) -> [u8; NV_SIZE] {
        let mut out = [0u8; NV_SIZE];
        out[0..8].copy_from_slice(&self.security_counter.to_le_bytes());
        out[8..16].copy_from_slice(&self.revocations.to_le_bytes());
        out
    }

    pub fn from_nv(raw: &[u8; NV_SIZE]) -> Self {
        Self { security_counter: u64_at(raw, 0), revocations: u64_at(raw, 8) }
    }

    /// The larger of each minimum.
    pub fn max(self, other: Self) -> Self {
        Self {
            security_counter: self.security_counter.max(other.security_counter),
            revocations: self.revocations.max(other.revocations),
        }
    }
}

/// What MantraBoot found in a slot this boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// No partition or no file system: nothing installed.
    Empty,
    /// It failed a check; `envelope_hash` is the SHA-256 of its
    /// `MANTRA/MANIFEST.SIG` when the file could be read.
    Refused { envelope_hash: Option<[u8; 32]> },
    /// It verified (signatures, board, minimums, every component).
    Verified { security_counter: u64, revocations: u64, envelope_hash: [u8; 32] },
}

/// Why a slot's state changed (or stays bad) this boot, for the console.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Factory-fresh device (no or malformed `MantraSlots`): it verified, so it is active.
    Factory,
    /// New contents (its envelope hash differs from its record): pending.
    NewContents { tries: u8 },
    /// Pending and found with no tries left: it never confirmed.
    OutOfTries,
    /// It verified, but its values are below the minimums just raised.
    BelowMinimum { security_counter: u64, revocations: u64 },
    /// Marked bad on an earlier boot and unchanged since.
    StillBad,
    /// It failed a check this boot (the caller printed which).
    Refused,
    /// It was installed before and is empty now.
    Emptied,
    /// Its record says flashing (a flash began and has not been activated):
    /// kept as it is, not booted.
    Flashing,
}

/// A slot to boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Boot {
    pub slot: Slot,
    /// Active or pending.
    pub state: State,
    /// Tries left after this boot (pending; 0 for active).
    pub tries_left: u8,
    pub security_counter: u64,
    pub envelope_hash: [u8; 32],
}

impl Boot {
    pub fn current(&self) -> BootCurrent {
        BootCurrent {
            slot: self.slot,
            state: self.state,
            tries_left: self.tries_left,
            security_counter: self.security_counter,
            envelope_hash: self.envelope_hash,
        }
    }
}

/// The outcome of [`decide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// `MantraSlots` after this boot (written before the kernel starts
    /// when it differs from what was stored).
    pub slots: Slots,
    /// Whether `slots` differs from the stored variable (or there was none).
    pub slots_changed: bool,
    /// The rollback minimums after this boot.
    pub rollback: Rollback,
    /// The slot whose confirmation raised the minimums, when they rose.
    pub raised_by: Option<Slot>,
    /// What happened to each slot.
    pub events: [Option<Event>; 2],
    /// The slot to boot; `None`: nothing bootable.
    pub boot: Option<Boot>,
}

/// MantraBoot's state machine (docs/boot-state.md, "MantraSlots"):
/// `stored` is the decoded `MantraSlots` (`None`: missing or malformed, a
/// factory-fresh device), `found` what each slot holds this boot (verified
/// against `minimum`), `tries` `CONFIG_BOOT_TRIES`.
pub fn decide(stored: Option<Slots>, found: [Found; 2], minimum: Rollback, tries: u8) -> Decision {
    // Minimums rise to the values of the preferred slot once it is active
    // (MantraInit confirmed it on an earlier boot) and still holds the
    // contents it was confirmed with.
    let mut rollback = minimum;
    let mut raised_by = None;
    if let Some(stored) = stored {
        let preferred = stored.preferred;
        let record = stored.record(preferred);
        if let Found::Verified { security_counter, revocations, envelope_hash } = found[preferred.index()] {
            if record.state == State::Active && record.envelope_hash == envelope_hash {
                let confirmed = rollback.max(Rollback { security_counter, revocations });
                if confirmed != rollback {
                    raised_by = Some(preferred);
                }
                rollback = confirmed;
            }
        }
    }

    let mut records = [SlotRecord::EMPTY; 2];
    let mut events = [None; 2];
    for slot in Slot::ALL {
        let old = stored.map(|s| *s.record(slot));
        if let Some(old) = old.filter(|r| r.state == State::Flashing) {
            // Only flash mode changes a slot it is writing.
            records[slot.index()] = old;
            events[slot.index()] = Some(Event::Flashing);
            continue;
        }
        let (record, event) = match found[slot.index()] {
            Found::Empty => {
                (SlotRecord::EMPTY, old.filter(|r| r.state != State::Empty).map(|_| Event::Emptied))
            }
            Found::Refused { envelope_hash } => {
                let hash = envelope_hash.unwrap_or([0; 32]);
                let counter = old.filter(|r| r.envelope_hash == hash).map_or(0, |r| r.security_counter);
                let record = SlotRecord { state: State::Bad, tries: 0, security_counter: counter, envelope_hash: hash };
                (record, Some(Event::Refused))
            }
            Found::Verified { security_counter, revocations, envelope_hash } => {
                let bad = SlotRecord { state: State::Bad, tries: 0, security_counter, envelope_hash };
                if security_counter < rollback.security_counter || revocations < rollback.revocations {
                    (bad, Some(Event::BelowMinimum { security_counter, revocations }))
                } else if stored.is_none() {
                    let active = SlotRecord { state: State::Active, ..bad };
                    (active, Some(Event::Factory))
                } else {
                    match old {
                        Some(r) if r.state != State::Empty && r.envelope_hash == envelope_hash => match r.state {
                            State::Pending if r.tries == 0 => (bad, Some(Event::OutOfTries)),
                            State::Bad => (bad, Some(Event::StillBad)),
                            state => (SlotRecord { state, tries: r.tries, ..bad }, None),
                        },
                        _ => {
                            let pending = SlotRecord { state: State::Pending, tries, ..bad };
                            (pending, Some(Event::NewContents { tries }))
                        }
                    }
                }
            }
        };
        records[slot.index()] = record;
        events[slot.index()] = event;
    }

    let preferred = stored.map_or(Slot::A, |s| s.preferred);
    let bootable = |slot: Slot, state: State| {
        let r = &records[slot.index()];
        r.state == state && (state != State::Pending || r.tries > 0)
    };
    let choice = match (bootable(Slot::A, State::Pending), bootable(Slot::B, State::Pending)) {
        (true, true) => Some(if records[1].security_counter > records[0].security_counter { Slot::B } else { Slot::A }),
        (true, false) => Some(Slot::A),
        (false, true) => Some(Slot::B),
        (false, false) if bootable(preferred, State::Active) => Some(preferred),
        (false, false) if bootable(preferred.other(), State::Active) => Some(preferred.other()),
        (false, false) => None,
    };
    let boot = choice.map(|slot| {
        let record = &mut records[slot.index()];
        if record.state == State::Pending {
            // Counted before the kernel starts: a crash is a failed try.
            record.tries -= 1;
        }
        Boot {
            slot,
            state: record.state,
            tries_left: record.tries,
            security_counter: record.security_counter,
            envelope_hash: record.envelope_hash,
        }
    });
    let slots = Slots { preferred, records };
    Decision { slots, slots_changed: stored != Some(slots), rollback, raised_by, events, boot }
}

fn u16_at(raw: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([raw[at], raw[at + 1]])
}

fn u64_at(raw: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&raw[at..at + 8]);
    u64::from_le_bytes(b)
}

fn array_at(raw: &[u8], at: usize) -> [u8; 32] {
    let mut b = [0u8; 32];
    b.copy_from_slice(&raw[at..at + 32]);
    b
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    const TRIES: u8 = 3;
    const H1: [u8; 32] = [0x11; 32];
    const H2: [u8; 32] = [0x22; 32];

    fn good(counter: u64, hash: [u8; 32]) -> Found {
        Found::Verified { security_counter: counter, revocations: 1, envelope_hash: hash }
    }
    fn record(state: State, tries: u8, counter: u64, hash: [u8; 32]) -> SlotRecord {
        SlotRecord { state, tries, security_counter: counter, envelope_hash: hash }
    }
    fn slots(preferred: Slot, a: SlotRecord, b: SlotRecord) -> Slots {
        Slots { preferred, records: [a, b] }
    }
    const MIN0: Rollback = Rollback { security_counter: 0, revocations: 0 };

    #[test]
    fn records_round_trip_with_the_documented_layout() {
        let s = slots(Slot::B, record(State::Pending, 2, 7, H1), record(State::Bad, 0, 1, H2));
        let raw = s.encode();
        assert_eq!(&raw[0..8], b"MTRA-ABS");
        assert_eq!(raw[8..10], [1, 0]);
        assert_eq!(raw[10], 1);
        assert_eq!((raw[16], raw[17]), (2, 2));
        assert_eq!(raw[24..32], 7u64.to_le_bytes());
        assert_eq!(raw[32..64], H1);
        assert_eq!((raw[64], raw[65]), (3, 0));
        assert_eq!(raw[80..112], H2);
        assert_eq!(Slots::decode(&raw), Some(s));

        let c = BootCurrent { slot: Slot::B, state: State::Pending, tries_left: 1, security_counter: 9, envelope_hash: H2 };
        let raw = c.encode();
        assert_eq!(&raw[0..8], b"MTRA-CUR");
        assert_eq!(raw[8..16], [1, 0, 1, 2, 1, 0, 0, 0]);
        assert_eq!(raw[16..24], 9u64.to_le_bytes());
        assert_eq!(raw[24..56], H2);
        assert_eq!(BootCurrent::decode(&raw), Some(c));

        let r = Rollback { security_counter: 4, revocations: 2 };
        let raw = r.encode();
        assert_eq!(&raw[0..8], b"MTRA-RBK");
        assert_eq!(raw[8..16], [1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(raw[16..24], 4u64.to_le_bytes());
        assert_eq!(raw[24..32], 2u64.to_le_bytes());
        assert_eq!(Rollback::decode(&raw), Some(r));
        assert_eq!(Rollback::from_nv(&r.to_nv()), r);
    }

    #[test]
    fn malformed_records_are_absent() {
        let good = slots(Slot::A, record(State::Active, 0, 1, H1), SlotRecord::EMPTY).encode();
        assert!(Slots::decode(&good[..111]).is_none());
        for (at, value) in [(0, b'X'), (8, 2), (10, 2), (11, 1), (15, 1), (16, 5), (17, 1), (18, 1), (23, 1), (64, 9)] {
            let mut raw = good;
            raw[at] = value;
            assert!(Slots::decode(&raw).is_none(), "byte {at} = {value}");
        }
        let mut rb = Rollback::default().encode();
        rb[12] = 1;
        assert!(Rollback::decode(&rb).is_none());
        assert!(Rollback::decode(&rb[..31]).is_none());
        let mut cur = BootCurrent { slot: Slot::A, state: State::Active, tries_left: 0, security_counter: 0, envelope_hash: H1 }.encode();
        cur[11] = 3; // bad is not a state MantraBoot boots
        assert!(BootCurrent::decode(&cur).is_none());
    }

    #[test]
    fn factory_fresh_device_makes_verified_slots_active_and_boots_a() {
        let d = decide(None, [good(0, H1), good(0, H1)], MIN0, TRIES);
        assert_eq!(d.slots.preferred, Slot::A);
        assert_eq!(d.slots.records, [record(State::Active, 0, 0, H1); 2]);
        assert_eq!(d.events, [Some(Event::Factory); 2]);
        assert_eq!(d.boot.map(|b| (b.slot, b.state, b.tries_left)), Some((Slot::A, State::Active, 0)));
        assert!(d.slots_changed);
        assert_eq!(d.raised_by, None);
        // A refused slot a: b boots, a is bad.
        let d = decide(None, [Found::Refused { envelope_hash: Some(H2) }, good(0, H1)], MIN0, TRIES);
        assert_eq!(d.slots.records[0].state, State::Bad);
        assert_eq!(d.boot.map(|b| b.slot), Some(Slot::B));
    }

    #[test]
    fn unchanged_active_device_writes_nothing() {
        let stored = slots(Slot::A, record(State::Active, 0, 0, H1), record(State::Active, 0, 0, H1));
        let d = decide(Some(stored), [good(0, H1), good(0, H1)], MIN0, TRIES);
        assert!(!d.slots_changed);
        assert_eq!(d.events, [None, None]);
        assert_eq!(d.boot.map(|b| (b.slot, b.state)), Some((Slot::A, State::Active)));
    }

    #[test]
    fn update_is_pending_for_its_tries_then_falls_back() {
        let mut stored = slots(Slot::A, record(State::Active, 0, 0, H1), record(State::Active, 0, 0, H1));
        let found = [good(0, H1), good(1, H2)];
        let mut seen = std::vec::Vec::new();
        for _ in 0..TRIES {
            let d = decide(Some(stored), found, MIN0, TRIES);
            let boot = d.boot.unwrap();
            assert_eq!((boot.slot, boot.state), (Slot::B, State::Pending));
            assert!(d.slots_changed);
            seen.push(boot.tries_left);
            stored = d.slots;
        }
        assert_eq!(seen, [2, 1, 0]);
        let d = decide(Some(stored), found, MIN0, TRIES);
        assert_eq!(d.events[1], Some(Event::OutOfTries));
        assert_eq!(d.slots.records[1], record(State::Bad, 0, 1, H2));
        assert_eq!(d.boot.map(|b| (b.slot, b.state)), Some((Slot::A, State::Active)));
        // ... and stays bad until new contents arrive.
        let d2 = decide(Some(d.slots), found, MIN0, TRIES);
        assert_eq!(d2.events[1], Some(Event::StillBad));
        assert!(!d2.slots_changed);
        let d3 = decide(Some(d.slots), [good(0, H1), good(2, [0x33; 32])], MIN0, TRIES);
        assert_eq!(d3.events[1], Some(Event::NewContents { tries: TRIES }));
        assert_eq!(d3.boot.map(|b| (b.slot, b.tries_left)), Some((Slot::B, TRIES - 1)));
    }

    #[test]
    fn both_pending_boots_the_higher_counter_then_a() {
        let stored = slots(Slot::A, record(State::Pending, 2, 3, H1), record(State::Pending, 2, 5, H2));
        let d = decide(Some(stored), [good(3, H1), good(5, H2)], MIN0, TRIES);
        assert_eq!(d.boot.map(|b| b.slot), Some(Slot::B));
        let stored = slots(Slot::B, record(State::Pending, 2, 5, H1), record(State::Pending, 2, 5, H2));
        let d = decide(Some(stored), [good(5, H1), good(5, H2)], MIN0, TRIES);
        assert_eq!(d.boot.map(|b| b.slot), Some(Slot::A));
    }

    #[test]
    fn preferred_active_then_other_active() {
        let stored = slots(Slot::B, record(State::Active, 0, 1, H1), record(State::Active, 0, 2, H2));
        let d = decide(Some(stored), [good(1, H1), good(2, H2)], MIN0, TRIES);
        assert_eq!(d.boot.map(|b| b.slot), Some(Slot::B));
        let d = decide(Some(stored), [good(1, H1), Found::Refused { envelope_hash: Some(H2) }], MIN0, TRIES);
        assert_eq!(d.boot.map(|b| b.slot), Some(Slot::A));
        assert_eq!(d.slots.records[1], record(State::Bad, 0, 2, H2));
    }

    #[test]
    fn nothing_bootable() {
        let d = decide(None, [Found::Empty, Found::Refused { envelope_hash: None }], MIN0, TRIES);
        assert_eq!(d.boot, None);
        assert_eq!(d.slots.records[0], SlotRecord::EMPTY);
        assert_eq!(d.slots.records[1].state, State::Bad);
    }

    #[test]
    fn confirmed_preferred_slot_raises_the_minimums() {
        // MantraInit confirmed b (active, preferred) with counter 4.
        let stored = slots(Slot::B, record(State::Active, 0, 2, H1), record(State::Active, 0, 4, H2));
        let found = [
            Found::Verified { security_counter: 2, revocations: 1, envelope_hash: H1 },
            Found::Verified { security_counter: 4, revocations: 3, envelope_hash: H2 },
        ];
        let d = decide(Some(stored), found, Rollback { security_counter: 1, revocations: 1 }, TRIES);
        assert_eq!(d.rollback, Rollback { security_counter: 4, revocations: 3 });
        assert_eq!(d.raised_by, Some(Slot::B));
        // Slot a is now below the minimum: bad, never booted again.
        assert_eq!(d.events[0], Some(Event::BelowMinimum { security_counter: 2, revocations: 1 }));
        assert_eq!(d.slots.records[0].state, State::Bad);
        assert_eq!(d.boot.map(|b| b.slot), Some(Slot::B));
        // Already at those values: no raise reported.
        let d = decide(Some(d.slots), found, d.rollback, TRIES);
        assert_eq!(d.raised_by, None);
    }

    #[test]
    fn pending_or_changed_slots_never_raise_the_minimums() {
        // b is preferred but pending: no raise.
        let stored = slots(Slot::B, record(State::Active, 0, 0, H1), record(State::Pending, 2, 4, H2));
        let d = decide(Some(stored), [good(0, H1), good(4, H2)], MIN0, TRIES);
        assert_eq!(d.rollback, MIN0);
        // b active, but its contents changed since it was confirmed: no raise.
        let stored = slots(Slot::B, record(State::Active, 0, 0, H1), record(State::Active, 0, 4, H2));
        let d = decide(Some(stored), [good(0, H1), good(9, [0x44; 32])], MIN0, TRIES);
        assert_eq!(d.rollback, MIN0);
        assert_eq!(d.events[1], Some(Event::NewContents { tries: TRIES }));
        // No stored variable (fresh device): no raise either.
        let d = decide(None, [good(7, H1), good(7, H1)], MIN0, TRIES);
        assert_eq!(d.rollback, MIN0);
    }

    #[test]
    fn flashing_slots_are_kept_and_never_booted() {
        // State 4 is a well-formed record (not a malformed variable).
        let stored = slots(Slot::A, record(State::Active, 0, 0, H1), record(State::Flashing, 0, 2, H2));
        let raw = stored.encode();
        assert_eq!(raw[64], 4);
        assert_eq!(Slots::decode(&raw), Some(stored));
        let mut tries = raw;
        tries[65] = 1; // tries belong to pending records only
        assert!(Slots::decode(&tries).is_none());
        // Whatever the slot holds (half written, refused, even verified), it
        // stays flashing and a boots.
        for found_b in [good(2, H2), good(2, [0x33; 32]), Found::Refused { envelope_hash: None }, Found::Empty] {
            let d = decide(Some(stored), [good(0, H1), found_b], MIN0, TRIES);
            assert_eq!(d.slots.records[1], record(State::Flashing, 0, 2, H2));
            assert_eq!(d.events[1], Some(Event::Flashing));
            assert_eq!(d.boot.map(|b| (b.slot, b.state)), Some((Slot::A, State::Active)));
            assert!(!d.slots_changed);
        }
        // Preferred and flashing (never the case flash mode makes, but a
        // variable can say it): nothing else bootable means no boot.
        let stored = slots(Slot::B, record(State::Bad, 0, 0, H1), record(State::Flashing, 0, 2, H2));
        let d = decide(Some(stored), [good(0, H1), good(2, H2)], MIN0, TRIES);
        assert_eq!(d.boot, None);
        assert_eq!(d.slots.records[1].state, State::Flashing);
        // A flashing preferred slot never raises the minimums.
        let stored = slots(Slot::B, record(State::Active, 0, 0, H1), record(State::Flashing, 0, 7, H2));
        let d = decide(Some(stored), [good(0, H1), good(7, H2)], MIN0, TRIES);
        assert_eq!(d.rollback, MIN0);
        assert_eq!(d.boot.map(|b| b.slot), Some(Slot::A));
    }

    #[test]
    fn emptied_slot_is_recorded_empty() {
        let stored = slots(Slot::A, record(State::Active, 0, 0, H1), record(State::Active, 0, 0, H1));
        let d = decide(Some(stored), [good(0, H1), Found::Empty], MIN0, TRIES);
        assert_eq!(d.events[1], Some(Event::Emptied));
        assert_eq!(d.slots.records[1], SlotRecord::EMPTY);
    }
}
