"""The bench on QEMU boards: the project's boot, service-restart and flash
scenarios on two places in parallel through `mantra hil test`; QEMU killed
mid-test is classified as an infrastructure error and retried; the pytest
plugin (`pytest --hil-place`). Every check reads what the guests printed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from mantra.build import BuildResult
from mantra.hil.bench import load_bench
from mantra.hil.results import INFRA, PASSED
from mantra.hil.run import RunOptions, run_places
from support import ROOT, mantra

def write_bench(directory: Path, image: Path, places: list[str], serial: tuple[str, ...] = ()) -> Path:
    """QEMU places; those in `serial` are flashed over their console (MantraBoot's flash mode, mantra flash)."""
    bench = directory / "bench.toml"
    bench.write_text(f'[bench]\nstate_dir = "{directory}/state"\nlock_dir = "{directory}/locks"\n' + "".join(
        f'[places.{name}]\nqemu = {{ image = "{image}" }}\n' + ('flasher = "serial"\n' if name in serial else "")
        for name in places))
    return bench


@pytest.mark.boot
def test_scenarios_on_two_places_in_parallel(default_image: BuildResult, tmp_path: Path) -> None:
    """q1 is flashed by the virtual programmer (its disk written while off),
    q2 over its serial console (MantraBoot's flash mode, mantra.provision)."""
    bench = write_bench(tmp_path, default_image.image, ["q1", "q2"], serial=("q2",))
    junit, report = tmp_path / "junit.xml", tmp_path / "report.md"
    result = mantra("hil", "test", "--bench", str(bench), "--places", "q1,q2",
                    "--scenario", "boot,service-restart,flash", "--junit", str(junit), "--report", str(report),
                    timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = re.search(r"hil: 6 scenario run\(s\) on 2 place\(s\): 6 passed, 0 failed, 0 infrastructure error\(s\), "
                        r"0 error\(s\); 0 retried; wall time ([\d.]+) s \(scenario time summed over places ([\d.]+) s\)",
                        result.stdout)
    assert summary, result.stdout
    wall, summed = float(summary[1]), float(summary[2])
    assert wall < summed  # the two boards ran at the same time
    # Both places ran each scenario, in parallel: their boot runs overlap in the log.
    started = {place: result.stderr.index(f"[{place}] boot: running") for place in ("q1", "q2")}
    finished = {place: result.stderr.index(f"[{place}] boot: passed") for place in ("q1", "q2")}
    assert max(started.values()) < min(finished.values()), result.stderr
    root = ET.parse(junit).getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("6", "0", "0")
    cases = {(c.get("classname"), c.get("name")): c for c in root.iter("testcase")}
    assert set(cases) == {(f"hil.{p}", s) for p in ("q1", "q2") for s in ("boot", "service-restart", "flash")}
    for place in ("q1", "q2"):
        boot_out = cases[(f"hil.{place}", "boot")].find("system-out").text
        assert "MantraBoot 0.1.0 (board qemu-x86_64)" in boot_out and "MantraCore ready" in boot_out
        assert re.search(r"init: all services healthy \(\d+ ms since boot\)", boot_out)
        log = (tmp_path / "state" / place / "console.log").read_text(errors="replace")
        assert log.count("MantraCore ready") == 2  # boot, then flash's boot
        assert re.search(r"init: crashy failed: crash loop \(5 crashes in \d+ ms\); not restarting", log)
    text = report.read_text()
    assert "| q2 | service-restart | passed | 1 |" in text
    # q2 was flashed over MantraFlash: the flashed slot booted as pending and init confirmed it.
    q2_log = (tmp_path / "state" / "q2" / "console.log").read_text(errors="replace")
    assert re.search(r"MantraBoot: flash mode \(protocol 1, board qemu-x86_64\): waiting for the host", q2_log)
    # The boot scenario's flash wrote slot b of the factory-fresh board (only slot a from the factory); the
    # flash scenario's then wrote the slot that was inactive by then, a (its blocks mostly already held).
    flashed = re.findall(r"- flash: slot a of .* -> slot (\w) of the qemu-x86_64 on socket://127\.0\.0\.1:\d+: (\d+) "
                         r"blocks sent, (\d+) held, \d+ bytes on the line in [\d.]+ s; slot (\w) is pending", text)
    assert flashed and all(slot == pending for slot, _, _, pending in flashed), text
    [(slot, sent, held, _)] = flashed
    assert int(sent) + int(held) > 0
    assert f"- confirmed: slot {slot}" in text and re.search(rf"init: boot confirmed: slot {slot}", q2_log)
    assert re.search(r"init: boot confirmed: slot b", q2_log)
    assert re.search(r"- flash: wrote .* to .*/q1/image.img", text)
    assert re.search(r"- faults: (#\w+ ?){2,}", text) and "- restart delays (ms): 100 200 400 800" in text
    assert "- verified with keys: " in text and "init: started crashy" in text
    # The locks are released and the boards are off.
    assert not list((tmp_path / "locks").glob("*.lock"))
    assert not list((tmp_path / "state").glob("*/qemu.json"))


@pytest.mark.boot
def test_qemu_killed_mid_test_is_an_infrastructure_error(default_image: BuildResult, tmp_path: Path) -> None:
    bench = load_bench(write_bench(tmp_path, default_image.image, ["q1"]), root=ROOT)
    killed: list[str] = []

    def kill_once_the_kernel_is_up(place: str, board) -> None:  # noqa: ANN001
        def watch() -> None:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and "MantraCore ready" not in board.console.text:
                time.sleep(0.02)
            pid = board.qemu.qemu_pid()
            if pid:
                os.kill(pid, signal.SIGTERM)  # QEMU exits 0 on SIGTERM: still not the guest's doing
                killed.append(f"{pid}")

        threading.Thread(target=watch, daemon=True).start()

    # One retry: the first attempt ends in an infrastructure error (not a test failure), the next (a fresh
    # boot) passes, and the result keeps both attempts.
    results, _ = run_places(bench, ["q1"], RunOptions(scenarios=["boot"], retries=1, log=lambda line: None,
                                                      on_open=kill_once_the_kernel_is_up))
    [result] = results
    first = result.attempts[0]
    assert first.outcome == INFRA and first.error_type == "BoardGone", first.message
    assert re.search(r"QEMU was terminated by signal 15 from pid \d+ without the bench powering the board off "
                     r"\(while waiting for '", first.message), first.message
    assert len(killed) == 1
    assert [a.outcome for a in result.attempts] == [INFRA, PASSED] and result.outcome == PASSED
    assert result.console.count("MantraCore ready") == 2


PLUGIN_TESTS = '''
import os, signal

def test_boots(strategy, console):
    strategy.transition("booted")
    console.expect(r"^MantraCore ready", timeout=120, start=strategy.boot_mark)

def test_wrong_banner_is_a_failure(strategy, console):
    strategy.transition("booted")
    console.expect(r"^Linux version", timeout=3, start=strategy.boot_mark)

def test_board_killed_is_an_infrastructure_error(target, strategy, console):
    strategy.transition("booted")
    os.kill(target.qemu.qemu_pid(), signal.SIGKILL)
    console.expect("never printed", timeout=60)
'''


@pytest.mark.boot
def test_pytest_plugin_on_a_qemu_place(default_image: BuildResult, tmp_path: Path) -> None:
    bench = write_bench(tmp_path, default_image.image, ["q1"])
    tests = tmp_path / "test_on_bench.py"
    tests.write_text(PLUGIN_TESTS)
    junit = tmp_path / "junit.xml"
    run = subprocess.run([str(ROOT / ".venv" / "bin" / "pytest"), "-p", "no:cacheprovider", str(tests),
                          "--rootdir", str(tmp_path), "--hil-place", "q1", "--hil-bench", str(bench),
                          "--hil-retries", "1", f"--junitxml={junit}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=900)
    output = run.stdout + run.stderr
    assert re.search(r"1 failed, 1 passed, 1 error", output), output
    assert "hil place q1: 1 test failure(s), 1 infrastructure error(s), 1 retried" in output
    assert "infrastructure error: place q1: QEMU was killed (SIGKILL)" in output
    root = ET.parse(junit).getroot()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert cases["test_boots"].find("failure") is None and cases["test_boots"].find("error") is None
    assert "Linux version" in cases["test_wrong_banner_is_a_failure"].find("failure").get("message")
    assert "QEMU was killed" in cases["test_board_killed_is_an_infrastructure_error"].find("error").get("message")
    assert not list((tmp_path / "locks").glob("*.lock"))


def test_plugin_is_inert_without_a_place(tmp_path: Path) -> None:
    tests = tmp_path / "test_on_bench.py"
    tests.write_text(PLUGIN_TESTS)
    run = subprocess.run([str(ROOT / ".venv" / "bin" / "pytest"), "-p", "no:cacheprovider", str(tests),
                          "--rootdir", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "3 skipped" in run.stdout, run.stdout + run.stderr
    assert "hil place" not in run.stdout


@pytest.mark.boot
def test_attestation_on_a_place_with_a_tpm(default_image: BuildResult, tmp_path: Path) -> None:
    """The attest scenario passes on a QEMU place with swtpm; on a place
    without a TPM it is a test failure (the board cannot attest), not an
    infrastructure error."""
    bench_file = tmp_path / "bench.toml"
    bench_file.write_text(f'[bench]\nstate_dir = "{tmp_path}/state"\nlock_dir = "{tmp_path}/locks"\n'
                          f'[places.tpm]\nqemu = {{ image = "{default_image.image}", tpm = true }}\n'
                          f'[places.plain]\nqemu = {{ image = "{default_image.image}" }}\n')
    bench = load_bench(bench_file, root=ROOT)
    results, _ = run_places(bench, ["tpm", "plain"], RunOptions(scenarios=["attest"], retries=1,
                                                                log=lambda line: None))
    by_place = {r.place: r for r in results}
    tpm, plain = by_place["tpm"], by_place["plain"]
    assert tpm.outcome == PASSED, tpm.message
    assert re.match(r"default 0\.1\.0 for qemu-x86_64, slot a, security counter 0: quote verified", tpm.details["attested"])
    assert "tpm: TPM 2.0" in tpm.console and "MANTRA-ATTEST-END" in tpm.console
    assert (tmp_path / "state" / "tpm" / "attest").is_dir()  # the AK pinned on first use
    assert plain.outcome == "failed" and len(plain.attempts) == 1
    assert "the board has no TPM: attestd: no TPM" in plain.message


@pytest.mark.boot
def test_power_console_and_boot_commands(default_image: BuildResult, tmp_path: Path) -> None:
    """A QEMU board powered on by one command is there for the next ones."""
    bench = str(write_bench(tmp_path, default_image.image, ["q1"]))
    try:
        flashed = mantra("hil", "flash", "q1", "--bench", bench)
        assert flashed.returncode == 0 and re.search(r"q1: wrote .*image\.img", flashed.stdout), flashed.stderr
        on = mantra("hil", "power", "on", "q1", "--bench", bench)
        assert on.returncode == 0 and "q1: power on" in on.stdout, on.stderr
        console = mantra("hil", "console", "q1", "--bench", bench, "--expect", r"init: all services healthy",
                         "--timeout", "240")
        assert console.returncode == 0, console.stdout[-3000:] + console.stderr
        assert "MantraCore ready" in console.stdout and "init: all services healthy" in console.stdout
        status = mantra("hil", "power", "status", "q1", "--bench", bench)
        assert "q1: power on" in status.stdout
        off = mantra("hil", "power", "off", "q1", "--bench", bench)
        assert off.returncode == 0 and "q1: power off" in off.stdout
        assert "q1: power off" in mantra("hil", "power", "status", "q1", "--bench", bench).stdout
        boot = mantra("hil", "boot", "q1", "--bench", bench, "--until", "booted", "--off")
        assert boot.returncode == 0, boot.stderr
        assert re.search(r"q1: booted in [\d.]+ s: MantraBoot 0\.1\.0 \(board qemu-x86_64\), slot a, services logd, "
                         r"demo, crashy, attestd", boot.stdout), boot.stdout
        assert not (tmp_path / "state" / "q1" / "qemu.json").exists()
        assert not list((tmp_path / "locks").glob("*.lock"))
    finally:
        mantra("hil", "power", "off", "q1", "--bench", bench)


@pytest.mark.boot
def test_hil_test_runs_pytest_files_on_places_in_parallel(default_image: BuildResult, tmp_path: Path) -> None:
    """`mantra hil test --pytest FILE --places q1,q2`: one pytest per place, the results merged."""
    bench = write_bench(tmp_path, default_image.image, ["q1", "q2"])
    tests = tmp_path / "test_on_bench.py"
    tests.write_text(PLUGIN_TESTS.split("def test_board_killed")[0])
    junit = tmp_path / "junit.xml"
    result = mantra("hil", "test", "--bench", str(bench), "--places", "q1,q2", "--pytest", str(tests),
                    "--junit", str(junit), "--report", str(tmp_path / "report.md"), timeout=900)
    assert result.returncode == 1, result.stdout + result.stderr  # a test failed
    assert re.search(r"hil: 4 scenario run\(s\) on 2 place\(s\): 2 passed, 2 failed, 0 infrastructure error\(s\)",
                     result.stdout), result.stdout + result.stderr
    root = ET.parse(junit).getroot()
    outcomes = {(s.get("name"), c.get("name").split("::")[-1]): ("failure" if c.find("failure") is not None else "ok")
                for s in root.iter("testsuite") for c in s.iter("testcase")}
    assert outcomes == {(p, t): o for p in ("q1", "q2")
                        for t, o in (("test_boots", "ok"), ("test_wrong_banner_is_a_failure", "failure"))}
    for place in ("q1", "q2"):
        assert "MantraCore ready" in (tmp_path / "state" / place / "console.log").read_text(errors="replace")
    assert not list((tmp_path / "locks").glob("*.lock"))
