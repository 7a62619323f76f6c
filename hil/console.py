"""The console driver: send lines, expect lines with timeouts, capture everything.

    console.open()
    console.expect(r"MantraCore ready", timeout=120)
    console.send("MANTRA-ATTEST-REQUEST " + nonce)

Works on any ConsolePort resource (a QEMU board's TCP socket, a tty, a USB
serial adapter matched by VID/PID/serial). Everything the board prints is
kept in memory (`text`, offsets never change while the driver lives, across
reopenings) and appended to `log` as it arrives.

No silent re-opening: when the port closes (QEMU gone, adapter unplugged)
the next `expect` raises at once, BoardGone (the bench's fault) or
BoardStopped (the guest shut down), as the resource tells; only an explicit
`open()` (the strategy, after powering the board) opens it again. A wait
that times out is ConsoleSilent if the console never printed anything since
it was opened (power, cable, wrong port: infrastructure), else ExpectTimeout
(the system printed something else: a test failure).
"""

from __future__ import annotations

import codecs
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from mantra.hil.errors import ConsoleError, ConsoleSilent, ExpectTimeout
from mantra.hil.resources import ConsolePort, SerialLike


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.splitlines()[-lines:])


class ConsoleDriver:
    def __init__(self, place: str, port: ConsolePort, log: Path) -> None:
        self.place = place
        self.port = port
        self.log = log
        self._serial: SerialLike | None = None
        self._reader: threading.Thread | None = None
        self._data = bytearray()
        self._text = ""  # _data decoded (bad bytes replaced), kept up to date by the reader
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._changed = threading.Condition()
        self._closed = True
        self._closing = False
        self._opened_at = 0  # size of the capture when the port was last opened
        self.cursor = 0
        # Called when the port is found closed under us (the strategy forgets the board's state).
        self.on_gone: Callable[[], None] | None = None

    # --- opening and closing ------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        with self._changed:
            return not self._closed

    def open(self, timeout: float = 30.0) -> None:
        """Opens the port (a no-op if open); a closed port is only reopened here."""
        if self.is_open:
            return
        deadline = time.monotonic() + timeout
        while True:
            try:
                serial = self.port.open(max(deadline - time.monotonic(), 0.1))
                break
            except ConsoleError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self._changed:
            self._serial = serial
            self._closed = False
            self._closing = False
            self._opened_at = len(self._data)
        self._reader = threading.Thread(target=self._read, args=(serial,), name=f"console {self.place}", daemon=True)
        self._reader.start()

    def _read(self, serial: SerialLike) -> None:
        with self.log.open("ab") as log:
            try:
                while True:
                    with self._changed:
                        if self._closing:
                            break
                    # One byte (waiting up to the port's timeout), then what is
                    # waiting, each piece kept as soon as it is read: a read(4096)
                    # that meets a disconnect drops the bytes it already had
                    # (pyserial), e.g. a dying board's last words.
                    chunk = bytearray(serial.read(1))
                    try:
                        while chunk and len(chunk) < 65536 and getattr(serial, "in_waiting", 0):
                            more = serial.read(min(serial.in_waiting, 65536))
                            if not more:
                                break
                            chunk += more
                    finally:
                        if chunk:
                            log.write(chunk)
                            log.flush()
                            with self._changed:
                                self._data.extend(chunk)
                                self._text += self._decoder.decode(bytes(chunk))
                                self._changed.notify_all()
            except Exception:  # the port closed under us (pyserial: "socket disconnected", OSError)
                pass
                pass
            finally:
                with self._changed:
                    self._closed = True
                    self._changed.notify_all()

    def close(self) -> None:
        """Closes the port (what was printed stays in `text`)."""
        serial = self._serial
        with self._changed:
            self._closing = True
        if serial is not None:
            try:
                serial.close()
            except Exception:
                pass
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(5)
        with self._changed:
            self._closed = True
            self._serial = None

    # --- reading --------------------------------------------------------------------------------

    @property
    def text(self) -> str:
        """Everything the board printed while this driver lived (offsets never change)."""
        with self._changed:
            return self._text

    def mark(self) -> int:
        """The current end of `text` (an offset for expect(start=...) and log slices)."""
        with self._changed:
            return len(self._text)

    def text_since(self, start: int) -> str:
        return self.text[start:]

    def expect(self, pattern: str | re.Pattern[str], timeout: float, *, start: int | None = None,
               what: str | None = None) -> re.Match[str]:
        """Waits for a complete line after `start` (default: the cursor,
        i.e. after the previous match) that matches `pattern` (searched in
        the line; MULTILINE, so ^ and $ are the line's ends; lines may end
        in CR); moves the cursor past the match and returns it."""
        regex = re.compile(pattern, re.MULTILINE) if isinstance(pattern, str) else pattern
        what = what or repr(regex.pattern)
        begin = self.cursor if start is None else start
        scan = begin  # complete lines before this were already looked at
        deadline = time.monotonic() + timeout
        while True:
            with self._changed:
                size = len(self._data)
                text = self._text
                closed = self._closed
                silent = size == self._opened_at
            for line in re.finditer(r"[^\n]*\n", text[scan:]):
                found = regex.search(text, scan + line.start(), scan + line.end() - 1)
                if found:
                    self.cursor = found.end()
                    return found
            scan = max(scan, text.rfind("\n", scan) + 1)
            if closed:
                if self._serial is None and not self._reader:
                    raise ConsoleError(f"place {self.place}: the console is not open", "power the board and open it")
                raise self._gone(what, text)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if silent:
                    raise ConsoleSilent(f"place {self.place}: the console ({self.port.describe()}) printed nothing "
                                        f"in {timeout:g} s", "is the board powered, the cable on the right port, "
                                        "the baud rate right?")
                raise ExpectTimeout(f"place {self.place}: no line matching {what} within {timeout:g} s; "
                                    f"the console ended:\n{_tail(text[begin:])}", f"the whole console is in {self.log}")
            with self._changed:
                if len(self._data) == size and not self._closed:
                    self._changed.wait(min(remaining, 0.5))

    def _gone(self, pattern: str, text: str) -> Exception:
        from mantra.hil.qemu_board import board_gone_error

        if self.on_gone is not None:
            self.on_gone()
        error = board_gone_error(self.place, self.port.gone_reason())
        error.message += f" (while waiting for {pattern}; the console ended:\n{_tail(text)})"
        error.args = (error.message,)
        return error

    # --- writing ----------------------------------------------------------------------------------

    def send(self, line: str) -> None:
        """Types `line` and a line end."""
        if "\n" in line or "\r" in line:
            raise ValueError("a console line cannot contain line ends")
        self.write(line.encode() + b"\r\n")

    def write(self, data: bytes) -> None:
        serial = self._serial
        if serial is None or not self.is_open:
            raise self._gone("nothing: writing", self.text) if self._reader else ConsoleError(
                f"place {self.place}: the console is not open", "power the board and open it")
        try:
            serial.write(data)
        except Exception as exc:
            raise ConsoleError(f"place {self.place}: writing to the console failed: {exc}", "check the port") \
                from None
