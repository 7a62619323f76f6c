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

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mantra.hil.console import ConsoleDriver
from mantra.hil.errors import ConsoleSilent, ExpectTimeout, FlashError, TestFailure
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
        found = self.console.expect(either, timeout, start=start, what=repr(pattern))
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


class SerialFlasher:
    """MantraBoot's flash mode over the console (docs/flash-protocol.md),
    with the flash tool `mantra flash` runs (mantra.provision.serial_flash):
    power the board, type MANTRA-FLASH every 100 ms until MantraBoot says
    `flash mode ... waiting for the host`, then let go of the console (one
    user per port) and hand its URL to the flash tool, which writes the
    image's slot into the board's inactive slot, activates it (pending) and
    resets the board. A QEMU place without a disk gets the factory image
    first (its virtual programmer), as a board comes from the factory."""

    serial = True

    def __init__(self, url: Any, *, board: str, default_image: Path | None = None, factory: Any = None,
                 workspace_root: Path | None = None, timeout: float = 180.0) -> None:
        self.url = url  # a callable giving the port's URL now (a QEMU port changes at every power-on)
        self.board = board
        self.default_image = default_image
        self.factory = factory  # a QemuBoard, or None for real boards
        self.workspace_root = workspace_root
        self.timeout = timeout
        self.result: Any = None

    def describe(self) -> str:
        return "MantraFlash over the console (mantra.provision)"

    def enter_flash_mode(self, power: PowerDriver, console: ConsoleDriver) -> None:
        console.close()
        power.off()
        if self.factory is not None and not self.factory.image.is_file():
            # From the factory with slot a only: slot b was never written.
            self.factory.flash(self.default_image)
            from mantra.provision.bench import wipe_slot

            wipe_slot(self.factory.image, "b")
        mark = console.mark()
        if not getattr(console.port, "needs_power", False):
            console.open()
        power.on()
        console.open()
        deadline = time.monotonic() + self.timeout
        while True:
            console.send("MANTRA-FLASH")
            try:
                console.expect(FLASH_MODE, 0.1, start=mark)
                break
            except (ExpectTimeout, ConsoleSilent) as waiting:
                if time.monotonic() > deadline:
                    if isinstance(waiting, ConsoleSilent):
                        raise
                    raise FlashError(f"place {console.place}: MantraBoot did not enter flash mode in "
                                     f"{self.timeout:g} s", "does this MantraBoot have flash mode "
                                     "(CONFIG_FLASH_WAIT_MS)? see the console log") from None
        console.close()

    def flash(self, image: Path | None, console: ConsoleDriver) -> str:
        image = image or self.default_image
        if image is None:
            raise FlashError(f"place {console.place}: no image to flash", "give one (mantra hil flash --image IMG)")
        try:
            from mantra.provision.serial_flash import flash as flash_tool
        except ImportError as exc:
            raise FlashError(f"the flash tool mantra.provision.serial_flash cannot be imported: {exc}",
                             "./mantra reinstalls it") from None
        from mantra.errors import MantraError

        url = self.url()
        try:
            result = flash_tool(image, url, self.board, wait=60.0, workspace_root=self.workspace_root)
        except MantraError as exc:
            refused = type(exc).__name__ in ("DeviceError",) or "refused" in exc.message
            if refused:  # the board said no (wrong key, rollback, board): the system under test
                raise TestFailure(f"place {console.place}: the board refused the image: {exc.message}", exc.hint) \
                    from None
            raise FlashError(f"place {console.place}: flashing failed: {exc.message}", exc.hint) from None
        self.result = result
        return (f"slot a of {image} -> slot {result.target_slot} of the {result.board} on {url}: "
                f"{result.sent_blocks} blocks sent, {result.held_blocks} held, {result.tx_bytes} bytes on the line "
                f"in {result.seconds:.1f} s; slot {result.target_slot} is "
                + ("pending" if result.activated else "written"))


