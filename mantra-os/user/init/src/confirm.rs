//! Boot confirmation (docs/boot-state.md, "Boot confirmation"): once every
//! service that counts is healthy, MantraInit reads `MantraBootCurrent`;
//! when MantraBoot booted a pending slot, it marks that slot active and
//! preferred in `MantraSlots`. The byte layouts and the record update are
//! here, as pure logic; main.rs makes the FIRMWARE_VARIABLE_* calls.

use alloc::format;
use alloc::string::String;

/// The volatile variable MantraBoot writes every boot.
pub const BOOT_CURRENT: &str = "MantraBootCurrent";
/// The NV slot table.
pub const SLOTS: &str = "MantraSlots";

pub const BOOT_CURRENT_MAGIC: [u8; 8] = *b"MTRA-CUR";
pub const BOOT_CURRENT_SIZE: usize = 56;
pub const SLOTS_MAGIC: [u8; 8] = *b"MTRA-ABS";
pub const SLOTS_SIZE: usize = 112;
const SLOT_RECORD: usize = 48;
const SLOT_RECORDS_AT: usize = 16;

/// Slot states (the record's and MantraBootCurrent's).
pub const STATE_EMPTY: u8 = 0;
pub const STATE_ACTIVE: u8 = 1;
pub const STATE_PENDING: u8 = 2;
pub const STATE_BAD: u8 = 3;
/// Being written by MantraBoot's flash mode (docs/flash-protocol.md): a
/// valid record, never booted, never confirmed.
pub const STATE_FLASHING: u8 = 4;

/// `a` or `b`.
pub fn slot_name(slot: u8) -> char {
    if slot == 0 {
        'a'
    } else {
        'b'
    }
}

/// What MantraBoot recorded about this boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootCurrent {
    /// 0 = a, 1 = b.
    pub slot: u8,
    /// STATE_ACTIVE or STATE_PENDING.
    pub state: u8,
    pub tries_left: u8,
    pub security_counter: u64,
    /// SHA-256 of the booted slot's `MANTRA/MANIFEST.SIG`.
    pub envelope_hash: [u8; 32],
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Parses `MantraBootCurrent`, checking magic, version, size, slot, state
/// and the reserved bytes.
pub fn parse_boot_current(b: &[u8]) -> Result<BootCurrent, String> {
    if b.len() != BOOT_CURRENT_SIZE {
        return Err(format!("{BOOT_CURRENT} is {} bytes, not {BOOT_CURRENT_SIZE}", b.len()));
    }
    if b[..8] != BOOT_CURRENT_MAGIC || u16_at(b, 8) != 1 {
        return Err(format!("{BOOT_CURRENT} has a bad magic or version"));
    }
    let (slot, state, tries_left) = (b[10], b[11], b[12]);
    if slot > 1 || !matches!(state, STATE_ACTIVE | STATE_PENDING) || b[13..16] != [0; 3] {
        return Err(format!("{BOOT_CURRENT} has a bad slot, state or reserved field"));
    }
    let mut envelope_hash = [0u8; 32];
    envelope_hash.copy_from_slice(&b[24..56]);
    Ok(BootCurrent { slot, state, tries_left, security_counter: u64_at(b, 16), envelope_hash })
}

/// Why `MantraSlots` cannot be updated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotsError {
    Malformed(String),
    /// The booted slot's record names other contents than MantraBoot booted.
    HashMismatch { slot: u8 },
    /// The booted slot's record says a flash of it is in progress.
    Flashing { slot: u8 },
}

impl core::fmt::Display for SlotsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SlotsError::Malformed(why) => write!(f, "{why}"),
            SlotsError::HashMismatch { slot } => write!(
                f,
                "the {SLOTS} record of slot {} does not match the booted envelope hash",
                slot_name(*slot)
            ),
            SlotsError::Flashing { slot } => write!(
                f,
                "the {SLOTS} record of slot {} says it is being flashed",
                slot_name(*slot)
            ),
        }
    }
}

/// Checks a `MantraSlots` value: magic, version, size, preferred slot,
/// every record's state and the reserved fields.
pub fn check_slots(b: &[u8]) -> Result<(), SlotsError> {
    let bad = |why: &str| Err(SlotsError::Malformed(format!("{SLOTS} {why}")));
    if b.len() != SLOTS_SIZE {
        return bad(&format!("is {} bytes, not {SLOTS_SIZE}", b.len()));
    }
    if b[..8] != SLOTS_MAGIC || u16_at(b, 8) != 1 {
        return bad("has a bad magic or version");
    }
    if b[10] > 1 || b[11..16] != [0; 5] {
        return bad("has a bad preferred slot or reserved field");
    }
    for slot in 0..2 {
        let r = &b[SLOT_RECORDS_AT + slot * SLOT_RECORD..][..SLOT_RECORD];
        let tries_ok = r[0] == STATE_PENDING || r[1] == 0;
        if r[0] > STATE_FLASHING || !tries_ok || r[2..8] != [0; 6] {
            return bad(&format!("record of slot {} is malformed", slot_name(slot as u8)));
        }
    }
    Ok(())
}

