"""Boot confirmation end to end (docs/boot-state.md): MantraBoot boots an
update staged in slot b as pending, MantraInit confirms it once every
service that counts is healthy (writing MantraSlots through the kernel's
UEFI variable syscalls), and the next boot runs slot b as active with the
rollback minimum raised to its security counter. An update whose services
never become healthy is never confirmed: after its tries MantraBoot falls
back to slot a. Everything is read from the console and from the firmware
variable store the boots wrote (tests/uefi_vars.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from bootfs_reader import parse as parse_bootfs
from mantra.build import BOOTFS_PATH, BuildResult
from mantra.image.bootfs import pack as pack_bootfs
from mantra.signing import keys
from mantra.workspace import Workspace
from test_boot_ab import booting, mantra_slots, stage
from test_boot_errors import SpoiledImage, tail

pytestmark = pytest.mark.boot

TIMEOUT = 300
ACTIVE, PENDING, BAD = 1, 2, 3


def boot_until(device: SpoiledImage, workspace: Workspace, until: str) -> str:
    result = device.boot(workspace, TIMEOUT, until=until)
    console = result.console_text
    assert result.matched, tail(console)
    assert "MantraBoot: error" not in console and "KERNEL PANIC" not in console, tail(console)
    return console


def boot_until_decided(device: SpoiledImage, workspace: Workspace) -> str:
    console = boot_until(device, workspace, "init: boot")
    assert re.search(r"init: boot (confirmed|not confirmed|healthy|confirmation skipped)", console), tail(console)
    return console


def update_image(built: BuildResult, directory: Path, counter: int, *, healthy: bool = True) -> SpoiledImage:
    """Slot a of a copy of `built`, re-signed with security counter
    `counter`; with `healthy=False` its init.manifest counts crashy (no
    `confirm=no`), which crash-loops: its services never become healthy."""
    directory.mkdir()
    update = SpoiledImage(built, directory, slots=("a",))
    if not healthy:
        files = parse_bootfs(update.read(BOOTFS_PATH))
        changed = []
        for name, data in files:
            if name == "init.manifest":
                text = data.decode()
                assert " confirm=no" in text, text
                data = text.replace(" confirm=no", "").encode()
            changed.append((name, data))
        update.write(BOOTFS_PATH, pack_bootfs(changed))
    update.resign(security_counter=counter)
    return update


def test_a_healthy_update_is_confirmed_and_raises_the_rollback_minimum(default_image: BuildResult, tmp_path: Path,
                                                                        workspace: Workspace) -> None:
    (tmp_path / "device").mkdir()
    device = SpoiledImage(default_image, tmp_path / "device")
    # The factory image is active: nothing to confirm.
    console = boot_until_decided(device, workspace)
    assert booting(console) == "a (active, security counter 0)", tail(console)
    assert "init: boot healthy: slot a is already active (security counter 0); nothing to confirm" in console, \
        tail(console)

    update = update_image(default_image, tmp_path / "update", 4)
    assert default_image.keys is not None
    stage(device, "b", update, default_image.keys / keys.ROOT_PUB)

    console = boot_until_decided(device, workspace)
    assert booting(console) == "b (pending, 2 tries left, security counter 4)", tail(console)
    healthy = re.search(r"init: all services healthy \((\d+) ms since boot\)", console)
    assert healthy, tail(console)
    assert "init: boot confirmed: slot b (security counter 4)" in console, tail(console)
    preferred, records = mantra_slots(device)
    assert preferred == 1 and records[1][:3] == (ACTIVE, 0, 4) and records[0][:3] == (ACTIVE, 0, 0), records

    console = boot_until_decided(device, workspace)
    assert "MantraBoot: rollback minimum raised to 4" in console, tail(console)
    assert booting(console) == "b (active, security counter 4)", tail(console)
    assert "init: boot healthy: slot b is already active (security counter 4); nothing to confirm" in console, \
        tail(console)


def test_an_update_whose_services_never_become_healthy_falls_back(default_image: BuildResult, tmp_path: Path,
                                                                   workspace: Workspace) -> None:
    (tmp_path / "device").mkdir()
    device = SpoiledImage(default_image, tmp_path / "device")
    # The first boot records the factory slots (a factory-fresh device takes
    # whatever verifies as active); only contents that change later are pending.
    console = boot_until(device, workspace, "MantraBoot: booting slot")
    assert booting(console) == "a (active, security counter 0)", tail(console)
    update = update_image(default_image, tmp_path / "update", 2, healthy=False)
    assert default_image.keys is not None
    stage(device, "b", update, default_image.keys / keys.ROOT_PUB)

    for tries_left in (2, 1, 0):
        console = boot_until(device, workspace, "init: boot not confirmed")
        word = "try" if tries_left == 1 else "tries"
        assert booting(console) == f"b (pending, {tries_left} {word} left, security counter 2)", tail(console)
        assert "init: boot not confirmed: service crashy failed" in console, tail(console)
        assert "init: boot confirmed" not in console, tail(console)
        preferred, records = mantra_slots(device)
        assert preferred == 0 and records[1][:3] == (PENDING, tries_left, 2), records

    console = boot_until_decided(device, workspace)
    assert "MantraBoot: slot b: marked bad: pending and never confirmed, no tries left" in console, tail(console)
    assert booting(console) == "a (active, security counter 0)", tail(console)
    assert "rollback minimum raised" not in console, tail(console)
    _, records = mantra_slots(device)
    assert records[1][:3] == (BAD, 0, 2), records
