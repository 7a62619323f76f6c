"""Where the signed manifests live in a disk image, and the components they
cover (docs/signing.md, "Where it lives"):

- the ESP holds MantraBoot (EFI/BOOT/*.EFI, which the firmware starts) and
  MANTRA/MANIFEST.SIG, whose manifest lists only that bootloader;
- each A/B slot partition (`slot-a`, `slot-b`, GPT type MANTRA_SLOT_TYPE)
  is a FAT file system with MANTRA/KERNEL.ELF, MANTRA/BOOTFS.IMG, optional
  MANTRA/CMDLINE.TXT and its own MANTRA/MANIFEST.SIG listing them.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mantra.errors import MantraError
from mantra.image import esp, gpt
from mantra.signing.encoding import Component, ComponentKind

MANIFEST_PATH = esp.MANIFEST_PATH
# The slots, by the name MantraBoot and the tools use ("a", "b"), and their partitions.
SLOTS = ("a", "b")
SLOT_PARTITIONS = {"a": "slot-a", "b": "slot-b"}
_FIXED = {esp.KERNEL_PATH: ComponentKind.KERNEL, esp.BOOTFS_PATH: ComponentKind.BOOTFS,
          esp.CMDLINE_PATH: ComponentKind.CMDLINE}
# What each kind of file system may hold besides its manifest.
ESP_KINDS = frozenset({ComponentKind.BOOTLOADER})
SLOT_KINDS = frozenset({ComponentKind.KERNEL, ComponentKind.BOOTFS, ComponentKind.CMDLINE})


def kind_of(path: str) -> ComponentKind | None:
    """The component kind of a path: MantraBoot's files, and
    EFI/BOOT/*.EFI (the bootloader the firmware starts); None for anything else."""
    upper = path.upper()
    if upper in _FIXED:
        return _FIXED[upper]
    directory, _, name = upper.rpartition("/")
    if directory == esp.BOOTLOADER_DIR and name.endswith(".EFI"):
        return ComponentKind.BOOTLOADER
    return None


@dataclass(frozen=True)
class FatFiles:
    """One FAT file system of a disk image (the ESP or a slot), read through mtools."""

    image: Path
    partition: gpt.Partition
    # "ESP", "slot a", "slot b": what messages call it.
    label: str = "ESP"

    @property
    def offset(self) -> int:
        return self.partition.offset

    @property
    def is_esp(self) -> bool:
        return self.partition.type_guid == gpt.ESP_TYPE

    @property
    def kinds(self) -> frozenset[ComponentKind]:
        """The component kinds this file system holds."""
        return ESP_KINDS if self.is_esp else SLOT_KINDS

    def has_filesystem(self) -> bool:
        return esp.is_fat(self.image, self.offset)

    def paths(self) -> list[str]:
        return esp.list_files(self.image, self.offset)

    def read(self, path: str) -> bytes:
        with tempfile.TemporaryDirectory(prefix="mantra-fat-") as scratch:
            return esp.read_file(self.image, self.offset, path, Path(scratch))

    def write(self, path: str, data: bytes) -> None:
        with tempfile.TemporaryDirectory(prefix="mantra-fat-") as scratch:
            source = Path(scratch) / "file"
            source.write_bytes(data)
            esp.write_file(self.image, self.offset, path, source)


# The name the ESP-only code used; kept for callers and tests.
EspFiles = FatFiles


def _disk(image: Path) -> gpt.Disk:
    if not image.is_file():
        raise MantraError(f"{image} does not exist", "build one with ./mantra build, or give the image's path")
    return gpt.read_image(image)


def open_esp(image: Path) -> FatFiles:
    """The ESP of the GPT disk image `image`; raises gpt.GptError for a
    damaged or truncated image, MantraError when there is no image or no ESP."""
    found = _disk(image).find(gpt.ESP_TYPE)
    if len(found) != 1:
        raise MantraError(f"{image} has {len(found)} EFI system partitions, expected 1",
                          "give a disk image written by ./mantra build")
    return FatFiles(image, found[0], "ESP")


def open_slot(image: Path, slot: str) -> FatFiles:
    """Slot `slot` ("a" or "b") of `image`: its partition `slot-<slot>` of
    the MantraOS slot type (which may or may not hold a file system yet)."""
    if slot not in SLOTS:
        raise MantraError(f"no slot {slot!r}", f"slots are {' and '.join(SLOTS)}")
    name = SLOT_PARTITIONS[slot]
    found = [p for p in _disk(image).find(gpt.MANTRA_SLOT_TYPE) if p.name == name]
    if len(found) != 1:
        raise MantraError(f"{image} has no A/B slot partition {name} (GPT type {gpt.MANTRA_SLOT_TYPE})",
                          "give a disk image written by ./mantra build")
    return FatFiles(image, found[0], f"slot {slot}")


def components(files: FatFiles) -> list[Component]:
    """The components on the file system, in load order (bootloader, kernel,
    boot filesystem, command line). Any other file (but the manifest), and a
    component of a kind that belongs on the other kind of partition, is an
    error: nothing unsigned rides along in a signed image."""
    found = []
    for path in files.paths():
        if path.upper() == MANIFEST_PATH:
            continue
        kind = kind_of(path)
        if kind is None or kind not in files.kinds:
            raise MantraError(f"{files.image}: the {files.label} holds {path}, which is not a component MantraBoot "
                              "knows there", "sign images as ./mantra build writes them (remove the file, or rebuild)")
        data = files.read(path)
        found.append(Component(kind, path, len(data), hashlib.sha256(data).digest()))
    return sorted(found, key=lambda c: int(c.kind))
