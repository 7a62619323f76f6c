"""The project's own scenarios, run on any place (QEMU, real or remote):

| scenario | checks (from what the board printed) |
| --- | --- |
| boot | a fresh flash, then MantraBoot's banner for the place's board, the slot it boots, MantraCore ready, MantraInit starting every service, and init's `all services healthy` |
| service-restart | the default product's `crashy` crashes on purpose: the kernel kills only it, init restarts it with growing backoff under a new koid, then gives up on the crash loop; the other services keep running |
| flash | power off, flash mode, flash, boot: a slot verifies with the key that signed the flashed image; over MantraFlash (a place with `flasher = "serial"`), the flashed slot boots as pending and init confirms it |

| attest | (a place with a TPM) attestd's TPM quote over a fresh nonce verifies against the flashed image: signature, pinned AK, event log, every measurement |

A scenario is a function of the board (`board.console`, `board.strategy`)
returning details for the report; it raises TestFailure (the system is
wrong) or lets the drivers' InfraErrors through (the bench is wrong).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from mantra.hil.drivers import ATTESTD_READY
from mantra.hil.errors import TestFailure

Scenario = Callable[[Any], dict[str, Any]]


def check(condition: bool, message: str) -> None:
    if not condition:
        raise TestFailure(message)


def boot(board: Any) -> dict[str, Any]:
    strategy, console = board.strategy, board.console
    strategy.transition("off")
    strategy.transition("flashed")
    strategy.transition("booted")
    info = strategy.boot_info
    check(info["board"] == board.board_name if board.board_name else True,
          f"MantraBoot says board {info['board']}, the place has {board.board_name}")
    strategy.transition("healthy")
    text = console.text_since(strategy.boot_mark)
    started = re.findall(r"init: started (\S+) \(koid \d+\)", text)
    missing = [service for service in info["services"] if service not in started]
    check(not missing, f"init never started {', '.join(missing)} (started: {', '.join(started)})")
    return {"slot": info["slot"], "services": ", ".join(info["services"]), "healthy_ms": strategy.healthy_ms}


def service_restart(board: Any, service: str = "crashy") -> dict[str, Any]:
    strategy, console = board.strategy, board.console
    if strategy.state not in ("booted", "healthy"):
        strategy.transition("booted")
    start = strategy.boot_mark
    # init gives up once the crash-loop limit is reached; everything before is the restart history.
    end = console.expect(rf"init: {service} failed: crash loop \((\d+) crashes in (\d+) ms\); not restarting",
                         120, start=start)
    text = console.text_since(start)[: end.end() - start]
    koids = re.findall(rf"init: started {service} \(koid (\d+)\)", text)
    kills = re.findall(rf"^process {service} \(koid (\d+)\) killed: (\S+)", text, re.M)
    delays = [int(ms) for ms in re.findall(rf"init: {service} exited \(.*\); restarting in (\d+) ms", text)]
    others = re.findall(rf"^process (?!{service}\b)(\S+) \(koid \d+\) killed", text, re.M)
    check(len(kills) >= 2, f"{service} was killed {len(kills)} time(s); the scenario needs it to crash repeatedly")
    check(len(koids) == len(set(koids)) and len(koids) >= len(kills),
          f"{service} was not restarted as a new process each time (koids {koids}, kills {len(kills)})")
    check({koid for koid, _ in kills} <= set(koids), f"a killed {service} (koids {kills}) was never started by init")
    check(len(delays) >= 1 and delays == sorted(delays) and delays[0] < delays[-1] if len(delays) > 1 else bool(delays),
          f"init's restart backoff does not grow: {delays}")
    check(not others, f"other processes were killed too: {others}")
    check(int(end[1]) == len(kills), f"init counts {end[1]} crashes, the kernel killed {service} {len(kills)} times")
    return {"crashes": len(kills), "faults": " ".join(sorted({fault for _, fault in kills})),
            "restart delays (ms)": " ".join(map(str, delays))}


def flash(board: Any) -> dict[str, Any]:
    strategy, console = board.strategy, board.console
    strategy.transition("off")
    strategy.transition("flash-mode")
    strategy.transition("flashed")
    strategy.transition("booted")
    text = console.text_since(strategy.boot_mark)
    keys = set(re.findall(r"MantraBoot: slot \w: verified \(key ([0-9a-f]+)", text))
    details: dict[str, Any] = {"flash": strategy.flash_report, "verified with keys": " ".join(sorted(keys))}
    if board.image_manifest:
        key = json.loads(board.image_manifest)["signing"]["key_id"][:8]
        check(key in keys, f"no slot verified with key {key}, which signed the flashed image (keys: {keys or 'none'})")
    check(f"booting slot {strategy.boot_info['slot']}" in text, "no slot booted")
    flashed = re.search(r"-> slot (\w) of .*slot \w is pending", strategy.flash_report or "")
    if flashed:  # MantraFlash: the new slot boots as pending and init confirms it
        slot = flashed[1]
        check(strategy.boot_info["slot"] == slot,
              f"flashed slot {slot}, but MantraBoot booted slot {strategy.boot_info['slot']}")
        check(re.search(rf"MantraBoot: booting slot {slot} \(pending", text) is not None,
              f"slot {slot} did not boot as pending")
        strategy.transition("healthy")
        console.expect(rf"init: boot confirmed: slot {slot}\b", 60, start=strategy.boot_mark)
        details["confirmed"] = f"slot {slot}"
    return details


def attest(board: Any) -> dict[str, Any]:
    """A place with a TPM (QEMU: swtpm): attestd answers a quote over a fresh
    nonce that verifies against the signed image the board was flashed with."""
    strategy, console = board.strategy, board.console
    if strategy.state not in ("booted", "healthy"):
        strategy.transition("booted")
    ready = console.expect(ATTESTD_READY, 120, start=strategy.boot_mark)
    check("refused" not in ready.group(0), f"the board has no TPM: {ready.group(0).strip()}")
    return {"attested": board.attest()}


SCENARIOS: dict[str, Scenario] = {"boot": boot, "service-restart": service_restart, "flash": flash, "attest": attest}
DEFAULT_SCENARIOS = ("boot", "service-restart")
