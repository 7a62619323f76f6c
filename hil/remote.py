"""Remote places: a place on another host, through `mantra hil serve` over SSH.

The bench host runs nothing permanently: the client opens an SSH session
(paramiko), executes `mantra hil serve` there and speaks line-delimited
JSON over the channel's stdin/stdout. The server holds the place's Target
(its lock is tied to the server's pid: if the link drops and the server
dies, the lock goes stale) and the client proxies lock, power, console,
boot and flash to it:

    > {"id": 1, "op": "open", "place": "qemu-1", "owner": "alice@laptop"}
    < {"id": 1, "ok": true, "result": {...}}
    > {"id": 2, "op": "transition", "place": "qemu-1", "state": "booted"}
    < {"id": 2, "ok": false, "error": {"type": "ConsoleSilent", "message": "...", "hint": "..."}}

The first line the server prints is {"hello": "mantra-hil", "version": 1,
...}. Errors come back with their type name and are raised on the client
as the same class, so a remote infrastructure error is classified exactly
like a local one; a dropped link is a RemoteError (infrastructure).

A bench file names the remote place:

    [places.far-1]
    remote = { host = "bench.lab", port = 22, user = "ci", key = "~/.ssh/id_ed25519",
               known_hosts = "~/.ssh/known_hosts", place = "qemu-1",
               command = "mantra hil serve", bench = "/srv/bench.toml" }
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import socket
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from mantra.hil.bench import Bench, PlaceSpec, load_bench
from mantra.hil.errors import ERROR_TYPES, HilError, RemoteError
from mantra.hil.lock import default_owner

PROTOCOL_VERSION = 1


# --- the server (on the bench host) ---------------------------------------------------------------------


class Server:
    """Serves one client session; every op works on the bench's places."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.targets: dict[str, Any] = {}

    def _target(self, place: str) -> Any:
        try:
            return self.targets[place]
        except KeyError:
            raise HilError(f"place {place} is not open in this session", "send op open first") from None

    @staticmethod
    def _snapshot(target: Any) -> dict[str, Any]:
        s = target.strategy
        return {"state": s.state, "boot_info": s.boot_info, "boot_mark": s.boot_mark, "healthy_ms": s.healthy_ms,
                "flash_report": s.flash_report, "cursor": target.console.cursor}

    def handle(self, request: dict[str, Any]) -> Any:
        op = request.get("op")
        place = request.get("place", "")
        owner = request.get("owner") or default_owner()
        if op == "hello":
            return {"version": PROTOCOL_VERSION, "host": socket.gethostname()}
        if op == "places":
            locks = self.bench.locks()
            return [{"name": spec.name, "kind": spec.kind, "summary": spec.summary(),
                     "lock": (info.describe() if (info := locks.read(spec.name)) else None)}
                    for spec in self.bench.places.values()]
        if op == "lock":
            self.bench.place(place)
            lock = self.bench.locks().acquire(place, owner, wait=float(request.get("wait", 0)),
                                              expires_in=float(request.get("expires_in", 7200)), pid=None)
            return lock.info.describe()
        if op == "unlock":
            self.bench.place(place)
            removed = self.bench.locks().release(place, owner, force=bool(request.get("break")))
            return removed.describe() if removed else None
        if op == "open":
            from mantra.hil.target import Target

            if place in self.targets:
                return self._describe(self.targets[place])
            image = Path(request["image"]) if request.get("image") else None
            target = Target.acquire(self.bench, place, owner=owner, wait=float(request.get("wait", 0)), image=image)
            self.targets[place] = target
            return self._describe(target)
        target = self._target(place)
        if op == "transition":
            target.strategy.transition(request["state"])
            return self._snapshot(target)
        if op == "strategy":
            return self._snapshot(target)
        if op == "power":
            action = request["action"]
            if action not in ("on", "off", "cycle", "get"):
                raise HilError(f"unknown power action {action!r}", "on, off, cycle or get")
            if action == "get":
                return target.power.get()
            if action in ("off", "cycle"):
                target.console.close()
            getattr(target.power, action)()
            target.strategy.force("off" if action == "off" else "unknown")
            return None
        if op == "console_open":
            target.console.open()
            return target.console.mark()
        if op == "send":
            target.console.send(request["line"])
            return None
        if op == "expect":
            start = request.get("start")
            found = target.console.expect(request["pattern"], float(request["timeout"]), start=start)
            return {"start": found.start(), "end": found.end(), "group0": found.group(0), "groups": found.groups(),
                    "cursor": target.console.cursor}
        if op == "text":
            return target.console.text_since(int(request.get("start", 0)))
        if op == "mark":
            return target.console.mark()
        if op == "qemu_pid":
            return target.qemu.qemu_pid() if target.qemu else None
        if op == "close":
            self.targets.pop(place)
            target.close(power_off=request.get("power_off"))
            return None
        raise HilError(f"unknown op {op!r}", "see mantra.hil.remote")

    @staticmethod
    def _describe(target: Any) -> dict[str, Any]:
        return {"board_name": target.board_name, "image_manifest": target.image_manifest,
                "resources": target.describe(), "snapshot": Server._snapshot(target)}

    def close(self) -> None:
        for target in list(self.targets.values()):
            with contextlib.suppress(Exception):
                target.close()
        self.targets.clear()


