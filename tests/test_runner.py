"""The QEMU runner's command line, from board.toml and the configuration
(no QEMU is started here)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from mantra.board import Board
from mantra.errors import MantraError
from mantra.runners import runner_for
from mantra.runners.qemu import QemuRunner, ScreenResetFilter

CONFIG = {"QEMU_DEBUG_EXIT": "y", "DEBUG_EXIT_IO_PORT": "0xf4"}


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "image.img"
    path.write_bytes(bytes(512))
    return path


def test_command_line_from_board_data(board: Board, image: Path) -> None:
    runner = runner_for(board, CONFIG, image, image.parent)
    assert isinstance(runner, QemuRunner)
    cmd = runner.command(["-serial", "stdio"], icount=False)
    line = " ".join(cmd)
    assert cmd[0].endswith(board.qemu.binary)
    assert f"-machine {board.qemu.machine} -cpu {board.qemu.cpu} -m {board.qemu.memory} -smp {board.qemu.smp}" in line
    assert f"if=pflash,format=raw,readonly=on,file={board.qemu.firmware_code}" in line
    assert f"if=pflash,format=raw,file={image.parent / 'firmware-vars.fd'}" in line
    assert f"if={board.qemu.disk_interface},format=raw,file={image}" in line
    assert "-net none" in line and "-no-reboot" in cmd
    assert "-device isa-debug-exit,iobase=0xf4,iosize=0x04" in line
    assert "-icount" not in cmd
    assert cmd[-2:] == ["-serial", "stdio"]
    # The firmware variables are this image's own copy.
    assert (image.parent / "firmware-vars.fd").read_bytes() == board.qemu.firmware_vars.read_bytes()


def test_icount_and_no_debug_exit(board: Board, image: Path) -> None:
    runner = runner_for(board, {"QEMU_DEBUG_EXIT": "n"}, image, image.parent)
    cmd = runner.command([], icount=True)
    assert "isa-debug-exit" not in " ".join(cmd)
    assert cmd[cmd.index("-icount") + 1] == "shift=0"


def test_debug_exit_port_comes_from_the_configuration(board: Board, image: Path) -> None:
    runner = runner_for(board, {"QEMU_DEBUG_EXIT": "y", "DEBUG_EXIT_IO_PORT": "0x501"}, image, image.parent)
    assert "isa-debug-exit,iobase=0x501,iosize=0x04" in runner.command([], icount=False)


def test_missing_image_is_an_error(board: Board, tmp_path: Path) -> None:
    runner = runner_for(board, CONFIG, tmp_path / "missing.img", tmp_path)
    with pytest.raises(MantraError, match="missing.img not found"):
        runner.command([], icount=False)


def test_unknown_runner_is_an_error(board: Board, image: Path) -> None:
    with pytest.raises(MantraError, match="runner 'jtag' is unknown"):
        runner_for(replace(board, runner="jtag"), CONFIG, image, image.parent)


def test_screen_resets_are_removed_even_when_split() -> None:
    screen = ScreenResetFilter()
    out = screen.feed(b"boot\x1b[2J\x1b[01") + screen.feed(b";01Hready\x1b") + screen.feed(b"[1mbold")
    assert out == b"bootready\x1b[1mbold"
