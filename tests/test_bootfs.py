"""The boot filesystem writer, read back by the independent reader in
bootfs_reader.py."""

from __future__ import annotations

import struct

import pytest
from bootfs_reader import parse
from mantra.image import bootfs


def test_round_trip() -> None:
    files = [("product.toml", b'name = "default"\n'), (".config", b"CONFIG_X=y\n" * 1000), ("empty", b"")]
    image = bootfs.pack(files)
    assert parse(image) == files
    # Header and table in the first 4 KiB page, then product.toml (1 page),
    # .config (11000 bytes: 3 pages) and the empty file (no page).
    assert len(image) == 4096 + 4096 + 12288


def test_empty_archive() -> None:
    image = bootfs.pack([])
    assert parse(image) == [] and len(image) == 4096


def test_data_starts_after_a_large_table() -> None:
    files = [(f"file-{i}", bytes([i]) * (i + 1)) for i in range(40)]  # table: 64 + 40 * 128 bytes > 4 KiB
    image = bootfs.pack(files)
    assert parse(image) == files
    assert struct.unpack_from("<Q", image, 64 + 80)[0] == 8192


def test_name_of_exactly_80_bytes_has_no_terminator() -> None:
    name = "n" * 80
    assert parse(bootfs.pack([(name, b"x")])) == [(name, b"x")]


@pytest.mark.parametrize("name", ["", "n" * 81, "nul\0name"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="bad boot filesystem name"):
        bootfs.pack([(name, b"x")])


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unique"):
        bootfs.pack([("a", b"1"), ("a", b"2")])
