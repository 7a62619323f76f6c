"""The `mantra` command: errors say what went wrong and what to try, with
exit status 1 (2 for usage errors) and no traceback; the bootstrap script
adds little to a run once the machine is set up."""

from __future__ import annotations

import subprocess
import time

import pytest
from mantra.cli import app
from mantra.workspace import Workspace
from support import ROOT, add_product, mantra
from typer.testing import CliRunner


def invoke(workspace: Workspace, *args: str):
    return CliRunner().invoke(app, ["--workspace", str(workspace.root), *args])


def test_config_error_names_symbol_file_and_what_to_try(scratch: Workspace) -> None:
    add_product(scratch, "broken", "CONFIG_TIMER_HZ=5\n")
    result = invoke(scratch, "config", "-p", "broken")
    assert result.exit_code == 1
    assert "error: configuration of qemu-x86_64/broken" in result.stderr
    assert "manifests/broken/prj.conf:1: CONFIG_TIMER_HZ=5 does not hold: out of range 10..10000" in result.stderr
    assert "try: " in result.stderr
    assert "Traceback" not in result.output


def test_config_writes_and_says_where(scratch: Workspace) -> None:
    result = invoke(scratch, "config", "-b", "qemu-x86_64", "-p", "default")
    assert result.exit_code == 0, result.output
    for name in (".config", "mantra_config.rs", "cfg.txt"):
        assert f"build/qemu-x86_64/default/config/{name}" in result.stdout
        assert (scratch.root / "build" / "qemu-x86_64" / "default" / "config" / name).is_file()


def test_boards_lists_the_boards(scratch: Workspace) -> None:
    result = invoke(scratch, "boards")
    assert result.exit_code == 0
    assert "qemu-x86_64" in result.stdout and "x86_64" in result.stdout


def test_bad_product_data_is_an_error_not_a_traceback(scratch: Workspace) -> None:
    add_product(scratch, "odd", "")
    toml = scratch.products_dir / "odd" / "product.toml"
    toml.write_text(toml.read_text().replace('kind = "kernel"', 'kind = "[driver]"'))
    result = invoke(scratch, "config", "-p", "odd")
    assert result.exit_code == 1
    assert "service kind '[driver]' is unknown (kinds: kernel, user)" in result.stderr


def test_not_a_checkout(tmp_path) -> None:
    result = CliRunner().invoke(app, ["--workspace", str(tmp_path), "boards"])
    assert result.exit_code == 1
    assert "is not a MantraOS checkout" in result.stderr


def test_unknown_board_through_the_bootstrap_script() -> None:
    result = mantra("config", "-b", "no-such-board")
    assert result.returncode == 1
    assert "error: unknown board 'no-such-board' (boards: qemu-x86_64)" in result.stderr
    assert "try: pick one of those with -b BOARD" in result.stderr


@pytest.mark.parametrize("args", [["run", "--timeout", "5"], ["no-such-command"], ["build", "--no-such-option"],
                                  ["run", "--console-port", "4555", "--headless"], ["run", "--console-port", "0"],
                                  ["run", "--console-port", "4555", "--until", "x"]])
def test_usage_errors_exit_with_status_2(args: list[str]) -> None:
    result = mantra(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr


def _fastest(cmd: list[str], runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.monotonic()
        subprocess.run(cmd, cwd=ROOT, capture_output=True, check=True)
        best = min(best, time.monotonic() - started)
    return best


def test_bootstrap_adds_under_a_second() -> None:
    mantra("--help")  # sets the machine up if needed
    overhead = _fastest([str(ROOT / "mantra"), "--help"]) - _fastest([str(ROOT / ".venv" / "bin" / "mantra"), "--help"])
    assert overhead < 1.0, f"./mantra adds {overhead:.2f} s"
