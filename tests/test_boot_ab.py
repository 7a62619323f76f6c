"""A/B boot and rollback protection in QEMU (docs/boot-state.md), on copies
of the default build (each copy a new device: a fresh firmware variable
store, and a fresh swtpm with --tpm):

- an update staged in slot b with `mantra slot install` (a newer image, as a
  flasher or updater writes it) boots as pending with 2, 1 and 0 tries left;
  nothing confirms it, so the boot after that marks it bad and falls back to
  slot a, and it stays bad;
- the factory image counts as confirmed, so the next boot raises the
  rollback minimum to its security counter (in the UEFI variable and the TPM
  NV index); an older image installed into slot b is then refused as a
  downgrade, also after the variable store is wiped (the TPM still holds the
  minimum).

What MantraBoot wrote is read back from the firmware's variable store
(tests/uefi_vars.py). Each boot stops at MantraBoot's `booting slot` line: a
pending slot that never reaches confirmation is exactly what a crash looks like."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
from mantra.build import BuildResult
from mantra.signing import keys
from mantra.workspace import Workspace
from support import mantra
from test_boot_errors import ERROR_TIMEOUT, SpoiledImage, tail
from uefi_vars import BOOTSERVICE_ACCESS, NON_VOLATILE, RUNTIME_ACCESS, read_variable

pytestmark = pytest.mark.boot

BOOTING = "MantraBoot: booting slot"


def boot_until_choice(device: SpoiledImage, workspace: Workspace, *, tpm: bool = False) -> str:
    result = device.boot(workspace, ERROR_TIMEOUT, until=BOOTING, tpm=tpm)
    console = result.console_text
    assert result.matched, tail(console)
    assert "MantraBoot: error" not in console, tail(console)
    return console


def booting(console: str) -> str:
    lines = re.findall(r"^MantraBoot: booting slot (.*?)\r?$", console, re.M)
    assert len(lines) == 1, tail(console)
    return lines[0]


def mantra_slots(device: SpoiledImage) -> tuple[int, list[tuple[int, int, int, bytes]]]:
    """MantraSlots as MantraBoot left it: preferred slot, (state, tries,
    security counter, envelope hash) per slot; its attributes are NV|BS|RT."""
    found = read_variable(device.image.parent / "firmware-vars.fd", "MantraSlots")
    assert found is not None, "no MantraSlots variable"
    attributes, data = found
    assert attributes == NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS
    assert len(data) == 112 and data[:10] == b"MTRA-ABS\x01\x00" and data[11:16] == bytes(5)
    records = []
    for at in (16, 64):
        state, tries = data[at], data[at + 1]
        assert data[at + 2 : at + 8] == bytes(6)
        records.append((state, tries, struct.unpack_from("<Q", data, at + 8)[0], data[at + 16 : at + 48]))
    return data[10], records


def stage(device: SpoiledImage, slot: str, source: SpoiledImage, root: Path) -> None:
    """`mantra slot install`: source's slot a into `slot` of the device."""
    done = mantra("slot", "install", str(device.image), "--slot", slot, "--from", str(source.image), "--root", str(root))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"into slot {slot} of {device.image}" in done.stdout, done.stdout


