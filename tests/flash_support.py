"""Signed disk images for the flash tests without a cargo build: a GPT disk
(ESP, slot a with a FAT volume holding kernel, boot filesystem and command
line, empty slot b) laid out and signed exactly as ./mantra build does, with
made-up component contents (part text, part zeros, part random, as ELF files
and archives are). Also config/root_key.bin beside it, as the build writes."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import uuid
from pathlib import Path

from mantra.image import esp, gpt
from mantra.signing import keys
from mantra.signing.keys import KeySet
from mantra.signing.sign import sign_disk

MIB = 1024 * 1024
PASSPHRASE = "flash-test-passphrase"
BOARD = "qemu-x86_64"


def make_keyset(directory: Path) -> KeySet:
    old = keys.SCRYPT_LOG2_N
    keys.SCRYPT_LOG2_N = keys.DEV_SCRYPT_LOG2_N
    try:
        return keys.init_keyset(directory, PASSPHRASE)
    finally:
        keys.SCRYPT_LOG2_N = old


def component(size: int, seed: int) -> bytes:
    """Compressible like a kernel: runs of text, zeros and random bytes."""
    rng = random.Random(seed)
    out = bytearray()
    words = [b"mantra", b"kernel", b"capability", b"channel", b"\x00\x00\x00\x00", b"\x48\x89\xe5", b"port"]
    while len(out) < size:
        kind = rng.random()
        n = rng.randrange(64, 4096)
        if kind < 0.3:
            out += bytes(n)
        elif kind < 0.5:
            out += rng.randbytes(n)
        else:
            out += b"".join(rng.choice(words) for _ in range(n // 6))
    return bytes(out[:size])


def make_image(directory: Path, keyset: KeySet, *, board: str = BOARD, slot_mib: int = 8, kernel: int = 600_000,
               bootfs: int = 300_000, seed: int = 1, security_counter: int = 0, product: str = "default") -> Path:
    """directory/image.img (+ manifest.json, config/root_key.bin), slot a
    signed with `keyset`; slot_mib < 33 makes FAT12, >= 33 FAT32."""
    directory.mkdir(parents=True, exist_ok=True)
    work = directory / "work"
    work.mkdir(exist_ok=True)
    contents = {
        esp.KERNEL_PATH: component(kernel, seed),
        esp.BOOTFS_PATH: component(bootfs, seed + 1),
        esp.CMDLINE_PATH: b"console=ttyS0 loglevel=info\n",
        "EFI/BOOT/BOOTX64.EFI": component(40_000, seed + 2),
    }
    sources = {}
    for path, data in contents.items():
        sources[path] = work / path.replace("/", "_")
        sources[path].write_bytes(data)
    esp.write_esp(work / "esp.img", 2, {p: f for p, f in sources.items() if p.startswith("EFI/")})
    esp.write_esp(work / "slot.img", slot_mib, {p: f for p, f in sources.items() if not p.startswith("EFI/")},
                  label=esp.SLOT_LABEL)
    specs = [gpt.PartitionSpec("esp", gpt.ESP_TYPE, 2 * MIB, work / "esp.img"),
             gpt.PartitionSpec("slot-a", gpt.MANTRA_SLOT_TYPE, slot_mib * MIB, work / "slot.img"),
             gpt.PartitionSpec("slot-b", gpt.MANTRA_SLOT_TYPE, slot_mib * MIB)]
    image = directory / "image.img"
    gpt.write_image(image, specs, align=MIB, disk_guid=uuid.UUID(int=seed))
    manifest = {
        "board": board, "product": product, "version": "0.1.0", "security_counter": security_counter,
        "config": {"sha256": hashlib.sha256(b"config").hexdigest()},
        "provenance": {"source_revision": "test", "toolchain": {"rustc": "test"}},
        "components": [{"path": p, "sha256": hashlib.sha256(d).hexdigest()} for p, d in contents.items()],
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    sign_disk(image, keyset, PASSPHRASE)
    (directory / "config").mkdir(exist_ok=True)
    (directory / "config" / "root_key.bin").write_bytes(keyset.root_public)
    shutil.rmtree(work)
    return image


def device_disk(image: Path, target: Path) -> Path:
    """A board's disk: a copy of the image (its slot b empty, so slot b is the
    flash target of a board running slot a)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "--sparse=always", str(image), str(target)], check=True)
    return target
