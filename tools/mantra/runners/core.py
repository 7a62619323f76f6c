"""Board runners: one base class for every way of booting a board.

As Zephyr's west runners: each back end (QEMU today; a serial/USB flasher
and a HIL bench later) subclasses `BoardRunner`, declares what it can do in
`RunnerCaps`, and is found by the name a board's board.toml gives as
`runner`. External programs run through mantra.proc.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from mantra.board import Board
from mantra.errors import MantraError

if TYPE_CHECKING:
    from mantra.runners.console_socket import ConsoleSession

# Exit status of `mantra run --headless` when the timeout ends the run, as timeout(1).
TIMEOUT_EXIT_STATUS = 124


@dataclass(frozen=True)
class RunnerCaps:
    """What a runner supports beyond booting an image."""

    # Deterministic instruction counting (QEMU -icount): guest time = instructions.
    icount: bool = False
    # An emulated TPM 2.0 for the run (`--tpm`), on boards that describe one.
    tpm: bool = False
    # The console on a local TCP socket (`--console-port`, console_session()).
    console_socket: bool = False


@dataclass(frozen=True)
class BootResult:
    """How a headless boot ended.

    `exit_code` is the runner's exit status (for QEMU, (v << 1) | 1 when the
    guest wrote v to isa-debug-exit), or None when the run was stopped: by
    the timeout (`timed_out`), or because the console printed `until`
    (`matched`). `console_text` is everything the console printed.
    """

    exit_code: int | None
    console_text: str
    timed_out: bool
    matched: bool
    log: Path

    @property
    def status(self) -> int:
        """One exit status for the whole run: the runner's, 0 when `until`
        matched, TIMEOUT_EXIT_STATUS on timeout."""
        if self.timed_out:
            return TIMEOUT_EXIT_STATUS
        if self.matched:
            return 0
        assert self.exit_code is not None
        return self.exit_code


@contextmanager
def signals_end_the_run() -> Iterator[None]:
    """While a board runs, SIGTERM and SIGHUP raise SystemExit like Ctrl-C
    raises KeyboardInterrupt, so the runner's cleanup (stopping QEMU, then
    swtpm) runs instead of the process vanishing and leaving them behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def end(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {number: signal.signal(number, end) for number in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


class BoardRunner(ABC):
    """Boots `image` on `board`, configured as `config` (resolved Kconfig
    values, name -> value). `work_dir` holds the runner's per-image state
    (firmware variables, TPM state, console log)."""

    name: ClassVar[str]
    capabilities: ClassVar[RunnerCaps] = RunnerCaps()

    def __init__(self, board: Board, config: Mapping[str, str], image: Path, work_dir: Path) -> None:
        self.board = board
        self.config = config
        self.image = image
        self.work_dir = work_dir

    @property
    def tpm_state_dir(self) -> Path:
        """This image's TPM state (`--tpm`), kept across runs like its
        firmware variables: NV indices survive reboots."""
        return self.work_dir / "tpm"

    def run_interactive(self, *, icount: bool = False, tpm: bool = False) -> int:
        """Boots with the console on this terminal until the user quits;
        returns the exit status. With `tpm`, the board has a TPM 2.0."""
        self._check_caps(icount, tpm)
        with signals_end_the_run():
            return self.do_run_interactive(icount=icount, tpm=tpm)

    def run_headless(self, *, timeout: float | None, icount: bool = False, until: str | None = None,
                     echo: bool = False, tpm: bool = False) -> BootResult:
        """Boots with the console captured to `work_dir`/console.log (and
        echoed to stdout with `echo`); stops after `timeout` seconds, or as
        soon as the console prints a line holding `until`. With `tpm`, the
        board has a TPM 2.0."""
        self._check_caps(icount, tpm)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with signals_end_the_run():
            return self.do_run_headless(timeout=timeout, icount=icount, until=until, echo=echo, tpm=tpm)

    def run_console_port(self, *, port: int, icount: bool = False, tpm: bool = False,
                         timeout: float | None = None) -> int:
        """Boots with the console on 127.0.0.1:`port` (a pyserial URL
        `socket://127.0.0.1:PORT`) instead of this terminal; the board
        starts once a program connects, so nothing it prints is lost. Runs
        until the board stops, or `timeout` seconds (exit status 124)."""
        self._check_caps(icount, tpm, console_socket=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with signals_end_the_run():
            return self.do_run_console_port(port=port, icount=icount, tpm=tpm, timeout=timeout)

    @contextmanager
    def console_session(self, *, icount: bool = False, tpm: bool = False, port: int | None = None,
                        connect_timeout: float = 60) -> Iterator[ConsoleSession]:
        """Boots the board with its console on a local socket (a free port
        unless `port` is given), connects to it and yields the session
        (runners/console_socket.py); the console is also written to
        `work_dir`/console.log. Leaving the block stops the board (and its
        TPM)."""
        self._check_caps(icount, tpm, console_socket=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with signals_end_the_run(), self.do_console_session(icount=icount, tpm=tpm, port=port,
                                                             connect_timeout=connect_timeout) as session:
            yield session

    def do_run_console_port(self, *, port: int, icount: bool, tpm: bool, timeout: float | None) -> int:
        """Back end of run_console_port (capabilities already checked, work_dir exists)."""
        raise MantraError(f"the {self.name} runner cannot put the console on a socket", "run without --console-port")

    def do_console_session(self, *, icount: bool, tpm: bool, port: int | None,
                           connect_timeout: float) -> contextlib.AbstractContextManager[ConsoleSession]:
        """Back end of console_session."""
        raise MantraError(f"the {self.name} runner cannot put the console on a socket", "use another board")

    def _check_caps(self, icount: bool, tpm: bool = False, console_socket: bool = False) -> None:
        if console_socket and not self.capabilities.console_socket:
            raise MantraError(f"the {self.name} runner of board {self.board.name} cannot put the console on a socket",
                              "run without --console-port")
        if icount and not self.capabilities.icount:
            raise MantraError(f"the {self.name} runner of board {self.board.name} cannot count instructions",
                              "run without --icount")
        if tpm and not self.capabilities.tpm:
            raise MantraError(f"the {self.name} runner of board {self.board.name} cannot provide a TPM",
                              "run without --tpm")

    @abstractmethod
    def do_run_interactive(self, *, icount: bool, tpm: bool) -> int:
        """Back end of run_interactive (capabilities already checked)."""

    @abstractmethod
    def do_run_headless(self, *, timeout: float | None, icount: bool, until: str | None, echo: bool,
                        tpm: bool) -> BootResult:
        """Back end of run_headless (capabilities already checked, work_dir exists)."""
