"""Writer of GPT disk images (UEFI specification, chapter 5).

Layout of the disk, in 512-byte sectors (LBAs):

    LBA 0                 protective MBR (one partition of type 0xEE)
    LBA 1                 primary GPT header
    LBA 2..33             primary partition entry array (128 entries of 128 bytes)
    aligned ...           the partitions, each starting on an `align` boundary
    last-32..last-1       backup partition entry array
    last                  backup GPT header

The image is written sparse: zero runs of the partitions' contents are
skipped. GUIDs are derived from a given disk GUID, so the same inputs give a
byte-identical image.
"""

from __future__ import annotations

import os
import struct
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

SECTOR = 512
ENTRY_COUNT = 128
ENTRY_SIZE = 128
ENTRY_SECTORS = ENTRY_COUNT * ENTRY_SIZE // SECTOR  # 32
HEADER_SIZE = 92
REVISION = 0x00010000
SIGNATURE = b"EFI PART"
NAME_CHARS = 36  # UTF-16LE code units in a partition name

# EFI System Partition.
ESP_TYPE = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
# A MantraOS A/B slot (MantraBoot looks for partitions of this type).
MANTRA_SLOT_TYPE = uuid.UUID("5f0f1e43-6d61-4e74-8a4f-534c4f543031")

_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
_ENTRY = struct.Struct("<16s16sQQQ72s")
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class PartitionSpec:
    """A partition to create: `size` in bytes (a multiple of 512), filled
    from `content` (a file no larger than `size`), or left empty."""

    name: str
    type_guid: uuid.UUID
    size: int
    content: Path | None = None


@dataclass(frozen=True)
class Partition:
    """A partition as written: LBAs are inclusive, as GPT stores them."""

    name: str
    type_guid: uuid.UUID
    unique_guid: uuid.UUID
    first_lba: int
    last_lba: int

    @property
    def offset(self) -> int:
        return self.first_lba * SECTOR

    @property
    def size(self) -> int:
        return (self.last_lba - self.first_lba + 1) * SECTOR