class DfuFlasher:
    """USB DFU 1.1 with the flash tool `mantra flash --usb` runs
    (mantra.provision.dfu): power the board and let go of the console; the
    tool finds the place's DFU device by VID/PID/serial, detaches it into
    DFU mode if needed, checks the image against the device's own root key,
    board and rollback minimum before writing, downloads the image's slot
    into the inactive slot and resets the board. `backend` is the pyusb
    backend (None: libusb; tests plug in a simulated device)."""

    serial = True  # the board is powered while it is flashed: booting means a power cycle

    def __init__(self, device: Any, *, board: str, default_image: Path | None = None,
                 workspace_root: Path | None = None, backend: Any = None, clock: Any = None) -> None:
        self.device = device  # resources.USBDFUDevice
        self.board = board
        self.default_image = default_image
        self.workspace_root = workspace_root
        self.backend = backend
        self.clock = clock
        self.result: Any = None

    def describe(self) -> str:
        return f"USB DFU 1.1 on {self.device.describe()} (mantra.provision.dfu)"

    def enter_flash_mode(self, power: PowerDriver, console: ConsoleDriver) -> None:
        console.close()
        power.on()

    def flash(self, image: Path | None, console: ConsoleDriver) -> str:
        image = image or self.default_image
        if image is None:
            raise FlashError(f"place {console.place}: no image to flash", "give one (mantra hil flash --image IMG)")
        from mantra.errors import MantraError
        from mantra.provision import dfu
        from mantra.workspace import Workspace

        match = self.device.match
        workspace = Workspace(self.workspace_root) if self.workspace_root else None
        try:
            result = dfu.flash_usb(image, f"{match.vid:04x}:{match.pid:04x}", self.board, serial=match.serial,
                                   workspace=workspace, backend=self.backend, clock=self.clock)
        except dfu.DfuError as exc:
            if exc.kind == "refused":  # the image does not fit this board (key, board, rollback): under test
                raise TestFailure(f"place {console.place}: the board refused the image: {exc.message}", exc.hint) \
                    from None
            raise FlashError(f"place {console.place}: flashing over USB failed: {exc.message}", exc.hint) from None
        except MantraError as exc:
            raise FlashError(f"place {console.place}: flashing over USB failed: {exc.message}", exc.hint) from None
        self.result = result
        return dfu.format_result(result)


ATTESTD_READY = r"attestd: .*(answering MANTRA-ATTEST-REQUEST|attestation requests will be refused)"


class AttestationDriver:
    """A TPM quote over the console (attestd), checked against the signed
    manifest of the reference image with mantra.signing.attest: the quote's
    signature over a fresh nonce, the attestation key pinned on first use
    (in the place's state directory), the event log replayed to the PCRs,
    every measurement against the manifest of the slot that booted."""

    def __init__(self, console: ConsoleDriver, reference: Path, root_public: bytes, pin_dir: Path) -> None:
        self.console = console
        self.reference = reference
        self.root_public = root_public
        self.pin_dir = pin_dir

    def attest(self, *, slot: str = "a", timeout: float = 120.0) -> str:
        import os

        from mantra.signing import attest as attestation

        nonce = os.urandom(32)
        try:
            expected = attestation.load_reference(self.reference, self.root_public, slot=slot)
        except attestation.AttestFailure as failure:
            raise TestFailure(f"the reference image {self.reference} does not verify: {'; '.join(failure.reasons)}",
                              "rebuild it") from None
        mark = self.console.mark()
        self.console.send(attestation.request_line(nonce))
        self.console.expect(r"MANTRA-ATTEST-(END|ERROR)\b", timeout, start=mark)
        lines = re.split(r"[\r\n]", self.console.text[mark:])
        try:
            blob = attestation.read_answer(lines, nonce)
            self.pin_dir.mkdir(parents=True, exist_ok=True)
            pin = attestation.AkPin(attestation.pin_file(self.pin_dir, self.console.place))
            checks: list[str] = []
            attestation.verify(blob, nonce, expected, pin, checks.append)
        except attestation.AttestFailure as failure:
            raise TestFailure(f"place {self.console.place}: attestation failed: {'; '.join(failure.reasons)}",
                              "the device did not boot what the reference image holds") from None
        manifest = expected.manifest
        return (f"{manifest.product} {manifest.version} for {manifest.board}, slot {slot}, security counter "
                f"{manifest.security_counter}: quote verified ({len(checks)} checks)")
