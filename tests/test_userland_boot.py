"""Booting products with user services: MantraInit starts and supervises
them, faults kill only the faulting process, and the user-mode test suite
(manifests/utest: handles, rights, revocation, pointers, interrupts, a
zero-capability process, 50 000 random syscalls) passes. Everything is read from what the
guest printed."""

from __future__ import annotations

import re

import pytest
from mantra.build import BuildResult, build
from mantra.qemu import boot
from mantra.workspace import Workspace

pytestmark = pytest.mark.boot

BOOT_TIMEOUT = 300


def tail(text: str) -> str:
    return "console (last 4000 characters):\n" + text[-4000:]


@pytest.fixture(scope="session")
def utest_image(workspace: Workspace) -> BuildResult:
    return build(workspace, "qemu-x86_64", "utest")


def test_init_supervises_services_and_faults_stay_contained(default_image: BuildResult) -> None:
    result = boot(default_image.image, timeout=BOOT_TIMEOUT, until="failed: crash loop")
    console = result.console_text
    assert result.matched, tail(console)
    assert re.search(r"^init: started \(koid \d+\)", console, re.M), tail(console)
    for service in ("logd", "demo", "crashy"):
        assert re.search(rf"init: started {service} \(koid \d+\)", console), tail(console)
    assert "init: all services up" in console, tail(console)
    # Each fault kind kills crashy (and only crashy): the kernel names it.
    kills = re.findall(r"^process crashy \(koid \d+\) killed: (\S+)", console, re.M)
    assert {"#PF", "#DE", "#UD"} <= set(kills), tail(console)
    assert len(kills) >= 4, tail(console)
    assert not re.search(r"^process (?!crashy)\S+ \(koid \d+\) killed", console, re.M), tail(console)
    # init restarts it with growing backoff, then gives up on the crash loop.
    delays = [int(ms) for ms in re.findall(r"init: crashy exited \([^)]*\)\)?; restarting in (\d+) ms", console)]
    assert len(delays) >= 3 and delays == sorted(delays) and delays[0] < delays[-1], tail(console)
    assert re.search(r"init: crashy failed: crash loop \(\d+ crashes in \d+ ms\); not restarting", console), tail(console)
    # The rest keeps running: the demo service logged its heartbeats.
    assert "[demo] info: heartbeat 1 of 3" in console, tail(console)
    assert "KERNEL FAULT" not in console and "KERNEL PANIC" not in console, tail(console)


def test_user_mode_kernel_tests_pass(utest_image: BuildResult) -> None:
    result = boot(utest_image.image, timeout=BOOT_TIMEOUT, until="utest exited")
    console = result.console_text
    assert result.matched, tail(console)
    summary = re.search(r"utest: (\d+) passed, (\d+) failed", console)
    assert summary and int(summary[1]) >= 18 and summary[2] == "0", tail(console)
    # CONSOLE_WRITE's line came out whole, on a line of its own.
    assert re.search(r"^utest: console line written whole\r?$", console, re.M), tail(console)
    assert not re.search(r"utest: \S+ \.\.\. FAILED", console), tail(console)
    for name in ("stale_handle_refused", "forged_handles_refused", "wrong_type_and_rights_refused",
                 "revoked_handles_refused", "bad_pointers_refused", "zero_capability_process",
                 "virtual_interrupt_delivers_one_packet_per_firing", "interrupt_ack_waits_for_room_on_the_port",
                 "physical_interrupts_need_the_irq_resource", "short_messages_in_registers", "bad_receive_buffer_loses_nothing",
                 "console_object_checks",
                 "firmware_variables_refuse_bad_arguments", "firmware_variable_persists",
                 "kill_during_register_calls"):
        assert f"utest: {name} ... ok" in console, tail(console)
    fuzz = re.search(r"fuzz: (\d+) random syscalls", console)
    assert fuzz and int(fuzz[1]) >= 50_000, tail(console)
    assert "init: utest exited (code 0)" in console, tail(console)
    assert "KERNEL FAULT" not in console and "KERNEL PANIC" not in console, tail(console)


def test_threads_on_four_cpus_exchange_messages(utest_image: BuildResult) -> None:
    result = boot(utest_image.image, timeout=BOOT_TIMEOUT, until="utest exited", smp=4)
    console = result.console_text
    assert result.matched, tail(console)
    assert re.search(r"^smp: 4 of 4 cpus online", console, re.M), tail(console)
    assert re.search(r"utest:   \d+ calls to 4 servers pinned to 4 CPU\(s\)", console), tail(console)
    assert "utest: smp_message_exchange ... ok" in console, tail(console)
    # Kills from CPU 0 while a client and a server on CPU 1 exchange register
    # calls through the fast path: only the victim stops, the survivor sees
    # PEER_CLOSED.
    assert re.search(r"utest:   24 kills during register calls \(24 rounds on CPU 1\)", console), tail(console)
    assert "utest: kill_during_register_calls ... ok" in console, tail(console)
    assert re.search(r"utest: \d+ passed, 0 failed", console), tail(console)
    assert "KERNEL FAULT" not in console and "KERNEL PANIC" not in console, tail(console)
