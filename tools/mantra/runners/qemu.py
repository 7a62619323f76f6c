"""QEMU board runner: boots a disk image under UEFI firmware, as board.toml
[qemu] describes the machine.

Always: the firmware code read-only plus a per-image copy of its variable
store, the disk image as a raw drive, `-net none` (else the firmware tries
network boot first for minutes), `-no-reboot` (a triple fault ends QEMU
instead of looping), and isa-debug-exit at CONFIG_DEBUG_EXIT_IO_PORT when
CONFIG_QEMU_DEBUG_EXIT is set (the guest writes v, QEMU exits (v << 1) | 1).

With a TPM (`--tpm`): board.toml's qemu.tpm_device backed by a swtpm
(runners/swtpm.py) that is started before QEMU and stopped after it in every
case, keeping its state in the image's `tpm/` directory.
"""

from __future__ import annotations

import os
import selectors
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mantra import proc
from mantra.console import err
from mantra.errors import MantraError
from mantra.runners import console_socket
from mantra.runners.core import TIMEOUT_EXIT_STATUS, BoardRunner, BootResult, RunnerCaps
from mantra.runners.swtpm import Swtpm

_QEMU_HINT = "see QEMU's message above; `./mantra -v run` shows the exact QEMU command"
# How long QEMU gets to quit after SIGTERM before it is killed.
_TERMINATE_GRACE = 5.0


def _drive_path(path: Path) -> str:
    """`path` as a QEMU option value (commas are doubled)."""
    return str(path).replace(",", ",,")


class ScreenResetFilter:
    """Removes clear-screen and cursor-home sequences from a byte stream,
    including sequences split between two chunks."""

    SEQUENCES = (b"\x1b[2J", b"\x1b[01;01H", b"\x1b[H")

    def __init__(self) -> None:
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._held + chunk
        for sequence in self.SEQUENCES:
            data = data.replace(sequence, b"")
        escape = data.rfind(b"\x1b")
        tail = data[escape:] if escape >= 0 else b""
        if tail and any(s.startswith(tail) and s != tail for s in self.SEQUENCES):
            self._held, data = tail, data[:escape]
        else:
            self._held = b""
        return data


def _line_complete(console: bytearray, marker: bytes) -> bool:
    """Whether the console printed `marker` and finished the line holding it."""
    at = console.find(marker)
    return at >= 0 and console.find(b"\n", at + len(marker)) >= 0


