"""Place locks: one file per place on the bench host, no coordinator daemon.

    locks = LockDir(Path("/var/lock/mantra-hil"))
    with locks.acquire("qemu-1", owner="alice@ci-7", expires_in=3600):
        ...  # nobody else gets qemu-1 until the block ends

A lock is the file `<dir>/<place>.lock` holding JSON: owner, host, pid (the
process that holds it, or null for a lock taken by `mantra hil lock` that
lives until `unlock` or its expiry), acquired and expires (Unix time). It
is created atomically (written to a temporary file, then hard-linked to its
name: link fails if the name exists), so two owners never both get it.

A lock is *stale* when it expired, or when its pid is on this host and no
longer runs; `acquire` takes a stale lock over (and says so), `unlock
--break` removes any lock, and without --break `unlock` refuses a live lock
of another owner. `status` shows every lock as it is on disk: nothing is
hidden in a daemon's memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from mantra.hil.errors import HilError, LockHeld

# How long a lock taken by a run lives unless refreshed.
DEFAULT_EXPIRY = 3600.0


def default_owner() -> str:
    """`MANTRA_HIL_OWNER`, else user@host."""
    if owner := os.environ.get("MANTRA_HIL_OWNER"):
        return owner
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def pid_alive(pid: int) -> bool:
    """True while process `pid` exists on this host and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


@dataclass(frozen=True)
class LockInfo:
    place: str
    owner: str
    host: str
    pid: int | None
    acquired: float
    expires: float
    token: str

    def stale_reason(self, now: float | None = None) -> str | None:
        """Why this lock no longer counts (None: it is live)."""
        now = time.time() if now is None else now
        if now >= self.expires:
            return f"expired {now - self.expires:.0f} s ago"
        if self.pid is not None and self.host == socket.gethostname() and not pid_alive(self.pid):
            return f"its process {self.pid} on {self.host} is gone"
        return None

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        holder = f"{self.owner} (host {self.host}" + (f", pid {self.pid}" if self.pid is not None else "") + ")"
        stale = self.stale_reason(now)
        state = f"stale: {stale}" if stale else f"expires in {self.expires - now:.0f} s"
        return f"locked by {holder} since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.acquired))}, {state}"


