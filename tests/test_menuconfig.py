"""`mantra menuconfig`: what the user saves becomes menuconfig.conf, merged
last; kconfiglib's curses interface is replaced by a stand-in that edits the
configuration as a user would."""

from __future__ import annotations

import os
from collections.abc import Callable

import menuconfig as kconfiglib_menuconfig
import pytest
from mantra import kconfig
from mantra.board import load_board
from mantra.product import load_product
from mantra.workspace import Workspace


def user(edits: dict[str, str], save: bool) -> Callable:
    def fake_menuconfig(kconf) -> None:
        for name, value in edits.items():
            kconf.syms[name].set_value(value)
        if save:
            kconf.write_config(os.environ["KCONFIG_CONFIG"])

    return fake_menuconfig


def open_menuconfig(workspace: Workspace):
    return kconfig.menuconfig(workspace, load_board(workspace, "qemu-x86_64"), load_product(workspace, "default"))


def test_saved_changes_are_merged_last(scratch: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kconfiglib_menuconfig, "menuconfig", user({"LOG_LEVEL_TRACE": "y", "TIMER_HZ": "250"}, True))
    saved = open_menuconfig(scratch)
    assert saved == scratch.root / "build" / "qemu-x86_64" / "default" / "menuconfig.conf"
    lines = [line for line in saved.read_text().splitlines() if not line.startswith("#")]
    assert lines == ["CONFIG_LOG_LEVEL_TRACE=y", "CONFIG_TIMER_HZ=250"]
    config, _ = kconfig.configure(scratch, load_board(scratch, "qemu-x86_64"), load_product(scratch, "default"))
    assert config.fragments[-1] == saved
    assert (config.values["LOG_LEVEL_TRACE"], config.values["TIMER_HZ"]) == ("y", "250")


def test_reverting_every_change_drops_the_file(scratch: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kconfiglib_menuconfig, "menuconfig", user({"TIMER_HZ": "250"}, True))
    saved = open_menuconfig(scratch)
    assert saved is not None and saved.is_file()
    monkeypatch.setattr(kconfiglib_menuconfig, "menuconfig", user({"TIMER_HZ": "100"}, True))
    assert open_menuconfig(scratch) is None
    assert not saved.exists()


def test_quitting_without_saving_changes_nothing(scratch: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kconfiglib_menuconfig, "menuconfig", user({"TIMER_HZ": "250"}, False))
    assert open_menuconfig(scratch) is None
    build_root = scratch.root / "build" / "qemu-x86_64" / "default"
    assert not (build_root / "menuconfig.conf").exists()
    assert not (build_root / "menuconfig.config").exists()
