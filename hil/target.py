"""A target: one place's resources with their drivers, and its lock.

    with Target.acquire(bench, "qemu-1", owner="alice") as target:
        target.strategy.transition("booted")
        target.console.expect("MantraCore ready", 60)

Built from the bench file's place: the resources (resources.py, power.py,
qemu_board.py), then the drivers on top of them (console, power, boot,
flasher). Nothing is global: two targets are two independent objects.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mantra.hil.bench import Bench, PlaceSpec
from mantra.hil.console import ConsoleDriver
from mantra.hil.drivers import AttestationDriver, BootDriver, DfuFlasher, ImageFlasher, SerialFlasher
from mantra.hil.errors import BenchFileError, HilError
from mantra.hil.lock import DEFAULT_EXPIRY, PlaceLock, default_owner
from mantra.hil.power import ManualPower, NetworkPDU, NoPower, PowerDriver, QemuPower, USBRelay
from mantra.hil.qemu_board import QemuBoard
from mantra.hil.resources import HardwareTPM, SerialPort, USBDFUDevice, USBMatch, USBSerialPort
from mantra.hil.strategy import Strategy


def _serial_resource(data: dict[str, Any]) -> SerialPort | USBSerialPort:
    baud = int(data.get("baud", 115200))
    if "usb" in data:
        return USBSerialPort(USBMatch.from_config(data["usb"]), baud)
    if "url" in data:
        return SerialPort(str(data["url"]), baud)
    raise BenchFileError("a console needs url = \"/dev/ttyS0\" (or socket://...) or usb = { vid, pid, serial }",
                         "fix the bench file")


def build_power(spec: dict[str, Any] | None, board: QemuBoard | None, name: str,
                prompt: Any = None) -> Any:
    kind = (spec or {}).get("kind", "qemu" if board is not None else "none")
    options = {k: v for k, v in (spec or {}).items() if k != "kind"}
    if kind == "qemu":
        if board is None:
            raise BenchFileError(f"place {name}: power kind qemu needs a qemu board", "use another kind")
        return QemuPower(board)
    if kind == "none":
        return NoPower()
    if kind == "manual":
        return ManualPower(name, prompt=prompt)
    if kind == "usb-relay":
        port = _serial_resource(options.pop("port", {}))
        return USBRelay(port, **options)
    if kind == "pdu":
        return NetworkPDU(**options)
    raise BenchFileError(f"place {name}: power kind {kind!r} is unknown", "none, manual, usb-relay, pdu, qemu")


class Target:
    def __init__(self, bench: Bench, spec: PlaceSpec, *, image: Path | None = None) -> None:
        if spec.remote:
            raise HilError(f"place {spec.name} is on {spec.remote['host']}", "use mantra.hil.remote for it")
        self.bench = bench
        self.spec = spec
        self.name = spec.name
        self.state_dir = bench.state_dir / spec.name
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.lock: PlaceLock | None = None
        data = spec.data
        self.qemu: QemuBoard | None = None
        if "qemu" in data:
            q = data["qemu"]
            source = bench.resolve(q["image"]) if "image" in q else \
                bench.root / "build" / q.get("board", "qemu-x86_64") / q.get("product", "default") / "image.img"
            self.qemu = QemuBoard(spec.name, self.state_dir, source, tpm=bool(q.get("tpm", False)),
                                  smp=q.get("smp"), icount=bool(q.get("icount", False)))
            self.console_port: Any = self.qemu
        else:
            self.console_port = _serial_resource(data["console"])
        self.dfu = USBDFUDevice(USBMatch.from_config(data["dfu"])) if "dfu" in data else None
        tpm = data.get("tpm")
        self.tpm = ("swtpm" if self.qemu and self.qemu.tpm else None) if tpm is None else \
            (HardwareTPM() if tpm == "hardware" else tpm)
        self.power_switch = build_power(data.get("power"), self.qemu, spec.name)
        # Drivers
        self.console = ConsoleDriver(spec.name, self.console_port, self.state_dir / "console.log")
        self.power = PowerDriver(self.power_switch, off_time=0.0 if self.qemu else 2.0)
        self.boot = BootDriver(self.console, timeout=float(data.get("boot_timeout", 240)))
        flasher = data.get("flasher", "image" if self.qemu else "serial")
        if flasher == "image":
            if self.qemu is None:
                raise BenchFileError(f"place {spec.name}: flasher = \"image\" is for QEMU places", 'use "serial"')
            self.flasher: Any = ImageFlasher(self.qemu)
        elif flasher == "serial":
            url = self.qemu.console_url if self.qemu else (
                lambda: self.console_port.resolve() if isinstance(self.console_port, USBSerialPort)
                else self.console_port.url)
            default_image = image or (self.qemu.source_image if self.qemu else None)
            board = data["qemu"].get("board", "qemu-x86_64") if self.qemu else data.get("board", "")
            self.flasher = SerialFlasher(url, board=board, default_image=default_image, factory=self.qemu,
                                         workspace_root=bench.root)
        elif flasher == "dfu":
            if self.dfu is None:
                raise BenchFileError(f"place {spec.name}: flasher = \"dfu\" needs a dfu resource",
                                     'add dfu = { vid = "1209", pid = "0001", serial = "..." } to the place')
            self.flasher = DfuFlasher(self.dfu, board=data.get("board", ""), default_image=image,
                                      workspace_root=bench.root)
        else:
            raise BenchFileError(f"place {spec.name}: flasher {flasher!r} is unknown",
                                 'use "image", "serial" or "dfu"')
        self.strategy = Strategy(self, image=image)
        self.console.on_gone = lambda: self.strategy.force("unknown")
        self.board_name: str | None = data["qemu"].get("board", "qemu-x86_64") if self.qemu else data.get("board")

    @property
    def image_manifest(self) -> str | None:
        """manifest.json of the image the board was flashed with (None: unknown)."""
        image = self.strategy.image or (self.qemu.source_image if self.qemu else None)
        if image is None:
            return None
        try:
            return (image.parent / "manifest.json").read_text()
        except OSError:
            return None

    # --- locking and lifetime -----------------------------------------------------------

    @classmethod
    def acquire(cls, bench: Bench, place: str, *, owner: str | None = None, wait: float = 0.0,
                image: Path | None = None, notes: list[str] | None = None) -> Target:
        """Locks the place (for this process) and builds its target."""
        lock = bench.locks().acquire(place, owner or default_owner(), wait=wait, pid=os.getpid(),
                                     expires_in=DEFAULT_EXPIRY, notes=notes)
        try:
            target = cls(bench, bench.place(place), image=image)
        except BaseException:
            lock.release()
            raise
        target.lock = lock
        lock.keep_alive()
        return target

    def needs_flash(self) -> bool:
        """Whether there is nothing to boot yet (a QEMU place without a disk)."""
        return self.qemu is not None and not self.qemu.image.is_file()

    def console_log_path(self) -> Path:
        return self.console.log

    def attestation(self) -> AttestationDriver:
        """The attestation driver, against the image this board was flashed
        with and the root key of the key set that signed it (manifest.json)."""
        import json

        from mantra.signing.keys import load_root_public

        image = self.strategy.image or (self.qemu.source_image if self.qemu else None)
        if image is None or self.image_manifest is None:
            raise HilError(f"place {self.name}: no reference image to attest against", "flash it with an image")
        keys = json.loads(self.image_manifest)["signing"]["keys"]
        root = load_root_public(self.bench.resolve(keys) / "root.pub")
        return AttestationDriver(self.console, image, root, self.state_dir / "attest")

    def attest(self, timeout: float = 120.0) -> str:
        slot = (self.strategy.boot_info or {}).get("slot") or "a"
        return self.attestation().attest(slot=slot, timeout=timeout)

    def describe(self) -> dict[str, str]:
        parts = {"console": self.console_port.describe(), "power": self.power_switch.describe(),
                 "flasher": self.flasher.describe()}
        if self.dfu:
            parts["dfu"] = self.dfu.describe()
        if self.tpm:
            parts["tpm"] = self.tpm if isinstance(self.tpm, str) else self.tpm.describe()
        return parts

    def close(self, *, power_off: bool | None = None) -> None:
        """Closes the console, powers a QEMU board off (a real one only with
        power_off=True) and releases the lock."""
        try:
            self.console.close()
            if power_off if power_off is not None else self.qemu is not None:
                try:
                    self.power.off()
                except HilError:
                    pass
        finally:
            if self.lock is not None:
                self.lock.release()

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