def test_unconfirmed_update_falls_back_after_its_tries(default_image: BuildResult, tmp_path: Path,
                                                       workspace: Workspace) -> None:
    device = SpoiledImage(default_image, (tmp_path / "device").mkdir() or tmp_path / "device")
    console = boot_until_choice(device, workspace)
    assert booting(console) == "a (active, security counter 0)", tail(console)
    preferred, records = mantra_slots(device)
    assert preferred == 0 and [r[:3] for r in records] == [(1, 0, 0), (1, 0, 0)]  # factory: both active

    update = SpoiledImage(default_image, (tmp_path / "update").mkdir() or tmp_path / "update", slots=("a",))
    update.resign(security_counter=1)
    assert default_image.keys is not None
    stage(device, "b", update, default_image.keys / keys.ROOT_PUB)

    for boot_number, tries_left in enumerate((2, 1, 0)):
        console = boot_until_choice(device, workspace)
        if boot_number == 0:
            assert "MantraBoot: slot b: new contents: pending, 3 tries" in console, tail(console)
        assert re.search(r"^MantraBoot: slot b: verified \(key [0-9a-f]{8}, security counter 1,", console, re.M), \
            tail(console)
        word = "try" if tries_left == 1 else "tries"
        assert booting(console) == f"b (pending, {tries_left} {word} left, security counter 1)", tail(console)
        preferred, records = mantra_slots(device)
        assert preferred == 0 and records[0][:3] == (1, 0, 0) and records[1][:3] == (2, tries_left, 1), records

    console = boot_until_choice(device, workspace)
    assert "MantraBoot: slot b: marked bad: pending and never confirmed, no tries left" in console, tail(console)
    assert booting(console) == "a (active, security counter 0)", tail(console)
    _, records = mantra_slots(device)
    assert records[1][:3] == (3, 0, 1), records

    console = boot_until_choice(device, workspace)
    assert "MantraBoot: slot b: bad (marked bad on an earlier boot, unchanged since)" in console, tail(console)
    assert booting(console) == "a (active, security counter 0)", tail(console)


def test_rollback_minimum_refuses_a_downgrade_with_the_tpm(default_image: BuildResult, tmp_path: Path,
                                                           workspace: Workspace) -> None:
    directory = tmp_path / "device"
    directory.mkdir()
    device = SpoiledImage(default_image, directory)
    device.resign(security_counter=5)  # the factory image: counter 5 in both slots
    store = directory / "firmware-vars.fd"

    console = boot_until_choice(device, workspace, tpm=True)
    assert "MantraBoot: TPM NV index 0x01004d42 defined (rollback minimums)" in console, tail(console)
    assert "MantraBoot: rollback minimums: security counter 0, revocation list 0" in console, tail(console)
    assert booting(console) == "a (active, security counter 5)", tail(console)
    assert "MantraBoot: TPM NV index 0x01004d42 write-locked until the next TPM reset" in console, tail(console)

    # The factory image is confirmed: the next boot raises the minimums to its values.
    console = boot_until_choice(device, workspace, tpm=True)
    assert "MantraBoot: rollback minimum raised to 5 (slot a confirmed; revocation list minimum 1)" in console, \
        tail(console)
    assert booting(console) == "a (active, security counter 5)", tail(console)
    found = read_variable(store, "MantraRollback")
    assert found is not None
    attributes, data = found
    assert attributes == NON_VOLATILE | BOOTSERVICE_ACCESS  # the OS can neither read nor write it
    assert data == b"MTRA-RBK\x01\x00" + bytes(6) + struct.pack("<QQ", 5, 1)

    # An older image (counter 3) installed into slot b is a downgrade.
    older = SpoiledImage(default_image, (tmp_path / "older").mkdir() or tmp_path / "older", slots=("a",))
    older.resign(security_counter=3)
    assert default_image.keys is not None
    stage(device, "b", older, default_image.keys / keys.ROOT_PUB)
    downgrade = ("MantraBoot: slot b: refused: image signature check failed: security counter 3 is lower than the "
                 "minimum 5 (downgrade refused)")
    console = boot_until_choice(device, workspace, tpm=True)
    assert "MantraBoot: rollback minimums: security counter 5, revocation list 1 (UEFI variable and TPM NV index " \
           "0x01004d42)" in console, tail(console)
    assert downgrade in console, tail(console)
    assert booting(console) == "a (active, security counter 5)", tail(console)

    # The variable store wiped (a firmware reset, or an attacker with flash
    # access): the TPM NV index still holds the minimum.
    store.unlink()
    console = boot_until_choice(device, workspace, tpm=True)
    assert "MantraBoot: no valid MantraSlots variable: a factory-fresh device" in console, tail(console)
    assert "MantraBoot: rollback minimums: security counter 5, revocation list 1" in console, tail(console)
    assert downgrade in console, tail(console)
    assert booting(console) == "a (active, security counter 5)", tail(console)
    found = read_variable(store, "MantraRollback")
    assert found is not None and found[1][16:] == struct.pack("<QQ", 5, 1)  # written back from the TPM's copy
