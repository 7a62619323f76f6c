"""An independent GPT reader for the tests (UEFI specification, chapter 5),
checking every field the writer must get right."""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

SECTOR = 512


@dataclass(frozen=True)
class Header:
    current_lba: int
    backup_lba: int
    first_usable: int
    last_usable: int
    disk_guid: uuid.UUID
    entries_lba: int
    entry_count: int
    entry_size: int
    entries_crc: int


@dataclass(frozen=True)
class Entry:
    type_guid: uuid.UUID
    guid: uuid.UUID
    first_lba: int
    last_lba: int
    attributes: int
    name: str


@dataclass(frozen=True)
class Disk:
    sectors: int
    primary: Header
    backup: Header
    partitions: list[Entry]


def _header(disk: bytes, lba: int) -> Header:
    raw = disk[lba * SECTOR : lba * SECTOR + 92]
    fields = struct.unpack("<8sIIIIQQQQ16sQIII", raw)
    signature, revision, size, crc, reserved = fields[:5]
    assert signature == b"EFI PART" and revision == 0x00010000 and size == 92 and reserved == 0
    assert zlib.crc32(raw[:16] + b"\0\0\0\0" + raw[20:]) == crc, f"header CRC at LBA {lba}"
    assert not any(disk[lba * SECTOR + 92 : (lba + 1) * SECTOR]), "rest of the header sector is zero"
    return Header(fields[5], fields[6], fields[7], fields[8], uuid.UUID(bytes_le=fields[9]), *fields[10:])


def _entries(disk: bytes, header: Header) -> tuple[bytes, list[Entry]]:
    start = header.entries_lba * SECTOR
    raw = disk[start : start + header.entry_count * header.entry_size]
    assert zlib.crc32(raw) == header.entries_crc, "partition entry array CRC"
    entries = []
    for index in range(header.entry_count):
        type_le, guid_le, first, last, attributes, name = struct.unpack_from("<16s16sQQQ72s", raw, index * 128)
        if type_le == bytes(16):
            continue
        entries.append(Entry(uuid.UUID(bytes_le=type_le), uuid.UUID(bytes_le=guid_le), first, last, attributes,
                             name.decode("utf-16-le").rstrip("\0")))
    return raw, entries


def read_gpt(path: Path) -> Disk:
    disk = path.read_bytes()
    assert len(disk) % SECTOR == 0
    sectors = len(disk) // SECTOR
    # Protective MBR: one partition of type 0xEE from LBA 1 over the disk.
    assert disk[510:512] == b"\x55\xaa"
    status, os_type, first, count = disk[446], disk[450], *struct.unpack_from("<II", disk, 454)
    assert (status, os_type, first, count) == (0, 0xEE, 1, min(sectors - 1, 0xFFFFFFFF))
    assert not any(disk[462:510]), "the other MBR partition slots are empty"
    primary = _header(disk, 1)
    backup = _header(disk, sectors - 1)
    assert (primary.current_lba, primary.backup_lba, primary.entries_lba) == (1, sectors - 1, 2)
    assert (backup.current_lba, backup.backup_lba, backup.entries_lba) == (sectors - 1, 1, sectors - 33)
    for field in ("first_usable", "last_usable", "disk_guid", "entry_count", "entry_size", "entries_crc"):
        assert getattr(primary, field) == getattr(backup, field), field
    assert (primary.entry_count, primary.entry_size) == (128, 128)
    assert primary.first_usable >= 34 and primary.last_usable <= sectors - 34
    raw_primary, partitions = _entries(disk, primary)
    raw_backup, _ = _entries(disk, backup)
    assert raw_primary == raw_backup
    previous_last = primary.first_usable - 1
    for part in partitions:
        assert previous_last < part.first_lba <= part.last_lba <= primary.last_usable, part
        previous_last = part.last_lba
    return Disk(sectors, primary, backup, partitions)
