"""Strict Kconfig: merge a board and a product into one resolved configuration.

The tree is the root `Kconfig` (which sources the board's Kconfig.board),
read with kconfiglib. On top of its defaults come, in this order:

1. the board's `defconfig`,
2. the product's `prj.conf`,
3. `build/<board>/<product>/menuconfig.conf`, the changes saved in
   `./mantra menuconfig`, when that file exists.

Unlike kconfiglib (and Zephyr), which warn and carry on, every problem is an
error naming the symbol and the file:line of the assignment: an unknown
symbol, a malformed value, a symbol without a prompt, a symbol whose
dependencies are unmet, and a value that does not hold (out of range,
overridden by a `select`, a choice member that is not the selection...).
Warnings kconfiglib raises about the tree itself are errors too.

The resolved configuration is written to build/<board>/<product>/config/:
`.config`, `mantra_config.rs` (one Rust constant per symbol with a value) and
`cfg.txt` (a `mantra_<name>` cfg flag per enabled bool). Files are rewritten
only when their content changes, so cargo rebuilds only what a change touches.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import io
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import kconfiglib

from mantra.board import Board
from mantra.errors import MantraError
from mantra.product import Product
from mantra.workspace import Workspace

# kconfiglib type -> the name used in messages and generated code.
_TYPE_NAMES = {
    kconfiglib.BOOL: "bool",
    kconfiglib.INT: "int",
    kconfiglib.HEX: "hex",
    kconfiglib.STRING: "string",
}

_ASSIGNMENT = re.compile(r"CONFIG_([A-Za-z0-9_]+)=(.*)")
_NOT_SET = re.compile(r"#\s*CONFIG_([A-Za-z0-9_]+) is not set")

MENUCONFIG_FRAGMENT = "menuconfig.conf"


@dataclass(frozen=True)
class Assignment:
    """One `CONFIG_NAME=value` (or `# CONFIG_NAME is not set`) line of a fragment."""

    file: Path
    line: int
    name: str
    # y/n for bools, the number as written for int/hex, the unescaped text for strings.
    value: str
    quoted: bool
    where: str  # "file:line", the file relative to the checkout

    @property
    def text(self) -> str:
        shown = '"' + kconfiglib.escape(self.value) + '"' if self.quoted else self.value
        return f"CONFIG_{self.name}={shown}"


@dataclass(frozen=True)
class Problem:
    where: str  # "file:line", or "" for problems of the tree itself
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class ConfigError(MantraError):
    """The configuration does not resolve; `problems` says where and why."""

    def __init__(self, what: str, problems: list[Problem], hint: str) -> None:
        self.problems = problems
        count = f"{len(problems)} error" + ("s" if len(problems) > 1 else "")
        listing = "\n".join(f"  {problem}" for problem in problems)
        super().__init__(f"{what}: {count}\n{listing}", hint)


@dataclass(frozen=True)
class Symbol:
    """A resolved symbol: `value` is y/n for bools; for int, hex and string
    symbols it is None when the symbol has no value (dependencies unmet)."""

    name: str
    type: str
    value: str | None


@dataclass(frozen=True)
class ResolvedConfig:
    board: Board
    product: Product
    fragments: tuple[Path, ...]
    symbols: tuple[Symbol, ...]  # in the tree's definition order

    @property
    def values(self) -> dict[str, str]:
        """Name -> value of every symbol with a value."""
        return {symbol.name: symbol.value for symbol in self.symbols if symbol.value is not None}


@dataclass(frozen=True)
class ConfigOutputs:
    """The files `write_outputs` produced, and whether any of them changed."""

    dotconfig: Path
    rust_constants: Path
    cfg_flags: Path
    changed: bool

    @property
    def dir(self) -> Path:
        return self.dotconfig.parent

    def sha256(self) -> str:
        return hashlib.sha256(self.dotconfig.read_bytes()).hexdigest()


# --- fragments ---------------------------------------------------------------


def parse_fragment(path: Path, where_prefix: str) -> list[Assignment]:
    """Reads a config fragment (`defconfig`, `prj.conf`, a `.config`).

    Lines are `CONFIG_NAME=value`, `# CONFIG_NAME is not set`, comments or
    blank; anything else is an error. `where_prefix` is the file as messages
    name it.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MantraError(f"cannot read {where_prefix}: {exc.strerror}") from None
    assignments: list[Assignment] = []
    problems: list[Problem] = []
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        where = f"{where_prefix}:{number}"
        if match := _NOT_SET.fullmatch(line):
            assignments.append(Assignment(path, number, match[1], "n", False, where))
            continue
        if not line or line.startswith("#"):
            continue
        match = _ASSIGNMENT.fullmatch(line)
        if match is None:
            problems.append(Problem(where, f"cannot read `{line}`: expected CONFIG_NAME=value"))
            continue
        value = match[2]
        quoted = value.startswith('"')
        if quoted:
            if not re.fullmatch(r'"(?:[^"\\]|\\.)*"', value):
                problems.append(Problem(where, f"CONFIG_{match[1]}: unterminated string {value}"))
                continue
            value = kconfiglib.unescape(value[1:-1])
        assignments.append(Assignment(path, number, match[1], value, quoted, where))
    if problems:
        raise ConfigError(f"{where_prefix} is malformed", problems, "fix the lines above")
    return assignments


