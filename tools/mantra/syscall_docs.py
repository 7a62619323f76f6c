"""The syscall reference: parsed from the ABI crate's doc comments,
rendered as markdown (`./mantra docs`).

mantra-os/abi/src/lib.rs documents every constant of `pub mod nr` (except
`COUNT`) in one fixed form:

    /// Summary: one or more sentences (a paragraph).
    ///
    /// Arguments: `a`, `b` (note), ...        or: none.
    /// Rights: what the call needs.
    /// Returns: what RAX holds on success.
    /// Errors: NAME, NAME (when), ...          or: none.
    pub const NAME: u64 = N;

A section may continue on the following `///` lines. `Errors:` may also
refer to other syscalls: `as CHANNEL_WRITE and CHANNEL_READ, plus
TIMED_OUT` or `as CHANNEL_READ, except SHOULD_WAIT`. Error names are those
of `Error::name()`; their meaning is the doc comment of the `Error`
variant. Anything that does not follow the form is an error naming the
file, line and syscall.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from mantra.errors import MantraError

ABI_SOURCE = Path("mantra-os/abi/src/lib.rs")
DEFAULT_OUTPUT = Path("docs/syscalls.md")
SECTIONS = ("Arguments", "Rights", "Returns", "Errors")
REGISTERS = ("RDI", "RSI", "RDX", "R10", "R8", "R9")
_FORM_HINT = ("every syscall constant in `pub mod nr` needs the fixed doc comment: a summary paragraph, then "
              "`Arguments:`, `Rights:`, `Returns:` and `Errors:` (see the top of mantra-os/abi/src/lib.rs)")

_CONST = re.compile(r"^\s*pub const (\w+)\s*:\s*u64\s*=\s*(\d+)\s*;")
_RESERVED = re.compile(r"^\s*pub const RESERVED\s*:\s*&\[u64\]\s*=\s*&\[([\d,\s]*)\]\s*;")
_VARIANT = re.compile(r"^\s*(\w+)\s*=\s*(\d+)\s*,")
_NAME_ARM = re.compile(r"Error::(\w+)\s*=>\s*\"(\w+)\"")
_ABI_VERSION = re.compile(r"pub const ABI_VERSION\s*:\s*u32\s*=\s*(\d+)\s*;")
_ARGUMENT = re.compile(r"^`([^`]+)`\s*(?:\((.*)\))?$")
_ERROR_ITEM = re.compile(r"^([A-Z][A-Z0-9_]*)\s*(?:\((.*)\))?$")


class DocError(MantraError):
    """A doc comment that does not follow the fixed form."""


@dataclass(frozen=True)
class ErrorCode:
    name: str  # BAD_HANDLE
    variant: str  # BadHandle
    code: int
    meaning: str


@dataclass(frozen=True)
class Argument:
    name: str
    note: str | None


@dataclass(frozen=True)
class ErrorRef:
    name: str
    note: str | None


@dataclass
class Syscall:
    name: str
    number: int
    line: int
    summary: str
    arguments: list[Argument]
    rights: str
    returns: str
    errors_text: str
    errors: list[ErrorRef] = field(default_factory=list)


@dataclass(frozen=True)
class Abi:
    version: int
    errors: list[ErrorCode]
    syscalls: list[Syscall]
    # Numbers below COUNT kept free for syscalls another tree adds
    # (`pub const RESERVED: &[u64] = &[...]` in `pub mod nr`).
    reserved: list[int] = field(default_factory=list)


def _split_top_level(text: str) -> list[str]:
    """Splits at commas outside parentheses."""
    items, depth, current = [], 0, []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth = max(0, depth - 1)
        if char == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    items.append("".join(current).strip())
    return [item for item in items if item]


def _camel_to_upper(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()


def _block(lines: list[str], opener: re.Pattern[str], what: str, source: str) -> tuple[int, int]:
    """Line indices (start, end) of the brace block whose first line matches `opener`."""
    for start, line in enumerate(lines):
        if opener.match(line):
            depth = 0
            for end in range(start, len(lines)):
                depth += lines[end].count("{") - lines[end].count("}")
                if depth == 0 and end > start:
                    return start, end
            break
    raise DocError(f"{source}: no {what} found", "the ABI crate must define it")


def _parse_errors(lines: list[str], text: str, source: str) -> list[ErrorCode]:
    start, end = _block(lines, re.compile(r"^pub enum Error\b"), "`pub enum Error`", source)
    names = dict(_NAME_ARM.findall(text))
    errors, doc = [], []
    for line in lines[start + 1:end]:
        stripped = line.strip()
        if stripped.startswith("///"):
            doc.append(stripped[3:].strip())
        elif match := _VARIANT.match(line):
            variant, code = match.group(1), int(match.group(2))
            errors.append(ErrorCode(names.get(variant, _camel_to_upper(variant)), variant, code, " ".join(doc)))
            doc = []
        elif stripped and not stripped.startswith("#"):
            doc = []
    if not errors:
        raise DocError(f"{source}: `pub enum Error` has no variants", "define the error codes")
    return errors


def _doc_sections(name: str, line_no: int, doc: list[str], source: str) -> Syscall:
    where = f"{source}:{line_no}: syscall {name}"
    if not doc:
        raise DocError(f"{where} has no doc comment", _FORM_HINT)
    summary_lines: list[str] = []
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for line in doc:
        label, sep, rest = line.partition(":")
        if sep and label in SECTIONS:
            if label in sections:
                raise DocError(f"{where}: `{label}:` appears twice", _FORM_HINT)
            current = label
            sections[label] = [rest.strip()]
        elif current is None:
            summary_lines.append(line)
        elif line:
            sections[current].append(line)
    summary = " ".join(line for line in summary_lines if line).strip()
    if not summary:
        raise DocError(f"{where}: the doc comment has no summary before its sections", _FORM_HINT)
    for label in SECTIONS:
        if label not in sections:
            raise DocError(f"{where} lacks the `{label}:` section", _FORM_HINT)
    order = [label for label in sections]
    if order != list(SECTIONS):
        raise DocError(f"{where}: sections are in the order {', '.join(order)}; expected {', '.join(SECTIONS)}",
                       _FORM_HINT)
    values = {}
    for label, parts in sections.items():
        value = " ".join(p for p in parts if p).strip()
        value = value[:-1].rstrip() if value.endswith(".") else value
        if not value:
            raise DocError(f"{where}: the `{label}:` section is empty", _FORM_HINT)
        values[label] = value
    arguments = []
    if values["Arguments"].lower() != "none":
        for item in _split_top_level(values["Arguments"]):
            match = _ARGUMENT.match(item)
            if not match:
                raise DocError(f"{where}: argument {item!r} is not of the form `name` or `name` (note)", _FORM_HINT)
            arguments.append(Argument(match.group(1), match.group(2)))
    if len(arguments) > len(REGISTERS):
        raise DocError(f"{where} lists {len(arguments)} arguments; at most {len(REGISTERS)} fit in registers",
                       "pass the rest in a struct (see CallArgs)")
    return Syscall(name, -1, line_no, summary, arguments, values["Rights"], values["Returns"], values["Errors"])


def _resolve_errors(abi_errors: list[ErrorCode], syscalls: list[Syscall], source: str) -> None:
    known = {e.name for e in abi_errors}
    by_name = {s.name: s for s in syscalls}
    resolved: dict[str, list[ErrorRef]] = {}

    def resolve(call: Syscall, chain: tuple[str, ...]) -> list[ErrorRef]:
        if call.name in resolved:
            return resolved[call.name]
        where = f"{source}:{call.line}: syscall {call.name}"
        if call.name in chain:
            raise DocError(f"{where}: `Errors:` refers to itself through {' -> '.join(chain + (call.name,))}",
                           _FORM_HINT)
        errors: list[ErrorRef] = []

        def add(ref: ErrorRef) -> None:
            if ref.name not in known:
                raise DocError(f"{where}: unknown error {ref.name!r} in `Errors:` (errors: {', '.join(sorted(known))})",
                               "use the names of Error::name() in the ABI crate")
            if all(e.name != ref.name for e in errors):
                errors.append(ref)

        if call.errors_text.lower() != "none":
            for index, item in enumerate(_split_top_level(call.errors_text)):
                if index == 0 and item.startswith("as "):
                    for other in re.split(r"\s+and\s+", item[3:].strip()):
                        if other not in by_name:
                            raise DocError(f"{where}: `Errors:` refers to unknown syscall {other!r}", _FORM_HINT)
                        for ref in resolve(by_name[other], chain + (call.name,)):
                            add(ref)
                    continue
                mode = "add"
                for word in ("plus ", "except "):
                    if item.startswith(word):
                        mode, item = word.strip(), item[len(word):].strip()
                match = _ERROR_ITEM.match(item)
                if not match:
                    raise DocError(f"{where}: error {item!r} is not of the form NAME or NAME (when)", _FORM_HINT)
                ref = ErrorRef(match.group(1), match.group(2))
                if mode == "except":
                    if all(e.name != ref.name for e in errors):
                        raise DocError(f"{where}: `except {ref.name}` removes an error that is not listed", _FORM_HINT)
                    errors[:] = [e for e in errors if e.name != ref.name]
                else:
                    add(ref)
        resolved[call.name] = errors
        return errors

    for call in syscalls:
        call.errors = resolve(call, ())


def parse(path: Path, source: str | None = None) -> Abi:
    """Parses the ABI crate at `path`; `source` is how messages name it."""
    source = source or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DocError(f"cannot read {source}: {exc.strerror}", "run from a MantraOS checkout") from None
    lines = text.splitlines()
    version_match = _ABI_VERSION.search(text)
    version = int(version_match.group(1)) if version_match else 0
    errors = _parse_errors(lines, text, source)
    start, end = _block(lines, re.compile(r"^pub mod nr\b"), "`pub mod nr`", source)
    syscalls: list[Syscall] = []
    doc: list[str] = []
    count = None
    reserved: list[int] = []
    for index in range(start + 1, end):
        stripped = lines[index].strip()
        reserved_match = _RESERVED.match(lines[index])
        if reserved_match:
            reserved = [int(n) for n in reserved_match.group(1).replace(" ", "").split(",") if n]
            doc = []
            continue
        if stripped.startswith("///"):
            body = stripped[3:]
            doc.append(body[1:] if body.startswith(" ") else body)
            continue
        match = _CONST.match(lines[index])
        if match:
            name, number = match.group(1), int(match.group(2))
            if name == "COUNT":
                count = number
            else:
                call = _doc_sections(name, index + 1, doc, source)
                call.number = number
                syscalls.append(call)
            doc = []
        elif stripped and not stripped.startswith(("#", "//")):
            doc = []
    if not syscalls:
        raise DocError(f"{source}: `pub mod nr` defines no syscalls", "add them")
    numbers = sorted(s.number for s in syscalls)
    for call in syscalls:
        twins = [s.name for s in syscalls if s.number == call.number]
        if len(twins) > 1:
            raise DocError(f"{source}:{call.line}: syscalls {', '.join(twins)} share number {call.number}",
                           "give every syscall its own number")
    if set(numbers) & set(reserved):
        raise DocError(f"{source}: syscall numbers {sorted(set(numbers) & set(reserved))} are also RESERVED",
                       "drop them from `RESERVED` once they are defined")
    if count is not None and sorted(numbers + reserved) != list(range(count)):
        raise DocError(f"{source}: syscall numbers are {numbers[0]}..{numbers[-1]} with gaps or beyond COUNT = {count}",
                       "number the syscalls 0..COUNT-1 (numbers in `RESERVED` excepted) and keep COUNT in step")
    _resolve_errors(errors, syscalls, source)
    syscalls.sort(key=lambda s: s.number)
    return Abi(version, errors, syscalls, sorted(reserved))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _anchor(name: str) -> str:
    return name.lower()


def render(abi: Abi, source: str = str(ABI_SOURCE)) -> str:
    """The markdown reference."""
    meaning = {e.name: e for e in abi.errors}
    out = [
        "# MantraOS syscall reference",
        "",
        f"<!-- Generated by `./mantra docs` from {source}. Edit the doc comments there, not this file. -->",
        "",
        f"ABI version {abi.version}. {len(abi.syscalls)} syscalls.",
        "",
        "Calling convention (x86_64): `syscall` with the number in RAX and up to six arguments in "
        f"{', '.join(REGISTERS)}. RAX returns the result: `>= 0` is success (a value or 0), `< 0` is the "
        "negated error code. RCX and R11 are clobbered; every other register is preserved.",
        "",
        "| # | syscall | summary |",
        "| ---: | --- | --- |",
    ]
    rows = [(call.number, f"| {call.number} | [`{call.name}`](#{_anchor(call.name)}) | {_cell(call.summary)} |")
            for call in abi.syscalls]
    rows += [(number, f"| {number} | *reserved* | not in this build: returns `BAD_SYSCALL` |") for number in abi.reserved]
    out += [row for _, row in sorted(rows)]
    out += ["", "## Error codes", "", "| code | error | meaning |", "| ---: | --- | --- |"]
    for error in abi.errors:
        out.append(f"| {error.code} | `{error.name}` | {_cell(error.meaning)} |")
    for call in abi.syscalls:
        out += ["", f'<a id="{_anchor(call.name)}"></a>', "", f"## {call.number} · `{call.name}`", "", call.summary, ""]
        out.append("**Arguments:**" + (" none." if not call.arguments else ""))
        if call.arguments:
            out += ["", "| register | argument | notes |", "| --- | --- | --- |"]
            for register, argument in zip(REGISTERS, call.arguments):
                out.append(f"| {register} | `{argument.name}` | {_cell(argument.note or '')} |")
        out += ["", f"**Rights:** {call.rights}.", "", f"**Returns:** {call.returns}.", ""]
        if not call.errors:
            out.append("**Errors:** none.")
            continue
        out.append("**Errors:**" + (f" {call.errors_text}." if call.errors_text.startswith("as ") else ""))
        out += ["", "| error | code | meaning |", "| --- | ---: | --- |"]
        for ref in call.errors:
            error = meaning[ref.name]
            text = error.meaning + (f" *Here: {ref.note}.*" if ref.note else "")
            out.append(f"| `{ref.name}` | {error.code} | {_cell(text)} |")
    return "\n".join(out) + "\n"