def _protective_mbr(total_sectors: int) -> bytes:
    mbr = bytearray(SECTOR)
    size = min(total_sectors - 1, 0xFFFFFFFF)
    # status, CHS start (0/0/2), type 0xEE, CHS end (max), first LBA 1, size.
    mbr[446:462] = struct.pack("<B3sB3sII", 0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff", 1, size)
    mbr[510:512] = b"\x55\xaa"
    return bytes(mbr)


def _entry_array(partitions: Sequence[Partition]) -> bytes:
    array = bytearray(ENTRY_COUNT * ENTRY_SIZE)
    for index, part in enumerate(partitions):
        name = part.name.encode("utf-16-le")
        array[index * ENTRY_SIZE : (index + 1) * ENTRY_SIZE] = _ENTRY.pack(
            part.type_guid.bytes_le, part.unique_guid.bytes_le, part.first_lba, part.last_lba, 0, name
        )
    return bytes(array)


def _header(*, current: int, backup: int, first_usable: int, last_usable: int, disk_guid: uuid.UUID,
            entries_lba: int, entries_crc: int) -> bytes:
    def pack(crc: int) -> bytes:
        return _HEADER.pack(SIGNATURE, REVISION, HEADER_SIZE, crc, 0, current, backup, first_usable,
                            last_usable, disk_guid.bytes_le, entries_lba, ENTRY_COUNT, ENTRY_SIZE, entries_crc)

    header = pack(zlib.crc32(pack(0)))
    return header + bytes(SECTOR - len(header))


def _copy_sparse(source: Path, disk: BinaryIO, offset: int) -> None:
    """Copies `source` into the open `disk` at `offset`, skipping zero chunks."""
    with source.open("rb") as stream:
        position = offset
        while chunk := stream.read(_COPY_CHUNK):
            if chunk.count(0) != len(chunk):
                disk.seek(position)
                disk.write(chunk)
            position += len(chunk)


def write_image(path: Path, specs: Sequence[PartitionSpec], *, align: int, disk_guid: uuid.UUID) -> list[Partition]:
    """Writes a GPT disk image holding `specs` in order; returns where each went.

    `align` (bytes, a multiple of 512) is where partitions start. The file is
    written next to `path` and renamed over it, so a reader never sees half an image.
    """
    if align % SECTOR or align <= 0:
        raise ValueError(f"alignment {align} is not a positive multiple of {SECTOR}")
    if len(specs) > ENTRY_COUNT:
        raise ValueError(f"at most {ENTRY_COUNT} partitions")
    align_lbas = align // SECTOR
    first_usable = 2 + ENTRY_SECTORS
    partitions: list[Partition] = []
    next_lba = -(-first_usable // align_lbas) * align_lbas
    for spec in specs:
        if spec.size <= 0 or spec.size % SECTOR:
            raise ValueError(f"partition {spec.name}: size {spec.size} is not a positive multiple of {SECTOR}")
        if len(spec.name.encode("utf-16-le")) > NAME_CHARS * 2:
            raise ValueError(f"partition name {spec.name!r} is longer than {NAME_CHARS} characters")
        if spec.content is not None and spec.content.stat().st_size > spec.size:
            raise ValueError(f"partition {spec.name}: {spec.content} is larger than {spec.size} bytes")
        sectors = spec.size // SECTOR
        partitions.append(Partition(spec.name, spec.type_guid, uuid.uuid5(disk_guid, spec.name),
                                    next_lba, next_lba + sectors - 1))
        next_lba = -(-(next_lba + sectors) // align_lbas) * align_lbas
    # Room for the backup array and header after the last partition, keeping
    # the disk a multiple of the alignment.
    total_sectors = -(-(next_lba + ENTRY_SECTORS + 1) // align_lbas) * align_lbas
    last_lba = total_sectors - 1
    last_usable = last_lba - ENTRY_SECTORS - 1
    entries = _entry_array(partitions)
    entries_crc = zlib.crc32(entries)
    primary = _header(current=1, backup=last_lba, first_usable=first_usable, last_usable=last_usable,
                      disk_guid=disk_guid, entries_lba=2, entries_crc=entries_crc)
    backup = _header(current=last_lba, backup=1, first_usable=first_usable, last_usable=last_usable,
                     disk_guid=disk_guid, entries_lba=last_lba - ENTRY_SECTORS, entries_crc=entries_crc)
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as disk:
        disk.truncate(total_sectors * SECTOR)
        disk.write(_protective_mbr(total_sectors))
        disk.write(primary)
        disk.write(entries)
        for spec, part in zip(specs, partitions, strict=True):
            if spec.content is not None:
                _copy_sparse(spec.content, disk, part.offset)
        disk.seek((last_lba - ENTRY_SECTORS) * SECTOR)
        disk.write(entries)
        disk.write(backup)
    os.replace(partial, path)
    return partitions


class GptError(ValueError):
    """A disk image whose GPT is missing, damaged or cut short."""


@dataclass(frozen=True)
class Disk:
    """What read_image found: the size the GPT describes and the partitions."""

    size: int  # bytes, up to and including the backup header
    partitions: list[Partition]

    def find(self, type_guid: uuid.UUID) -> list[Partition]:
        return [p for p in self.partitions if p.type_guid == type_guid]


def read_image(path: Path) -> Disk:
    """Reads the primary GPT of the disk image `path`: header and entry
    array CRCs, and that the file holds every partition and the backup
    header (a truncated image is a GptError saying so)."""
    with path.open("rb") as disk:
        file_size = disk.seek(0, os.SEEK_END)
        disk.seek(SECTOR)
        raw = disk.read(SECTOR)
        if len(raw) < HEADER_SIZE:
            raise GptError(f"image truncated: {file_size} bytes, too short for a GPT header")
        fields = _HEADER.unpack(raw[:HEADER_SIZE])
        (signature, revision, size, crc, _, current, backup, first_usable, last_usable, _, entries_lba,
         count, entry_size, entries_crc) = fields
        if signature != SIGNATURE or size != HEADER_SIZE or current != 1:
            raise GptError("no GPT: LBA 1 does not hold a GPT header")
        if zlib.crc32(raw[:16] + b"\0\0\0\0" + raw[20:HEADER_SIZE]) != crc:
            raise GptError("GPT header CRC mismatch (the header was changed or damaged)")
        if entry_size != ENTRY_SIZE or not 0 < count <= ENTRY_COUNT:
            raise GptError(f"unsupported GPT entry array ({count} entries of {entry_size} bytes)")
        expected = (backup + 1) * SECTOR
        if file_size < expected:
            raise GptError(f"image truncated: the GPT says the disk is {expected} bytes, the file has {file_size}")
        disk.seek(entries_lba * SECTOR)
        entries = disk.read(count * entry_size)
    if zlib.crc32(entries) != entries_crc:
        raise GptError("GPT partition entry array CRC mismatch (the table was changed or damaged)")
    partitions = []
    for index in range(count):
        type_le, unique_le, first, last, _, name = _ENTRY.unpack(entries[index * ENTRY_SIZE : (index + 1) * ENTRY_SIZE])
        if type_le == bytes(16):
            continue
        if not first_usable <= first <= last <= last_usable:
            raise GptError(f"GPT partition {index} (LBAs {first}..{last}) lies outside the usable area")
        partitions.append(Partition(name.decode("utf-16-le").rstrip("\0"), uuid.UUID(bytes_le=type_le),
                                    uuid.UUID(bytes_le=unique_le), first, last))
    return Disk(expected, partitions)
