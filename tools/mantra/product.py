"""Products: manifests/<name>/ holds a product's config fragment (prj.conf)
and its description (product.toml: the services it runs, optional kernel
command line)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mantra.errors import MantraError
from mantra.tomldata import Table
from mantra.workspace import Workspace

DEFAULT_PRODUCT = "default"

# Service kinds a product can list. Later issues add userland services and drivers.
SERVICE_KINDS = ("kernel",)


@dataclass(frozen=True)
class Service:
    name: str
    kind: str


@dataclass(frozen=True)
class Product:
    name: str
    dir: Path
    description: str
    services: tuple[Service, ...]
    # Kernel command line for MANTRA/CMDLINE.TXT; None: MantraBoot uses CONFIG_BOOT_CMDLINE.
    cmdline: str | None

    @property
    def fragment(self) -> Path:
        return self.dir / "prj.conf"

    @property
    def data_file(self) -> Path:
        return self.dir / "product.toml"


def product_names(workspace: Workspace) -> list[str]:
    if not workspace.products_dir.is_dir():
        return []
    return sorted(d.name for d in workspace.products_dir.iterdir() if (d / "product.toml").is_file())


def load_product(workspace: Workspace, name: str) -> Product:
    """Reads manifests/<name>/; an unknown name is an error listing the products there are."""
    directory = workspace.products_dir / name
    if "/" in name or not (directory / "product.toml").is_file():
        known = ", ".join(product_names(workspace)) or "none"
        raise MantraError(
            f"unknown product '{name}' (products: {known})",
            "pick one of those with -p PRODUCT, or add manifests/<name>/ (see README.md)",
        )
    data = Table.load(directory / "product.toml")
    declared = data.string("name")
    if declared != name:
        raise MantraError(f"{data.file}: name is '{declared}' but the folder is '{name}'", "make them the same")
    services = []
    for entry in data.tables("service"):
        kind = entry.string("kind")
        if kind not in SERVICE_KINDS:
            raise MantraError(
                f"{data.file}: service kind '{kind}' is unknown (kinds: {', '.join(SERVICE_KINDS)})",
                "fix the service's kind",
            )
        services.append(Service(name=entry.string("name"), kind=kind))
    if [s.kind for s in services].count("kernel") != 1:
        raise MantraError(f"{data.file}: a product runs exactly one service of kind 'kernel'", "list MantraCore once")
    product = Product(
        name=name,
        dir=directory,
        description=data.string("description"),
        services=tuple(services),
        cmdline=data.string("cmdline", default=None),
    )
    if not product.fragment.is_file():
        raise MantraError(f"product {name} has no prj.conf",
                          f"add {workspace.relative(product.fragment)} (it may be empty)")
    return product
