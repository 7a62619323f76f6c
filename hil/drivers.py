"""Drivers above the console and power: boot, flasher, attestation.

BootDriver waits for the banners of a MantraOS boot (MantraBoot, MantraCore
ready, MantraInit) and for init's health verdict. The flashers write an
image: ImageFlasher (a QEMU board's disk, written while it is off: the
virtual programmer) and SerialFlasher (MantraBoot's flash mode over the
console, docs/flash-protocol.md, through the flash tool mantra.provision).
AttestationDriver asks attestd for a TPM quote over the console and checks
it against the reference image (mantra.signing.attest).
"""

from __future__ import annotations

import importlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mantra.hil.console import ConsoleDriver
from mantra.hil.errors import ExpectTimeout, FlashError, TestFailure
from mantra.hil.power import PowerDriver

# The boot banners, in order (README.md "The running system").
BOOTLOADER = r"^MantraBoot (\S+) \(board (\S+)\)"
SLOT = r"^MantraBoot: booting slot (\w)"
KERNEL_READY = r"^MantraCore ready\b"
INIT = r"init: MantraInit \S+: (\d+) services \(([^)]*)\)"
HEALTHY = r"init: all services healthy \((\d+) ms since boot\)"
NOT_CONFIRMED = r"init: boot not confirmed: service (\S+) failed"
FATAL = r"KERNEL (PANIC|FAULT)"
FLASH_MODE = r"MantraBoot: flash mode \(protocol (\d+), board (\S+)\): waiting for the host"


@dataclass
class BootInfo:
    """What a boot said about itself."""

    bootloader: str
    board: str
    slot: str | None
    services: list[str]


class BootDriver:
    def __init__(self, console: ConsoleDriver, *, timeout: float = 180.0) -> None:
        self.console = console
        self.timeout = timeout

    def _expect(self, pattern: str, timeout: float, start: int | None = None) -> re.Match[str]:
        """expect(), but a kernel panic or a refused boot ends the wait as a test failure at once."""
        either = re.compile(f"(?:{pattern})|(?P<fatal>{FATAL})", re.MULTILINE)
        found = self.console.expect(either, timeout, start=start)
        if found.group("fatal"):
            line_start = self.console.text.rfind("\n", 0, found.start()) + 1
            line_end = self.console.text.find("\n", found.end())
            raise TestFailure(f"place {self.console.place}: the boot failed: "
                              f"{self.console.text[line_start:line_end].strip()}",
                              f"the whole console is in {self.console.log}")
        return re.compile(pattern, re.MULTILINE).search(self.console.text, found.start(), found.end() + 1) or found

    def wait_booted(self, start: int | None = None) -> BootInfo:
        """Waits for MantraBoot's banner, the slot it boots, MantraCore ready and MantraInit's services."""
        deadline = time.monotonic() + self.timeout
        left = lambda: max(deadline - time.monotonic(), 0.1)  # noqa: E731
        boot = self._expect(BOOTLOADER, left(), start)
        slot = self._expect(SLOT, left())
        self._expect(KERNEL_READY, left())
        init = self._expect(INIT, left())
        return BootInfo(boot[1], boot[2], slot[1], [s.strip() for s in init[2].split(",")])

    def wait_healthy(self) -> int:
        """Waits for init's verdict; returns its ms since boot; a failed service is a test failure."""
        verdict = self.console.expect(f"{HEALTHY}|{NOT_CONFIRMED}", self.timeout)
        if verdict.group(0).startswith("init: boot not confirmed"):
            raise TestFailure(f"place {self.console.place}: {verdict.group(0).strip()}",
                              f"the whole console is in {self.console.log}")
        return int(verdict[1])


