"""`mantra docs`: the syscall reference, rendered from the ABI crate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mantra import syscall_docs
from mantra.cli.common import workspace
from mantra.console import out
from mantra.errors import MantraError


def docs(
    ctx: typer.Context,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", metavar="FILE", dir_okay=False,
                     help=f"Where to write the markdown (default: {syscall_docs.DEFAULT_OUTPUT})."),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; fail if FILE is not what would be written.")
    ] = False,
) -> None:
    """Render the syscall reference (markdown) from mantra-os/abi/src/lib.rs.

    Every syscall constant of the ABI crate's `nr` module documents itself in
    one fixed form (summary, Arguments:, Rights:, Returns:, Errors:); this
    renders one section per syscall, with each error's meaning from the
    Error enum. A doc comment that breaks the form is an error naming the
    file, line and syscall.
    """
    ws = workspace(ctx)
    source = ws.root / syscall_docs.ABI_SOURCE
    abi = syscall_docs.parse(source, str(syscall_docs.ABI_SOURCE))
    text = syscall_docs.render(abi)
    target = output if output is not None else ws.root / syscall_docs.DEFAULT_OUTPUT
    if check:
        current = target.read_text(encoding="utf-8") if target.is_file() else None
        if current != text:
            raise MantraError(f"{ws.relative(target)} is not up to date with {syscall_docs.ABI_SOURCE}",
                              "run ./mantra docs and commit the result")
        out.print(f"{ws.relative(target)} is up to date ({len(abi.syscalls)} syscalls)")
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    out.print(f"wrote {ws.relative(target)} ({len(abi.syscalls)} syscalls, ABI version {abi.version})")


def register(app: typer.Typer) -> None:
    app.command()(docs)
