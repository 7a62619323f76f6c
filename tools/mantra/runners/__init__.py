"""Board runners (see core.py), looked up by the `runner` of a board.toml."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from mantra.board import Board
from mantra.errors import MantraError
from mantra.runners.core import BoardRunner, BootResult, RunnerCaps
from mantra.runners.qemu import QemuRunner

__all__ = ["BoardRunner", "BootResult", "RunnerCaps", "runner_for"]

RUNNERS: dict[str, type[BoardRunner]] = {runner.name: runner for runner in (QemuRunner,)}


def runner_for(board: Board, config: Mapping[str, str], image: Path, work_dir: Path) -> BoardRunner:
    """The runner board.toml names for `board`."""
    runner = RUNNERS.get(board.runner)
    if runner is None:
        raise MantraError(
            f"{board.data_file}: runner '{board.runner}' is unknown (runners: {', '.join(sorted(RUNNERS))})",
            "set `runner` to one of those",
        )
    return runner(board, config, image, work_dir)
