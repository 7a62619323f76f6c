"""`mantra docs`: the syscall reference rendered from the ABI crate's doc
comments — every syscall gets a section, and a doc comment that breaks the
fixed form is an error naming the file, line and syscall."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from mantra import syscall_docs
from mantra.cli import app
from mantra.syscall_docs import DocError
from mantra.workspace import Workspace
from support import ROOT
from typer.testing import CliRunner

ABI = ROOT / "mantra-os" / "abi" / "src" / "lib.rs"


def abi_constants() -> dict[str, int]:
    """The syscall constants of `pub mod nr`, read independently of the renderer."""
    text = ABI.read_text()
    body = text[text.index("pub mod nr {"):]
    body = body[: body.index("\n}\n")]
    found = dict((name, int(n)) for name, n in re.findall(r"pub const (\w+): u64 = (\d+);", body))
    found.pop("COUNT")
    return found


def invoke(workspace: Workspace, *args: str):
    return CliRunner().invoke(app, ["--workspace", str(workspace.root), *args])


def broken_abi(tmp_path: Path, old: str, new: str) -> Path:
    text = ABI.read_text()
    assert old in text, old
    path = tmp_path / "lib.rs"
    path.write_text(text.replace(old, new, 1))
    return path


def test_reserved_numbers_are_rendered_and_cannot_be_defined(tmp_path: Path) -> None:
    abi = syscall_docs.parse(ABI)
    text = syscall_docs.render(abi)
    for number in abi.reserved:
        assert f"| {number} | *reserved* |" in text
    # A number both defined and reserved is refused.
    text = ABI.read_text()
    declared = re.search(r"pub const RESERVED: &\[u64\] = &\[([\d, ]*)\];", text)
    if declared:
        path = broken_abi(tmp_path, declared[0], f"pub const RESERVED: &[u64] = &[{declared[1]}, 0];".replace("[, ", "["))
        with pytest.raises(syscall_docs.DocError, match=r"syscall numbers \[0\] are also RESERVED"):
            syscall_docs.parse(path)


def test_every_syscall_is_rendered_with_its_sections() -> None:
    abi = syscall_docs.parse(ABI)
    constants = abi_constants()
    assert {s.name: s.number for s in abi.syscalls} == constants
    text = syscall_docs.render(abi)
    for name, number in constants.items():
        section = text[text.index(f"## {number} · `{name}`"):]
        section = section[: section.find("\n## ", 1) if "\n## " in section[1:] else len(section)]
        for label in ("**Arguments:**", "**Rights:**", "**Returns:**", "**Errors:**"):
            assert label in section, (name, label)
        assert f"[`{name}`](#{name.lower()})" in text
    # Errors carry the meaning of the Error enum and the syscall's own note.
    duplicate = text[text.index("## 3 · `HANDLE_DUPLICATE`"):text.index("## 4 · `HANDLE_REVOKE`")]
    assert "| `ACCESS_DENIED` | 3 | The capability lacks a right the call needs" in duplicate
    assert "*Here: no DUPLICATE, or rights not a subset.*" in duplicate
    # Arguments are listed with their registers.
    assert "| R10 | `deadline` | ns of CLOCK_GET, u64::MAX: none |" in text


def test_errors_by_reference_are_resolved() -> None:
    abi = syscall_docs.parse(ABI)
    calls = {s.name: s for s in abi.syscalls}
    names = lambda call: [e.name for e in calls[call].errors]  # noqa: E731
    assert set(names("CHANNEL_CALL")) == set(names("CHANNEL_WRITE")) | set(names("CHANNEL_READ")) | {"TIMED_OUT"}
    assert set(names("CHANNEL_RECEIVE")) == set(names("CHANNEL_READ")) - {"SHOULD_WAIT"}
    assert names("PROCESS_EXIT") == [] and calls["CLOCK_GET"].arguments == []


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("    /// Errors: BAD_HANDLE, ACCESS_DENIED.\n    pub const HANDLE_REVOKE",
         "    pub const HANDLE_REVOKE", r"lib\.rs:\d+: syscall HANDLE_REVOKE lacks the `Errors:` section"),
        ("    /// Rights: none (every process may end itself).\n", "",
         r"syscall PROCESS_EXIT lacks the `Rights:` section"),
        ("/// Errors: BAD_HANDLE.\n    pub const HANDLE_CLOSE", "/// Errors: BAD_HANDEL.\n    pub const HANDLE_CLOSE",
         r"syscall HANDLE_CLOSE: unknown error 'BAD_HANDEL'"),
        ("/// Errors: as CHANNEL_READ, except SHOULD_WAIT.", "/// Errors: as CHANNEL_REED, except SHOULD_WAIT.",
         r"syscall CHANNEL_RECEIVE: `Errors:` refers to unknown syscall 'CHANNEL_REED'"),
        ("    /// Closes a handle; the object dies with its last handle.\n    ///\n", "",
         r"syscall HANDLE_CLOSE: the doc comment has no summary"),
        ("/// Arguments: `handle`, `info` (out: HandleInfo).", "/// Arguments: handle, `info` (out: HandleInfo).",
         r"syscall HANDLE_INFO: argument 'handle' is not of the form"),
        ("pub const CLOCK_GET: u64 = 35;", "pub const CLOCK_GET: u64 = 34;",
         r"syscalls LOG_READ, CLOCK_GET share number 34"),
    ],
)
def test_malformed_doc_comments_are_reported(tmp_path: Path, old: str, new: str, message: str) -> None:
    path = broken_abi(tmp_path, old, new)
    with pytest.raises(DocError, match=message) as caught:
        syscall_docs.parse(path)
    assert caught.value.hint  # says what to do


def test_a_syscall_without_doc_comment_is_reported(tmp_path: Path) -> None:
    path = broken_abi(tmp_path, "    /// Number of syscalls;", "    pub const NEW_CALL: u64 = 99;\n\n    /// Number of syscalls;")
    with pytest.raises(DocError, match=r"syscall NEW_CALL has no doc comment"):
        syscall_docs.parse(path)


def scratch_with_abi(scratch: Workspace, abi: Path = ABI) -> Workspace:
    target = scratch.root / "mantra-os" / "abi" / "src" / "lib.rs"
    target.parent.mkdir(parents=True)
    shutil.copy(abi, target)
    return scratch


def test_cli_writes_the_reference_and_checks_it(scratch: Workspace, tmp_path: Path) -> None:
    ws = scratch_with_abi(scratch)
    result = invoke(ws, "docs")
    assert result.exit_code == 0, result.output
    written = ws.root / "docs" / "syscalls.md"
    # COUNT, less the numbers kept RESERVED for syscalls another tree adds.
    text = ABI.read_text()
    reserved = re.search(r"pub const RESERVED: &\[u64\] = &\[([\d, ]*)\];", text)
    count = int(re.search(r"pub const COUNT: u64 = (\d+);", text)[1])
    count -= len([n for n in reserved[1].split(",") if n.strip()]) if reserved else 0
    assert f"wrote docs/syscalls.md ({count} syscalls" in result.stdout
    assert written.read_text().startswith("# MantraOS syscall reference")
    assert invoke(ws, "docs", "--check").exit_code == 0
    written.write_text("stale\n")
    stale = invoke(ws, "docs", "--check")
    assert stale.exit_code == 1 and "docs/syscalls.md is not up to date" in stale.stderr
    other = tmp_path / "out" / "ref.md"
    assert invoke(ws, "docs", "-o", str(other)).exit_code == 0
    assert other.read_text() == syscall_docs.render(syscall_docs.parse(ABI))


def test_cli_reports_a_malformed_comment_without_traceback(scratch: Workspace, tmp_path: Path) -> None:
    path = broken_abi(tmp_path, "    /// Rights: MANAGE.\n    /// Returns: 0.\n    /// Errors: BAD_HANDLE, WRONG_TYPE, ACCESS_DENIED.\n    pub const PROCESS_KILL",
                      "    /// Returns: 0.\n    /// Errors: BAD_HANDLE, WRONG_TYPE, ACCESS_DENIED.\n    pub const PROCESS_KILL")
    ws = scratch_with_abi(scratch, path)
    result = invoke(ws, "docs")
    assert result.exit_code == 1
    assert re.search(r"error: mantra-os/abi/src/lib\.rs:\d+: syscall PROCESS_KILL lacks the `Rights:` section",
                     result.stderr)
    assert "try: every syscall constant" in result.stderr
    assert "Traceback" not in result.output
