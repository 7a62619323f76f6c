"""A real OpenSSH server on 127.0.0.1 for the remote-place tests: a random
high port, host and client keys generated in a temporary directory, run
as the current user (`sshd -D -e -f CONFIG`)."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from mantra import proc

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/bin/sshd")


def sshd_binary() -> str | None:
    found = shutil.which("sshd")
    return found or next((c for c in SSHD_CANDIDATES if os.access(c, os.X_OK)), None)


@dataclass
class Sshd:
    process: subprocess.Popen[bytes]
    port: int
    user: str
    client_key: Path
    known_hosts: Path
    log: Path

    def stop(self) -> None:
        proc.stop(self.process)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_sshd(directory: Path) -> Sshd:
    binary = sshd_binary()
    assert binary, "sshd not found (Debian package openssh-server; ./mantra installs it)"
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    host_key, client_key = directory / "host_ed25519", directory / "client_ed25519"
    for key in (host_key, client_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mantra-hil-test", "-f", str(key)],
                       check=True, stdin=subprocess.DEVNULL)
    authorized = directory / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    os.chmod(authorized, 0o600)
    if os.getuid() == 0:
        # sshd started as root needs its privilege separation directory (the
        # Debian service creates it at start; nothing else runs sshd here).
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    port = _free_port()
    config = directory / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}", f"PidFile {directory / 'sshd.pid'}",
        f"AuthorizedKeysFile {authorized}", "PubkeyAuthentication yes", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "PermitRootLogin prohibit-password",
        f"AllowUsers {getpass.getuser()}", "LogLevel VERBOSE", "Subsystem sftp internal-sftp", "",
    ]))
    known_hosts = directory / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_key.with_suffix('.pub').read_text().split(' mantra')[0]}\n")
    log = directory / "sshd.log"
    process = subprocess.Popen([binary, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                               stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"sshd did not start:\n{log.read_text()}") from None
            time.sleep(0.05)
    return Sshd(process, port, getpass.getuser(), client_key, known_hosts, log)
