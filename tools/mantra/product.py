"""Products: manifests/<name>/ holds a product's config fragment (prj.conf)
and its description (product.toml: the services it runs, how MantraInit
supervises them, optional kernel command line).

Services are `[[service]]` tables. Exactly one has `kind = "kernel"`
(MantraCore). The others have `kind = "user"`: programs of mantra-os/user/
that MantraInit starts and supervises:

    [[service]]
    name = "demo"              # 1-32 letters, digits, '-', '_', '.'
    kind = "user"
    program = "demo"           # a program of mantra-os/user/ (default: the name)
    restart = "on-failure"     # always (default) | on-failure | never
    after = ["logd"]           # services started before it
    caps = []                  # capabilities granted (CAPABILITIES)
    args = ["count=3"]         # startup arguments (no blanks or commas)
    confirm = true             # the boot confirmation waits for it to be healthy (default)

    [supervisor]               # optional, these are the defaults
    crash_loop_limit = 5       # this many crashes ...
    crash_loop_window_ms = 10000   # ... within this window: the service is failed
    backoff_initial_ms = 100   # first restart delay, doubled per crash in the window
    backoff_max_ms = 5000
    confirm_settle_ms = 1000   # running this long without exiting counts as healthy

Boot confirmation (docs/boot-state.md): MantraInit confirms a boot once
every service with `confirm = true` is healthy: it has run for
`confirm_settle_ms` since its last start without exiting, or it exited
with code 0 and its restart policy keeps it down (`on-failure`, `never`).
A service init gave up on (crash loop, missing program) or that stopped
after a crash means no confirmation. `confirm = false` leaves a service
out (e.g. one that crashes on purpose).

A product with user services needs exactly one log server (a service
granted `logctl`, MantraLogd). `./mantra build` checks that every program
exists and writes the services as `init.manifest` (see init_manifest())
into the boot filesystem; mantra-os/user/init/src/manifest.rs reads it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mantra.errors import MantraError
from mantra.tomldata import Table
from mantra.workspace import Workspace

DEFAULT_PRODUCT = "default"

# Service kinds a product can list. Later issues add drivers.
SERVICE_KINDS = ("kernel", "user")
RESTART_POLICIES = ("always", "on-failure", "never")
# Capabilities MantraInit can grant (the same list as CAPABILITIES in
# mantra-os/user/init/src/manifest.rs), besides the `self`, `space` and
# `log` handles every service gets.
CAPABILITIES = {
    "klog": "the kernel log with READ: drain kernel records",
    "logctl": "serve logs: the control channel over which init hands out log channels (the log server)",
    "spawn": "SPAWN on the service's own process handle: create child processes",
    "irq": "the interrupt resource with CREATE|DUPLICATE|TRANSFER: create physical interrupt objects (INTERRUPT_CREATE)",
    "console": "the console object with READ|WRITE|WAIT|DUPLICATE: serial input and whole raw lines out (CONSOLE_READ, CONSOLE_WRITE)",
    "eventlog": "the TCG event log MantraBoot handed over, a memory object with READ|MAP (none without a TPM)",
    "tpm": "the TPM's TIS/FIFO registers, a device-memory object with READ|WRITE|MAP (none without a TPM)",
    "fwvar": "the firmware-variable resource with READ|WRITE|DUPLICATE|TRANSFER: UEFI variables of the MantraOS vendor GUID "
             "(FIRMWARE_VARIABLE_GET/_SET)",
}
LOG_SERVER_CAP = "logctl"
MAX_NAME = 32
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_ARG = re.compile(r"[^\s,]+")
_KERNEL_KEYS = ("name", "kind")
_USER_KEYS = ("name", "kind", "program", "restart", "after", "caps", "args", "confirm")
_SUPERVISOR_KEYS = ("crash_loop_limit", "crash_loop_window_ms", "backoff_initial_ms", "backoff_max_ms",
                    "confirm_settle_ms")


@dataclass(frozen=True)
class Service:
    name: str
    kind: str
    # User services only (defaults for the kernel):
    program: str | None = None
    restart: str = "always"
    after: tuple[str, ...] = ()
    caps: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    # Whether MantraInit's boot confirmation waits for this service.
    confirm: bool = True


@dataclass(frozen=True)
class Supervisor:
    """How MantraInit restarts crashed services (product.toml [supervisor])."""

    crash_loop_limit: int = 5
    crash_loop_window_ms: int = 10_000
    backoff_initial_ms: int = 100
    backoff_max_ms: int = 5_000
    confirm_settle_ms: int = 1_000


@dataclass(frozen=True)
class Product:
    name: str
    dir: Path
    description: str
    services: tuple[Service, ...]
    # Kernel command line for MANTRA/CMDLINE.TXT; None: MantraBoot uses CONFIG_BOOT_CMDLINE.
    cmdline: str | None
    supervisor: Supervisor = Supervisor()
    # The rollback index its images carry (`security_counter` in product.toml,
    # default 0): raise it when a release fixes a vulnerability, so MantraBoot
    # refuses the older images.
    security_counter: int = 0

    @property
    def fragment(self) -> Path:
        return self.dir / "prj.conf"

    @property
    def data_file(self) -> Path:
        return self.dir / "product.toml"

    @property
    def user_services(self) -> tuple[Service, ...]:
        return tuple(s for s in self.services if s.kind == "user")


def product_names(workspace: Workspace) -> list[str]:
    if not workspace.products_dir.is_dir():
        return []
    return sorted(d.name for d in workspace.products_dir.iterdir() if (d / "product.toml").is_file())


def _user_service(entry: Table, name: str) -> Service:
    entry.check_keys(_USER_KEYS, f"service '{name}'")
    where = f"{entry.file}: service '{name}'"
    restart = entry.string("restart", default="always")
    if restart not in RESTART_POLICIES:
        raise MantraError(f"{where}: restart '{restart}' is not one of {', '.join(RESTART_POLICIES)}",
                          "fix the service's restart policy")
    caps = tuple(entry.strings("caps", default=[]))
    for cap in caps:
        if cap not in CAPABILITIES:
            raise MantraError(f"{where}: unknown capability '{cap}' (capabilities: {', '.join(CAPABILITIES)})",
                              "grant only capabilities MantraInit knows")
    args = tuple(entry.strings("args", default=[]))
    for arg in args:
        if not _ARG.fullmatch(arg):
            raise MantraError(f"{where}: argument {arg!r} is empty or has blanks or commas",
                              "split it into several arguments")
    program = entry.string("program", default=name)
    if not _NAME.fullmatch(program):
        raise MantraError(f"{where}: bad program name '{program}'", "name a program of mantra-os/user/")
    return Service(name=name, kind="user", program=program, restart=restart,
                   after=tuple(entry.strings("after", default=[])), caps=caps, args=args,
                   confirm=entry.boolean("confirm", default=True))


def _supervisor(data: Table) -> Supervisor:
    if not data.has("supervisor"):
        return Supervisor()
    table = data.table("supervisor")
    table.check_keys(_SUPERVISOR_KEYS, "[supervisor]")
    defaults = Supervisor()
    values = {key: table.integer(key, minimum=1 if key == "crash_loop_limit" else 0, default=getattr(defaults, key))
              for key in _SUPERVISOR_KEYS}
    return Supervisor(**values)


def _check_dependencies(file: Path, services: list[Service]) -> None:
    """Unknown dependencies and cycles, with messages naming the service."""
    users = {s.name: s for s in services if s.kind == "user"}
    for service in users.values():
        for dep in service.after:
            if dep == service.name:
                raise MantraError(f"{file}: service '{service.name}' depends on itself", "remove it from `after`")
            if dep not in users:
                raise MantraError(
                    f"{file}: service '{service.name}': unknown dependency '{dep}' "
                    f"(user services: {', '.join(users) or 'none'})",
                    "name a user service of this product in `after`",
                )
    # Depth-first search for a cycle; report it as a path.
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in users[name].after:
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                raise MantraError(f"{file}: service '{dep}': dependency cycle {' -> '.join(cycle)}",
                                  "break the cycle in the services' `after` lists")
            if dep not in state:
                visit(dep, path + [dep])
        state[name] = 2

    for name in users:
        if name not in state:
            visit(name, [name])


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
    services: list[Service] = []
    for entry in data.tables("service"):
        kind = entry.string("kind")
        if kind not in SERVICE_KINDS:
            raise MantraError(
                f"{data.file}: service kind '{kind}' is unknown (kinds: {', '.join(SERVICE_KINDS)})",
                "fix the service's kind",
            )
        service_name = entry.string("name")
        if any(s.name == service_name for s in services):
            raise MantraError(f"{data.file}: service '{service_name}' is listed twice", "give each service its own name")
        if kind == "kernel":
            entry.check_keys(_KERNEL_KEYS, f"service '{service_name}'")
            services.append(Service(name=service_name, kind=kind))
            continue
        if not _NAME.fullmatch(service_name):
            raise MantraError(
                f"{data.file}: bad service name '{service_name}' (1 to {MAX_NAME} letters, digits, '-', '_', '.')",
                "rename the service",
            )
        services.append(_user_service(entry, service_name))
    if [s.kind for s in services].count("kernel") != 1:
        raise MantraError(f"{data.file}: a product runs exactly one service of kind 'kernel'", "list MantraCore once")
    _check_dependencies(data.file, services)
    users = [s for s in services if s.kind == "user"]
    log_servers = [s.name for s in users if LOG_SERVER_CAP in s.caps]
    if users and len(log_servers) != 1:
        found = ", ".join(log_servers) if log_servers else "none"
        raise MantraError(
            f"{data.file}: a product with user services needs exactly one log server, a service granted "
            f"'{LOG_SERVER_CAP}' (found: {found})",
            'add MantraLogd: [[service]] name = "logd", kind = "user", caps = ["klog", "logctl"]',
        )
    product = Product(
        name=name,
        dir=directory,
        description=data.string("description"),
        services=tuple(services),
        cmdline=data.string("cmdline", default=None),
        supervisor=_supervisor(data),
        security_counter=data.integer("security_counter", default=0),
    )
    if not product.fragment.is_file():
        raise MantraError(f"product {name} has no prj.conf",
                          f"add {workspace.relative(product.fragment)} (it may be empty)")
    return product


def init_manifest(product: Product) -> str:
    """The boot filesystem's `init.manifest`: the product's user services in
    the line format MantraInit parses (mantra-os/user/init/src/manifest.rs)."""
    lines = [f"# init.manifest of product '{product.name}', generated by ./mantra build from "
             "product.toml: do not edit"]
    for s in product.user_services:
        lines.append(f"service {s.name} program={s.program} restart={s.restart} after={','.join(s.after)} "
                     f"caps={','.join(s.caps)} args={','.join(s.args)}" + ("" if s.confirm else " confirm=no"))
    sup = product.supervisor
    lines.append(f"crashloop {sup.crash_loop_limit} {sup.crash_loop_window_ms}")
    lines.append(f"backoff {sup.backoff_initial_ms} {sup.backoff_max_ms}")
    lines.append(f"confirm {sup.confirm_settle_ms}")
    return "\n".join(lines) + "\n"
