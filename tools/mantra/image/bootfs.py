"""Writer of the boot filesystem, MANTRA/BOOTFS.IMG on the ESP: a flat,
read-only archive that MantraBoot loads next to the kernel. The layout is the
one mantra-os/bootinfo/src/bootfs.rs reads (little-endian):

- header, 64 bytes: magic `MANTRAFS`, version u32, entry count u32, total
  size u64, entries offset u64, 32 reserved bytes;
- `count` entries of 128 bytes: name (80 bytes UTF-8, NUL-padded), data
  offset u64, data size u64, SHA-256 of the data (32 bytes);
- file data, each file starting on a 4 KiB boundary; the archive's size is
  a multiple of 4 KiB.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

MAGIC = b"MANTRAFS"
VERSION = 1
HEADER_SIZE = 64
ENTRY_SIZE = 128
NAME_LEN = 80
DATA_ALIGN = 4096

_HEADER = struct.Struct("<8sIIQQ32x")
_ENTRY = struct.Struct(f"<{NAME_LEN}sQQ32s")


def _align(value: int) -> int:
    return -(-value // DATA_ALIGN) * DATA_ALIGN


def pack(files: Sequence[tuple[str, bytes]]) -> bytes:
    """The archive holding `files` (name, content), in the given order.

    Names must be unique, non-empty, at most 80 bytes of UTF-8 and free of NUL.
    """
    names = [name for name, _ in files]
    if len(set(names)) != len(names):
        raise ValueError(f"boot filesystem names must be unique: {names}")
    entries_end = HEADER_SIZE + len(files) * ENTRY_SIZE
    offset = _align(entries_end)
    entries = bytearray()
    placed: list[tuple[int, bytes]] = []
    for name, content in files:
        encoded = name.encode("utf-8")
        if not encoded or len(encoded) > NAME_LEN or b"\0" in encoded:
            raise ValueError(f"bad boot filesystem name {name!r}: 1 to {NAME_LEN} bytes of UTF-8, no NUL")
        entries += _ENTRY.pack(encoded, offset, len(content), hashlib.sha256(content).digest())
        placed.append((offset, content))
        offset = _align(offset + len(content))
    image = bytearray(offset)
    image[:HEADER_SIZE] = _HEADER.pack(MAGIC, VERSION, len(files), offset, HEADER_SIZE)
    image[HEADER_SIZE:entries_end] = entries
    for start, content in placed:
        image[start : start + len(content)] = content
    return bytes(image)
