"""Typed reading of the TOML data files (board.toml, product.toml): a missing
key or a value of the wrong type is an error naming the file and the key."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from mantra.errors import MantraError

_REQUIRED: Any = object()
"""Default of a key that must be present."""


class Table:
    """One TOML table of `file`; `prefix` is its dotted path, for messages."""

    def __init__(self, data: dict[str, Any], file: Path, prefix: str = "") -> None:
        self._data = data
        self.file = file
        self._prefix = prefix

    @classmethod
    def load(cls, file: Path) -> Table:
        try:
            with file.open("rb") as stream:
                return cls(tomllib.load(stream), file)
        except OSError as exc:
            raise MantraError(f"cannot read {file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise MantraError(f"{file}: invalid TOML: {exc}", "fix the syntax of the file") from None

    def _key(self, key: str) -> str:
        return f"{self._prefix}{key}"

    def _get(self, key: str, kind: type | tuple[type, ...], kind_name: str, default: Any = _REQUIRED) -> Any:
        if key not in self._data:
            if default is not _REQUIRED:
                return default
            raise MantraError(f"{self.file}: missing key `{self._key(key)}` ({kind_name})", "add it to the file")
        value = self._data[key]
        # bool is an int in Python; a TOML boolean is never a valid int here.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise MantraError(
                f"{self.file}: `{self._key(key)}` must be {kind_name}, not {value!r}", "fix the value in the file"
            )
        return value

    def string(self, key: str, default: Any = _REQUIRED) -> Any:
        return self._get(key, str, "a string", default)

    def integer(self, key: str, *, minimum: int = 0, default: Any = _REQUIRED) -> Any:
        value = self._get(key, int, "an integer", default)
        if value is not None and value < minimum:
            raise MantraError(f"{self.file}: `{self._key(key)}` must be at least {minimum}, not {value}")
        return value

    def boolean(self, key: str, default: Any = _REQUIRED) -> Any:
        return self._get(key, bool, "true or false", default)

    def strings(self, key: str, default: Any = _REQUIRED) -> Any:
        value = self._get(key, list, "a list of strings", default)
        if value is not None and not all(isinstance(item, str) for item in value):
            raise MantraError(f"{self.file}: `{self._key(key)}` must be a list of strings")
        return value

    def check_keys(self, allowed: tuple[str, ...], what: str) -> None:
        """An error naming the first key that is not in `allowed` (a typo would otherwise be ignored)."""
        for key in self._data:
            if key not in allowed:
                raise MantraError(f"{self.file}: {what}: unknown key `{self._key(key)}` (keys: {', '.join(allowed)})",
                                  "fix or remove it")

    def has(self, key: str) -> bool:
        return key in self._data

    def table(self, key: str) -> Table:
        return Table(self._get(key, dict, "a table"), self.file, f"{self._key(key)}.")

    def tables(self, key: str) -> list[Table]:
        """An array of tables (`[[key]]`), empty when absent."""
        items = self._get(key, list, "an array of tables", [])
        if not all(isinstance(item, dict) for item in items):
            raise MantraError(f"{self.file}: `{self._key(key)}` must be an array of tables ([[{key}]])")
        return [Table(item, self.file, f"{self._key(key)}[{i}].") for i, item in enumerate(items)]
