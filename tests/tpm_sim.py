"""A swtpm the tests drive directly, without QEMU or firmware: the TPM
command channel on a unix socket, powered on and started (TPM2_Startup
CLEAR) by swtpm itself, so mantra.signing.tpm2.Tpm can send it commands:

    with SwtpmServer(tmp_path) as tpm:
        handle, ak, name = tpm.create_primary(tpm2.ak_template())

Used to make real quotes (signed by a real TPM implementation, libtpms) for
the attestation tests.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import pytest
from mantra import proc
from mantra.signing import tpm2


class SwtpmServer(tpm2.Tpm):
    """swtpm with its TPM state in `state_dir` (fresh unless it holds one)."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(self._send)
        self.state_dir = state_dir
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="mantra-swtpm-", dir="/tmp"))
        self._socket: socket.socket | None = None

    def __enter__(self) -> SwtpmServer:
        binary = shutil.which("swtpm")
        if binary is None:
            pytest.skip("swtpm (Debian package swtpm) is not installed")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        server, ctrl = self._dir / "server.sock", self._dir / "ctrl.sock"
        self.process = subprocess.Popen(
            [binary, "socket", "--tpm2", "--tpmstate", f"dir={self.state_dir}",
             "--server", f"type=unixio,path={server}", "--ctrl", f"type=unixio,path={ctrl}",
             "--flags", "not-need-init,startup-clear"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not server.is_socket():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError("swtpm did not start")
            time.sleep(0.01)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socket.settimeout(10)
        self._socket.connect(str(server))
        return self

    def _send(self, command: bytes) -> bytes:
        assert self._socket is not None
        self._socket.sendall(command)
        header = self._recv(6)
        size = int.from_bytes(header[2:6], "big")
        return header + self._recv(size - 6)

    def _recv(self, size: int) -> bytes:
        assert self._socket is not None
        data = b""
        while len(data) < size:
            chunk = self._socket.recv(size - len(data))
            if not chunk:
                raise RuntimeError("swtpm closed the connection")
            data += chunk
        return data

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self.process is not None:
            proc.stop(self.process)
            if self.process.stderr is not None:
                self.process.stderr.close()
        shutil.rmtree(self._dir, ignore_errors=True)
