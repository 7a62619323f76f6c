"""A QEMU board as a bench resource: the default place needs no hardware.

Each QEMU place has its own state directory (the bench's state_dir/PLACE):
its disk `image.img` (with `manifest.json` beside it, so the board runner
boots it with the configuration it was built with), its firmware variable
store, its swtpm state, `qemu.json` (the running QEMU's pid, console port
and monitor socket, so `mantra hil power on` in one command and `mantra hil
console` in the next find the same board) and the logs.

- console: QEMU's `-serial tcp:127.0.0.1:PORT,server=on,wait=on`, opened by
  the console driver as the pyserial URL socket://127.0.0.1:PORT; the guest
  starts only once it is connected, so nothing is lost.
- power: on starts QEMU (and swtpm first, with `tpm = true`); off asks
  QEMU's monitor to `quit` (then SIGTERM, SIGKILL); cycle is off then on.
- flash (the virtual programmer): writes the built image into the place's
  disk while the board is off (a sparse copy), as a factory programmer
  would; a fresh disk is a new device (firmware variables and TPM state go).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mantra import proc
from mantra.errors import MantraError
from mantra.hil.lock import pid_alive
from mantra.hil.errors import BoardGone, ConsoleError, FlashError, PowerError
from mantra.hil.resources import SerialLike, open_serial_url
from mantra.runners.console_socket import HOST, free_port, url

_CHUNK = 1 << 20


def sparse_copy(source: Path, target: Path) -> int:
    """Copies `source` to `target` leaving all-zero MiB blocks as holes; returns bytes written."""
    written = 0
    zero = bytes(_CHUNK)
    temporary = target.with_name(target.name + ".part")
    with source.open("rb") as src, temporary.open("wb") as dst:
        while chunk := src.read(_CHUNK):
            if chunk == zero[: len(chunk)]:
                dst.seek(len(chunk), os.SEEK_CUR)
            else:
                dst.write(chunk)
                written += len(chunk)
        dst.truncate()
    os.replace(temporary, target)
    return written


def _alive(pid: int | None) -> bool:
    return bool(pid) and pid_alive(pid)  # type: ignore[arg-type]


@dataclass
class QemuBoard:
    """A virtual board of `board` running `product`'s image (or `image`)."""

    name: str
    state_dir: Path
    source_image: Path
    tpm: bool = False
    smp: int | None = None
    icount: bool = False
    needs_power = True
    # This process's QEMU (also found through qemu.json by other processes).
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _swtpm: Any = field(default=None, init=False, repr=False)
    _stopping: bool = field(default=False, init=False, repr=False)
    _returncode: int | None = field(default=None, init=False, repr=False)

    # --- state -------------------------------------------------------------------------

    @property
    def image(self) -> Path:
        return self.state_dir / "image.img"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "qemu.json"

    def describe(self) -> str:
        return f"QEMU board, image {self.source_image}" + (", swtpm" if self.tpm else "")

    def _state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None

    def running_pid(self) -> int | None:
        state = self._state()
        pid = state.get("pid") if state else None
        return pid if _alive(pid) else None

    # --- flash (the virtual programmer) -------------------------------------------------

    def flash(self, image: Path | None = None) -> str:
        """Writes `image` (default: the source image) as this board's disk; the board must be off."""
        image = image or self.source_image
        if self.running_pid() is not None:
            raise FlashError(f"place {self.name}: the board is running; a QEMU disk is written while it is off",
                             "mantra hil power off first (the strategy does this)")
        manifest = image.parent / "manifest.json"
        if not image.is_file() or not manifest.is_file():
            raise FlashError(f"no built image {image} (with manifest.json beside it)",
                             "build it first: ./mantra build (or mantra hil test --build)")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("firmware-vars.fd", "tpm"):  # a new disk is a new device
            path = self.state_dir / stale
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        written = sparse_copy(image, self.image)
        shutil.copyfile(manifest, self.state_dir / "manifest.json")
        return f"wrote {image} to {self.image} ({written} bytes of data, {image.stat().st_size} bytes)"

    # --- power --------------------------------------------------------------------------

    def _runner(self):  # noqa: ANN202 - a BoardRunner
        from mantra.qemu import image_runner

        if not self.image.is_file():
            raise PowerError(f"place {self.name} has no disk yet: nothing to boot",
                             f"flash it first: mantra hil flash {self.name} (the strategy's `flashed` state)")
        try:
            return image_runner(self.image, smp=self.smp)
        except MantraError as exc:
            raise PowerError(f"place {self.name}: {exc.message}", exc.hint) from None

    def power_on(self) -> None:
        if self.running_pid() is not None:
            return
        runner = self._runner()
        port = free_port()
        monitor_dir = Path(tempfile.mkdtemp(prefix="mantra-hil-"))
        monitor = monitor_dir / "monitor.sock"
        tpm_socket = None
        swtpm_pid = None
        self._stopping = False
        self._returncode = None
        try:
            if self.tpm:
                from mantra.runners.swtpm import Swtpm

                self._swtpm = Swtpm(runner.tpm_state_dir)
                tpm_socket = self._swtpm.start()
                swtpm_pid = self._swtpm.process.pid if getattr(self._swtpm, "process", None) else None
            console = ["-display", "none", "-monitor", f"unix:{monitor},server=on,wait=off",
                       "-serial", f"tcp:{HOST}:{port},server=on,wait=on"]
            cmd = runner.command(console, icount=self.icount, tpm_socket=tpm_socket)
            log = self.state_dir / "qemu.log"
            self._process = proc.start(cmd, what="QEMU", hint="see qemu.log in the place's state directory",
                                       output=log)
        except MantraError as exc:
            self._stop_swtpm()
            raise PowerError(f"place {self.name}: QEMU did not start: {exc.message}", exc.hint) from None
        self.state_file.write_text(json.dumps({"pid": self._process.pid, "port": port, "monitor": str(monitor),
                                               "swtpm_pid": swtpm_pid, "started": time.time()}) + "\n")
        # QEMU listens on the console port within a moment; a bad command line exits at once.
        deadline = time.monotonic() + 30
        while not self._listening(port):
            if self._process.poll() is not None:
                said = (self.state_dir / "qemu.log").read_text(errors="replace").strip()
                self._stop_swtpm()
                raise PowerError(f"place {self.name}: QEMU exited at once (status {self._process.returncode})"
                                 + (f":\n{said}" if said else ""), "see qemu.log in the place's state directory")
            if time.monotonic() > deadline:
                self.power_off()
                raise PowerError(f"place {self.name}: QEMU did not open its console port in 30 s", "retry")
            time.sleep(0.05)

    @staticmethod
    def _listening(port: int) -> bool:
        # /proc/net/tcp: a probe connect would be QEMU's one console client.
        wanted = f":{port:04X}"
        try:
            with open("/proc/net/tcp") as table:
                return any(line.split()[1].endswith(wanted) and line.split()[3] == "0A" for line in table
                           if len(line.split()) > 3 and ":" in line.split()[1])
        except OSError:
            time.sleep(0.5)
            return True

    def power_off(self) -> None:
        state = self._state()
        pid = state.get("pid") if state else None
        self._stopping = True
        if _alive(pid):
            assert pid is not None
            self._monitor_quit(state.get("monitor"))  # type: ignore[union-attr]
            if not self._wait_gone(pid, 3):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                if not self._wait_gone(pid, 5):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    self._wait_gone(pid, 5)
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(5)
            self._returncode = self._process.returncode
            self._process = None
        self._stop_swtpm(state.get("swtpm_pid") if state else None)
        if state and state.get("monitor"):
            shutil.rmtree(Path(state["monitor"]).parent, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()

    def _wait_gone(self, pid: int, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._process is not None and self._process.pid == pid:
                if self._process.poll() is not None:
                    return True
            elif not _alive(pid):
                return True
            time.sleep(0.05)
        return False

    @staticmethod
    def _monitor_quit(monitor: str | None) -> None:
        if not monitor:
            return
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(monitor)
            sock.sendall(b"quit\n")
            with contextlib.suppress(OSError):
                while sock.recv(4096):
                    pass

    def _stop_swtpm(self, pid: int | None = None) -> None:
        if self._swtpm is not None:
            with contextlib.suppress(Exception):
                self._swtpm.stop()
            self._swtpm = None
        elif pid and _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def is_on(self) -> bool:
        return self.running_pid() is not None

    # --- console ------------------------------------------------------------------------

    def console_url(self) -> str:
        state = self._state()
        if not state or not _alive(state.get("pid")):
            raise ConsoleError(f"place {self.name}: the board is off: its console exists only while QEMU runs",
                               f"mantra hil power on {self.name} (or boot it)")
        return url(state["port"])

    def open(self, timeout: float) -> SerialLike:
        return open_serial_url(self.console_url(), 115200)

    def gone_reason(self) -> tuple[str, bool] | None:
        """Why the console closed: QEMU killed by a signal we did not send
        is the bench's fault; QEMU exiting by itself is the guest's doing."""
        code = None
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(2)
            code = self._process.returncode
        elif self._returncode is not None:
            code = self._returncode
        if self._stopping:
            return ("the bench powered the board off", True)
        if code is None:
            pid = self.running_pid()
            return (("QEMU closed the console but still runs" if pid else "QEMU is gone"), True)
        if code < 0:
            return (f"QEMU was killed ({signal.Signals(-code).name}) without the bench powering the board off", True)
        said = ""
        with contextlib.suppress(OSError):
            said = (self.state_dir / "qemu.log").read_text(errors="replace").strip()
        if signalled := re.search(r"terminating on signal (\d+)(?: from pid (\d+))?", said):
            # QEMU ends with status 0 on SIGTERM/SIGINT/SIGHUP: not the guest's doing.
            sender = f" from pid {signalled[2]}" if signalled[2] else ""
            return (f"QEMU was terminated by signal {signalled[1]}{sender} without the bench powering the board off",
                    True)
        return (f"the board stopped by itself: QEMU exited with status {code}" + (f" ({said})" if said else ""),
                False)

    def qemu_pid(self) -> int | None:
        """The running QEMU's pid (tests kill it to play a bench failure)."""
        return self.running_pid()


def board_gone_error(place: str, reason: tuple[str, bool] | None) -> Exception:
    from mantra.hil.errors import BoardStopped

    why, bench_fault = reason or ("the console closed", True)
    if bench_fault:
        return BoardGone(f"place {place}: {why}", "the bench lost the board; the run is retried if retries are left")
    return BoardStopped(f"place {place}: {why}", "read the console log: the guest shut down or reset")
