"""Bench files: the places of a bench and the resources of each place (TOML).

    [bench]
    state_dir = "build/hil"        # per-place state (QEMU disks, logs); relative to the workspace
    lock_dir = "build/hil/locks"   # one lock file per place; a hardware bench: /var/lock/mantra-hil

    [places.qemu-1]                # a QEMU board (the default: no hardware)
    qemu = { board = "qemu-x86_64", product = "default", tpm = false }

    [places.lab-1]                 # a real board
    console = { usb = { vid = "0403", pid = "6001", serial = "FT5XK1" }, baud = 115200 }
    power = { kind = "pdu", host = "10.0.0.5", port = 23, outlet = 3 }
    dfu = { vid = "0483", pid = "df11", serial = "3671" }
    tpm = "hardware"
    flasher = "serial"

    [places.far-1]                 # a place on another host, through `mantra hil serve` over SSH
    remote = { host = "bench.example", user = "ci", key = "~/.ssh/id_ed25519", place = "qemu-1" }

The default bench is hil/benches/qemu.toml (or $MANTRA_HIL_BENCH).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mantra.hil.errors import BenchFileError

DEFAULT_BENCH = Path(__file__).resolve().parent / "benches" / "qemu.toml"
PLACE_KEYS = {"description", "qemu", "console", "power", "dfu", "tpm", "flasher", "remote", "boot_timeout", "tags", "board"}
POWER_KINDS = {"none", "manual", "usb-relay", "pdu", "qemu"}


def default_bench_path() -> Path:
    return Path(os.environ["MANTRA_HIL_BENCH"]) if os.environ.get("MANTRA_HIL_BENCH") else DEFAULT_BENCH


@dataclass
class PlaceSpec:
    name: str
    data: dict[str, Any]

    @property
    def description(self) -> str:
        return str(self.data.get("description", ""))

    @property
    def remote(self) -> dict[str, Any] | None:
        return self.data.get("remote")

    @property
    def kind(self) -> str:
        if self.remote:
            return "remote"
        return "qemu" if "qemu" in self.data else "hardware"

    def summary(self) -> str:
        if self.remote:
            r = self.remote
            return f"remote: {r.get('user', '')}{'@' if r.get('user') else ''}{r['host']}:{r.get('port', 22)} " \
                   f"place {r.get('place', self.name)}"
        parts = []
        if "qemu" in self.data:
            q = self.data["qemu"]
            parts.append(f"QEMU {q.get('board', 'qemu-x86_64')}/{q.get('product', 'default')}"
                         + (" + swtpm" if q.get("tpm") else ""))
        if "console" in self.data:
            c = self.data["console"]
            if "usb" in c:
                u = c["usb"]
                parts.append(f"console USB {u['vid']}:{u['pid']}" + (f" {u['serial']}" if u.get("serial") else ""))
            else:
                parts.append(f"console {c.get('url')}")
        if "power" in self.data:
            parts.append(f"power {self.data['power'].get('kind')}")
        if "dfu" in self.data:
            parts.append("DFU")
        if "tpm" in self.data:
            parts.append(f"TPM {self.data['tpm']}")
        return ", ".join(parts)


@dataclass
class Bench:
    path: Path
    root: Path  # relative paths in the file are relative to this (the workspace)
    state_dir: Path
    lock_dir: Path
    places: dict[str, PlaceSpec] = field(default_factory=dict)

    def place(self, name: str) -> PlaceSpec:
        try:
            return self.places[name]
        except KeyError:
            raise BenchFileError(f"no place {name!r} in {self.path} (places: {', '.join(self.places) or 'none'})",
                                 "mantra hil places lists them") from None

    def resolve(self, value: str | Path) -> Path:
        path = Path(os.path.expanduser(str(value)))
        return path if path.is_absolute() else self.root / path

    def locks(self):  # noqa: ANN201 - LockDir
        from mantra.hil.lock import LockDir

        return LockDir(self.lock_dir)


def load_bench(path: Path | None = None, root: Path | None = None) -> Bench:
    """Reads and checks a bench file; `root` (default: the workspace) anchors relative paths."""
    path = path or default_bench_path()
    if root is None:
        from mantra.workspace import Workspace

        root = Workspace.locate().root
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise BenchFileError(f"cannot read the bench file {path}: {exc.strerror}", "give --bench FILE") from None
    except tomllib.TOMLDecodeError as exc:
        raise BenchFileError(f"{path}: {exc}", "fix the TOML") from None
    settings = data.get("bench", {})
    unknown = set(data) - {"bench", "places"}
    if unknown:
        raise BenchFileError(f"{path}: unknown table(s) {', '.join(sorted(unknown))}", "use [bench] and [places.NAME]")
    bench = Bench(path=path, root=root, state_dir=Path(), lock_dir=Path())
    bench.state_dir = bench.resolve(settings.get("state_dir", "build/hil"))
    lock_dir = os.environ.get("MANTRA_HIL_LOCK_DIR") or settings.get("lock_dir", "/tmp/mantra-hil-locks")
    bench.lock_dir = bench.resolve(lock_dir)
    for name, place in data.get("places", {}).items():
        if not isinstance(place, dict):
            raise BenchFileError(f"{path}: places.{name} must be a table", "[places.NAME] with its resources")
        if not name.replace("-", "").replace("_", "").isalnum():
            raise BenchFileError(f"{path}: place name {name!r}: letters, digits, - and _ only", "rename it")
        unknown = set(place) - PLACE_KEYS
        if unknown:
            raise BenchFileError(f"{path}: place {name}: unknown key(s) {', '.join(sorted(unknown))}",
                                 f"known: {', '.join(sorted(PLACE_KEYS))}")
        power = place.get("power")
        if power is not None and power.get("kind") not in POWER_KINDS:
            raise BenchFileError(f"{path}: place {name}: power kind {power.get('kind')!r} is unknown",
                                 f"kinds: {', '.join(sorted(POWER_KINDS))}")
        if not ({"qemu", "console", "remote"} & set(place)):
            raise BenchFileError(f"{path}: place {name} has no board: give qemu, console or remote",
                                 "see hil/benches/qemu.toml")
        if "remote" in place and "host" not in place["remote"]:
            raise BenchFileError(f"{path}: place {name}: remote needs a host", 'remote = { host = "...", ... }')
        bench.places[name] = PlaceSpec(name, place)
    return bench