def read_config_values(dotconfig: Path) -> dict[str, str]:
    """Symbol values of a resolved `.config` (bools not set read as "n")."""
    return {a.name: a.value for a in parse_fragment(dotconfig, str(dotconfig))}


# --- resolving -----------------------------------------------------------------


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """Sets environment variables for the duration of the block (kconfiglib
    reads `$(BOARD)`, `srctree`, KCONFIG_* and KCONFIG_CONFIG from os.environ)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _tree_environment(workspace: Workspace, board: Board) -> dict[str, str]:
    return {
        "srctree": str(workspace.root),
        "BOARD": board.name,
        "BOARD_DIR": workspace.relative(board.dir),
        "KCONFIG_WARN_UNDEF": "y",
    }


def load_tree(workspace: Workspace, board: Board) -> kconfiglib.Kconfig:
    """Parses the Kconfig tree for `board`; a syntax error or a warning about
    the tree (e.g. a reference to an undefined symbol) is an error."""
    with _environment(_tree_environment(workspace, board)):
        try:
            kconf = kconfiglib.Kconfig("Kconfig", warn_to_stderr=False)
        except kconfiglib.KconfigError as exc:
            raise ConfigError(
                "the Kconfig tree does not parse", [Problem("", str(exc).strip())], "fix the Kconfig file named above"
            ) from None
    if kconf.warnings:
        raise ConfigError(
            "the Kconfig tree has problems",
            [Problem("", warning.strip()) for warning in kconf.warnings],
            "fix the Kconfig files named above",
        )
    for symbol in kconf.unique_defined_syms:
        if symbol.orig_type not in _TYPE_NAMES:
            raise ConfigError(
                "the Kconfig tree has problems",
                [Problem("", f"{symbol.name_and_loc}: type "
                             f"{kconfiglib.TYPE_TO_STR[symbol.orig_type]} is not supported")],
                "use bool, int, hex or string",
            )
    return kconf


def fragments_of(workspace: Workspace, board: Board, product: Product, *, with_menuconfig: bool = True) -> list[Path]:
    """The fragments merged for `board` and `product`, in merge order."""
    fragments = [board.defconfig, product.fragment]
    saved = workspace.build_paths(board.name, product.name).root / MENUCONFIG_FRAGMENT
    if with_menuconfig and saved.is_file():
        fragments.append(saved)
    return fragments


def _has_prompt(symbol: kconfiglib.Symbol) -> bool:
    return any(node.prompt for node in symbol.nodes)


def _values_of(expr: object) -> str:
    items = sorted({item for item in kconfiglib.expr_items(expr) if isinstance(item, kconfiglib.Symbol)},
                   key=lambda s: s.name)
    return ", ".join(f"{item.name}={item.str_value}" for item in items if not item.is_constant)


def _check_form(symbol: kconfiglib.Symbol, assignment: Assignment) -> str | None:
    """Why `assignment` is not a well-formed value for `symbol`, or None."""
    kind = symbol.orig_type
    value = assignment.value
    if kind is kconfiglib.STRING:
        return None if assignment.quoted else f'is a string: quote the value, CONFIG_{symbol.name}="{value}"'
    if assignment.quoted:
        return f"is {_TYPE_NAMES[kind]}: the value must not be quoted"
    if kind is kconfiglib.BOOL:
        return None if value in ("y", "n") else f"is a bool: the value must be y or n, not '{value}'"
    if kind is kconfiglib.INT:
        return None if re.fullmatch(r"-?[0-9]+", value) else f"is an int: '{value}' is not a decimal number"
    return None if re.fullmatch(r"(0[xX])?[0-9a-fA-F]+", value) else f"is hex: '{value}' is not a hex number (0x...)"


def _effective(assignments: list[Assignment], kconf: kconfiglib.Kconfig) -> tuple[list[Assignment], list[Problem]]:
    """The assignments that decide the result: the last one of each symbol,
    except a choice member's `=y` that a later `=y` to another member of the
    same choice supersedes (a product picking another log level than its
    board). Repeats and conflicting choice members within one file are errors."""
    problems: list[Problem] = []
    last: dict[str, Assignment] = {}
    for assignment in assignments:
        previous = last.get(assignment.name)
        if previous is not None and previous.file == assignment.file:
            problems.append(Problem(
                assignment.where,
                f"CONFIG_{assignment.name} is assigned twice in this file (also at line {previous.line})",
            ))
        last[assignment.name] = assignment
    selection: dict[kconfiglib.Choice, Assignment] = {}
    for assignment in assignments:
        choice = kconf.syms[assignment.name].choice
        if choice is None or assignment.value != "y":
            continue
        earlier = selection.get(choice)
        if earlier is not None and earlier.name != assignment.name and earlier.file == assignment.file:
            problems.append(Problem(
                assignment.where,
                f"CONFIG_{assignment.name}=y conflicts with CONFIG_{earlier.name}=y at line {earlier.line} "
                f"(members of one choice, {choice.name}: keep one)",
            ))
        selection[choice] = assignment
    effective = []
    for assignment in last.values():
        choice = kconf.syms[assignment.name].choice
        if choice is not None and assignment.value == "y" and selection[choice] is not assignment:
            continue
        effective.append(assignment)
    return effective, problems


def _locations(symbol: kconfiglib.Symbol) -> str:
    return ", ".join(f"{node.filename}:{node.linenr}" for node in symbol.nodes)


def _why_not_held(symbol: kconfiglib.Symbol, assignment: Assignment) -> str | None:
    """Why the resolved value of `symbol` differs from `assignment`, or None if it holds."""
    resolved = symbol.str_value
    kind = symbol.orig_type
    if kind is kconfiglib.BOOL:
        if resolved == assignment.value:
            return None
        if assignment.value == "n" and kconfiglib.expr_value(symbol.rev_dep):
            return f"it is selected by {kconfiglib.expr_str(symbol.rev_dep)} ({_values_of(symbol.rev_dep)})"
        if symbol.choice is not None and assignment.value == "n":
            return (f"it is the selection of choice {symbol.choice.name}; "
                    "select another member (CONFIG_OTHER=y) instead of unsetting this one")
        return f"it resolves to {resolved}"
    if kind in (kconfiglib.INT, kconfiglib.HEX):
        base = 10 if kind is kconfiglib.INT else 16
        wanted = int(assignment.value, base)
        for low, high, condition in symbol.ranges:
            if kconfiglib.expr_value(condition):
                low_value, high_value = int(low.str_value, base), int(high.str_value, base)
                if not low_value <= wanted <= high_value:
                    return f"out of range {low.str_value}..{high.str_value} (it resolves to {resolved})"
                break
        if resolved and int(resolved, base) == wanted:
            return None
        return f"it resolves to {resolved or 'no value'}"
    return None if resolved == assignment.value else f'it resolves to "{resolved}"'


def _assign(kconf: kconfiglib.Kconfig, assignments: list[Assignment]) -> list[Problem]:
    """Applies `assignments` in order and checks each effective one."""
    problems: list[Problem] = []
    defined = [symbol.name for symbol in kconf.unique_defined_syms]
    applied: list[Assignment] = []
    for assignment in assignments:
        symbol = kconf.syms.get(assignment.name)
        prefix = f"CONFIG_{assignment.name}"
        if symbol is None or not symbol.nodes:
            close = difflib.get_close_matches(assignment.name, defined, n=1)
            suggestion = f" (did you mean CONFIG_{close[0]}?)" if close else ""
            problems.append(Problem(assignment.where, f"{prefix}: unknown symbol{suggestion}"))
            continue
        if (why := _check_form(symbol, assignment)) is not None:
            problems.append(Problem(assignment.where, f"{prefix} {why}"))
            continue
        if not _has_prompt(symbol):
            problems.append(Problem(
                assignment.where,
                f"{prefix} cannot be set: it has no prompt, the Kconfig tree derives it "
                f"(defined at {_locations(symbol)})",
            ))
            continue
        symbol.set_value(assignment.value)
        applied.append(assignment)
    effective, repeat_problems = _effective(applied, kconf)
    problems += repeat_problems
    for assignment in effective:
        symbol = kconf.syms[assignment.name]
        prefix = f"CONFIG_{assignment.name}={assignment.value}" if not assignment.quoted else assignment.text
        if symbol.visibility == 0:
            condition = kconfiglib.expr_str(symbol.direct_dep)
            problems.append(Problem(
                assignment.where,
                f"{prefix}: the dependencies of {assignment.name} are unmet: depends on {condition} "
                f"({_values_of(symbol.direct_dep)})",
            ))
        elif (why := _why_not_held(symbol, assignment)) is not None:
            problems.append(Problem(assignment.where, f"{prefix} does not hold: {why}"))
    return problems


def _resolved_symbols(kconf: kconfiglib.Kconfig) -> tuple[list[Symbol], list[Problem]]:
    symbols: list[Symbol] = []
    problems: list[Problem] = []
    for symbol in kconf.unique_defined_syms:
        kind = _TYPE_NAMES[symbol.orig_type]
        # kconfiglib writes a symbol to .config exactly when it has a value.
        value = symbol.str_value if kind == "bool" or symbol.config_string else None
        if kind in ("int", "hex") and not symbol.str_value and symbol.visibility:
            problems.append(Problem(
                "", f"CONFIG_{symbol.name} (defined at {_locations(symbol)}) has no value: "
                    "give it a default, or set it in the board's defconfig or the product's prj.conf",
            ))
        symbols.append(Symbol(symbol.name, kind, value))
    return symbols, problems


def _problem_order(files: list[str]) -> Callable[[Problem], tuple[int, int]]:
    """Sort key: problems in merge order (file, then line); the tree's own last."""

    def key(problem: Problem) -> tuple[int, int]:
        file, _, line = problem.where.rpartition(":")
        if file not in files:
            return (len(files), 0)
        return (files.index(file), int(line))

    return key


