"""Strict configuration: every problem is an error naming the symbol and the
file:line, and the generated Rust constants and cfg flags match the result."""

from __future__ import annotations

import re

import pytest
from mantra import kconfig
from mantra.board import load_board
from mantra.errors import MantraError
from mantra.kconfig import ConfigError
from mantra.product import load_product
from mantra.workspace import Workspace
from support import add_product


def configure(workspace: Workspace, product: str = "default", board: str = "qemu-x86_64"):
    return kconfig.configure(workspace, load_board(workspace, board), load_product(workspace, product))


def config_error(workspace: Workspace, prj_conf: str) -> str:
    add_product(workspace, "broken", prj_conf)
    with pytest.raises(ConfigError) as caught:
        configure(workspace, "broken")
    return str(caught.value)


def test_unknown_board_lists_the_boards(workspace: Workspace) -> None:
    with pytest.raises(MantraError) as caught:
        load_board(workspace, "no-such-board")
    assert "unknown board 'no-such-board'" in caught.value.message
    assert "qemu-x86_64" in caught.value.message


def test_unknown_product_lists_the_products(workspace: Workspace) -> None:
    with pytest.raises(MantraError, match=r"unknown product 'nope' \(products: .*default"):
        load_product(workspace, "nope")


def test_unknown_symbol_is_an_error_with_file_and_line(scratch: Workspace) -> None:
    message = config_error(scratch, "# a comment\nCONFIG_TIMR_HZ=100\n")
    assert "manifests/broken/prj.conf:2: CONFIG_TIMR_HZ: unknown symbol (did you mean CONFIG_TIMER_HZ?)" in message


def test_out_of_range_value_does_not_hold(scratch: Workspace) -> None:
    message = config_error(scratch, "CONFIG_TIMER_HZ=5\n")
    assert "manifests/broken/prj.conf:1: CONFIG_TIMER_HZ=5 does not hold: out of range 10..10000" in message


def test_unmet_dependency_is_an_error(scratch: Workspace) -> None:
    message = config_error(scratch, "# CONFIG_QEMU_DEBUG_EXIT is not set\nCONFIG_DEBUG_EXIT_IO_PORT=0x501\n")
    assert "manifests/broken/prj.conf:2: CONFIG_DEBUG_EXIT_IO_PORT=0x501" in message
    assert "dependencies of DEBUG_EXIT_IO_PORT are unmet: depends on QEMU_DEBUG_EXIT (QEMU_DEBUG_EXIT=n)" in message


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("CONFIG_MAX_CPUS=lots", "CONFIG_MAX_CPUS is an int: 'lots' is not a decimal number"),
        ("CONFIG_SERIAL_IO_PORT=0xzz", "CONFIG_SERIAL_IO_PORT is hex: '0xzz' is not a hex number"),
        ("CONFIG_QEMU_DEBUG_EXIT=m", "CONFIG_QEMU_DEBUG_EXIT is a bool: the value must be y or n, not 'm'"),
        ("CONFIG_BOOT_CMDLINE=quiet", 'CONFIG_BOOT_CMDLINE is a string: quote the value'),
        ('CONFIG_TIMER_HZ="100"', "CONFIG_TIMER_HZ is int: the value must not be quoted"),
        ('CONFIG_BOARD="other"', "CONFIG_BOARD cannot be set: it has no prompt"),
        ("CONFIG_TIMER_HZ=100 # comment", "CONFIG_TIMER_HZ is an int"),
        ("TIMER_HZ=100", "cannot read `TIMER_HZ=100`: expected CONFIG_NAME=value"),
    ],
)
def test_malformed_assignments_are_errors(scratch: Workspace, line: str, expected: str) -> None:
    message = config_error(scratch, line + "\n")
    assert f"manifests/broken/prj.conf:1: {expected}" in message


def test_every_problem_is_reported_in_file_order(scratch: Workspace) -> None:
    message = config_error(scratch, "CONFIG_NOPE=y\nCONFIG_TIMER_HZ=1\nCONFIG_MAX_CPUS=0\n")
    assert "3 errors" in message
    lines = re.findall(r"prj\.conf:(\d+):", message)
    assert lines == ["1", "2", "3"]


def test_repeated_symbol_in_one_file_is_an_error(scratch: Workspace) -> None:
    message = config_error(scratch, "CONFIG_TIMER_HZ=100\nCONFIG_TIMER_HZ=200\n")
    assert "prj.conf:2: CONFIG_TIMER_HZ is assigned twice in this file (also at line 1)" in message


def test_conflicting_choice_members_in_one_file(scratch: Workspace) -> None:
    message = config_error(scratch, "CONFIG_LOG_LEVEL_DEBUG=y\nCONFIG_LOG_LEVEL_WARN=y\n")
    assert "prj.conf:2: CONFIG_LOG_LEVEL_WARN=y conflicts with CONFIG_LOG_LEVEL_DEBUG=y at line 1" in message


def test_unsetting_the_selected_choice_member_does_not_hold(scratch: Workspace) -> None:
    message = config_error(scratch, "# CONFIG_LOG_LEVEL_INFO is not set\n")
    assert "prj.conf:1: CONFIG_LOG_LEVEL_INFO=n does not hold: it is the selection of choice LOG_LEVEL" in message


def test_error_in_the_board_defconfig_names_that_file(scratch: Workspace) -> None:
    defconfig = scratch.boards_dir / "qemu-x86_64" / "defconfig"
    defconfig.write_text(defconfig.read_text() + "CONFIG_MAX_CPUS=1000\n")
    line = len(defconfig.read_text().splitlines())
    with pytest.raises(ConfigError) as caught:
        configure(scratch)
    expected = f"board-support/qemu-x86_64/defconfig:{line}: CONFIG_MAX_CPUS=1000 does not hold: out of range 1..256"
    assert expected in str(caught.value)


