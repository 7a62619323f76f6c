"""Booting images spoiled on purpose: MantraBoot stops with a clear
`MantraBoot: error: <what>; <what to try>` line (never a hang, never a jump
into a kernel it cannot trust), and MantraCore reports an unexpected fault
(vector, error code, RIP, CR2, decoded page-fault bits, stack overflow) and
halts instead of triple-faulting.

Each test copies a built image (and its manifest.json, which mantra.qemu.boot
reads) to tmp_path, changes files in both of its slots with mtools and boots
the copy. A changed component is refused by MantraBoot's signature check
first (tests/test_boot_verify.py); the tests here re-sign the changed slots
with the build's own keys (`SpoiledImage.resign`), so they reach the checks
that come after it (ELF, BootInfo version, the kernel itself). A file
missing from both slots leaves no bootable slot.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from gpt_reader import read_gpt
from mantra.build import BOOTFS_PATH, CMDLINE_PATH, KERNEL_PATH, BuildResult
from mantra.qemu import BootResult, boot
from mantra.signing import keys as signing_keys
from mantra.signing.sign import ImageInfo, sign_image
from mantra.workspace import Workspace

pytestmark = pytest.mark.boot

# Upper bounds; a boot reaches MantraBoot's error or MantraCore's fault in
# seconds here (the ktest suite in under ten).
ERROR_TIMEOUT = 120
CRASH_TIMEOUT = 300
BOOT_ERROR = re.compile(r"^MantraBoot: error: (.*)$", re.M)
KTEST_SUMMARY = re.compile(r"^ktest: (\d+) passed, (\d+) failed", re.M)
FAULT = re.compile(
    r"^KERNEL FAULT: (?P<name>.+) \(vector (?P<vector>\d+)\), error code (?P<error>0x[0-9a-f]+), "
    r"RIP (?P<rip>0x[0-9a-f]{16}), RSP 0x[0-9a-f]{16}, CR2 (?P<cr2>0x[0-9a-f]{16})$",
    re.M,
)
# QEMU's exit status when the guest writes 0x11 to isa-debug-exit: the
# kernel test build's "failed", which fatal_stop reports after a fault.
KTEST_FAILED_EXIT = 35


def tail(text: str) -> str:
    return "console (last 3000 characters):\n" + text[-3000:]


class SpoiledImage:
    """A copy of a built image in `directory` whose slot files can be
    changed: in both slots (the default, so that neither can boot) or in the
    slots given. A fresh copy is a new device: a fresh firmware variable
    store (and TPM) beside it."""

    def __init__(self, built: BuildResult, directory: Path, slots: tuple[str, ...] = ("a", "b")) -> None:
        self.image = directory / "image.img"
        # Keep the copy sparse (the slots are mostly empty space).
        subprocess.run(["cp", "--sparse=always", str(built.image), str(self.image)], check=True)
        shutil.copyfile(built.manifest, directory / "manifest.json")
        partitions = {p.name: p for p in read_gpt(self.image).partitions}
        assert set(partitions) == {"esp", "slot-a", "slot-b"}
        self.fat = {slot: f"{self.image}@@{partitions[f'slot-{slot}'].first_lba * 512}" for slot in ("a", "b")}
        self.slots = slots
        self.scratch = directory / "slot-files"
        self.scratch.mkdir()
        self.keys = built.keys

    def resign(self, **options) -> None:
        """Signs the changed slots as they are now with the key set the build
        signed with (which MantraBoot trusts), as if the build had made these
        files; `options` go to sign_image (e.g. security_counter)."""
        assert self.keys is not None
        keyset = signing_keys.load_keyset(self.keys)
        info = dataclasses.replace(ImageInfo.beside(self.image), built_components={})
        for slot in self.slots:
            sign_image(self.image, keyset, signing_keys.passphrase_for(keyset.dir), info=info, slot=slot, **options)

    def read(self, path: str, slot: str | None = None) -> bytes:
        slot = slot or self.slots[0]
        target = self.scratch / path.replace("/", "_")
        subprocess.run(["mcopy", "-n", "-o", "-i", self.fat[slot], f"::/{path}", str(target)], check=True)
        return target.read_bytes()

    def write(self, path: str, content: bytes) -> None:
        source = self.scratch / (path.replace("/", "_") + ".new")
        source.write_bytes(content)
        for slot in self.slots:
            subprocess.run(["mcopy", "-n", "-o", "-i", self.fat[slot], str(source), f"::/{path}"], check=True)
            assert self.read(path, slot) == content

    def delete(self, path: str) -> None:
        for slot in self.slots:
            subprocess.run(["mdel", "-i", self.fat[slot], f"::/{path}"], check=True)
            listing = subprocess.run(["mdir", "-/", "-b", "-i", self.fat[slot], "::"], capture_output=True,
                                     text=True, check=True)
            assert path not in listing.stdout

    def boot(self, workspace: Workspace, timeout: float, until: str | None = None, *, tpm: bool = False,
             icount: bool = False) -> BootResult:
        return boot(self.image, timeout=timeout, until=until, workspace=workspace, tpm=tpm, icount=icount)


@pytest.fixture
def spoiled_default(default_image: BuildResult, tmp_path: Path) -> SpoiledImage:
    return SpoiledImage(default_image, tmp_path)


@pytest.fixture
def spoiled_ktest(ktest_image: BuildResult, tmp_path: Path) -> SpoiledImage:
    return SpoiledImage(ktest_image, tmp_path)


def boot_error(image: SpoiledImage, workspace: Workspace) -> str:
    """Boots `image`, which MantraBoot must refuse, and returns the text of
    its error line (after `MantraBoot: error: `)."""
    result = image.boot(workspace, ERROR_TIMEOUT, until="MantraBoot: error")
    console = result.console_text
    assert result.matched, ("MantraBoot printed no error line before the timeout\n" if result.timed_out
                            else f"QEMU exited with {result.exit_code} without a MantraBoot error\n") + tail(console)
    assert "MantraBoot 0.1.0 (board qemu-x86_64)" in console, tail(console)
    assert "MantraCore" not in console, "MantraBoot jumped into the kernel\n" + tail(console)
    errors = BOOT_ERROR.findall(console)
    assert len(errors) == 1, tail(console)
    message = errors[0].rstrip("\r")
    # `<what failed>; <what to try>`
    assert re.fullmatch(r"[^;]+; .+", message), message
    return message


def test_garbage_kernel_is_refused(spoiled_default: SpoiledImage, workspace: Workspace) -> None:
    spoiled_default.write(KERNEL_PATH, b"this is not an ELF file\n" * 4096)
    spoiled_default.resign()
    message = boot_error(spoiled_default, workspace)
    assert "kernel \\MANTRA\\KERNEL.ELF" in message, message
    assert "not a loadable x86_64 ELF executable" in message, message
    assert message.endswith("./mantra build"), message


def test_truncated_kernel_is_refused(spoiled_default: SpoiledImage, workspace: Workspace) -> None:
    kernel = spoiled_default.read(KERNEL_PATH)
    spoiled_default.write(KERNEL_PATH, kernel[:4096])  # ELF header intact, segments cut off
    spoiled_default.resign()
    message = boot_error(spoiled_default, workspace)
    assert "kernel \\MANTRA\\KERNEL.ELF" in message, message
    assert message.endswith("./mantra build"), message


def test_bootinfo_version_mismatch_is_refused(spoiled_default: SpoiledImage, workspace: Workspace) -> None:
    kernel = bytearray(spoiled_default.read(KERNEL_PATH))
    # The kernel's ELF note: namesz 7, descsz 4, type 1, "Mantra\0" padded
    # to 8 bytes, then the u32 BootInfo version (mantra_bootinfo::KernelNote).
    note = struct.pack("<III", 7, 4, 1) + b"Mantra\0\0"
    at = kernel.find(note)
    assert at >= 0 and kernel.find(note, at + 1) < 0, "expected exactly one Mantra note in the kernel"
    version_at = at + len(note)
    source = (workspace.root / "mantra-os" / "bootinfo" / "src" / "lib.rs").read_text()
    version = int(re.search(r"pub const VERSION: u32 = (\d+);", source)[1])
    assert struct.unpack_from("<I", kernel, version_at)[0] == version
    struct.pack_into("<I", kernel, version_at, 99)
    spoiled_default.write(KERNEL_PATH, bytes(kernel))
    spoiled_default.resign()
    message = boot_error(spoiled_default, workspace)
    assert "BootInfo version 99" in message, message
    assert f"MantraBoot speaks version {version}" in message, message
    assert message.endswith("./mantra build"), message


def test_missing_boot_filesystem_is_refused(spoiled_default: SpoiledImage, workspace: Workspace) -> None:
    spoiled_default.delete(BOOTFS_PATH)
    message = boot_error(spoiled_default, workspace)
    assert "boot filesystem \\MANTRA\\BOOTFS.IMG not found" in message, message
    assert message.endswith("./mantra build"), message


def test_missing_kernel_is_refused(spoiled_default: SpoiledImage, workspace: Workspace) -> None:
    spoiled_default.delete(KERNEL_PATH)
    message = boot_error(spoiled_default, workspace)
    assert "kernel \\MANTRA\\KERNEL.ELF not found" in message, message
    assert message.endswith("./mantra build"), message


@pytest.mark.parametrize(
    ("kind", "vectors", "details"),
    [
        ("null", {14}, [r"^  page fault: page not present on read in supervisor mode$"]),
        # The overflow faults on the guard page; pushing the #PF frame there
        # faults again, which the double-fault handler takes on its IST stack.
        ("overflow", {8, 14},
         [r"^KERNEL FAULT: stack overflow: kernel stack 0 ran into its guard page at 0x[0-9a-f]+$"]),
        ("text-write", {14}, [r"^  page fault: protection violation on write in supervisor mode$"]),
    ],
    ids=["null", "overflow", "text-write"],
)
def test_unexpected_kernel_fault_is_reported(spoiled_ktest: SpoiledImage, workspace: Workspace, kind: str,
                                             vectors: set[int], details: list[str]) -> None:
    spoiled_ktest.write(CMDLINE_PATH, f"ktest.crash={kind}\n".encode())
    spoiled_ktest.resign()  # an unsigned command line is refused
    result = spoiled_ktest.boot(workspace, CRASH_TIMEOUT)
    console = result.console_text.replace("\r\n", "\n")
    assert not result.timed_out, tail(console)
    # The in-guest tests ran and passed first; then the fault nobody expected.
    summary = KTEST_SUMMARY.search(console)
    assert summary and int(summary[1]) > 0 and summary[2] == "0", tail(console)
    crashing = console.find(f"ktest: crashing on purpose: {kind}")
    assert crashing > summary.start(), tail(console)
    report = console[crashing:]
    fault = FAULT.search(report)
    assert fault, tail(console)
    assert int(fault["vector"]) in vectors, tail(console)
    if kind == "null":
        assert int(fault["cr2"], 16) == 0 and int(fault["error"], 16) & 1 == 0, tail(console)
    if kind == "text-write":
        assert int(fault["rip"], 16) >= 0xFFFF_8000_0000_0000, tail(console)  # in the higher-half kernel
        assert int(fault["error"], 16) & 0b11 == 0b11, tail(console)  # present, write
    for detail in details:
        assert re.search(detail, report, re.M), f"no line matching {detail!r}\n" + tail(console)
    assert re.search(r"^MantraCore halted\.$", report, re.M), tail(console)
    # A triple fault would reset the machine, which -no-reboot turns into
    # QEMU exiting 0: only the kernel's own fatal stop exits with 35.
    assert result.exit_code == KTEST_FAILED_EXIT, f"QEMU exit status {result.exit_code}\n" + tail(console)
    assert console.count("MantraBoot 0.1.0") == 1 and console.count("MantraCore 0.1.0") == 1, tail(console)
