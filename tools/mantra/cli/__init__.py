"""The `mantra` command. The root app only wires the subcommands, one module
each; errors the user can act on (MantraError) are printed as "error: ..."
and "try: ..." with exit status 1, usage errors exit with status 2."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from typer.core import TyperGroup

from mantra import proc
from mantra.cli import (attest, bench, boards, build, config, docs, flash, fuzz, hil, keys, menuconfig, run, sign,
                        slot, test, verify)
from mantra.console import err
from mantra.errors import MantraError
from mantra.workspace import Workspace


class _MantraGroup(TyperGroup):
    """Turns a MantraError anywhere below into a message and exit status 1."""

    def invoke(self, ctx: typer.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except MantraError as error:
            err.print(f"[bold red]error:[/] {escape(error.message)}", soft_wrap=True)
            if error.hint:
                err.print(f"[yellow]try:[/] {escape(error.hint)}", soft_wrap=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_MantraGroup,
    name="mantra",
    help="Build, run and test MantraOS. Start with `./mantra run`, then `./mantra test`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Show every command mantra runs.")] = False,
    workspace: Annotated[
        Path | None,
        typer.Option("--workspace", envvar="MANTRA_WORKSPACE", file_okay=False,
                     help="The MantraOS checkout to work in (default: the one mantra is installed from)."),
    ] = None,
) -> None:
    proc.set_verbose(verbose)
    ctx.obj = Workspace.locate(workspace)


for module in (config, menuconfig, build, run, test, boards, docs, fuzz, bench, keys, sign, verify, slot, flash, attest,
               hil):
    module.register(app)


def main() -> None:
    """Console-script entry point."""
    app()