class ImageFlasher:
    """A QEMU board's virtual programmer: writes the disk while the board is off."""

    serial = False

    def __init__(self, board: Any) -> None:
        self.board = board

    def describe(self) -> str:
        return "virtual programmer (writes the QEMU disk)"

    def enter_flash_mode(self, power: PowerDriver, console: ConsoleDriver) -> None:
        console.close()
        power.off()

    def flash(self, image: Path | None, console: ConsoleDriver) -> str:
        return self.board.flash(image)


# The flash tool's entry point (branch flash-host): mantra.provision.flash(port_url, image) -> report.
FLASH_TOOL = ("mantra.provision", "flash")


class SerialFlasher:
    """MantraBoot's flash mode over the console (docs/flash-protocol.md):
    power the board, type MANTRA-FLASH every 100 ms until MantraBoot says
    `flash mode ... waiting for the host`, then hand the port to the flash
    tool (the console driver lets go of it: one user per port)."""

    serial = True

    def __init__(self, url: Any, *, default_image: Path | None = None, timeout: float = 120.0) -> None:
        self.url = url  # a callable giving the port's URL now (a QEMU port changes at every power-on)
        self.default_image = default_image
        self.timeout = timeout

    def describe(self) -> str:
        return "MantraFlash over the console (mantra.provision)"

    def enter_flash_mode(self, power: PowerDriver, console: ConsoleDriver) -> None:
        console.close()
        power.off()
        power.on()
        console.open()
        mark = console.mark()
        deadline = time.monotonic() + self.timeout
        while True:
            console.send("MANTRA-FLASH")
            try:
                console.expect(FLASH_MODE, 0.1, start=mark)
                break
            except ExpectTimeout:
                if time.monotonic() > deadline:
                    raise FlashError(f"place {console.place}: MantraBoot did not enter flash mode in "
                                     f"{self.timeout:g} s", "does this MantraBoot have flash mode "
                                     "(CONFIG_FLASH_WAIT_MS)? see the console log") from None
        console.close()

    def flash(self, image: Path | None, console: ConsoleDriver) -> str:
        image = image or self.default_image
        module_name, function = FLASH_TOOL
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise FlashError(f"the flash tool {module_name} cannot be imported: {exc}", "./mantra reinstalls it") \
                from None
        tool = getattr(module, function, None)
        if tool is None:
            raise FlashError(f"the flash tool {module_name}.{function}() does not exist yet (mantra flash, "
                             "branch flash-host)", 'use flasher = "image" for QEMU places until it lands')
        try:
            result = tool(self.url(), image)
        except FlashError:
            raise
        except Exception as exc:  # the tool's own errors: the transfer failed
            raise FlashError(f"place {console.place}: flashing failed: {exc}", "see the flash tool's message") \
                from None
        return str(result) if result is not None else f"flashed {image}"


class AttestationDriver:
    """A TPM quote over the console, checked against the reference image."""

    def __init__(self, console: ConsoleDriver, reference: Path, root_public: bytes, pin_dir: Path) -> None:
        self.console = console
        self.reference = reference
        self.root_public = root_public
        self.pin_dir = pin_dir

    def attest(self, timeout: float = 120.0) -> str:
        import os

        from mantra.signing import attest as attestation

        nonce = os.urandom(32)
        expected = attestation.load_reference(self.reference, self.root_public)
        mark = self.console.mark()
        self.console.send(attestation.request_line(nonce))
        self.console.expect(r"MANTRA-ATTEST-(END|ERROR)\b", timeout, start=mark)
        lines = re.split(r"[\r\n]", self.console.text[mark:])
        try:
            blob = attestation.read_answer(lines, nonce)
            pin = attestation.AkPin(attestation.pin_file(self.pin_dir, self.console.place))
            attestation.verify(blob, nonce, expected, pin, lambda line: None)
        except attestation.AttestFailure as failure:
            raise TestFailure(f"place {self.console.place}: attestation failed: {'; '.join(failure.reasons)}",
                              "the device did not boot what the reference image holds") from None
        manifest = expected.manifest
        return f"attested: {manifest.product} {manifest.version} for {manifest.board}"
