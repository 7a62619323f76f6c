"""A reader of OVMF's variable store (the firmware-vars.fd copy the QEMU
runner keeps beside an image): finds the live copy of a variable, so tests
read what MantraBoot wrote through SetVariable.

edk2's authenticated variable format (MdeModulePkg VariableFormat.h): each
variable is a 60-byte AUTHENTICATED_VARIABLE_HEADER -- StartId 0x55AA (u16),
State (u8), reserved (u8), Attributes (u32), MonotonicCount (u64),
TimeStamp (16), PubKeyIndex (u32), NameSize (u32), DataSize (u32),
VendorGuid (16) -- then the UTF-16 name (NameSize bytes, NUL included) and
the data. State 0x3F (VAR_ADDED) marks the live copy; an update writes a new
copy and marks the old one deleted."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

MANTRA_VENDOR = uuid.UUID("b1237644-3bb1-4cbd-a419-51a543783796")
NON_VOLATILE, BOOTSERVICE_ACCESS, RUNTIME_ACCESS = 0x1, 0x2, 0x4
_HEADER = struct.Struct("<HBBIQ16sIII16s")
_START_ID = 0x55AA
_VAR_ADDED = 0x3F


def read_variable(store: Path, name: str, vendor: uuid.UUID = MANTRA_VENDOR) -> tuple[int, bytes] | None:
    """(attributes, data) of the live variable `name`, or None."""
    data = store.read_bytes()
    wanted = name.encode("utf-16-le") + b"\0\0"
    found = None
    at = data.find(wanted)
    while at >= 0:
        header = at - _HEADER.size
        if header >= 0:
            start, state, _, attributes, _, _, _, name_size, data_size, guid = _HEADER.unpack_from(data, header)
            if (start == _START_ID and state == _VAR_ADDED and name_size == len(wanted)
                    and uuid.UUID(bytes_le=guid) == vendor):
                value = data[at + name_size : at + name_size + data_size]
                found = (attributes, value)
        at = data.find(wanted, at + 1)
    return found


# MantraSlots (docs/boot-state.md): slot record states. 4 (flashing) is set
# by MantraBoot's flash mode at BEGIN and replaced by ACTIVATE (pending); it
# is a well-formed state, never booted.
STATE_EMPTY, STATE_ACTIVE, STATE_PENDING, STATE_BAD, STATE_FLASHING = range(5)
STATE_NAMES = {0: "empty", 1: "active", 2: "pending", 3: "bad", 4: "flashing"}


def parse_mantra_slots(data: bytes) -> tuple[int, list[tuple[int, int, int, bytes]]]:
    """A MantraSlots value, checked strictly: (preferred slot, [(state, tries,
    security counter, envelope hash) for a and b]); ValueError when malformed."""
    if len(data) != 112 or data[:10] != b"MTRA-ABS\x01\x00" or data[10] > 1 or data[11:16] != bytes(5):
        raise ValueError(f"malformed MantraSlots header: {data[:16].hex()}")
    records = []
    for at in (16, 64):
        state, tries = data[at], data[at + 1]
        if state not in STATE_NAMES or (state != STATE_PENDING and tries) or data[at + 2 : at + 8] != bytes(6):
            raise ValueError(f"malformed MantraSlots record at {at}: {data[at:at + 8].hex()}")
        records.append((state, tries, struct.unpack_from("<Q", data, at + 8)[0], data[at + 16 : at + 48]))
    return data[10], records


def add_variable(store: Path, name: str, data: bytes, attributes: int,
                 vendor: uuid.UUID = MANTRA_VENDOR) -> None:
    """Appends a live variable to an OVMF variable store file (QEMU not
    running), as the firmware's SetVariable would before a reboot: a
    header after the last one (each 4-byte aligned), the UTF-16 name, the
    data. For tests that need a variable the OS cannot write (e.g.
    MantraFlashMode); it must not exist yet."""
    raw = bytearray(store.read_bytes())
    if raw[40:44] != b"_FVH":
        raise ValueError(f"{store} is not a firmware volume")
    at = struct.unpack_from("<H", raw, 48)[0] + 28  # FV header, then VARIABLE_STORE_HEADER
    while struct.unpack_from("<H", raw, at)[0] == _START_ID:
        name_size, data_size = struct.unpack_from("<II", raw, at + 36)
        at = (at + _HEADER.size + name_size + data_size + 3) & ~3
    wanted = name.encode("utf-16-le") + b"\0\0"
    record = _HEADER.pack(_START_ID, _VAR_ADDED, 0, attributes, 0, bytes(16), 0, len(wanted), len(data),
                          vendor.bytes_le) + wanted + data
    if any(b != 0xFF for b in raw[at:at + len(record)]):
        raise ValueError(f"no free space after the last variable of {store}")
    raw[at:at + len(record)] = record
    store.write_bytes(bytes(raw))
