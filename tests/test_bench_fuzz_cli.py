"""`mantra bench` and `mantra fuzz` read figures from the guest's console;
these check the parsing (the boots themselves are in test_userland_boot.py
and in the commands' own runs)."""

from __future__ import annotations

from mantra.cli.bench import BENCHMARKS, parse
from mantra.cli.fuzz import _EXIT_LINE, _FUZZ_LINE

CONSOLE = """\
[bench] info: bench: rdtsc_pair 3 (subtracted from every figure)
[bench] info: bench: null_syscall 221 (2000 iterations)
[bench] info: bench: syscall_dispatch 240 (2000 iterations)
[bench] info: bench: channel_write_read 3957 (2000 iterations)
[bench] info: bench: ipc_call_roundtrip 8733 (2000 iterations)
[bench] info: bench: ipc_call_roundtrip_buffers 9001 (2000 iterations)
[bench] info: bench: port_wait_wakeup 11994 (2000 iterations)
[bench] info: bench: context_switch 640 (2000 iterations)
[bench] info: bench: ipc_call_roundtrip_cross_core n/a (one CPU: boot with two or more)
[bench] info: bench: done
"""


def test_bench_figures_become_one_json_object() -> None:
    figures = parse(CONSOLE)
    assert figures["rdtsc_pair"] == 3
    benchmarks = figures["benchmarks"]
    assert set(BENCHMARKS) == set(benchmarks)
    assert benchmarks["ipc_call_roundtrip"] == {"median_instructions": 8733, "iterations": 2000}
    assert benchmarks["ipc_call_roundtrip_cross_core"]["median_instructions"] is None
    assert "one CPU" in benchmarks["ipc_call_roundtrip_cross_core"]["why"]


def test_missing_benchmarks_are_visible() -> None:
    figures = parse("bench: null_syscall 12 (1000 iterations)\n")
    assert set(figures["benchmarks"]) == {"null_syscall"} and figures["rdtsc_pair"] is None


def test_fuzz_lines() -> None:
    text = ("[utest] info: fuzz: 1000000 random syscalls, 936000 refused with an error, 64000 succeeded\n"
            "[init] info: init: utest exited (code 0); not restarting (restart=never)\n")
    assert _FUZZ_LINE.search(text).groups() == ("1000000", "936000", "64000")
    assert _EXIT_LINE.search(text)[1] == "code 0"
    crashed = "init: utest exited (fault page-fault (vector 14)); not restarting"
    assert _EXIT_LINE.search(crashed)[1] == "fault page-fault (vector 14)"
