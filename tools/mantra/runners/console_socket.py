"""A board's serial console over a local TCP socket, for programs that talk
to the running system (the attestation host, tests).

`BoardRunner.console_session()` boots the board with its console on
127.0.0.1:PORT (QEMU: `-serial tcp:127.0.0.1:PORT,server=on,wait=on`, so the
guest starts only once the session is connected and no output is lost) and
yields a `ConsoleSession`:

    with runner.console_session(tpm=True) as console:
        console.wait_for("attestd: TPM", timeout=120)
        mark = console.mark()
        console.send_line("MANTRA-ATTEST-REQUEST " + nonce.hex())
        end = console.wait_for(r"MANTRA-ATTEST-(END|ERROR) .*", timeout=60, start=mark)
        answer = console.text[mark:end.end()]

The same socket is what `./mantra run --console-port PORT` offers
(`socket://127.0.0.1:PORT` as a pyserial URL).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

from mantra.errors import MantraError

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def url(port: int) -> str:
    """The pyserial URL of a console socket."""
    return f"socket://{HOST}:{port}"


def connect(port: int, timeout: float, alive: object = None) -> socket.socket:
    """Connects to the console socket, retrying while the board starts
    listening; `alive()` (if given) says whether the board still runs."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection((HOST, port), timeout=2)
        except OSError as exc:
            if callable(alive) and not alive():
                raise MantraError(f"the board stopped before its console socket {url(port)} accepted a connection",
                                  "see the runner's message above; `./mantra -v run` shows its command") from None
            if time.monotonic() > deadline:
                raise MantraError(f"cannot connect to the console socket {url(port)}: {exc}",
                                  "is another program using that port? pick another with --console-port") from None
            time.sleep(0.05)


class ConsoleSession:
    """The console of a running board: everything it printed (`text`, also
    appended to `log`) and a way to type lines into it (`send_line`).

    `text` only grows; `mark()` and the `start` of `wait_for` let a caller
    look only at output after some point (e.g. after sending a request).
    """

    def __init__(self, sock: socket.socket, port: int, log: Path) -> None:
        self.port = port
        self.url = url(port)
        self.log = log
        self._sock = sock
        self._sock.settimeout(None)
        self._data = bytearray()
        self._closed = False
        self._changed = threading.Condition()
        self._log_file = log.open("wb")
        self._reader = threading.Thread(target=self._read, name=f"console {self.url}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            while chunk := self._sock.recv(65536):
                self._log_file.write(chunk)
                self._log_file.flush()
                with self._changed:
                    self._data.extend(chunk)
                    self._changed.notify_all()
        except OSError:
            pass
        finally:
            with self._changed:
                self._closed = True
                self._changed.notify_all()

    @property
    def text(self) -> str:
        """Everything the console printed so far (decoded, bad bytes replaced)."""
        with self._changed:
            return self._data.decode(errors="replace")

    @property
    def closed(self) -> bool:
        """Whether the board closed the console (it stopped)."""
        with self._changed:
            return self._closed

    def raw(self, start: int = 0) -> bytes:
        """The bytes the console sent from byte offset `start` on, undecoded
        (for a binary protocol on the console, e.g. MantraFlash frames)."""
        with self._changed:
            return bytes(self._data[start:])

    def wait_raw(self, start: int, timeout: float) -> bytes:
        """Waits up to `timeout` seconds for bytes after byte offset `start`;
        returns them (empty on timeout or when the board stopped)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._data) <= start and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            return bytes(self._data[start:])

    def send_bytes(self, data: bytes) -> None:
        """Writes raw bytes to the console (no line end added)."""
        self._sock.sendall(data)

    def mark(self) -> int:
        """The current end of `text`, for `wait_for(start=...)`."""
        return len(self.text)

    def send_line(self, line: str) -> None:
        """Types `line` and a line end into the console."""
        if "\n" in line or "\r" in line:
            raise MantraError("a console line cannot contain line ends", "send one line per call")
        self._sock.sendall(line.encode() + b"\n")

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float, start: int = 0) -> re.Match[str]:
        """Waits until a whole line of the console after offset `start`
        matches `pattern` (a regular expression, searched within the line,
        `^`/`$` at its ends; serial lines end with CR, use `\r?$`);
        returns the match (offsets into `text`). Raises MantraError on
        timeout or when the board stops first, with the console's tail."""
        # MULTILINE: `^` and `$` match at the line's ends.
        regex = re.compile(pattern, re.MULTILINE) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            text = self.text
            for line in re.finditer(r"[^\n]*\n", text[start:]):
                found = regex.search(text, start + line.start(), start + line.end() - 1)
                if found:
                    return found
            remaining = deadline - time.monotonic()
            if self.closed or remaining <= 0:
                why = "the board stopped" if self.closed else f"{timeout:g} s passed"
                tail = "\n".join(text.splitlines()[-25:])
                raise MantraError(f"{why} before the console printed a line matching {regex.pattern!r}; it ended:\n{tail}",
                                  f"the whole console is in {self.log}")
            with self._changed:
                self._changed.wait(min(remaining, 0.5))

    def close(self) -> None:
        """Disconnects (the board keeps running until its runner stops it)."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._reader.join(5)
        self._log_file.close()
