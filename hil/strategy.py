"""Strategies: a board moves between named states by named transitions.

    strategy.transition("booted")   # from wherever the board is

States, in order: off -> flash-mode -> flashed -> booted -> healthy.

| transition | from | to | does |
| --- | --- | --- | --- |
| power-off | any | off | closes the console, switches the power off |
| enter-flash-mode | off | flash-mode | the flasher's way in (QEMU: the board stays off; serial: MANTRA-FLASH at power-on) |
| flash | flash-mode | flashed | writes the image |
| boot | off, flashed | booted | power on (cycle), console open, wait for MantraBoot, MantraCore ready, MantraInit |
| settle | booted | healthy | wait for `init: all services healthy` |

`transition` finds the shortest path in this graph from the current state
and runs its steps in order; a step that raises leaves the board in state
"unknown", from which the next transition starts with power-off. A healthy
board is also booted: asking for "booted" then does nothing. Every step is
logged with its duration (`history`). A board with nothing on it (a QEMU
place never flashed) is flashed on its way to booting.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mantra.hil.errors import HilError

if TYPE_CHECKING:
    from mantra.hil.target import Target

STATES = ("off", "flash-mode", "flashed", "booted", "healthy")
UNKNOWN = "unknown"
# A state that also counts as another (a healthy board is booted).
IMPLIES = {"healthy": {"booted"}}


@dataclass(frozen=True)
class Step:
    name: str
    source: str
    target: str


GRAPH: tuple[Step, ...] = (
    *(Step("power-off", state, "off") for state in (*STATES[1:], UNKNOWN)),
    Step("enter-flash-mode", "off", "flash-mode"),
    Step("flash", "flash-mode", "flashed"),
    Step("boot", "flashed", "booted"),
    Step("boot", "off", "booted"),
    Step("settle", "booted", "healthy"),
)


def path(graph: tuple[Step, ...], source: str, target: str) -> list[Step]:
    """The shortest sequence of steps from `source` to `target` (BFS)."""
    if source == target or target in IMPLIES.get(source, ()):
        return []
    queue: deque[tuple[str, list[Step]]] = deque([(source, [])])
    seen = {source}
    while queue:
        state, steps = queue.popleft()
        for step in graph:
            if step.source == state and step.target not in seen:
                if step.target == target:
                    return steps + [step]
                seen.add(step.target)
                queue.append((step.target, steps + [step]))
    raise HilError(f"no way from state {source!r} to {target!r}", f"states: {', '.join(STATES)}")


class Strategy:
    """The MantraOS strategy for one target (a real or a QEMU board)."""

    graph = GRAPH

    def __init__(self, target: Target, *, image: Path | None = None) -> None:
        self.target = target
        self.image = image
        self.state = UNKNOWN
        self.history: list[tuple[str, float]] = []
        self.boot_info: dict[str, Any] | None = None
        self.boot_mark = 0  # console offset where the last boot began
        self.healthy_ms: int | None = None
        self.flash_report: str | None = None
        self._steps: dict[str, Callable[[], None]] = {
            "power-off": self._power_off,
            "enter-flash-mode": self._enter_flash_mode,
            "flash": self._flash,
            "boot": self._boot,
            "settle": self._settle,
        }

    def transition(self, state: str) -> None:
        if state not in STATES:
            raise HilError(f"unknown state {state!r}", f"states: {', '.join(STATES)}")
        steps = path(self.graph, self.state, state)
        if self.target.needs_flash() and any(step.name == "boot" for step in steps) and self.state != "flashed":
            # A board with nothing on it (a new QEMU place) is flashed on its way to booting.
            steps = path(self.graph, self.state, "flashed") + path(self.graph, "flashed", state)
        for step in steps:
            started = time.monotonic()
            try:
                self._steps[step.name]()
            except BaseException:
                self.state = UNKNOWN
                raise
            self.history.append((f"{step.source} -> {step.target} ({step.name})", time.monotonic() - started))
            self.state = step.target
            if self.target.lock is not None:
                self.target.lock.refresh()

    def force(self, state: str) -> None:
        """Declares the board to be in `state` (e.g. after a manual action)."""
        self.state = state

    # --- the steps --------------------------------------------------------------------------------------

    def _power_off(self) -> None:
        self.target.console.close()
        self.target.power.off()

    def _enter_flash_mode(self) -> None:
        self.target.flasher.enter_flash_mode(self.target.power, self.target.console)

    def _flash(self) -> None:
        self.flash_report = self.target.flasher.flash(self.image, self.target.console)

    def _boot(self) -> None:
        console, power = self.target.console, self.target.power
        if not self.target.console_port.needs_power:
            console.open()  # a real port: listen before the board starts talking
        mark = self.boot_mark = console.mark()
        if self.state == "flashed" and getattr(self.target.flasher, "serial", False):
            power.cycle()  # leave flash mode
        else:
            power.on()
        console.open()
        console.cursor = mark
        self.boot_info = dataclasses.asdict(self.target.boot.wait_booted(start=mark))

    def _settle(self) -> None:
        self.healthy_ms = self.target.boot.wait_healthy()