/// The confirmed `MantraSlots`: the booted slot's record active with 0
/// tries, and the preferred slot the booted one; everything else as it
/// was. The record must name the contents MantraBoot booted.
pub fn confirm_slots(slots: &[u8], current: &BootCurrent) -> Result<[u8; SLOTS_SIZE], SlotsError> {
    check_slots(slots)?;
    let mut out = [0u8; SLOTS_SIZE];
    out.copy_from_slice(slots);
    let at = SLOT_RECORDS_AT + usize::from(current.slot) * SLOT_RECORD;
    if out[at] == STATE_FLASHING {
        // MantraBoot never boots a slot that is being flashed: this record
        // is newer than the boot (a flash began since), so leave it alone.
        return Err(SlotsError::Flashing { slot: current.slot });
    }
    if out[at + 16..at + 48] != current.envelope_hash {
        return Err(SlotsError::HashMismatch { slot: current.slot });
    }
    out[at] = STATE_ACTIVE;
    out[at + 1] = 0;
    out[10] = current.slot;
    Ok(out)
}

/// `init: boot confirmed: slot a (security counter 4)`.
pub fn confirmed_line(current: &BootCurrent) -> String {
    format!("init: boot confirmed: slot {} (security counter {})", slot_name(current.slot), current.security_counter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current(slot: u8, state: u8) -> ([u8; BOOT_CURRENT_SIZE], BootCurrent) {
        let mut b = [0u8; BOOT_CURRENT_SIZE];
        b[..8].copy_from_slice(b"MTRA-CUR");
        b[8] = 1;
        b[10] = slot;
        b[11] = state;
        b[12] = 2;
        b[16..24].copy_from_slice(&4u64.to_le_bytes());
        b[24..56].copy_from_slice(&[0xab; 32]);
        let parsed = BootCurrent { slot, state, tries_left: 2, security_counter: 4, envelope_hash: [0xab; 32] };
        (b, parsed)
    }

    fn slots() -> [u8; SLOTS_SIZE] {
        let mut b = [0u8; SLOTS_SIZE];
        b[..8].copy_from_slice(b"MTRA-ABS");
        b[8] = 1;
        b[10] = 0; // preferred a
        // a: active, counter 3, hash 0x11..; b: pending, 2 tries, counter 4, hash 0xab..
        b[16] = STATE_ACTIVE;
        b[24..32].copy_from_slice(&3u64.to_le_bytes());
        b[32..64].copy_from_slice(&[0x11; 32]);
        b[64] = STATE_PENDING;
        b[65] = 2;
        b[72..80].copy_from_slice(&4u64.to_le_bytes());
        b[80..112].copy_from_slice(&[0xab; 32]);
        b
    }

    #[test]
    fn boot_current_parses_and_rejects_malformed_values() {
        let (bytes, expected) = current(1, STATE_PENDING);
        assert_eq!(parse_boot_current(&bytes), Ok(expected));
        assert!(parse_boot_current(&bytes[..55]).is_err());
        for (at, value) in [(0, b'X'), (8, 2), (10, 2), (11, 0), (11, 3), (13, 1), (15, 1)] {
            let mut bad = bytes;
            bad[at] = value;
            assert!(parse_boot_current(&bad).is_err(), "byte {at} = {value}");
        }
    }

    #[test]
    fn confirming_marks_the_booted_slot_active_and_preferred() {
        let (_, cur) = current(1, STATE_PENDING);
        let before = slots();
        let after = confirm_slots(&before, &cur).unwrap();
        assert_eq!((after[64], after[65], after[10]), (STATE_ACTIVE, 0, 1));
        // Nothing else changed: slot a's record, b's counter and hash, the header.
        assert_eq!(after[..10], before[..10]);
        assert_eq!(after[11..64], before[11..64]);
        assert_eq!(after[66..], before[66..]);
        assert_eq!(confirmed_line(&cur), "init: boot confirmed: slot b (security counter 4)");
        // Confirming again changes nothing more.
        assert_eq!(confirm_slots(&after, &cur).unwrap(), after);
    }

    #[test]
    fn a_record_for_other_contents_is_not_confirmed() {
        let (_, mut cur) = current(1, STATE_PENDING);
        cur.envelope_hash[31] ^= 1;
        assert_eq!(confirm_slots(&slots(), &cur), Err(SlotsError::HashMismatch { slot: 1 }));
        let (_, cur_a) = current(0, STATE_PENDING);
        assert_eq!(confirm_slots(&slots(), &cur_a), Err(SlotsError::HashMismatch { slot: 0 }));
    }

    #[test]
    fn a_flashing_record_is_well_formed_but_never_confirmed() {
        let (_, cur) = current(1, STATE_PENDING);
        let mut other_flashing = slots();
        // a is being flashed: b still confirms, a's record is kept.
        other_flashing[16] = STATE_FLASHING;
        let after = confirm_slots(&other_flashing, &cur).unwrap();
        assert_eq!((after[16], after[64], after[10]), (STATE_FLASHING, STATE_ACTIVE, 1));
        let mut booted_flashing = slots();
        booted_flashing[64] = STATE_FLASHING;
        booted_flashing[65] = 0;
        assert_eq!(confirm_slots(&booted_flashing, &cur), Err(SlotsError::Flashing { slot: 1 }));
    }

    #[test]
    fn malformed_slot_tables_are_refused() {
        let (_, cur) = current(1, STATE_PENDING);
        assert!(matches!(confirm_slots(&slots()[..111], &cur), Err(SlotsError::Malformed(_))));
        // magic, version, preferred, header reserved, state, tries on a non-pending record, record reserved
        for (at, value) in [(0, b'x'), (9, 1), (10, 2), (12, 1), (16, 5), (17, 1), (66, 1)] {
            let mut bad = slots();
            bad[at] = value;
            assert!(matches!(confirm_slots(&bad, &cur), Err(SlotsError::Malformed(_))), "byte {at} = {value}");
        }
    }
}
