"""The one place that runs external programs (cargo, mtools, QEMU, pytest).

Every call names what it is doing (`what`) and what the user should try if
it fails (`hint`), so a failure surfaces as a `MantraError` the CLI can print
without a traceback. With `mantra -v` each command line is echoed first.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from mantra.console import err
from mantra.errors import MantraError

Command = Sequence[str | os.PathLike[str]]

_verbose = False


def set_verbose(enabled: bool) -> None:
    """Echo every command before running it (the CLI's `--verbose`)."""
    global _verbose
    _verbose = enabled


def require_tool(tool: str, package: str) -> str:
    """Absolute path of `tool` (a name looked up on PATH, or a path); raises
    a `MantraError` naming the Debian `package` that provides it (several
    packages: separated by spaces)."""
    found = shutil.which(tool)
    if found is None:
        several = " " in package.strip()
        what = f"packages {package} (./mantra installs them)" if several else f"package {package} (./mantra installs it)"
        raise MantraError(f"{tool} not found", f"install the Debian {what}, or put {tool} on PATH")
    return found


def _prepare(cmd: Command, env: Mapping[str, str] | None, cwd: Path | None) -> tuple[list[str], dict[str, str]]:
    argv = [os.fspath(arg) for arg in cmd]
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    if _verbose:
        parts = ["$"]
        if cwd:
            parts.append(f"(cd {shlex.quote(str(cwd))})")
        parts += [f"{key}={shlex.quote(value)}" for key, value in (env or {}).items()]
        parts.append(shlex.join(argv))
        err.print(" ".join(parts), style="dim", markup=False, soft_wrap=True)
    return argv, full_env


def run(
    cmd: Command,
    *,
    what: str,
    hint: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    capture: bool = False,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Runs `cmd` to completion.

    `env` adds to (or overrides) the current environment. With `capture`,
    stdout and stderr are returned as text instead of going to the terminal.
    With `check`, a non-zero exit raises a `MantraError` "`what` failed"
    (with the captured stderr, if any) and `hint`.
    """
    argv, full_env = _prepare(cmd, env, cwd)
    try:
        completed = subprocess.run(
            argv,
            cwd=cwd,
            env=full_env,
            text=True,
            stdin=subprocess.DEVNULL if capture else None,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
        )
    except FileNotFoundError as exc:
        raise MantraError(f"{what}: cannot run {argv[0]}: {exc.strerror}", hint) from None
    if check and completed.returncode != 0:
        detail = ""
        if capture and completed.stderr.strip():
            detail = ":\n" + completed.stderr.strip()
        raise MantraError(f"{what} failed (exit status {completed.returncode}){detail}", hint)
    return completed


def start(
    cmd: Command,
    *,
    what: str,
    hint: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    interactive: bool = False,
    output: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Starts `cmd` in the background with its stdout piped (binary), for
    callers that watch its output while it runs (QEMU). Its stdin is closed
    and its stderr piped too, unless `interactive`: then it reads this
    terminal and writes its errors to it. With `output`, a helper daemon
    nobody watches (swtpm): its stdout and stderr go to that file instead."""
    argv, full_env = _prepare(cmd, env, cwd)
    try:
        if output is not None:
            with output.open("wb") as log:
                return subprocess.Popen(argv, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT)
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=full_env,
            stdin=None if interactive else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=None if interactive else subprocess.PIPE,
        )
    except (FileNotFoundError, PermissionError) as exc:
        raise MantraError(f"{what}: cannot run {argv[0]}: {exc.strerror}", hint) from None


def stop(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Ends a process `start` (or Popen) started: SIGTERM, then SIGKILL if it
    lingers past `grace` seconds; reaps it. A process that already ended is
    only reaped."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
