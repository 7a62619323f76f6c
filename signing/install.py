"""`mantra slot install`: what a flasher or updater does with a signed image.
The contents of one slot of a signed disk image (its MANTRA/ files and
MANTRA/MANIFEST.SIG) are written into a chosen slot of another disk image,
as a fresh FAT file system filling that slot's partition. The other slot,
the ESP and everything else of the target are left alone, so MantraBoot of
the target sees new contents in that slot (a new envelope hash: pending)."""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mantra.errors import MantraError
from mantra.image import esp, gpt
from mantra.signing.image import MANIFEST_PATH, open_slot
from mantra.signing.verify import VerifyFailure, verify_disk

MIB = 1024 * 1024
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Installed:
    slot: str
    partition: gpt.Partition
    files: dict[str, int]  # path -> size
    envelope_sha256: str


def install_slot(target: Path, slot: str, source: Path, *, source_slot: str = "a",
                 root_public: bytes | None = None) -> Installed:
    """Writes slot `source_slot` of the signed image `source` into slot
    `slot` of `target`. With `root_public`, the source slot must verify
    against it first (as `mantra verify --slot` does); without it, only its
    signed manifest must be there (MantraBoot checks the rest at boot)."""
    try:
        origin = open_slot(source, source_slot)
        destination = open_slot(target, slot)
    except gpt.GptError as exc:
        raise MantraError(f"{exc}", "give disk images written by ./mantra build") from None
    if not origin.has_filesystem():
        raise MantraError(f"{source}: slot {source_slot} is empty", "install from a built image (./mantra build)")
    if root_public is not None:
        try:
            verify_disk(source, root_public, slot=source_slot)
        except VerifyFailure as failure:
            raise MantraError(f"{source}: slot {source_slot} does not verify: {'; '.join(failure.reasons)}",
                              "install only images signed with the product's keys (./mantra verify)") from None
    paths = origin.paths()
    if MANIFEST_PATH not in {p.upper() for p in paths}:
        raise MantraError(f"{source}: slot {source_slot} has no {MANIFEST_PATH} (an unsigned image)",
                          "sign it first: ./mantra sign IMAGE --keys DIR")
    size = destination.partition.size
    if size % MIB:
        raise MantraError(f"{target}: partition {destination.partition.name} is {size} bytes, not whole MiB",
                          "give a disk image written by ./mantra build")
    files: dict[str, int] = {}
    envelope = b""
    with tempfile.TemporaryDirectory(prefix="mantra-install-") as scratch:
        work = Path(scratch)
        sources = {}
        for index, path in enumerate(paths):
            data = origin.read(path)
            if path.upper() == MANIFEST_PATH:
                envelope = data
            sources[path] = work / f"file{index}"
            sources[path].write_bytes(data)
            files[path] = len(data)
        if sum(files.values()) > size * 9 // 10:
            raise MantraError(f"slot {source_slot} of {source} ({sum(files.values())} bytes) does not fit "
                              f"slot {slot} of {target} ({size} bytes)", "give the target board larger slots")
        fat = work / "slot.img"
        esp.write_esp(fat, size // MIB, sources, label=esp.SLOT_LABEL)
        _write_partition(target, destination.partition, fat)
    return Installed(slot, destination.partition, files, hashlib.sha256(envelope).hexdigest())


def _write_partition(target: Path, partition: gpt.Partition, content: Path) -> None:
    """Overwrites the partition with `content` (exactly its size), writing
    only the chunks that differ (a sparse target stays mostly sparse)."""
    with content.open("rb") as source, target.open("r+b") as disk:
        position = partition.offset
        while chunk := source.read(_CHUNK):
            disk.seek(position)
            if disk.read(len(chunk)) != chunk:
                disk.seek(position)
                disk.write(chunk)
            position += len(chunk)
