"""swtpm, the TPM 2.0 emulator behind a QEMU board's TPM (`mantra run --tpm`).

One `Swtpm` per boot, used as a context manager around QEMU: entering starts

    swtpm socket --tpm2 --tpmstate dir=STATE --ctrl type=unixio,path=SOCK --terminate

and waits (bounded) for its control socket; leaving stops it, whatever ended
the run, so no swtpm outlives it (and --terminate makes swtpm quit by itself
once QEMU drops the connection). QEMU's tpm-emulator backend sends the TPM's
power-on over the control channel and the firmware sends TPM2_Startup, as on
a real machine, so no startup flag is given.

STATE is persistent (the image's `tpm/` beside firmware-vars.fd): NV indices
and the endorsement seed survive reboots. SOCK is in a fresh directory under
/tmp, since a unix socket path holds at most 107 bytes. swtpm's output goes
to swtpm.log in that directory and is quoted in errors.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from mantra import proc
from mantra.errors import MantraError

# The Debian packages of swtpm (the emulator) and swtpm_setup (swtpm-tools).
PACKAGES = "swtpm swtpm-tools"
# How long swtpm gets to create its control socket.
SOCKET_TIMEOUT = 10.0
# How long swtpm gets to quit after SIGTERM before it is killed.
_TERMINATE_GRACE = 5.0
# sockaddr_un.sun_path holds 108 bytes with the terminating NUL.
_MAX_SOCKET_PATH = 107


def _socket_dir() -> Path:
    """A fresh directory for the control socket, short enough for its path."""
    base = tempfile.gettempdir()
    if len(base) > _MAX_SOCKET_PATH - 40:
        base = "/tmp"
    return Path(tempfile.mkdtemp(prefix="mantra-tpm-", dir=base))


class Swtpm:
    """A swtpm keeping its TPM state in `state_dir` (created if missing)."""

    def __init__(self, state_dir: Path, *, socket_timeout: float = SOCKET_TIMEOUT) -> None:
        self.state_dir = state_dir
        self.socket_timeout = socket_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._binary: str | None = None
        self._last_log = ""

    @property
    def socket(self) -> Path:
        """The control socket QEMU's -chardev connects to (while running)."""
        assert self._dir is not None, "swtpm not started"
        return self._dir / "swtpm.sock"

    @property
    def log(self) -> Path:
        """swtpm's stdout and stderr (while running)."""
        assert self._dir is not None, "swtpm not started"
        return self._dir / "swtpm.log"

    def log_text(self) -> str:
        """What swtpm printed (so far, or until it was stopped)."""
        if self._dir is None:
            return self._last_log
        try:
            return self.log.read_text(errors="replace").strip()
        except OSError:
            return self._last_log

    def command(self) -> list[str]:
        """The swtpm command line (once `start` has found swtpm)."""
        assert self._binary is not None, "swtpm not started"
        return [
            self._binary, "socket", "--tpm2",
            "--tpmstate", f"dir={self.state_dir}",
            "--ctrl", f"type=unixio,path={self.socket}",
            # Quit when QEMU closes the connection, even if we cannot stop it.
            "--terminate",
        ]

    def _state_hint(self) -> str:
        return (f"if the TPM state in {self.state_dir} is corrupt (or from another swtpm version), delete that "
                "directory: the next run makes a fresh TPM (its NV indices are lost); "
                "is another run of this image still using it? `./mantra -v run --tpm` shows the swtpm command")

    def start(self) -> Path:
        """Starts swtpm and returns its control socket once it exists."""
        self._binary = proc.require_tool("swtpm", PACKAGES)  # before creating anything
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._dir = _socket_dir()
        try:
            self.process = proc.start(self.command(), what="swtpm", hint=f"install the Debian packages {PACKAGES}",
                                      output=self.log)
            deadline = time.monotonic() + self.socket_timeout
            while not self.socket.is_socket():
                status = self.process.poll()
                if status is not None:
                    raise MantraError(f"swtpm failed to start (exit status {status}):\n{self.log_text()}",
                                      self._state_hint())
                if time.monotonic() >= deadline:
                    raise MantraError(
                        f"swtpm did not create its control socket {self.socket} within {self.socket_timeout:g} s"
                        + (f":\n{self.log_text()}" if self.log_text() else ""),
                        self._state_hint())
                time.sleep(0.02)
        except BaseException:
            self.stop()
            raise
        return self.socket

    def stop(self) -> None:
        """Ends swtpm (SIGTERM, then SIGKILL if it lingers) and removes the
        socket directory; safe to call more than once."""
        if self.process is not None:
            proc.stop(self.process, _TERMINATE_GRACE)
        if self._dir is not None:
            self._last_log = self.log_text()
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> Swtpm:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
