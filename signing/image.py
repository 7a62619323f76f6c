"""Where the signed manifest lives in a disk image, and the components it
covers: the files of the FAT file system on the image's ESP that the
firmware or MantraBoot loads (docs/signing.md, "Where it lives")."""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mantra.errors import MantraError
from mantra.image import esp, gpt
from mantra.signing.encoding import Component, ComponentKind

MANIFEST_PATH = esp.MANIFEST_PATH
_FIXED = {esp.KERNEL_PATH: ComponentKind.KERNEL, esp.BOOTFS_PATH: ComponentKind.BOOTFS,
          esp.CMDLINE_PATH: ComponentKind.CMDLINE}


def kind_of(path: str) -> ComponentKind | None:
    """The component kind of an ESP path: MantraBoot's files, and
    EFI/BOOT/*.EFI (the bootloader the firmware starts); None for anything else."""
    upper = path.upper()
    if upper in _FIXED:
        return _FIXED[upper]
    directory, _, name = upper.rpartition("/")
    if directory == esp.BOOTLOADER_DIR and name.endswith(".EFI"):
        return ComponentKind.BOOTLOADER
    return None


@dataclass(frozen=True)
class EspFiles:
    """The ESP of a disk image, read through mtools."""

    image: Path
    partition: gpt.Partition

    @property
    def offset(self) -> int:
        return self.partition.offset

    def paths(self) -> list[str]:
        return esp.list_files(self.image, self.offset)

    def read(self, path: str) -> bytes:
        with tempfile.TemporaryDirectory(prefix="mantra-esp-") as scratch:
            return esp.read_file(self.image, self.offset, path, Path(scratch))

    def write(self, path: str, data: bytes) -> None:
        with tempfile.TemporaryDirectory(prefix="mantra-esp-") as scratch:
            source = Path(scratch) / "file"
            source.write_bytes(data)
            esp.write_file(self.image, self.offset, path, source)


def open_esp(image: Path) -> EspFiles:
    """The ESP of the GPT disk image `image`; raises gpt.GptError for a
    damaged or truncated image, MantraError when there is no image or no ESP."""
    if not image.is_file():
        raise MantraError(f"{image} does not exist", "build one with ./mantra build, or give the image's path")
    disk = gpt.read_image(image)
    found = disk.find(gpt.ESP_TYPE)
    if len(found) != 1:
        raise MantraError(f"{image} has {len(found)} EFI system partitions, expected 1",
                          "give a disk image written by ./mantra build")
    return EspFiles(image, found[0])


def components(files: EspFiles) -> list[Component]:
    """The components on the ESP, in load order (bootloader, kernel, boot
    filesystem, command line). Any other file (but the manifest) is an error:
    nothing unsigned rides along in a signed image."""
    found = []
    for path in files.paths():
        if path.upper() == MANIFEST_PATH:
            continue
        kind = kind_of(path)
        if kind is None:
            raise MantraError(f"{files.image}: the ESP holds {path}, which is not a component MantraBoot knows",
                              "sign images as ./mantra build writes them (remove the file, or rebuild)")
        data = files.read(path)
        found.append(Component(kind, path, len(data), hashlib.sha256(data).digest()))
    return sorted(found, key=lambda c: int(c.kind))
