"""Writer of the FAT file systems of a disk image, the EFI System Partition
and the A/B slots: FAT32 images made with mtools (mformat, mmd, mcopy),
without mounting anything.

The volume serial is fixed and file times come from SOURCE_DATE_EPOCH, so
the same files give a byte-identical partition.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from mantra import proc

VOLUME_LABEL = "MANTRA ESP"
SLOT_LABEL = "MANTRA SLOT"
# Smallest FAT32 volume mformat makes (65525 clusters of 512 bytes); a
# smaller partition gets FAT12/16, which UEFI reads just as well.
FAT32_MIN_MIB = 33
VOLUME_SERIAL = "4d414e54"  # "MANT"
# 1980-01-01 00:00:00 UTC: the FAT epoch.
FILE_TIME = "315532800"

_MTOOLS_HINT = "install the Debian package mtools (./mantra installs it)"


def write_esp(path: Path, size_mib: int, files: Mapping[str, Path], label: str = VOLUME_LABEL) -> None:
    """Creates the FAT32 (FAT12/16 below FAT32_MIN_MIB) image `path` of `size_mib` MiB holding `files`
    (path on the ESP such as "EFI/BOOT/BOOTX64.EFI" -> file to copy); a
    slot's file system is the same with `label` SLOT_LABEL."""
    mformat = proc.require_tool("mformat", "mtools")
    mmd = proc.require_tool("mmd", "mtools")
    mcopy = proc.require_tool("mcopy", "mtools")
    env = {"SOURCE_DATE_EPOCH": FILE_TIME, "MTOOLS_SKIP_CHECK": "1"}
    sectors = size_mib * 1024 * 1024 // 512
    with path.open("wb") as image:
        image.truncate(size_mib * 1024 * 1024)
    proc.run(
        [mformat, "-i", path, *(["-F"] if size_mib >= FAT32_MIN_MIB else []), "-N", VOLUME_SERIAL, "-v", label,
         "-T", str(sectors), "-h", "64", "-s", "32", "::"],
        env=env, capture=True, what="mformat of the ESP", hint=_MTOOLS_HINT,
    )
    # Parents before children; sorted so the directory order never varies.
    directories = sorted({str(parent) for name in files for parent in PurePosixPath(name).parents
                          if str(parent) != "."}, key=lambda d: (d.count("/"), d))
    if directories:
        proc.run([mmd, "-i", path, *(f"::/{d}" for d in directories)],
                 env=env, capture=True, what="mmd on the ESP", hint=_MTOOLS_HINT)
    for name, source in files.items():
        proc.run([mcopy, "-i", path, source, f"::/{name}"],
                 env=env, capture=True, what=f"mcopy of {name} to the ESP", hint=_MTOOLS_HINT)


# Paths of the files MantraBoot loads (the bootloader itself is
# EFI/BOOT/<board's efi_boot_file>), and of the signed manifest beside them.
KERNEL_PATH = "MANTRA/KERNEL.ELF"
BOOTFS_PATH = "MANTRA/BOOTFS.IMG"
CMDLINE_PATH = "MANTRA/CMDLINE.TXT"
MANIFEST_PATH = "MANTRA/MANIFEST.SIG"
BOOTLOADER_DIR = "EFI/BOOT"


def is_fat(image: Path, offset: int) -> bool:
    """Whether the partition at byte `offset` of `image` starts with a FAT
    boot sector (an empty slot does not)."""
    with image.open("rb") as disk:
        disk.seek(offset)
        sector = disk.read(512)
    return len(sector) == 512 and sector[510:512] == b"\x55\xaa" and (
        sector[82:87] == b"FAT32" or sector[54:59] in (b"FAT12", b"FAT16"))


def _fat(image: Path, offset: int) -> str:
    """mtools' name of the FAT file system at byte `offset` of `image`."""
    return f"{image}@@{offset}"


def list_files(image: Path, offset: int) -> list[str]:
    """Every file (not directory) of the FAT file system at `offset` in
    `image`, as '/'-separated paths, sorted."""
    mdir = proc.require_tool("mdir", "mtools")
    listing = proc.run([mdir, "-/", "-b", "-i", _fat(image, offset), "::"],
                       env={"MTOOLS_SKIP_CHECK": "1"}, capture=True, what="mdir of the ESP",
                       hint="is this a MantraOS disk image? (its ESP must be FAT)")
    files = []
    for line in listing.stdout.splitlines():
        path = line.strip().removeprefix("::/")
        if path and not path.endswith("/"):
            files.append(path)
    return sorted(files)


def _directories(image: Path, offset: int) -> set[str]:
    """Every directory of the FAT file system at `offset` in `image`."""
    mdir = proc.require_tool("mdir", "mtools")
    listing = proc.run([mdir, "-/", "-b", "-i", _fat(image, offset), "::"],
                       env={"MTOOLS_SKIP_CHECK": "1"}, capture=True, what="mdir", hint=_MTOOLS_HINT)
    found = set()
    for line in listing.stdout.splitlines():
        path = line.strip().removeprefix("::/")
        for parent in PurePosixPath(path.rstrip("/")).parents if path else ():
            if str(parent) != ".":
                found.add(str(parent))
        if path.endswith("/"):
            found.add(path.rstrip("/"))
    return found


def read_file(image: Path, offset: int, path: str, scratch: Path) -> bytes:
    """The content of `path` on the FAT file system at `offset` in `image`
    (copied out through `scratch`, a directory of the caller's)."""
    mcopy = proc.require_tool("mcopy", "mtools")
    target = scratch / path.replace("/", "_")
    proc.run([mcopy, "-n", "-i", _fat(image, offset), f"::/{path}", target],
             env={"MTOOLS_SKIP_CHECK": "1"}, capture=True, what=f"mcopy of {path} from the ESP", hint=_MTOOLS_HINT)
    try:
        return target.read_bytes()
    finally:
        target.unlink(missing_ok=True)


def write_file(image: Path, offset: int, path: str, source: Path) -> None:
    """Writes `source` as `path` (replacing it if present) in the FAT file
    system at `offset` in `image`, with the fixed file time of write_esp."""
    mcopy = proc.require_tool("mcopy", "mtools")
    env = {"SOURCE_DATE_EPOCH": FILE_TIME, "MTOOLS_SKIP_CHECK": "1"}
    parent = str(PurePosixPath(path).parent)
    if parent != "." and parent.upper() not in {p.upper() for p in _directories(image, offset)}:
        mmd = proc.require_tool("mmd", "mtools")
        proc.run([mmd, "-i", _fat(image, offset), f"::/{parent}"], env=env, capture=True,
                 what=f"mmd of {parent}", hint=_MTOOLS_HINT)
    proc.run([mcopy, "-o", "-i", _fat(image, offset), source, f"::/{path}"],
             env=env, capture=True, what=f"mcopy of {path} to the ESP", hint=_MTOOLS_HINT)
