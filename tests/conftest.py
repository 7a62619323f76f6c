"""Shared fixtures: the checkout under test, scratch copies of its
configuration tree, and the images built once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mantra.board import DEFAULT_BOARD, Board, load_board
from mantra.build import BuildResult, build
from mantra.product import DEFAULT_PRODUCT
from mantra.workspace import Workspace
from support import ROOT


@pytest.fixture(scope="session")
def workspace() -> Workspace:
    return Workspace.locate(ROOT)


@pytest.fixture(scope="session")
def board(workspace: Workspace) -> Board:
    return load_board(workspace, DEFAULT_BOARD)


@pytest.fixture
def scratch(tmp_path: Path) -> Workspace:
    """A copy of the checkout's configuration tree (Kconfig, boards, products)
    that a test may change."""
    for name in ("Kconfig", "board-support", "manifests"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name)
        else:
            shutil.copy2(source, tmp_path / name)
    return Workspace.locate(tmp_path)


@pytest.fixture(scope="session")
def default_image(workspace: Workspace) -> BuildResult:
    """build/qemu-x86_64/default/image.img, built once per session."""
    return build(workspace, DEFAULT_BOARD, DEFAULT_PRODUCT)


@pytest.fixture(scope="session")
def ktest_image(workspace: Workspace) -> BuildResult:
    """build/qemu-x86_64/default/ktest/image.img (MantraCore with its in-guest tests)."""
    return build(workspace, DEFAULT_BOARD, DEFAULT_PRODUCT, ktest=True)
