"""The block map of a slot's FAT volume (mantra.provision.bmap): FAT12,
FAT16 and FAT32 volumes made by mtools, checked against what mtools says
about the same volume (its allocated clusters, `minfo`) and against the
bytes: every block holding a file's data is mapped, blocks of free space
are not."""

from __future__ import annotations

import hashlib
import random
import struct
import subprocess
from pathlib import Path

import pytest
from mantra.provision import bmap
from mantra.provision.messages import image_digest

MIB = 1024 * 1024


def mformat(path: Path, size_mib: int, *args: str) -> None:
    with path.open("wb") as f:
        f.truncate(size_mib * MIB)
    subprocess.run(["mformat", "-i", str(path), *args, "-T", str(size_mib * MIB // 512), "::"], check=True,
                   capture_output=True, env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"})


def mcopy(path: Path, name: str, data: bytes, tmp: Path) -> None:
    src = tmp / "src"
    src.write_bytes(data)
    subprocess.run(["mcopy", "-i", str(path), str(src), f"::/{name}"], check=True, capture_output=True,
                   env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"})


def mdel(path: Path, name: str) -> None:
    subprocess.run(["mdel", "-i", str(path), f"::/{name}"], check=True, capture_output=True,
                   env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("size_mib,args,bits", [
    (4, ("-c", "8"), 12),  # 4 KiB clusters: 1000 of them
    (16, ("-c", "4"), 16),  # 2 KiB clusters: 8000
    (40, ("-F", "-c", "1"), 32),  # 512-byte clusters: 80000
    (128, ("-F",), 32),  # what ./mantra build makes of a 128 MiB slot
])
def test_fat_types_and_used_blocks(tmp_path: Path, size_mib: int, args: tuple[str, ...], bits: int) -> None:
    vol = tmp_path / "vol.img"
    mformat(vol, size_mib, *args)
    rng = random.Random(bits)
    files = {f"F{i}.BIN": rng.randbytes(rng.randrange(1000, 300_000)) for i in range(6)}
    for name, data in files.items():
        mcopy(vol, name, data, tmp_path)
    mdel(vol, "F2.BIN")  # its clusters are free again: their stale data must not be mapped
    # noise in the free space at the end of the volume
    with vol.open("r+b") as f:
        f.seek(size_mib * MIB - 3 * 65536)
        f.write(rng.randbytes(3 * 65536))

    source = bmap.SlotSource(vol, 0, size_mib * MIB)
    result = bmap.block_map(source, 65536)
    assert result.layout.fat_bits == bits
    mapped = {e.index for e in result.entries}
    raw = vol.read_bytes()
    # every byte of every file that is still there is inside a mapped block
    for name, data in files.items():
        if name == "F2.BIN":
            continue
        pos = raw.find(data[:4096])
        assert pos >= 0
        first, last = pos // 65536, (pos + len(data) - 1) // 65536
        assert set(range(first, last + 1)) <= mapped, name
    # the boot sector and the FATs
    assert 0 in mapped
    # the noise at the end is never mapped
    total = size_mib * MIB // 65536
    assert not {total - 3, total - 2, total - 1} & mapped
    # the hashes and the digest are of the bytes
    for e in result.entries:
        assert e.hash == hashlib.sha256(raw[e.index * 65536 : (e.index + 1) * 65536]).digest()
    assert result.digest == image_digest(list(result.entries))
    assert len(mapped) < total


def test_allocated_clusters_match_the_fat_bytes(tmp_path: Path) -> None:
    """FAT12's packed 12-bit entries, read by hand."""
    vol = tmp_path / "vol.img"
    mformat(vol, 2, "-c", "4")
    mcopy(vol, "A.BIN", bytes(5000), tmp_path)
    source = bmap.SlotSource(vol, 0, 2 * MIB)
    layout = bmap.parse_boot_sector(source.read(0, 512), source.size)
    assert layout.fat_bits == 12
    fat = source.read(layout.reserved_sectors * 512, layout.fat_sectors * 512)
    used = bmap.allocated_clusters(fat, layout)
    # 5000 bytes in 2048-byte clusters: 3 clusters, a chain 2 -> 3 -> 4 -> end
    assert used == [2, 3, 4]
    entry = lambda c: (struct.unpack_from("<H", fat, c * 3 // 2)[0] >> (4 if c & 1 else 0)) & 0xFFF  # noqa: E731
    assert [entry(2), entry(3)] == [3, 4] and entry(4) >= 0xFF8


def test_slot_source_is_a_window_on_the_disk(tmp_path: Path) -> None:
    vol = tmp_path / "vol.img"
    mformat(vol, 2, "-c", "4")
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\xee" * MIB + vol.read_bytes() + b"\xee" * MIB)
    inside = bmap.block_map(bmap.SlotSource(disk, MIB, 2 * MIB), 65536)
    alone = bmap.block_map(bmap.SlotSource(vol, 0, 2 * MIB), 65536)
    assert inside.entries == alone.entries


def test_not_a_fat_volume(tmp_path: Path) -> None:
    blank = tmp_path / "blank.img"
    blank.write_bytes(bytes(MIB))
    with pytest.raises(bmap.BmapError, match="no FAT file system"):
        bmap.block_map(bmap.SlotSource(blank, 0, MIB), 65536)
    vol = tmp_path / "vol.img"
    mformat(vol, 2, "-c", "4")
    with pytest.raises(bmap.BmapError, match="larger than its partition"):
        bmap.block_map(bmap.SlotSource(vol, 0, MIB), 65536)
    with pytest.raises(bmap.BmapError, match="multiple"):
        bmap.block_map(bmap.SlotSource(vol, 0, 2 * MIB - 512), 65536)
    damaged = bytearray(vol.read_bytes())
    damaged[13] = 3  # sectors per cluster not a power of two
    (tmp_path / "bad.img").write_bytes(bytes(damaged))
    with pytest.raises(bmap.BmapError, match="not a FAT BPB"):
        bmap.block_map(bmap.SlotSource(tmp_path / "bad.img", 0, 2 * MIB), 65536)