def resolve(
    workspace: Workspace, board: Board, product: Product, *, with_menuconfig: bool = True
) -> tuple[kconfiglib.Kconfig, ResolvedConfig]:
    """Merges the fragments of `board` and `product` onto the Kconfig tree.

    Returns the kconfiglib tree (holding the result) and the resolved symbols;
    raises `ConfigError` listing every problem found.
    """
    kconf = load_tree(workspace, board)
    fragments = fragments_of(workspace, board, product, with_menuconfig=with_menuconfig)
    assignments: list[Assignment] = []
    for fragment in fragments:
        assignments += parse_fragment(fragment, workspace.relative(fragment))
    problems = _assign(kconf, assignments)
    symbols, value_problems = _resolved_symbols(kconf)
    problems += value_problems
    if not problems:
        problems = [Problem("", warning.strip()) for warning in kconf.warnings]
    if problems:
        problems.sort(key=_problem_order([workspace.relative(f) for f in fragments]))
        names = " + ".join(workspace.relative(f) for f in fragments)
        raise ConfigError(
            f"configuration of {board.name}/{product.name} ({names})",
            problems,
            "fix the assignments above; `./mantra menuconfig -b BOARD` shows each symbol with its "
            "help, range and dependencies",
        )
    return kconf, ResolvedConfig(board, product, tuple(fragments), tuple(symbols))


