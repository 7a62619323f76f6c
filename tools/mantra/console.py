"""The rich consoles every module prints through: `out` for results, `err`
for progress and diagnostics (so results stay pipeable)."""

from rich.console import Console

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def step(text: str) -> None:
    """Announces one step of a longer operation (configure, compile, pack...)."""
    err.print(f"[bold cyan]>>[/] {text}")
