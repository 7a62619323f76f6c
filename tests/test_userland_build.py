"""The userland in the build: product.toml's services (schema and checks),
`init.manifest`, program discovery, the userland cargo call, packing the
programs stripped into the boot filesystem, and — in the real image — that
the programs are static ELF executables laid out as mantra-os/user/user.ld
says."""

from __future__ import annotations

import json
import re
import shutil
import stat
import struct
import sys
from pathlib import Path

import pytest
from bootfs_reader import parse as parse_bootfs
from gpt_reader import read_gpt
from mantra import userland
from mantra.build import BuildResult, build
from mantra.errors import MantraError
from mantra.product import CAPABILITIES, init_manifest, load_product
from mantra.workspace import Workspace
from support import ROOT, read_partition

# Every program of mantra-os/user/, and those the default product packs.
USER_PROGRAMS = ["init", "logd", "demo", "crashy", "utest", "bench", "attestd"]
DEFAULT_PROGRAMS = ["init", "logd", "demo", "crashy", "attestd"]


def write_product(workspace: Workspace, name: str, services: str, extra: str = "") -> None:
    directory = workspace.products_dir / name
    directory.mkdir()
    (directory / "product.toml").write_text(
        f'name = "{name}"\ndescription = "test"\n{extra}\n[[service]]\nname = "MantraCore"\nkind = "kernel"\n'
        + services)
    (directory / "prj.conf").write_text("")