def test_problem_in_the_kconfig_tree_is_an_error(scratch: Workspace) -> None:
    tree = scratch.kconfig
    tree.write_text(tree.read_text() + '\nconfig BROKEN\n\tbool "broken"\n\tdepends on NOT_DEFINED_ANYWHERE\n')
    with pytest.raises(ConfigError, match="NOT_DEFINED_ANYWHERE"):
        configure(scratch)


def test_product_overrides_board_and_choice(scratch: Workspace) -> None:
    add_product(scratch, "tuned", "CONFIG_LOG_LEVEL_DEBUG=y\nCONFIG_TIMER_HZ=1000\nCONFIG_MAX_CPUS=4\n")
    config, outputs = configure(scratch, "tuned")
    values = config.values
    assert (values["LOG_LEVEL_DEBUG"], values["LOG_LEVEL_INFO"], values["TIMER_HZ"]) == ("y", "n", "1000")
    rust = outputs.rust_constants.read_text()
    assert "pub const LOG_LEVEL_DEBUG: bool = true;" in rust
    assert "pub const LOG_LEVEL_INFO: bool = false;" in rust
    assert "pub const TIMER_HZ: i64 = 1000;" in rust
    assert "pub const MAX_CPUS: i64 = 4;" in rust
    assert "mantra_log_level_debug\n" in outputs.cfg_flags.read_text()
    assert "mantra_log_level_info" not in outputs.cfg_flags.read_text()


def test_generated_files_of_the_default_product(scratch: Workspace) -> None:
    config, outputs = configure(scratch)
    assert outputs.dir == scratch.root / "build" / "qemu-x86_64" / "default" / "config"
    assert sorted(p.name for p in outputs.dir.iterdir()) == [".config", "cfg.txt", "mantra_config.rs"]
    rust = outputs.rust_constants.read_text()
    expected = [
        'pub const BOARD: &str = "qemu-x86_64";',
        "pub const ARCH_X86_64: bool = true;",
        'pub const ARCH: &str = "x86_64";',
        "pub const SERIAL_IO_PORT: u64 = 0x3f8;",
        "pub const SERIAL_BAUD: i64 = 115200;",
        "pub const QEMU_DEBUG_EXIT: bool = true;",
        "pub const DEBUG_EXIT_IO_PORT: u64 = 0xf4;",
        "pub const MAX_CPUS: i64 = 64;",
        "pub const LOG_LEVEL_ERROR: bool = false;",
        "pub const LOG_LEVEL_WARN: bool = false;",
        "pub const LOG_LEVEL_INFO: bool = true;",
        "pub const LOG_LEVEL_DEBUG: bool = false;",
        "pub const LOG_LEVEL_TRACE: bool = false;",
        "pub const KERNEL_HEAP_KIB: i64 = 8192;",
        "pub const KERNEL_STACK_PAGES: i64 = 8;",
        "pub const TIMER_HZ: i64 = 100;",
        'pub const BOOT_CMDLINE: &str = "";',
        "pub const BOOT_STACK_KIB: i64 = 64;",
    ]
    for line in expected:
        assert line in rust.splitlines()
    # One constant per symbol of the tree, nothing else besides comments.
    constants = [line for line in rust.splitlines() if not line.startswith("//")]
    assert all(re.fullmatch(r"pub const [A-Z0-9_]+: (bool|i64|u64|&str) = .+;", line) for line in constants)
    assert len(constants) == len(config.symbols)
    assert outputs.cfg_flags.read_text().splitlines() == [
        "mantra_board_qemu_x86_64", "mantra_arch_x86_64", "mantra_qemu", "mantra_qemu_debug_exit",
        "mantra_log_level_info",
    ]
    dotconfig = outputs.dotconfig.read_text()
    assert "CONFIG_TIMER_HZ=100\n" in dotconfig and "CONFIG_QEMU_DEBUG_EXIT=y\n" in dotconfig


def test_symbol_without_value_is_left_out(scratch: Workspace) -> None:
    add_product(scratch, "no-exit", "# CONFIG_QEMU_DEBUG_EXIT is not set\n")
    _, outputs = configure(scratch, "no-exit")
    rust = outputs.rust_constants.read_text()
    assert "pub const QEMU_DEBUG_EXIT: bool = false;" in rust
    assert "DEBUG_EXIT_IO_PORT" not in rust
    assert "mantra_qemu_debug_exit" not in outputs.cfg_flags.read_text()


def test_strings_become_rust_literals(scratch: Workspace) -> None:
    add_product(scratch, "cmdline", 'CONFIG_BOOT_CMDLINE="log=debug say=\\"hi\\" path=C:\\\\x"\n')
    config, outputs = configure(scratch, "cmdline")
    assert config.values["BOOT_CMDLINE"] == 'log=debug say="hi" path=C:\\x'
    assert 'pub const BOOT_CMDLINE: &str = "log=debug say=\\"hi\\" path=C:\\\\x";' in outputs.rust_constants.read_text()


def test_unchanged_configuration_is_not_rewritten(scratch: Workspace) -> None:
    _, first = configure(scratch)
    stamps = [p.stat().st_mtime_ns for p in (first.dotconfig, first.rust_constants, first.cfg_flags)]
    _, second = configure(scratch)
    assert first.changed and not second.changed
    assert stamps == [p.stat().st_mtime_ns for p in (second.dotconfig, second.rust_constants, second.cfg_flags)]
