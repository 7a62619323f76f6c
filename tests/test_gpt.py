"""The GPT writer, read back by the independent reader in gpt_reader.py."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from gpt_reader import read_gpt
from mantra.image import gpt

MIB = 1024 * 1024
DISK_GUID = uuid.UUID("01234567-89ab-cdef-0123-456789abcdef")


def write(path: Path, specs: list[gpt.PartitionSpec], align: int = MIB) -> list[gpt.Partition]:
    return gpt.write_image(path, specs, align=align, disk_guid=DISK_GUID)


def test_layout_headers_and_content(tmp_path: Path) -> None:
    content = tmp_path / "esp.bin"
    content.write_bytes(b"ESP!" + bytes(MIB) + b"tail")
    image = tmp_path / "disk.img"
    written = write(image, [
        gpt.PartitionSpec("esp", gpt.ESP_TYPE, 4 * MIB, content),
        gpt.PartitionSpec("slot-a", gpt.MANTRA_SLOT_TYPE, 3 * MIB),
        gpt.PartitionSpec("slot-b", gpt.MANTRA_SLOT_TYPE, 3 * MIB),
    ])
    disk = read_gpt(image)
    assert disk.primary.disk_guid == DISK_GUID
    assert [(p.name, p.type_guid) for p in disk.partitions] == [
        ("esp", gpt.ESP_TYPE), ("slot-a", gpt.MANTRA_SLOT_TYPE), ("slot-b", gpt.MANTRA_SLOT_TYPE)]
    assert [(p.last_lba - p.first_lba + 1) * 512 for p in disk.partitions] == [4 * MIB, 3 * MIB, 3 * MIB]
    assert all(p.first_lba * 512 % MIB == 0 for p in disk.partitions)
    assert disk.partitions[0].first_lba == 2048
    assert len({p.guid for p in disk.partitions}) == 3
    # 1 MiB before the first partition, 1 MiB (aligned) for the backup GPT after the last.
    assert image.stat().st_size == (1 + 4 + 3 + 3 + 1) * MIB
    assert [(p.first_lba, p.last_lba) for p in written] == [(p.first_lba, p.last_lba) for p in disk.partitions]
    data = image.read_bytes()
    esp = data[disk.partitions[0].first_lba * 512 :][: content.stat().st_size]
    assert esp == content.read_bytes()
    assert not any(data[disk.partitions[1].first_lba * 512 : (disk.partitions[2].last_lba + 1) * 512])


def test_same_inputs_give_the_same_bytes(tmp_path: Path) -> None:
    specs = [gpt.PartitionSpec("esp", gpt.ESP_TYPE, MIB), gpt.PartitionSpec("slot-a", gpt.MANTRA_SLOT_TYPE, MIB)]
    write(tmp_path / "a.img", specs)
    write(tmp_path / "b.img", specs)
    assert (tmp_path / "a.img").read_bytes() == (tmp_path / "b.img").read_bytes()


def test_image_is_sparse(tmp_path: Path) -> None:
    image = tmp_path / "big.img"
    write(image, [gpt.PartitionSpec("slot-a", gpt.MANTRA_SLOT_TYPE, 256 * MIB)])
    assert image.stat().st_blocks * 512 < 4 * MIB


def test_unaligned_sizes_and_oversized_content_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of 512"):
        write(tmp_path / "x.img", [gpt.PartitionSpec("odd", gpt.ESP_TYPE, 1000)])
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(2 * MIB))
    with pytest.raises(ValueError, match="larger than"):
        write(tmp_path / "x.img", [gpt.PartitionSpec("esp", gpt.ESP_TYPE, MIB, big)])
    with pytest.raises(ValueError, match="longer than 36"):
        write(tmp_path / "x.img", [gpt.PartitionSpec("n" * 37, gpt.ESP_TYPE, MIB)])
