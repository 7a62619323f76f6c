"""The block map of a slot image (docs/flash-protocol.md, "The block map"):
which blocks of the slot's FAT volume hold anything, bmaptool's idea.

`fat_used_ranges` parses the volume's boot sector (BPB) and its first FAT
(FAT12, FAT16 or FAT32: FAT32 when the BPB has no 16-bit FAT size, as the
UEFI FAT driver and Linux decide, else FAT12/16 by cluster count) and
returns the byte ranges the file system uses: the boot sector and reserved
sectors, the FATs, the FAT12/16 root directory, every allocated cluster. `block_map` cuts the slot image into blocks, keeps those that
overlap a used range and hashes them: the map entries (u32 block index ||
SHA-256) and the image digest BEGIN carries. Unmapped blocks are never sent,
written or hashed.

Reads go through `SlotSource`, a window (offset, size) on a disk image
file, so a slot partition is read in place.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

from mantra.errors import MantraError
from mantra.provision.messages import MapEntry, image_digest

FAT12_MAX_CLUSTERS = 4084
_BAD = {12: 0xFF7, 16: 0xFFF7, 32: 0x0FFFFFF7}


class BmapError(MantraError):
    """The slot does not hold a FAT volume this tool can map."""


@dataclass(frozen=True)
class SlotSource:
    """`size` bytes at `offset` of the file `path` (a slot partition)."""

    path: Path
    offset: int
    size: int

    def read(self, position: int, length: int) -> bytes:
        if position < 0 or position + length > self.size:
            raise ValueError(f"read of {length} bytes at {position} outside the slot's {self.size} bytes")
        with self.path.open("rb") as f:
            f.seek(self.offset + position)
            data = f.read(length)
        if len(data) != length:
            raise BmapError(f"{self.path} is cut short: the slot partition ends before its {self.size} bytes",
                            "rebuild the image with ./mantra build")
        return data


@dataclass(frozen=True)
class FatLayout:
    fat_bits: int  # 12, 16, 32
    bytes_per_sector: int
    sectors_per_cluster: int
    reserved_sectors: int
    fat_count: int
    fat_sectors: int
    root_dir_sectors: int
    total_sectors: int
    clusters: int

    @property
    def cluster_size(self) -> int:
        return self.bytes_per_sector * self.sectors_per_cluster

    @property
    def metadata_bytes(self) -> int:
        """Boot sector, reserved sectors, FATs and (FAT12/16) root directory."""
        sectors = self.reserved_sectors + self.fat_count * self.fat_sectors + self.root_dir_sectors
        return sectors * self.bytes_per_sector

    def cluster_offset(self, cluster: int) -> int:
        return self.metadata_bytes + (cluster - 2) * self.cluster_size


def parse_boot_sector(sector: bytes, volume_size: int, what: str = "the slot") -> FatLayout:
    """The FAT layout from the boot sector; BmapError when it is not a FAT
    boot sector or describes a volume larger than `volume_size`."""
    hint = "flash a slot written by ./mantra build (a FAT file system); an empty slot cannot be flashed"
    if len(sector) < 512 or sector[510:512] != b"\x55\xaa":
        raise BmapError(f"{what} holds no FAT file system (no boot sector signature)", hint)
    bps, spc, reserved, fats, root_entries, total16, _media, fat16 = struct.unpack_from("<HBHBHHBH", sector, 11)
    total32, fat32 = struct.unpack_from("<II", sector, 32)
    if bps not in (512, 1024, 2048, 4096) or spc == 0 or spc & (spc - 1) or reserved == 0 or fats == 0:
        raise BmapError(f"{what}: boot sector is not a FAT BPB (bytes/sector {bps}, sectors/cluster {spc}, "
                        f"reserved {reserved}, FATs {fats})", hint)
    fat_sectors = fat16 or fat32
    total = total16 or total32
    root_dir_sectors = (root_entries * 32 + bps - 1) // bps
    first_data = reserved + fats * fat_sectors + root_dir_sectors
    if fat_sectors == 0 or total <= first_data:
        raise BmapError(f"{what}: FAT boot sector with {fat_sectors} FAT sectors and {total} sectors in all", hint)
    if total * bps > volume_size:
        raise BmapError(f"{what}: the FAT volume ({total * bps} bytes) is larger than its partition "
                        f"({volume_size} bytes)", hint)
    clusters = (total - first_data) // spc
    # As the UEFI FAT driver and Linux decide: no 16-bit FAT size means
    # FAT32 (mformat -F makes FAT32 of any cluster count), else the cluster
    # count tells FAT12 from FAT16.
    if fat16 == 0:
        bits = 32
        if root_entries != 0:
            raise BmapError(f"{what}: a FAT32 BPB with {root_entries} root directory entries", hint)
    else:
        bits = 12 if clusters <= FAT12_MAX_CLUSTERS else 16
    if (clusters + 2) * bits > fat_sectors * bps * 8:
        raise BmapError(f"{what}: the FAT ({fat_sectors} sectors) is too small for {clusters} clusters", hint)
    return FatLayout(bits, bps, spc, reserved, fats, fat_sectors, root_dir_sectors, total, clusters)


def allocated_clusters(fat: bytes, layout: FatLayout) -> list[int]:
    """Cluster numbers (from 2) whose FAT entry is not free (0) and not bad."""
    bad = _BAD[layout.fat_bits]
    used = []
    last = layout.clusters + 1
    if layout.fat_bits == 32:
        entries = struct.unpack_from(f"<{last + 1}I", fat)
        used = [c for c in range(2, last + 1) if (v := entries[c] & 0x0FFFFFFF) != 0 and v != bad]
    elif layout.fat_bits == 16:
        entries = struct.unpack_from(f"<{last + 1}H", fat)
        used = [c for c in range(2, last + 1) if (v := entries[c]) != 0 and v != bad]
    else:
        for c in range(2, last + 1):
            pos = c * 3 // 2
            pair = fat[pos] | fat[pos + 1] << 8
            v = pair >> 4 if c & 1 else pair & 0xFFF
            if v != 0 and v != bad:
                used.append(c)
    return used


def fat_used_ranges(source: SlotSource) -> tuple[FatLayout, list[tuple[int, int]]]:
    """The layout and the byte ranges [start, end) of the slot the volume uses."""
    layout = parse_boot_sector(source.read(0, 512), source.size)
    fat = source.read(layout.reserved_sectors * layout.bytes_per_sector, layout.fat_sectors * layout.bytes_per_sector)
    ranges = [(0, layout.metadata_bytes)]
    size = layout.cluster_size
    for cluster in allocated_clusters(fat, layout):
        start = layout.cluster_offset(cluster)
        if ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], start + size)
        else:
            ranges.append((start, start + size))
    return layout, ranges


@dataclass(frozen=True)
class BlockMap:
    block_size: int
    image_size: int  # bytes: the slot partition, a multiple of block_size
    entries: tuple[MapEntry, ...]
    digest: bytes  # BEGIN's image digest
    layout: FatLayout

    @property
    def block_count(self) -> int:
        return self.image_size // self.block_size

    @property
    def mapped_bytes(self) -> int:
        return len(self.entries) * self.block_size


def used_blocks(ranges: list[tuple[int, int]], block_size: int) -> list[int]:
    blocks: set[int] = set()
    for start, end in ranges:
        blocks.update(range(start // block_size, (end - 1) // block_size + 1))
    return sorted(blocks)


def block_map(source: SlotSource, block_size: int) -> BlockMap:
    """The block map of the slot: mapped block indices with their SHA-256,
    in increasing order, and the image digest."""
    if block_size <= 0 or block_size % 512:
        raise BmapError(f"block size {block_size} is not a positive multiple of 512",
                        "the board's HELLO reply is malformed: update MantraBoot")
    if source.size % block_size:
        raise BmapError(f"the slot partition ({source.size} bytes) is not a multiple of the board's block size "
                        f"({block_size} bytes)", "build the image for this board (./mantra build -b BOARD)")
    layout, ranges = fat_used_ranges(source)
    entries = tuple(MapEntry(index, hashlib.sha256(source.read(index * block_size, block_size)).digest())
                    for index in used_blocks(ranges, block_size))
    return BlockMap(block_size, source.size, entries, image_digest(list(entries)), layout)