# --- generated files --------------------------------------------------------------


def _rust_string(text: str) -> str:
    escapes = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"}
    body = "".join(
        escapes.get(c, c if c.isprintable() else f"\\u{{{ord(c):x}}}") for c in text
    )
    return f'"{body}"'


def rust_constants(symbols: tuple[Symbol, ...]) -> str:
    """mantra_config.rs: `pub const NAME: T = value;` per symbol with a value
    (every bool; int/hex/string symbols whose dependencies are unmet have none)."""
    lines = [
        "// Generated by ./mantra config from the resolved Kconfig. Do not edit:",
        "// change the board's defconfig or the product's prj.conf.",
    ]
    for symbol in symbols:
        if symbol.type == "bool":
            lines.append(f"pub const {symbol.name}: bool = {'true' if symbol.value == 'y' else 'false'};")
        elif symbol.value is None:
            continue
        elif symbol.type == "int":
            lines.append(f"pub const {symbol.name}: i64 = {int(symbol.value, 10)};")
        elif symbol.type == "hex":
            lines.append(f"pub const {symbol.name}: u64 = {int(symbol.value, 16):#x};")
        else:
            lines.append(f"pub const {symbol.name}: &str = {_rust_string(symbol.value)};")
    return "\n".join(lines) + "\n"


def cfg_flags(symbols: tuple[Symbol, ...]) -> str:
    """cfg.txt: `mantra_<name>` per enabled bool, one per line."""
    return "".join(f"mantra_{s.name.lower()}\n" for s in symbols if s.type == "bool" and s.value == "y")


