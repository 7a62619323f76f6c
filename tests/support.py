"""Helpers the tests import (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from mantra.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]


def add_product(workspace: Workspace, name: str, prj_conf: str, extra_toml: str = "") -> None:
    """Creates manifests/<name>/ in `workspace` with the given prj.conf."""
    directory = workspace.products_dir / name
    directory.mkdir()
    (directory / "product.toml").write_text(
        f'name = "{name}"\ndescription = "test product"\n{extra_toml}\n'
        '[[service]]\nname = "MantraCore"\nkind = "kernel"\n'
    )
    (directory / "prj.conf").write_text(prj_conf)


def mantra(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Runs ./mantra (the bootstrap script, as a user would) and captures its output."""
    return subprocess.run([str(ROOT / "mantra"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def read_esp(image: Path, offset: int, scratch: Path) -> dict[str, bytes]:
    """Every file of the FAT file system at `offset` in `image`, read with
    mtools (path on the ESP -> content)."""
    source = f"{image}@@{offset}"
    listing = subprocess.run(["mdir", "-/", "-b", "-i", source, "::"], capture_output=True, text=True, check=True)
    files = {}
    for line in listing.stdout.splitlines():
        path = line.strip().removeprefix("::/")
        if not path or path.endswith("/"):
            continue
        target = scratch / path.replace("/", "_")
        subprocess.run(["mcopy", "-n", "-i", source, f"::/{path}", str(target)], check=True)
        files[path] = target.read_bytes()
    return files


def read_partition(image: Path, name: str, scratch: Path) -> dict[str, bytes]:
    """Every file of the FAT file system on the GPT partition `name` ("esp",
    "slot-a", "slot-b") of `image` (path -> content)."""
    from gpt_reader import read_gpt

    partition = next(p for p in read_gpt(image).partitions if p.name == name)
    directory = scratch / f"fs-{name}"
    directory.mkdir(exist_ok=True)
    return read_esp(image, partition.first_lba * 512, directory)