class QemuRunner(BoardRunner):
    name = "qemu"
    capabilities = RunnerCaps(icount=True, tpm=True, console_socket=True)
    # The swtpm of the current (or last) run with a TPM.
    swtpm: Swtpm | None = None

    def _firmware_vars(self) -> Path:
        """This image's copy of the firmware variable store (made on first use)."""
        copy = self.work_dir / "firmware-vars.fd"
        if not copy.is_file():
            source = self.board.qemu.firmware_vars
            if not source.is_file():
                raise MantraError(f"UEFI firmware variables {source} not found",
                                  "install the Debian package ovmf (./mantra installs it)")
            self.work_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, copy)
        return copy

    def debug_exit_port(self) -> int | None:
        """I/O port of isa-debug-exit, or None when the configuration has none."""
        if self.config.get("QEMU_DEBUG_EXIT") != "y":
            return None
        return int(self.config["DEBUG_EXIT_IO_PORT"], 16)

    @contextmanager
    def _tpm(self, tpm: bool) -> Iterator[Path | None]:
        """With `tpm`: runs swtpm for the body and gives its control socket
        (None without); swtpm is stopped however the body ends."""
        if not tpm:
            yield None
            return
        if self.board.qemu.tpm_device is None:
            raise MantraError(f"board {self.board.name} has no TPM (no qemu.tpm_device in {self.board.data_file})",
                              "run without --tpm, or set qemu.tpm_device (e.g. \"tpm-tis\") in board.toml")
        self.swtpm = Swtpm(self.tpm_state_dir)
        with self.swtpm:
            yield self.swtpm.socket

    def tpm_options(self, socket: Path) -> list[str]:
        """QEMU options for a TPM whose swtpm listens on `socket`."""
        assert self.board.qemu.tpm_device is not None
        return [
            "-chardev", f"socket,id=chrtpm,path={_drive_path(socket)}",
            "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
            "-device", f"{self.board.qemu.tpm_device},tpmdev=tpm0",
        ]

    def command(self, console: list[str], *, icount: bool, tpm_socket: Path | None = None) -> list[str]:
        """The QEMU command line; `console` are the options that connect the
        console serial port (and the display and monitor); `tpm_socket` is
        the control socket of the swtpm behind the board's TPM, if any."""
        qemu = self.board.qemu
        binary = proc.require_tool(qemu.binary, "qemu-system-x86")
        if not qemu.firmware_code.is_file():
            raise MantraError(f"UEFI firmware {qemu.firmware_code} not found",
                              "install the Debian package ovmf (./mantra installs it)")
        if not self.image.is_file():
            raise MantraError(f"disk image {self.image} not found", "build it first: ./mantra build")
        cmd = [
            binary,
            "-machine", qemu.machine,
            "-cpu", qemu.cpu,
            "-m", qemu.memory,
            "-smp", str(qemu.smp),
            "-accel", qemu.accel,
            "-drive", f"if=pflash,format=raw,readonly=on,file={_drive_path(qemu.firmware_code)}",
            "-drive", f"if=pflash,format=raw,file={_drive_path(self._firmware_vars())}",
            "-drive", f"if={qemu.disk_interface},format=raw,file={_drive_path(self.image)}",
            "-net", "none",
            "-no-reboot",
        ]
        port = self.debug_exit_port()
        if port is not None:
            cmd += ["-device", f"isa-debug-exit,iobase={port:#x},iosize=0x04"]
        for device in qemu.devices:
            cmd += ["-device", device]
        if tpm_socket is not None:
            cmd += self.tpm_options(tpm_socket)
        if icount:
            cmd += ["-icount", "shift=0"]
        # Serial ports before the console's are left unconnected.
        cmd += ["-serial", "null"] * self.board.console_index
        return cmd + console

    def do_run_interactive(self, *, icount: bool, tpm: bool) -> int:
        with self._tpm(tpm) as tpm_socket:
            return self._interactive(icount=icount, tpm_socket=tpm_socket)

    def _interactive(self, *, icount: bool, tpm_socket: Path | None) -> int:
        # QEMU reads this terminal (raw mode, Ctrl-A is its escape key); its
        # output is copied here without the firmware's screen resets, which
        # would wipe the line that says how to quit.
        cmd = self.command(["-nographic", "-serial", "mon:stdio"], icount=icount, tpm_socket=tpm_socket)
        err.print("[bold]QEMU: to quit press Ctrl-A then X[/] (Ctrl-A C switches to the QEMU monitor)")
        process = proc.start(cmd, what="QEMU", hint=_QEMU_HINT, interactive=True)
        assert process.stdout is not None
        screen = ScreenResetFilter()
        ended = False  # QEMU closed its output: it has exited
        try:
            while chunk := os.read(process.stdout.fileno(), 65536):
                sys.stdout.buffer.write(screen.feed(chunk))
                sys.stdout.flush()
            ended = True
        finally:
            # Anything else (an exception, Ctrl-C) ends QEMU here, before
            # its swtpm is stopped.
            if not ended:
                self._stop(process)
            process.stdout.close()
        return process.wait()

    def do_run_headless(self, *, timeout: float | None, icount: bool, until: str | None,
                        echo: bool, tpm: bool) -> BootResult:
        with self._tpm(tpm) as tpm_socket:
            return self._headless(timeout=timeout, icount=icount, until=until, echo=echo, tpm_socket=tpm_socket)

    def _headless(self, *, timeout: float | None, icount: bool, until: str | None, echo: bool,
                  tpm_socket: Path | None) -> BootResult:
        cmd = self.command(["-display", "none", "-monitor", "none", "-serial", "stdio"], icount=icount,
                           tpm_socket=tpm_socket)
        log = self.work_dir / "console.log"
        deadline = None if timeout is None else time.monotonic() + timeout
        marker = until.encode() if until else None
        screen = ScreenResetFilter()
        console = bytearray()
        errors = bytearray()
        timed_out = matched = False
        exit_code: int | None = None
        process = proc.start(cmd, what="QEMU", hint=_QEMU_HINT)
        assert process.stdout is not None and process.stderr is not None
        console_fd = process.stdout.fileno()
        streams = {console_fd: console, process.stderr.fileno(): errors}
        ended = False  # QEMU closed its output: it has exited
        with selectors.DefaultSelector() as selector, log.open("wb") as log_file:
            for fd in streams:
                selector.register(fd, selectors.EVENT_READ)
            try:
                while streams and not (timed_out or matched):
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        timed_out = True
                        break
                    for key, _ in selector.select(remaining):
                        chunk = os.read(key.fd, 65536)
                        if not chunk:
                            selector.unregister(key.fd)
                            del streams[key.fd]
                            continue
                        streams[key.fd].extend(chunk)
                        if key.fd == console_fd:
                            log_file.write(chunk)
                            log_file.flush()
                            if echo:
                                sys.stdout.buffer.write(screen.feed(chunk))
                                sys.stdout.flush()
                    matched = marker is not None and _line_complete(console, marker)
                ended = not streams
            finally:
                if ended:
                    exit_code = process.wait()
                else:
                    self._stop(process)
                process.stdout.close()
                process.stderr.close()
        if exit_code not in (None, 0) and not console and errors:
            message = f"QEMU failed (exit status {exit_code}):\n{errors.decode(errors='replace').strip()}"
            hint = _QEMU_HINT
            if tpm_socket is not None and self.swtpm is not None:
                # With a TPM, QEMU's complaint is often about it: add swtpm's side.
                if swtpm_said := self.swtpm.log_text():
                    message += f"\nswtpm said:\n{swtpm_said}"
                hint += (f"; if it is about the TPM: delete its state {self.tpm_state_dir} (the next run makes "
                         "a fresh TPM), or run without --tpm")
            raise MantraError(message, hint)
        return BootResult(exit_code, console.decode(errors="replace"), timed_out, matched, log)

    @staticmethod
    def _socket_console(port: int) -> list[str]:
        # wait=on: QEMU starts the guest only once a client is connected,
        # so no early output is lost.
        return ["-display", "none", "-monitor", "none", "-serial", f"tcp:{console_socket.HOST}:{port},server=on,wait=on"]

    def do_run_console_port(self, *, port: int, icount: bool, tpm: bool, timeout: float | None) -> int:
        with self._tpm(tpm) as tpm_socket:
            cmd = self.command(self._socket_console(port), icount=icount, tpm_socket=tpm_socket)
            qemu_log = self.work_dir / "qemu.log"
            process = proc.start(cmd, what="QEMU", hint=_QEMU_HINT, output=qemu_log)
            err.print(f"console on {console_socket.url(port)} (the board starts once a program connects)")
            try:
                status = process.wait(timeout)
            except subprocess.TimeoutExpired:
                return TIMEOUT_EXIT_STATUS
            finally:
                if process.poll() is None:
                    self._stop(process)
            said = qemu_log.read_text(errors="replace").strip()
            if status != 0 and said:
                err.print(f"QEMU said:\n{said}")
            return status

    @contextmanager
    def do_console_session(self, *, icount: bool, tpm: bool, port: int | None,
                           connect_timeout: float) -> Iterator[console_socket.ConsoleSession]:
        port = port or console_socket.free_port()
        with self._tpm(tpm) as tpm_socket:
            cmd = self.command(self._socket_console(port), icount=icount, tpm_socket=tpm_socket)
            qemu_log = self.work_dir / "qemu.log"
            process = proc.start(cmd, what="QEMU", hint=_QEMU_HINT, output=qemu_log)
            session = None
            try:
                try:
                    sock = console_socket.connect(port, connect_timeout, alive=lambda: process.poll() is None)
                except MantraError as exc:
                    said = qemu_log.read_text(errors="replace").strip()
                    raise MantraError(f"{exc.message}\nQEMU said:\n{said}" if said else exc.message, exc.hint) from None
                session = console_socket.ConsoleSession(sock, port, self.work_dir / "console.log")
                yield session
            finally:
                if process.poll() is None:
                    self._stop(process)
                if session is not None:
                    session.close()

    @staticmethod
    def _stop(process: subprocess.Popen[bytes]) -> None:
        """Ends QEMU: SIGTERM, then SIGKILL if it lingers."""
        proc.stop(process, _TERMINATE_GRACE)
