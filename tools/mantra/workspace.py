"""Where things are: the MantraOS checkout and the build tree.

    <root>/Kconfig                          root of the configuration tree
    <root>/board-support/<board>/           one folder per board
    <root>/manifests/<product>/             one folder per product
    <root>/mantra-os/                       the cargo workspace
    <root>/build/<board>/<product>/         everything a build writes:
        config/                             .config, mantra_config.rs, cfg.txt
        target/                             CARGO_TARGET_DIR
        image.img, manifest.json, ...       the disk image and what is in it
        ktest/image.img, ktest/manifest.json   the in-guest kernel test image
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mantra.errors import MantraError

# tools/mantra/workspace.py -> the checkout this package was installed from.
_INSTALLED_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Workspace:
    """A MantraOS checkout."""

    root: Path

    @classmethod
    def locate(cls, root: Path | None = None) -> Workspace:
        """The checkout at `root`, or the one this package was installed from."""
        workspace = cls((root or _INSTALLED_ROOT).resolve())
        if not workspace.kconfig.is_file():
            raise MantraError(
                f"{workspace.root} is not a MantraOS checkout (it has no Kconfig)",
                "run ./mantra from the repository root, or pass --workspace DIR",
            )
        return workspace

    @property
    def kconfig(self) -> Path:
        return self.root / "Kconfig"

    @property
    def boards_dir(self) -> Path:
        return self.root / "board-support"

    @property
    def products_dir(self) -> Path:
        return self.root / "manifests"

    @property
    def native_dir(self) -> Path:
        return self.root / "mantra-os"

    def build_paths(self, board: str, product: str) -> BuildPaths:
        return BuildPaths(self.root / "build" / board / product)

    def relative(self, path: Path) -> str:
        """`path` relative to the checkout when it is inside it, for messages."""
        try:
            return str(path.resolve().relative_to(self.root))
        except ValueError:
            return str(path)


@dataclass(frozen=True)
class BuildPaths:
    """The build tree of one board and product: build/<board>/<product>/."""

    root: Path

    @property
    def config_dir(self) -> Path:
        return self.root / "config"

    @property
    def target_dir(self) -> Path:
        """cargo's target directory, shared by the board's products
        (build/<board>/target): the bare-metal core library is built once per
        board; a product switch only rebuilds what its configuration reaches."""
        return self.root.parent / "target"

    def image_dir(self, ktest: bool, variant: str | None = None) -> Path:
        """Where the disk image and its manifest go: the build tree itself, its
        ktest/ folder for the in-guest kernel test image, or another variant's
        folder (e.g. fuzz/ for `mantra fuzz`)."""
        if variant is not None:
            return self.root / variant
        return self.root / "ktest" if ktest else self.root
