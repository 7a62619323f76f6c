"""SMP: MantraCore starts every CPU QEMU gives it (`./mantra run --smp N`)
and its in-guest SMP self-test passes (reschedule IPIs to each CPU,
cross-CPU calls, a TLB shootdown after a real remapping, concurrent
shootdowns from all CPUs). Boot tests: `mantra test -m "not boot"` skips them."""

from __future__ import annotations

import re

import pytest
from mantra.build import BuildResult
from support import mantra

pytestmark = pytest.mark.boot

KTEST_TIMEOUT = 300


def tail(text: str) -> str:
    return "console (last 3000 characters):\n" + text[-3000:]


@pytest.mark.parametrize("cpus", [1, 4])
def test_all_cpus_come_online_and_the_smp_self_test_passes(ktest_image: BuildResult, cpus: int) -> None:
    result = mantra("run", "--ktest", "--smp", str(cpus), "--headless", "--timeout", str(KTEST_TIMEOUT),
                    timeout=KTEST_TIMEOUT + 300)
    console = result.stdout
    assert re.search(rf"^smp: {cpus} of {cpus} cpus online", console, re.M), tail(console)
    assert re.search(r"^ktest: smp \.\.\. ok", console, re.M), tail(console)
    summary = re.search(r"^ktest: (\d+) passed, (\d+) failed", console, re.M)
    assert summary and summary[2] == "0", tail(console)
    assert result.returncode == 33, tail(console) + result.stderr[-2000:]
