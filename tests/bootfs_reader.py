"""An independent reader of the boot filesystem for the tests, written from
the layout in mantra-os/bootinfo/src/bootfs.rs."""

from __future__ import annotations

import hashlib
import struct


def parse(image: bytes) -> list[tuple[str, bytes]]:
    """Reads an archive as MantraBoot does, checking every rule of the layout."""
    magic, version, count, total, entries_offset = struct.unpack_from("<8sIIQQ", image, 0)
    assert image[32:64] == bytes(32), "reserved header bytes are zero"
    assert (magic, version) == (b"MANTRAFS", 1)
    assert total == len(image) and total % 4096 == 0
    assert entries_offset == 64
    files = []
    previous_end = entries_offset + count * 128
    for index in range(count):
        raw = image[entries_offset + index * 128 : entries_offset + (index + 1) * 128]
        name = raw[:80].rstrip(b"\0").decode("utf-8")
        offset, size = struct.unpack_from("<QQ", raw, 80)
        digest = raw[96:128]
        assert offset % 4096 == 0 and offset >= previous_end
        data = image[offset : offset + size]
        assert len(data) == size
        assert hashlib.sha256(data).digest() == digest
        assert not any(image[previous_end:offset]), "padding is zero"
        previous_end = offset + size
        files.append((name, data))
    return files
