"""Booting the built images in QEMU: the banners of MantraBoot and MantraCore
on the console, and the in-guest kernel tests. These need MantraBoot and
MantraCore to build and boot; `mantra test -m "not boot"` leaves them out."""

from __future__ import annotations

import re

import pytest
from mantra.build import BuildResult
from mantra.qemu import boot
from mantra.runners.core import TIMEOUT_EXIT_STATUS
from support import mantra

pytestmark = pytest.mark.boot

# Upper bounds: OVMF under TCG reaches MantraBoot in a few seconds here.
BOOT_TIMEOUT = 180
KTEST_TIMEOUT = 300
READY = re.compile(r"MantraCore ready \((\d+) tsc since kernel entry")


def tail(text: str) -> str:
    return "console (last 3000 characters):\n" + text[-3000:]


def test_run_headless_shows_the_banners(default_image: BuildResult) -> None:
    result = mantra("run", "--headless", "--timeout", str(BOOT_TIMEOUT), "--until", "MantraCore ready",
                    timeout=BOOT_TIMEOUT + 300)
    console = result.stdout
    assert result.returncode == 0, tail(console) + result.stderr[-2000:]
    boot_banner = console.find("MantraBoot 0.1.0 (board qemu-x86_64)")
    kernel_banner = console.find("MantraCore 0.1.0 x86_64")
    assert 0 <= boot_banner < kernel_banner, tail(console)
    assert re.search(r"^MantraBoot: kernel \d+ segments, entry 0x[0-9a-f]+", console, re.M), tail(console)
    after = console[kernel_banner:]
    for prefix in ("cpus: ", "memory: ", "free memory: ", "timer: "):
        assert re.search(f"^{prefix}", after, re.M), f"no '{prefix}' line\n" + tail(console)
    assert READY.search(after), tail(console)
    assert "MantraBoot: error" not in console


def test_kernel_tests_pass_in_the_guest(ktest_image: BuildResult) -> None:
    result = boot(ktest_image.image, timeout=KTEST_TIMEOUT)
    console = result.console_text
    assert not result.timed_out, tail(console)
    summary = re.search(r"^ktest: (\d+) passed, (\d+) failed", console, re.M)
    assert summary, tail(console)
    assert int(summary[1]) > 0 and summary[2] == "0", tail(console)
    assert not re.search(r"^ktest: .* \.\.\. FAILED", console, re.M), tail(console)
    assert result.exit_code == 33, tail(console)


def test_icount_counts_guest_instructions_to_ready(default_image: BuildResult) -> None:
    result = boot(default_image.image, timeout=BOOT_TIMEOUT * 2, icount=True, until="MantraCore ready")
    assert result.matched, tail(result.console_text)
    ready = READY.search(result.console_text)
    assert ready and int(ready[1]) > 0, tail(result.console_text)


def test_timeout_stops_the_guest(default_image: BuildResult) -> None:
    result = boot(default_image.image, timeout=2)
    assert result.timed_out and result.exit_code is None
    assert result.status == TIMEOUT_EXIT_STATUS
    assert result.log.read_bytes().decode(errors="replace") == result.console_text
