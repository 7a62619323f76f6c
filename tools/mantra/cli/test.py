"""`mantra test`: every test, Rust and Python."""

from __future__ import annotations

import sys

import typer

from mantra import proc
from mantra.cli.common import workspace
from mantra.console import err, step
from mantra.toolchain import RustToolchain


def test(ctx: typer.Context) -> None:
    """Run every test: Rust host tests, then pytest (extra arguments go to pytest).

    cargo test in mantra-os, then pytest over tests/: CLI, configuration,
    image layout, and boots in QEMU (banners, in-guest kernel tests). E.g.
    `mantra test -k gpt` or `mantra test -m "not boot"`. Exit status 0 only
    when everything passed.
    """
    ws = workspace(ctx)
    step("Rust host tests: cargo test (mantra-os)")
    rust = RustToolchain.locate().test_host(ws.native_dir)
    step("pytest (tests/)")
    pytest = proc.run([sys.executable, "-m", "pytest", *ctx.args], cwd=ws.root, what="pytest",
                      hint="see the failures above", check=False).returncode
    outcome = {"cargo test": rust, "pytest": pytest}
    for name, status in outcome.items():
        verdict = "[green]passed[/]" if status == 0 else f"[red]failed[/] (exit status {status})"
        err.print(f"{name}: {verdict}")
    if any(outcome.values()):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(test)