def serve(bench: Bench, stdin: IO[str], stdout: IO[str]) -> None:
    """Answers requests from `stdin` until it ends; closes every target then."""
    server = Server(bench)

    def reply(message: dict[str, Any]) -> None:
        stdout.write(json.dumps(message) + "\n")
        stdout.flush()

    reply({"hello": "mantra-hil", "version": PROTOCOL_VERSION, "host": socket.gethostname(), "pid": os.getpid(),
           "places": list(bench.places)})
    try:
        for line in stdin:
            if not line.strip():
                continue
            try:
                request = json.loads(line)
            except ValueError as exc:
                reply({"id": None, "ok": False, "error": {"type": "HilError", "message": f"bad request: {exc}",
                                                           "hint": "one JSON object per line"}})
                continue
            try:
                reply({"id": request.get("id"), "ok": True, "result": server.handle(request)})
            except HilError as exc:
                reply({"id": request.get("id"), "ok": False,
                       "error": {"type": type(exc).__name__, "message": exc.message, "hint": exc.hint}})
            except Exception as exc:  # noqa: BLE001 - a bug or a MantraError: sent, not fatal
                from mantra.errors import MantraError

                hint = exc.hint if isinstance(exc, MantraError) else "a bug in mantra hil serve"
                reply({"id": request.get("id"), "ok": False,
                       "error": {"type": type(exc).__name__, "message": str(getattr(exc, "message", exc)),
                                 "hint": hint}})
    finally:
        server.close()


def serve_stdio(bench_path: Path | None) -> None:
    """`mantra hil serve`: the protocol on this process's stdin/stdout;
    anything else that would print to stdout goes to stderr."""
    protocol_out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    bench = load_bench(bench_path)
    serve(bench, sys.stdin, protocol_out)


# --- the client ---------------------------------------------------------------------------------------------------


