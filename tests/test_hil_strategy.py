"""The strategy graph (hil/strategy.py) on a fake target: shortest paths,
the steps each transition runs, recovery through power-off after a
failure, a never-flashed board flashed on its way to booting."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from mantra.hil.drivers import BootInfo
from mantra.hil.errors import ConsoleSilent, HilError
from mantra.hil.strategy import GRAPH, STATES, Strategy, path


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail: dict[str, Exception] = {}

    def record(self, name: str) -> None:
        self.calls.append(name)
        if name in self.fail:
            raise self.fail.pop(name)


def fake_target(recorder: Recorder, *, needs_flash: bool = False, needs_power: bool = True) -> SimpleNamespace:
    r = recorder
    console = SimpleNamespace(open=lambda: r.record("console.open"), close=lambda: r.record("console.close"),
                              mark=lambda: 42, cursor=0)
    power = SimpleNamespace(on=lambda: r.record("power.on"), off=lambda: r.record("power.off"),
                            cycle=lambda: r.record("power.cycle"))
    flasher = SimpleNamespace(serial=False,
                              enter_flash_mode=lambda p, c: r.record("flasher.enter"),
                              flash=lambda image, c: r.record("flasher.flash") or "flashed it")

    def wait_booted(start: int) -> BootInfo:
        r.record(f"boot.wait_booted@{start}")
        return BootInfo("0.1.0", "qemu-x86_64", "a", ["logd"])

    boot = SimpleNamespace(wait_booted=wait_booted, wait_healthy=lambda: r.record("boot.wait_healthy") or 1234)
    target = SimpleNamespace(console=console, power=power, flasher=flasher, boot=boot, lock=None,
                             console_port=SimpleNamespace(needs_power=needs_power),
                             needs_flash=lambda: needs_flash)
    return target


def names(steps) -> list[str]:  # noqa: ANN001
    return [f"{s.source}->{s.target}" for s in steps]


def test_shortest_paths() -> None:
    assert names(path(GRAPH, "off", "booted")) == ["off->booted"]
    assert names(path(GRAPH, "unknown", "healthy")) == ["unknown->off", "off->booted", "booted->healthy"]
    assert names(path(GRAPH, "booted", "flashed")) == ["booted->off", "off->flash-mode", "flash-mode->flashed"]
    assert names(path(GRAPH, "flashed", "healthy")) == ["flashed->booted", "booted->healthy"]
    assert path(GRAPH, "healthy", "booted") == []  # a healthy board is booted
    assert path(GRAPH, "off", "off") == []
    for state in STATES:  # every state is reachable from an unknown board
        path(GRAPH, "unknown", state)
    with pytest.raises(HilError, match="no way"):
        path(GRAPH, "off", "nowhere")


def test_transitions_run_the_steps_in_order() -> None:
    recorder = Recorder()
    strategy = Strategy(fake_target(recorder))
    strategy.transition("healthy")
    assert recorder.calls == ["console.close", "power.off", "power.on", "console.open", "boot.wait_booted@42",
                              "boot.wait_healthy"]
    assert strategy.state == "healthy" and strategy.healthy_ms == 1234 and strategy.boot_mark == 42
    assert strategy.boot_info == {"bootloader": "0.1.0", "board": "qemu-x86_64", "slot": "a", "services": ["logd"]}
    assert [h[0] for h in strategy.history] == ["unknown -> off (power-off)", "off -> booted (boot)",
                                                "booted -> healthy (settle)"]
    recorder.calls.clear()
    strategy.transition("booted")
    assert recorder.calls == []
    strategy.transition("flashed")
    assert recorder.calls == ["console.close", "power.off", "flasher.enter", "flasher.flash"]
    assert strategy.flash_report == "flashed it"
    with pytest.raises(HilError, match="unknown state"):
        strategy.transition("exploded")


def test_a_real_port_is_opened_before_power_on() -> None:
    recorder = Recorder()
    strategy = Strategy(fake_target(recorder, needs_power=False))
    strategy.force("off")
    strategy.transition("booted")
    assert recorder.calls[:2] == ["console.open", "power.on"]


def test_a_failed_step_leaves_the_board_unknown_and_the_next_transition_powers_off() -> None:
    recorder = Recorder()
    strategy = Strategy(fake_target(recorder))
    recorder.fail["boot.wait_booted@42"] = ConsoleSilent("silent")
    with pytest.raises(ConsoleSilent):
        strategy.transition("booted")
    assert strategy.state == "unknown"
    recorder.calls.clear()
    strategy.transition("booted")
    assert recorder.calls[:2] == ["console.close", "power.off"]
    assert strategy.state == "booted"


def test_a_board_without_a_disk_is_flashed_on_its_way_to_booting() -> None:
    recorder = Recorder()
    strategy = Strategy(fake_target(recorder, needs_flash=True))
    strategy.transition("booted")
    assert recorder.calls == ["console.close", "power.off", "flasher.enter", "flasher.flash", "power.on",
                              "console.open", "boot.wait_booted@42"]
