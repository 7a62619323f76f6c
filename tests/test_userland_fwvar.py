"""UEFI runtime variables through MantraCore (syscalls 40/41, the `fwvar`
capability) and MantraInit's boot confirmation, read from what the guest
printed: MantraBoot's SetVirtualAddressMap leaves the runtime services
usable, an NV variable written in one boot is read back in the next boot of
the same image (OVMF writes it to the pflash QEMU backs with the image's
firmware-vars.fd), bad arguments and missing rights are refused, and
MantraInit decides the confirmation once the default product is healthy."""

from __future__ import annotations

import re

import pytest
from mantra.build import BuildResult, build
from mantra.qemu import boot
from mantra.workspace import Workspace

pytestmark = pytest.mark.boot

BOOT_TIMEOUT = 300
PERSIST_DONE = "utest: firmware_variable_persists ..."


def tail(text: str) -> str:
    return "console (last 4000 characters):\n" + text[-4000:]


@pytest.fixture(scope="module")
def utest_image(workspace: Workspace) -> BuildResult:
    return build(workspace, "qemu-x86_64", "utest")


def boot_until_persist_test(image: BuildResult) -> str:
    result = boot(image.image, timeout=BOOT_TIMEOUT, until=PERSIST_DONE)
    console = result.console_text
    assert result.matched, tail(console)
    return console


def test_nv_variable_persists_across_boots_and_bad_calls_are_refused(utest_image: BuildResult) -> None:
    # A fresh variable store: the image's copy is made again on first use.
    (utest_image.image.parent / "firmware-vars.fd").unlink(missing_ok=True)
    first = boot_until_persist_test(utest_image)
    assert re.search(r"efi: runtime services \(UEFI [\d.]+\), \d+ runtime regions \(\d+ MMIO\) in the direct map; "
                     r"firmware variables available", first), tail(first)
    assert "utest: firmware_variables_refuse_bad_arguments ... ok" in first, tail(first)
    assert "utest:   fwvar: MantraUtestBoots was 0, now 1" in first, tail(first)
    second = boot_until_persist_test(utest_image)
    assert "utest:   fwvar: MantraUtestBoots was 1, now 2" in second, tail(second)
    assert "utest: firmware_variable_persists ... ok" in second, tail(second)
    assert "KERNEL FAULT" not in first + second and "KERNEL PANIC" not in first + second


def test_zero_capability_process_is_refused_the_firmware_variable_syscalls(utest_image: BuildResult) -> None:
    # The zero-capability child issues every syscall number below nr::COUNT
    # (40 and 41 included) and must get BAD_HANDLE for each.
    result = boot(utest_image.image, timeout=BOOT_TIMEOUT, until="utest: zero_capability_process ...")
    console = result.console_text
    assert result.matched, tail(console)
    assert "utest: zero_capability_process ... ok" in console, tail(console)


def test_default_product_decides_the_boot_confirmation(default_image: BuildResult) -> None:
    result = boot(default_image.image, timeout=BOOT_TIMEOUT, until="init: boot ")
    console = result.console_text
    assert result.matched, tail(console)
    healthy = re.search(r"init: all services healthy \((\d+) ms since boot\)", console)
    assert healthy, tail(console)
    # crashy (confirm = false) is still crashing or failed then: it does not count.
    # MantraBoot recorded the boot in MantraBootCurrent: the factory slot a
    # is active, so there is nothing to confirm (tests/test_boot_confirm.py
    # confirms a pending update).
    assert "init: boot healthy: slot a is already active (security counter 0); nothing to confirm" in console, \
        tail(console)
    assert "boot not confirmed" not in console, tail(console)