class RemoteLink:
    """An SSH session running `mantra hil serve` on the bench host."""

    def __init__(self, host: str, *, port: int = 22, user: str | None = None, key: Path | None = None,
                 known_hosts: Path | None = None, command: str = "mantra hil serve", bench: str | None = None,
                 connect_timeout: float = 15.0) -> None:
        import paramiko

        self.where = f"{user + '@' if user else ''}{host}:{port}"
        self.client = paramiko.SSHClient()
        if known_hosts is not None:
            self.client.load_host_keys(str(known_hosts))
        else:
            self.client.load_system_host_keys()
        self.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            self.client.connect(host, port=port, username=user, key_filename=str(key) if key else None,
                                look_for_keys=key is None, allow_agent=key is None, timeout=connect_timeout,
                                banner_timeout=connect_timeout, auth_timeout=connect_timeout)
        except (paramiko.SSHException, OSError) as exc:
            raise RemoteError(f"cannot reach the bench host {self.where} over SSH: {exc}",
                              "check host, port, user, key and known_hosts in the bench file") from None
        full = command + (f" --bench {shlex.quote(bench)}" if bench else "")
        self.channel = self.client.get_transport().open_session()  # type: ignore[union-attr]
        self.channel.exec_command(full)
        self.reader = self.channel.makefile("r")
        self.stderr = bytearray()
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()
        self._next = 0
        self._lock = threading.Lock()
        self.hello = self._read(connect_timeout + 30, "the server's hello")
        if self.hello.get("hello") != "mantra-hil":
            raise RemoteError(f"{self.where}: `{full}` is not mantra hil serve: {self.hello}", "check command")

    def _drain_stderr(self) -> None:
        """Keeps the server's stderr (quoted when the link fails) without ever blocking it."""
        with contextlib.suppress(Exception):
            while True:
                if self.channel.recv_stderr_ready():
                    self.stderr.extend(self.channel.recv_stderr(4096))
                    del self.stderr[:-65536]
                elif self.channel.exit_status_ready() or self.channel.closed:
                    break
                else:
                    time.sleep(0.05)

    def _read(self, timeout: float, what: str) -> dict[str, Any]:
        self.channel.settimeout(timeout)
        try:
            line = self.reader.readline()
        except (socket.timeout, TimeoutError):
            raise RemoteError(f"{self.where}: no answer to {what} within {timeout:g} s", "is the bench host busy?") \
                from None
        except Exception as exc:  # noqa: BLE001 - paramiko raises several types
            raise RemoteError(f"{self.where}: the SSH link failed while waiting for {what}: {exc}", "retry") from None
        if not line:
            said = self.stderr.decode(errors="replace").strip()[-2000:]
            raise RemoteError(f"{self.where}: the bench host closed the session while we waited for {what}"
                              + (f"; it said:\n{said}" if said else ""),
                              "is mantra installed there (remote command)? the run is retried if retries are left")
        try:
            return json.loads(line)
        except ValueError:
            raise RemoteError(f"{self.where}: not a protocol line: {line[:200]!r}", "check the remote command") \
                from None

    def call(self, op: str, wait: float = 60.0, /, **args: Any) -> Any:
        """Sends one request and returns its result (raises the error the
        server sent as its own type); `wait` bounds the wait for the answer."""
        with self._lock:
            self._next += 1
            ident = self._next
            try:
                self.channel.sendall((json.dumps({"id": ident, "op": op, **args}) + "\n").encode())
            except Exception as exc:  # noqa: BLE001
                raise RemoteError(f"{self.where}: sending {op} failed: {exc}", "retry") from None
            while True:
                answer = self._read(wait, f"{op}")
                if answer.get("id") == ident:
                    break
        if answer.get("ok"):
            return answer.get("result")
        error = answer.get("error") or {}
        cls = ERROR_TYPES.get(error.get("type", ""), HilError)
        message = f"{error.get('message', 'unknown error')} (on {self.where})"
        raise cls(message, error.get("hint"))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.channel.shutdown_write()  # the server sees the end of its stdin and closes its places
        with contextlib.suppress(Exception):
            deadline = time.monotonic() + 15
            while not self.channel.exit_status_ready() and time.monotonic() < deadline:
                time.sleep(0.05)
        with contextlib.suppress(Exception):
            self.reader.close()
        with contextlib.suppress(Exception):
            self.client.close()


def link_for(bench: Bench, spec: PlaceSpec) -> RemoteLink:
    r = spec.remote or {}

    def path(key: str) -> Path | None:
        return bench.resolve(r[key]) if r.get(key) else None

    return RemoteLink(r["host"], port=int(r.get("port", 22)), user=r.get("user"), key=path("key"),
                      known_hosts=path("known_hosts"), command=r.get("command", "mantra hil serve"),
                      bench=r.get("bench"))


def remote_place(spec: PlaceSpec) -> str:
    return (spec.remote or {}).get("place", spec.name)