def _write_if_changed(path: Path, content: str) -> bool:
    if path.is_file() and path.read_text(encoding="utf-8") == content:
        return False
    path.write_text(content, encoding="utf-8")
    return True


def write_outputs(workspace: Workspace, kconf: kconfiglib.Kconfig, config: ResolvedConfig) -> ConfigOutputs:
    """Writes .config, mantra_config.rs and cfg.txt into the build tree's config/."""
    directory = workspace.build_paths(config.board.name, config.product.name).config_dir
    directory.mkdir(parents=True, exist_ok=True)
    sources = ", ".join(workspace.relative(f) for f in config.fragments)
    header = (
        f"# Generated by ./mantra config: board {config.board.name}, product {config.product.name},\n"
        f"# from Kconfig + {sources}. Do not edit: change those files.\n"
    )
    dotconfig = directory / ".config"
    old = dotconfig.read_bytes() if dotconfig.is_file() else None
    kconf.write_config(str(dotconfig), header=header, save_old=False)
    changed = old != dotconfig.read_bytes()
    rust = directory / "mantra_config.rs"
    cfg = directory / "cfg.txt"
    changed |= _write_if_changed(rust, rust_constants(config.symbols))
    changed |= _write_if_changed(cfg, cfg_flags(config.symbols))
    return ConfigOutputs(dotconfig, rust, cfg, changed)


def configure(workspace: Workspace, board: Board, product: Product) -> tuple[ResolvedConfig, ConfigOutputs]:
    """Resolves the configuration and writes it to the build tree."""
    kconf, config = resolve(workspace, board, product)
    return config, write_outputs(workspace, kconf, config)


# --- menuconfig ---------------------------------------------------------------------


def _saved_changes(kconf: kconfiglib.Kconfig, base: ResolvedConfig) -> list[str]:
    """Assignments that turn `base` into the state of `kconf`: one per
    user-settable symbol whose value differs (a choice's new selection, not
    the member it replaced)."""
    base_values = {symbol.name: symbol.value for symbol in base.symbols}
    lines = []
    for symbol in kconf.unique_defined_syms:
        if not _has_prompt(symbol) or not symbol.visibility:
            continue
        value = symbol.str_value
        if value == base_values[symbol.name] or (symbol.choice is not None and value == "n"):
            continue
        lines.append(symbol.config_string.rstrip("\n"))
    return lines


def menuconfig(workspace: Workspace, board: Board, product: Product) -> Path | None:
    """Opens kconfiglib's menuconfig on the merged configuration.

    The changes the user saves become build/<board>/<product>/menuconfig.conf,
    the last fragment every later config and build of this board and product
    merges (delete it to drop them; copy its lines to the product's prj.conf
    to keep them). Returns that file, or None when nothing was saved.
    """
    import menuconfig as kconfiglib_menuconfig  # kconfiglib's curses interface

    _, base = resolve(workspace, board, product, with_menuconfig=False)
    kconf, _ = resolve(workspace, board, product)
    build_root = workspace.build_paths(board.name, product.name).root
    build_root.mkdir(parents=True, exist_ok=True)
    scratch = build_root / "menuconfig.config"
    kconf.write_config(str(scratch), save_old=False)
    before = scratch.read_bytes()
    environment = {**_tree_environment(workspace, board), "KCONFIG_CONFIG": str(scratch)}
    try:
        # In the build tree, so menuconfig's "save minimal config" lands there
        # too. Its messages name the scratch file: what was saved is reported
        # by the caller instead.
        with _environment(environment), contextlib.chdir(build_root), contextlib.redirect_stdout(io.StringIO()):
            kconfiglib_menuconfig.menuconfig(kconf)
        if scratch.read_bytes() == before:
            return None
        kconf.load_config(str(scratch))
    finally:
        scratch.unlink(missing_ok=True)
        scratch.with_name(scratch.name + ".old").unlink(missing_ok=True)
    saved = build_root / MENUCONFIG_FRAGMENT
    changes = _saved_changes(kconf, base)
    if not changes:
        saved.unlink(missing_ok=True)
        return None
    header = (
        f"# Saved by ./mantra menuconfig for {board.name}/{product.name}: merged after\n"
        f"# {workspace.relative(product.fragment)}. Delete this file to drop these changes;\n"
        f"# copy the lines to the product's prj.conf to keep them.\n"
    )
    saved.write_text(header + "\n".join(changes) + "\n")
    return saved
