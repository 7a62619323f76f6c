"""Errors the user can act on.

Every failure the user can fix (a bad board name, a Kconfig value that does
not hold, a missing tool, a failed cargo build) is raised as a `MantraError`
carrying what went wrong and what to try. The CLI prints both and exits with
status 1, without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MantraError(Exception):
    """A failure the user can act on: `message` says what went wrong, `hint`
    what to try."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message}\ntry: {self.hint}"
