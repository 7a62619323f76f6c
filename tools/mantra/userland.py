"""User programs: discovery, build and packing.

A user program is a crate under mantra-os/user/ whose Cargo.toml says

    [package.metadata.mantra]
    program = "<name>"

and has a binary target of that name; it is packed into the boot filesystem
under that name. `./mantra build` compiles MantraInit plus every program the
product's user services name, in one cargo call for the bare-metal target
(x86_64-unknown-none, linked with mantra-os/user/user.ld), and packs each
binary without its debug information: the file up to the end of its last
segment, section headers dropped (the unstripped ELF stays in the target
directory for debuggers).
"""

from __future__ import annotations

import struct
import tomllib
from dataclasses import dataclass
from pathlib import Path

from mantra.errors import MantraError
from mantra.product import Product
from mantra.workspace import Workspace

INIT_PROGRAM = "init"
USER_DIR = "user"


@dataclass(frozen=True)
class Program:
    name: str  # binary and boot filesystem name
    package: str  # cargo package
    dir: Path


def discover(workspace: Workspace) -> dict[str, Program]:
    """Every program of mantra-os/user/, by name."""
    programs: dict[str, Program] = {}
    user_dir = workspace.native_dir / USER_DIR
    if not user_dir.is_dir():
        return programs
    for manifest in sorted(user_dir.glob("*/Cargo.toml")):
        try:
            with manifest.open("rb") as stream:
                data = tomllib.load(stream)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise MantraError(f"cannot read {workspace.relative(manifest)}: {exc}", "fix the crate's Cargo.toml") from None
        name = data.get("package", {}).get("metadata", {}).get("mantra", {}).get("program")
        if name is None:
            continue  # a library (mantra-rt)
        package = data["package"]["name"]
        if name in programs:
            raise MantraError(f"program '{name}' is declared by both {programs[name].package} and {package}",
                              "give each program its own name in [package.metadata.mantra]")
        programs[name] = Program(name=name, package=package, dir=manifest.parent)
    return programs


def programs_for(workspace: Workspace, product: Product) -> list[Program]:
    """MantraInit and the programs of the product's user services, in that
    order; empty for a product without user services (kernel only)."""
    users = product.user_services
    if not users:
        return []
    available = discover(workspace)
    known = ", ".join(sorted(available)) or "none"
    wanted = [INIT_PROGRAM]
    for service in users:
        if service.program == INIT_PROGRAM or service.program not in available:
            why = "is MantraInit itself" if service.program == INIT_PROGRAM else "is unknown"
            raise MantraError(
                f"{product.data_file}: service '{service.name}': program '{service.program}' {why} "
                f"(programs in mantra-os/user/: {known})",
                "name a program of mantra-os/user/ (a crate with [package.metadata.mantra] program = ...)",
            )
        if service.program not in wanted:
            wanted.append(service.program)
    if INIT_PROGRAM not in available:
        raise MantraError(f"MantraInit (program '{INIT_PROGRAM}') is missing from mantra-os/user/",
                          "restore mantra-os/user/init")
    return [available[name] for name in wanted]


_EHDR = struct.Struct("<4sBBBBB7xHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")


def strip(name: str, elf: bytes,
          hint: str = "build it with ./mantra build (target x86_64-unknown-none, mantra-os/user/user.ld)") -> bytes:
    """The program as it goes into the image: everything up to the end of
    the last segment's file bytes, without section headers (so without debug
    information and symbols). Refuses anything but a static ELF64 x86_64
    executable."""
    def bad(why: str) -> MantraError:
        return MantraError(f"program '{name}' is not a static ELF64 x86_64 executable: {why}", hint)

    if len(elf) < _EHDR.size:
        raise bad("too short")
    (magic, cls, data, _version, _osabi, _abiv, e_type, machine, _ev, _entry, phoff, _shoff, _flags, ehsize,
     phentsize, phnum, _shentsize, _shnum, _shstrndx) = _EHDR.unpack_from(elf)
    if magic != b"\x7fELF" or cls != 2 or data != 1:
        raise bad("not little-endian ELF64")
    if e_type != 2 or machine != 62:
        raise bad(f"type {e_type}, machine {machine} (want ET_EXEC, x86_64)")
    if phentsize < _PHDR.size or phnum == 0 or phoff + phnum * phentsize > len(elf):
        raise bad("bad program header table")
    end = max(ehsize, phoff + phnum * phentsize)
    for i in range(phnum):
        p_type, _pf, p_offset, _va, _pa, p_filesz, _memsz, _align = _PHDR.unpack_from(elf, phoff + i * phentsize)
        if p_type != 0:
            end = max(end, p_offset + p_filesz)
    if end > len(elf):
        raise bad("a segment runs past the end of the file")
    out = bytearray(elf[:end])
    # e_shoff = 0, e_shnum = 0, e_shstrndx = 0: no section headers.
    struct.pack_into("<Q", out, 40, 0)
    struct.pack_into("<HH", out, 60, 0, 0)
    return bytes(out)