class PlaceLock:
    """A lock this process holds (or borrows: the owner already held it)."""

    def __init__(self, locks: LockDir, info: LockInfo, borrowed: bool) -> None:
        self.locks = locks
        self.info = info
        self.borrowed = borrowed
        self.released = False
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None
        self._mutex = threading.Lock()  # refresh and release never interleave

    def refresh(self, expires_in: float = DEFAULT_EXPIRY) -> None:
        """Pushes the expiry `expires_in` seconds from now (long runs call it)."""
        with self._mutex:
            self._refresh(expires_in)

    def _refresh(self, expires_in: float) -> None:
        if self.borrowed or self.released:
            return
        current = self.locks.read(self.info.place)
        if current is None or current.token != self.info.token:
            raise LockHeld(f"place {self.info.place}: our lock was broken" +
                           (f"; it is now {current.describe()}" if current else ""),
                           "someone ran `mantra hil unlock --break`: coordinate before retrying")
        self.info = LockInfo(**{**asdict(self.info), "expires": time.time() + expires_in})
        # (A --break landing between the read above and this replace is
        # overwritten: breaking a live lock is a manual override anyway.)
        self.locks._write(self.info, replace=True)

    def keep_alive(self, every: float = 300.0, expires_in: float = DEFAULT_EXPIRY) -> None:
        """Refreshes the lock every `every` seconds until it is released
        (a run longer than the expiry keeps its place); a broken lock stops it."""
        if self.borrowed or self._keeper is not None:
            return

        def keep() -> None:
            while not self._stop.wait(every):
                try:
                    self.refresh(expires_in)
                except Exception:  # noqa: BLE001 - broken: the next transition's refresh says so
                    return

        self._keeper = threading.Thread(target=keep, name=f"lock {self.info.place}", daemon=True)
        self._keeper.start()

    def release(self) -> None:
        self._stop.set()
        with self._mutex:
            if self.borrowed or self.released:
                return
            self.released = True
            self.locks._remove_if(self.info.place, self.info.token)

    def __enter__(self) -> PlaceLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class LockDir:
    """The lock files of one bench host."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, place: str) -> Path:
        return self.directory / f"{place}.lock"

    def read(self, place: str) -> LockInfo | None:
        try:
            data = json.loads(self.path(place).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            # A half-written file cannot exist (atomic link), so this is damage: treat it as stale.
            return LockInfo(place, f"<unreadable lock file: {exc}>", "?", None, 0.0, 0.0, "")
        return LockInfo(**{key: data.get(key) for key in LockInfo.__dataclass_fields__})

    def status(self, places: list[str]) -> dict[str, LockInfo | None]:
        return {place: self.read(place) for place in places}

    def _write(self, info: LockInfo, *, replace: bool = False) -> bool:
        """Creates the lock file atomically; False if it exists (unless `replace`)."""
        if not self.directory.is_dir():
            self.directory.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                os.chmod(self.directory, 0o1777)  # a shared bench host: anyone may lock (sticky, as /tmp)
        temporary = self.directory / f".{info.place}.{info.token}.{os.getpid()}.tmp"
        temporary.write_text(json.dumps(asdict(info), indent=1) + "\n")
        try:
            if replace:
                os.replace(temporary, self.path(info.place))
                return True
            try:
                os.link(temporary, self.path(info.place))
            except FileExistsError:
                return False
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()

    def _remove_if(self, place: str, token: str) -> bool:
        """Removes the lock only if it is still the one with `token` (a
        rename first, so a lock taken meanwhile by someone else survives)."""
        current = self.read(place)
        if current is None or current.token != token:
            return False
        aside = self.directory / f".{place}.{uuid.uuid4().hex}.removed"
        try:
            os.rename(self.path(place), aside)
        except FileNotFoundError:
            return False
        moved = self.read_file(aside)
        if moved is not None and moved.token != token:
            # Someone replaced it between our read and our rename: put theirs back.
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path(place))
        aside.unlink()
        return True

    @staticmethod
    def read_file(path: Path) -> LockInfo | None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return LockInfo(**{key: data.get(key) for key in LockInfo.__dataclass_fields__})

    def try_acquire(self, place: str, owner: str, *, expires_in: float = DEFAULT_EXPIRY,
                    pid: int | None = None, notes: list[str] | None = None) -> PlaceLock | LockInfo:
        """One attempt: the PlaceLock, or the live lock that stands in the way."""
        for _ in range(20):
            now = time.time()
            info = LockInfo(place, owner, socket.gethostname(), pid, now, now + expires_in, uuid.uuid4().hex)
            if self._write(info):
                return PlaceLock(self, info, borrowed=False)
            current = self.read(place)
            if current is None:
                continue  # released meanwhile: try again
            if current.owner == owner and current.stale_reason() is None:
                return PlaceLock(self, current, borrowed=True)
            if reason := current.stale_reason():
                if self._remove_if(place, current.token) and notes is not None:
                    notes.append(f"place {place}: took over a stale lock of {current.owner} ({reason})")
                continue
            return current
        raise HilError(f"place {place}: the lock file {self.path(place)} keeps changing", "try again")

    def acquire(self, place: str, owner: str, *, wait: float = 0.0, expires_in: float = DEFAULT_EXPIRY,
                pid: int | None = None, notes: list[str] | None = None) -> PlaceLock:
        """Locks `place` for `owner`, waiting up to `wait` seconds for a
        live lock of another owner to go; raises LockHeld otherwise. `pid`
        ties the lock to a process (it goes stale when that process ends);
        None makes it live until unlock or expiry."""
        deadline = time.monotonic() + wait
        delay = 0.05
        while True:
            got = self.try_acquire(place, owner, expires_in=expires_in, pid=pid, notes=notes)
            if isinstance(got, PlaceLock):
                return got
            if time.monotonic() >= deadline:
                raise LockHeld(f"place {place} is {got.describe()}",
                               f"wait for {got.owner} to finish (or --wait S); if that lock is stale: "
                               f"mantra hil unlock {place} --break")
            time.sleep(min(delay, max(deadline - time.monotonic(), 0.01)))
            delay = min(delay * 2, 1.0)

    def release(self, place: str, owner: str, *, force: bool = False) -> LockInfo | None:
        """`mantra hil unlock`: removes the lock if `owner` holds it, or it
        is stale, or `force` (--break). Returns the removed lock (None: there
        was none); raises LockHeld for a live lock of another owner."""
        current = self.read(place)
        if current is None:
            return None
        if current.owner != owner and not force:
            stale = current.stale_reason()
            raise LockHeld(f"place {place} is {current.describe()}; not yours to unlock",
                           f"mantra hil unlock {place} --break (it is {'stale' if stale else 'live: tell ' + current.owner})")
        if not self._remove_if(place, current.token):
            return self.release(place, owner, force=force)
        return current

    @contextlib.contextmanager
    def held(self, place: str, owner: str, **kwargs: object) -> Iterator[PlaceLock]:
        lock = self.acquire(place, owner, **kwargs)  # type: ignore[arg-type]
        try:
            yield lock
        finally:
            lock.release()
