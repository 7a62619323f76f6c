"""What can go wrong on a bench, split the way a test report needs it.

A test *fails* when the system under test misbehaves: it printed something
other than what the test expects, a service did not restart, a boot was
refused. The *infrastructure* fails when the bench cannot do its part: the
board did not power, the console stayed silent, QEMU was killed, the place
is locked by someone else, the SSH link to the bench host dropped. Only
infrastructure errors are retried, and reports count the two apart.

Every error is a `MantraError` (what went wrong, what to try), so the CLI
prints it without a traceback.
"""

from __future__ import annotations

from mantra.errors import MantraError


class HilError(MantraError):
    """Base of the bench's errors."""

    #: "infra" (the bench failed: retried) or "failure" (the system under test failed).
    kind = "infra"


class InfraError(HilError):
    """The bench could not do its part; the test result says nothing about the system under test."""

    kind = "infra"


class LockHeld(InfraError):
    """The place is locked by another owner."""


class PowerError(InfraError):
    """The board did not power on or off (switch unreachable, QEMU did not start)."""


class ConsoleError(InfraError):
    """The console port cannot be opened, or vanished (USB adapter unplugged)."""


class ConsoleSilent(InfraError):
    """The console printed nothing at all while a test waited on it."""


class BoardGone(InfraError):
    """The board stopped without the bench stopping it: QEMU killed, power lost."""


class FlashError(InfraError):
    """The flasher could not write the board (tool missing, transfer failed)."""


class RemoteError(InfraError):
    """The bench host could not be reached or dropped the link."""


class NoSuchResource(InfraError):
    """A USB device or port the bench file names is not there."""


class TestFailure(HilError, AssertionError):
    """The system under test did not do what the test expects."""

    __test__ = False  # not a pytest test class
    kind = "failure"


class ExpectTimeout(TestFailure):
    """The console printed output, but not the expected line, before the timeout."""


class BoardStopped(TestFailure):
    """The board stopped by itself (QEMU exited: a guest shutdown or a triple fault)."""


class BenchFileError(HilError):
    """The bench file is malformed (not retried: fix the file)."""

    kind = "error"


# Every error type by name, for errors that cross the SSH link (remote.py).
ERROR_TYPES: dict[str, type[HilError]] = {
    cls.__name__: cls
    for cls in (HilError, InfraError, LockHeld, PowerError, ConsoleError, ConsoleSilent, BoardGone, FlashError,
                RemoteError, NoSuchResource, TestFailure, ExpectTimeout, BoardStopped, BenchFileError)
}
