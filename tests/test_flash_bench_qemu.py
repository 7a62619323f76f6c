"""`mantra flash` against the real MantraBoot flash mode in QEMU: the bench
(the default product flashed to a board whose slot b is wiped) through the
CLI, and the board booting what was flashed. Needs MantraBoot's flash mode
(mantra-os/boot/src/flash, branch flash-boot): skipped without it."""

from __future__ import annotations

import re

import pytest
from mantra.build import BuildResult
from mantra.signing.verify import verify_disk
from support import ROOT, mantra

pytestmark = [
    pytest.mark.boot,
    pytest.mark.skipif(not (ROOT / "mantra-os" / "boot" / "src" / "flash").is_dir(),
                       reason="MantraBoot has no flash mode in this checkout (branch flash-boot)"),
]


def test_bench_flashes_a_qemu_board(default_image: BuildResult) -> None:
    result = mantra("flash", "--bench", timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    figure = re.fullmatch(r"effective throughput: (\d+\.\d) x line rate", lines[-1])
    assert figure, result.stdout
    details = re.search(r"flash: bench: (\d+) slot image bytes, (\d+) bytes on the line", result.stdout)
    assert details, result.stdout
    image_bytes, line_bytes = int(details.group(1)), int(details.group(2))
    assert float(figure.group(1)) == round(image_bytes / line_bytes, 1) >= 3
    assert "slot b is pending" in result.stderr
    board = default_image.image.parent / "flash-bench" / "image.img"
    # what the board wrote into its slot b verifies as boot checks it
    root = (default_image.image.parent / "config" / "root_key.bin").read_bytes()
    verify_disk(board, root, slot="b", board=default_image.board.name)