class _Match:
    """The client's view of a remote re.Match."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def start(self) -> int:
        return self._data["start"]

    def end(self) -> int:
        return self._data["end"]

    def group(self, index: int = 0) -> str | None:
        return self._data["group0"] if index == 0 else self._data["groups"][index - 1]

    def groups(self) -> tuple[Any, ...]:
        return tuple(self._data["groups"])

    def __getitem__(self, index: int) -> str | None:
        return self.group(index)


class RemoteConsole:
    def __init__(self, target: RemoteTarget) -> None:
        self.target = target
        self.place = target.name
        self.cursor = 0

    def _call(self, op: str, wait: float = 60.0, /, **args: Any) -> Any:
        return self.target.link.call(op, wait, place=self.target.remote_name, **args)

    def expect(self, pattern: str | re.Pattern[str], timeout: float, *, start: int | None = None) -> _Match:
        text = pattern.pattern if isinstance(pattern, re.Pattern) else pattern
        found = self._call("expect", timeout + 30, pattern=text, timeout=timeout, start=start)
        self.cursor = found["cursor"]
        return _Match(found)

    def send(self, line: str) -> None:
        self._call("send", line=line)

    def open(self) -> None:
        self._call("console_open")

    def mark(self) -> int:
        return self._call("mark")

    def text_since(self, start: int) -> str:
        return self._call("text", start=start)

    @property
    def text(self) -> str:
        return self.text_since(0)


class RemoteStrategy:
    def __init__(self, target: RemoteTarget, snapshot: dict[str, Any]) -> None:
        self.target = target
        self._update(snapshot)

    def _update(self, snapshot: dict[str, Any]) -> None:
        self.state = snapshot["state"]
        self.boot_info = snapshot["boot_info"]
        self.boot_mark = snapshot["boot_mark"]
        self.healthy_ms = snapshot["healthy_ms"]
        self.flash_report = snapshot["flash_report"]

    def transition(self, state: str, timeout: float = 900.0) -> None:
        try:
            snapshot = self.target.link.call("transition", timeout, place=self.target.remote_name, state=state)
        except HilError:
            self.state = "unknown"
            raise
        self._update(snapshot)
        self.target.console.cursor = snapshot["cursor"]


class RemotePower:
    def __init__(self, target: RemoteTarget) -> None:
        self.target = target

    def _call(self, action: str) -> Any:
        result = self.target.link.call("power", 120, place=self.target.remote_name, action=action)
        if action != "get":
            self.target.strategy.state = "off" if action == "off" else "unknown"
        return result

    def on(self) -> None:
        self._call("on")

    def off(self) -> None:
        self._call("off")

    def cycle(self) -> None:
        self._call("cycle")

    def get(self) -> bool | None:
        return self._call("get")


class RemoteTarget:
    """A place on a bench host, used as a local Target is (console, power, strategy)."""

    def __init__(self, bench: Bench, spec: PlaceSpec, link: RemoteLink, opened: dict[str, Any]) -> None:
        self.bench = bench
        self.spec = spec
        self.name = spec.name
        self.remote_name = remote_place(spec)
        self.link = link
        self.board_name = opened["board_name"]
        self.image_manifest = opened["image_manifest"]
        self.resources = opened["resources"]
        self.console = RemoteConsole(self)
        self.power = RemotePower(self)
        self.strategy = RemoteStrategy(self, opened["snapshot"])
        self.state_dir = bench.state_dir / spec.name
        self.closed = False

    @classmethod
    def connect(cls, bench: Bench, spec: PlaceSpec, *, owner: str | None = None, wait: float = 0.0,
                image: Path | None = None) -> RemoteTarget:
        """Opens the place on its bench host; `image` is a path there."""
        link = link_for(bench, spec)
        try:
            opened = link.call("open", wait + 60, place=remote_place(spec), owner=owner or default_owner(), wait=wait,
                               image=str(image) if image else None)
        except BaseException:
            link.close()
            raise
        return cls(bench, spec, link, opened)

    def describe(self) -> dict[str, str]:
        return {"remote": self.link.where, **self.resources}

    def console_log_path(self) -> Path:
        """A local copy of the remote console (refreshed on every call)."""
        path = self.state_dir / "console.log"
        with contextlib.suppress(HilError):
            self.state_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(self.console.text)
        return path

    def qemu_pid(self) -> int | None:
        return self.link.call("qemu_pid", place=self.remote_name)

    def close(self, *, power_off: bool | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.console_log_path()
            self.link.call("close", 60, place=self.remote_name, power_off=power_off)
        except HilError:
            pass
        finally:
            self.link.close()

    def __enter__(self) -> RemoteTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