def user(name: str, **keys: object) -> str:
    lines = [f'[[service]]\nname = "{name}"\nkind = "user"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


LOGD = user("logd", caps=["klog", "logctl"])


def with_user_crates(workspace: Workspace) -> Workspace:
    """Copies mantra-os/user/*/Cargo.toml (what program discovery reads)."""
    for crate in (ROOT / "mantra-os" / "user").glob("*/Cargo.toml"):
        target = workspace.native_dir / "user" / crate.parent.name / "Cargo.toml"
        target.parent.mkdir(parents=True)
        shutil.copy(crate, target)
    shutil.copy(ROOT / "mantra-os" / "Cargo.toml", workspace.native_dir / "Cargo.toml")
    return workspace


# --- product.toml and init.manifest -------------------------------------------------------------------------


def test_default_product_services_and_init_manifest(workspace: Workspace) -> None:
    product = load_product(workspace, "default")
    assert [(s.name, s.kind) for s in product.services] == [
        ("MantraCore", "kernel"), ("logd", "user"), ("demo", "user"), ("crashy", "user"), ("attestd", "user")]
    crashy = product.services[3]
    assert (crashy.program, crashy.restart, crashy.after) == ("crashy", "always", ("logd",))
    assert (product.supervisor.crash_loop_limit, product.supervisor.crash_loop_window_ms) == (5, 10_000)
    lines = init_manifest(product).splitlines()
    assert lines[0].startswith("# init.manifest of product 'default'")
    assert lines[1:] == [
        "service logd program=logd restart=always after= caps=klog,logctl args=",
        "service demo program=demo restart=on-failure after=logd caps= args=count=3,interval_ms=500",
        "service crashy program=crashy restart=always after=logd caps= args=fault=null,fault=divide,"
        "fault=stack-overflow,fault=illegal-instruction,fault=kernel-address confirm=no",
        "service attestd program=attestd restart=on-failure after=logd caps=console,eventlog,tpm args=",
        "crashloop 5 10000",
        "backoff 100 5000",
        "confirm 1000",
    ]


def test_defaults_of_a_user_service(scratch: Workspace) -> None:
    write_product(scratch, "mini", LOGD + user("svc"))
    product = load_product(scratch, "mini")
    svc = product.services[-1]
    assert (svc.program, svc.restart, svc.after, svc.caps, svc.args) == ("svc", "always", (), (), ())
    assert "service svc program=svc restart=always after= caps= args=" in init_manifest(product)
    assert "crashloop 5 10000\nbackoff 100 5000\nconfirm 1000\n" in init_manifest(product)
    assert svc.confirm


@pytest.mark.parametrize(
    ("services", "extra", "message"),
    [
        (LOGD + user("demo", after=["logdd"]), "",
         "service 'demo': unknown dependency 'logdd' (user services: logd, demo)"),
        (LOGD + user("a", after=["b"]) + user("b", after=["c"]) + user("c", after=["a"]), "",
         "dependency cycle a -> b -> c -> a"),
        (LOGD + user("a", after=["a"]), "", "service 'a' depends on itself"),
        (LOGD + user("demo", caps=["root"]), "",
         "service 'demo': unknown capability 'root' (capabilities: klog, logctl, spawn, irq, console, eventlog, tpm, fwvar)"),
        (LOGD + user("demo", confirm="no"), "", "`service[2].confirm` must be true or false, not 'no'"),
        (LOGD + user("demo", restart="sometimes"), "",
         "service 'demo': restart 'sometimes' is not one of always, on-failure, never"),
        (LOGD + user("demo", restrat="never"), "", "service 'demo': unknown key `service[2].restrat`"),
        (LOGD + user("demo", args=["two words"]), "", "service 'demo': argument 'two words' is empty or has blanks"),
        (LOGD + user("logd"), "", "service 'logd' is listed twice"),
        (user("demo"), "", "needs exactly one log server, a service granted 'logctl' (found: none)"),
        (LOGD + user("logd2", caps=["logctl"]), "", "(found: logd, logd2)"),
        (LOGD + user("a/b"), "", "bad service name 'a/b'"),
        (LOGD, "[supervisor]\ncrash_loop_limit = 0\n", "`supervisor.crash_loop_limit` must be at least 1"),
        (LOGD, "[supervisor]\nbackof_max_ms = 1\n", "[supervisor]: unknown key `supervisor.backof_max_ms`"),
    ],
)
def test_bad_services_name_the_service_and_file(scratch: Workspace, services: str, extra: str, message: str) -> None:
    write_product(scratch, "bad", services, extra)
    with pytest.raises(MantraError) as caught:
        load_product(scratch, "bad")
    assert message in caught.value.message
    assert str(scratch.products_dir / "bad" / "product.toml") in caught.value.message


def test_capabilities_match_mantra_init() -> None:
    source = (ROOT / "mantra-os" / "user" / "init" / "src" / "manifest.rs").read_text()
    block = source[source.index("pub const CAPABILITIES"):source.index("];", source.index("pub const CAPABILITIES"))]
    assert re.findall(r'\("([a-z-]+)",', block) == list(CAPABILITIES)


# --- programs ------------------------------------------------------------------------------------------------


def test_discovers_the_programs_of_mantra_os_user(workspace: Workspace) -> None:
    programs = userland.discover(workspace)
    assert sorted(programs) == sorted(USER_PROGRAMS)
    assert programs["init"].package == "mantra-init" and programs["logd"].dir.name == "logd"
    assert userland.programs_for(workspace, load_product(workspace, "default")) == [
        programs[name] for name in DEFAULT_PROGRAMS]


def test_unknown_program_names_the_service(scratch: Workspace) -> None:
    with_user_crates(scratch)
    write_product(scratch, "odd", LOGD + user("web", program="httpd"))
    with pytest.raises(MantraError) as caught:
        userland.programs_for(scratch, load_product(scratch, "odd"))
    assert (f"{scratch.products_dir / 'odd' / 'product.toml'}: service 'web': program 'httpd' is unknown "
            "(programs in mantra-os/user/: attestd, bench, crashy, demo, init, logd, utest)") in caught.value.message
    write_product(scratch, "loop", LOGD + user("again", program="init"))
    with pytest.raises(MantraError, match="program 'init' is MantraInit itself"):
        userland.programs_for(scratch, load_product(scratch, "loop"))


def elf(payload: bytes, trailer: bytes = b"", phnum: int = 1) -> bytes:
    header = struct.pack("<4s5B7xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, 2, 62, 1, 0x400000, 64, 4242, 0,
                         64, 56, phnum, 64, 9, 8)
    start = 64 + 56 * phnum
    phdrs = b"".join(struct.pack("<IIQQQQQQ", 1, 5, start, 0x400000, 0x400000, len(payload), len(payload) + 100,
                                 4096) for _ in range(phnum))
    return header + phdrs + payload + trailer


def test_strip_keeps_the_segments_and_drops_the_rest() -> None:
    stripped = userland.strip("demo", elf(b"CODE", b"\0" * 1000 + b"SECTIONS"))
    assert stripped == elf(b"CODE")[:40] + b"\0" * 8 + elf(b"CODE")[48:60] + b"\0" * 4 + elf(b"CODE")[64:]
    assert struct.unpack_from("<Q", stripped, 40)[0] == 0 and struct.unpack_from("<HH", stripped, 60) == (0, 0)
    for bad, why in [(b"hello", "too short"), (b"\x7fELF" + b"\1" * 60, "not little-endian ELF64"),
                     (elf(b"x")[:16] + struct.pack("<H", 3) + elf(b"x")[18:], "type 3"),
                     (elf(b"x", phnum=0), "bad program header table")]:
        with pytest.raises(MantraError, match=f"program 'demo' is not a static ELF64 x86_64 executable: {why}"):
            userland.strip("demo", bad)


# --- the build, with cargo replaced ---------------------------------------------------------------------------

FAKE_CARGO = '''#!{python}
import json, os, struct, sys
from pathlib import Path
args = sys.argv[1:]
with open(os.environ["FAKE_CARGO_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
target = args[args.index("--target") + 1]
profile = "release" if "--release" in args else "debug"
for binary in [args[i + 1] for i, arg in enumerate(args) if arg == "--bin"]:
    out = Path(os.environ["CARGO_TARGET_DIR"], target, profile, binary + (".efi" if "uefi" in target else ""))
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = binary.encode()
    header = struct.pack("<4s5B7xHHIQQQIHHHHHH", b"\\x7fELF", 2, 1, 1, 0, 0, 2, 62, 1, 0x400000, 64, 0, 0,
                         64, 56, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 120, 0x400000, 0x400000, len(payload), len(payload), 4096)
    out.write_bytes(header + phdr + payload + b"DEBUGINFO")
'''


@pytest.fixture
def fake(scratch: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    scratch.native_dir.mkdir()
    with_user_crates(scratch)
    cargo = tmp_path / "fake-cargo"
    cargo.write_text(FAKE_CARGO.format(python=sys.executable))
    cargo.chmod(cargo.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("MANTRA_CARGO", str(cargo))
    monkeypatch.setenv("FAKE_CARGO_LOG", str(tmp_path / "cargo.log"))
    return scratch


def calls(tmp_path: Path) -> list[list[str]]:
    return [json.loads(line) for line in (tmp_path / "cargo.log").read_text().splitlines()]


def bootfs_of(result: BuildResult, tmp_path: Path) -> dict[str, bytes]:
    files = read_partition(result.image, "slot-a", tmp_path)
    return dict(parse_bootfs(files["MANTRA/BOOTFS.IMG"]))


def test_userland_is_one_cargo_call_and_lands_stripped_in_the_bootfs(fake: Workspace, tmp_path: Path) -> None:
    result = build(fake, "qemu-x86_64", "default", release=True)
    userland_call = calls(tmp_path)[-1]
    assert userland_call[:11] == ["build", "-p", "mantra-init", "-p", "mantra-logd", "-p", "mantra-demo",
                                  "-p", "mantra-crashy", "-p", "mantra-attestd"]
    assert userland_call[11:23] == ["--bin", "init", "--bin", "logd", "--bin", "demo", "--bin", "crashy",
                                    "--bin", "attestd", "--target", "x86_64-unknown-none"]
    assert "-Zbuild-std=core,alloc,compiler_builtins" in userland_call and "--release" in userland_call
    bootfs = bootfs_of(result, tmp_path)
    assert list(bootfs) == ["product.toml", ".config", "init.manifest", *DEFAULT_PROGRAMS]
    assert bootfs["init.manifest"].decode() == init_manifest(load_product(fake, "default"))
    for name in DEFAULT_PROGRAMS:
        assert bootfs[name].endswith(name.encode()), "stripped: the trailing debug info is gone"
        assert bootfs[name][:4] == b"\x7fELF"
    manifest = json.loads(result.manifest.read_text())
    assert [f["name"] for f in manifest["bootfs"]] == list(bootfs)


def test_kernel_only_products_build_no_userland(fake: Workspace, tmp_path: Path) -> None:
    write_product(fake, "bare", "")
    result = build(fake, "qemu-x86_64", "bare")
    assert [call[2] for call in calls(tmp_path)] == ["mantra-boot", "mantra-kernel"]
    assert list(bootfs_of(result, tmp_path)) == ["product.toml", ".config"]


def test_unknown_program_fails_before_compiling(fake: Workspace, tmp_path: Path) -> None:
    write_product(fake, "odd", LOGD + user("web", program="httpd"))
    with pytest.raises(MantraError, match="service 'web': program 'httpd' is unknown"):
        build(fake, "qemu-x86_64", "odd")
    assert not (tmp_path / "cargo.log").exists()


# --- the real image -------------------------------------------------------------------------------------------


def test_real_programs_are_static_executables_laid_out_by_user_ld(default_image: BuildResult,
                                                                   tmp_path: Path) -> None:
    bootfs = bootfs_of(default_image, tmp_path)
    for name in DEFAULT_PROGRAMS:
        data = bootfs[name]
        ident, e_type, machine, entry, phoff, shoff, phentsize, phnum, shnum = (
            data[:4], *struct.unpack_from("<HH", data, 16), *struct.unpack_from("<QQQ", data, 24),
            *struct.unpack_from("<HH", data, 54), struct.unpack_from("<H", data, 60)[0])
        assert (ident, e_type, machine, shoff, shnum) == (b"\x7fELF", 2, 62, 0, 0), name
        assert entry == 0x400000, f"{name}: _start comes first in .text"
        loads = []
        for i in range(phnum):
            p_type, flags, offset, vaddr, _, filesz, memsz, _ = struct.unpack_from("<IIQQQQQQ", data,
                                                                                    phoff + i * phentsize)
            assert p_type != 2 and p_type != 3, f"{name}: no PT_DYNAMIC / PT_INTERP"
            if p_type == 1:
                loads.append((vaddr, memsz, flags))
                assert offset + filesz <= len(data)
        assert [flags for _, _, flags in loads] == [5, 4, 6], f"{name}: text RX, rodata R, data RW"
        assert all(vaddr % 4096 == 0 for vaddr, _, _ in loads)
        assert loads[0][0] == 0x400000
        assert len(data) < 1 << 20, f"{name}: {len(data)} bytes: debug info was not stripped"
