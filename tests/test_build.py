"""The build driver, with cargo replaced by a stand-in (MANTRA_CARGO) that
writes recognizable artifacts: configuration -> cargo calls -> ESP, GPT and
manifest.json, and repacking only when an input changed."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import sys
from pathlib import Path

import pytest
from gpt_reader import read_gpt
from mantra.build import build
from mantra.errors import MantraError
from mantra.image import gpt
from mantra.workspace import Workspace
from support import ROOT, add_product, read_partition

FAKE_CARGO = '''#!{python}
"""Stand-in for cargo: records its call, writes the artifact cargo would."""
import hashlib, json, os, struct, sys
from pathlib import Path
args = sys.argv[1:]
with open(os.environ["FAKE_CARGO_LOG"], "a") as log:
    log.write(json.dumps({{"args": args, "cwd": os.getcwd(), "env": {{k: os.environ.get(k) for k in
        ("RUSTC", "RUSTC_BOOTSTRAP", "CARGO_TARGET_DIR", "MANTRA_CONFIG_DIR")}}}}) + "\\n")
if os.environ.get("FAKE_CARGO_FAIL"):
    sys.exit(101)
target = args[args.index("--target") + 1]
features = args[args.index("--features") + 1] if "--features" in args else ""
profile = "release" if "--release" in args else "debug"
config = Path(os.environ["MANTRA_CONFIG_DIR"], "mantra_config.rs").read_bytes()
for binary in [args[i + 1] for i, arg in enumerate(args) if arg == "--bin"]:
    out = Path(os.environ["CARGO_TARGET_DIR"], target, profile, binary + (".efi" if "uefi" in target else ""))
    out.parent.mkdir(parents=True, exist_ok=True)
    text = f"{{binary}} {{target}} {{profile}} features={{features}} config={{hashlib.sha256(config).hexdigest()}}"
    if binary == "mantra-boot":
        out.write_text(text)
    else:  # the kernel or a user program: the smallest ELF64 executable the packer accepts, plus "debug info"
        payload = text.encode()
        header = struct.pack("<4s5B7xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, 2, 62, 1, 0x400000, 64, 0, 0,
                             64, 56, 1, 64, 0, 0)
        phdr = struct.pack("<IIQQQQQQ", 1, 5, 120, 0x400000, 0x400000, len(payload), len(payload), 4096)
        out.write_bytes(header + phdr + payload + b"DEBUGINFO")
'''


@pytest.fixture
def fake(scratch: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """`scratch` with mantra-os/Cargo.toml, and MANTRA_CARGO set to the stand-in."""
    (scratch.native_dir).mkdir()
    shutil.copy(ROOT / "mantra-os" / "Cargo.toml", scratch.native_dir / "Cargo.toml")
    for crate in (ROOT / "mantra-os" / "user").glob("*/Cargo.toml"):  # the user programs mantra build looks for
        (scratch.native_dir / "user" / crate.parent.name).mkdir(parents=True)
        shutil.copy(crate, scratch.native_dir / "user" / crate.parent.name / "Cargo.toml")
    cargo = tmp_path / "fake-cargo"
    cargo.write_text(FAKE_CARGO.format(python=sys.executable))
    cargo.chmod(cargo.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("MANTRA_CARGO", str(cargo))
    monkeypatch.setenv("FAKE_CARGO_LOG", str(tmp_path / "cargo.log"))
    return scratch


def cargo_calls(tmp_path: Path) -> list[dict]:
    log = tmp_path / "cargo.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_build_calls_cargo_and_packs_the_image(fake: Workspace, tmp_path: Path) -> None:
    result = build(fake, "qemu-x86_64", "default")
    root = fake.root / "build" / "qemu-x86_64" / "default"
    calls = cargo_calls(tmp_path)
    assert [call["args"][:7] for call in calls[:2]] == [
        ["build", "-p", "mantra-boot", "--bin", "mantra-boot", "--target", "x86_64-unknown-uefi"],
        ["build", "-p", "mantra-kernel", "--bin", "mantra-kernel", "--target", "x86_64-unknown-none"],
    ]
    assert len(calls) == 3 and "--bin" in calls[2]["args"]  # then the userland (tests/test_userland_build.py)
    for call in calls:
        assert "-Zbuild-std=core,alloc,compiler_builtins" in call["args"]
        assert "-Zbuild-std-features=compiler-builtins-mem" in call["args"]
        assert call["cwd"] == str(fake.native_dir)
        assert call["env"] == {"RUSTC": "/usr/bin/rustc", "RUSTC_BOOTSTRAP": "1",
                               "CARGO_TARGET_DIR": str(root.parent / "target"), "MANTRA_CONFIG_DIR": str(root / "config")}
    assert result.image == root / "image.img" and result.packed
    manifest = json.loads(result.manifest.read_text())
    assert (manifest["board"], manifest["product"], manifest["variant"], manifest["profile"]) == (
        "qemu-x86_64", "default", "default", "debug")
    assert manifest["version"] == "0.1.0"
    assert [(s["name"], s["kind"]) for s in manifest["services"]] == [
        ("MantraCore", "kernel"), ("logd", "user"), ("demo", "user"), ("crashy", "user")]
    assert manifest["config"]["sha256"] == hashlib.sha256((root / "config" / ".config").read_bytes()).hexdigest()
    assert [(c["name"], c["kind"], c["partition"], c["path"]) for c in manifest["components"]] == [
        ("MantraBoot", "bootloader", "esp", "EFI/BOOT/BOOTX64.EFI"),
        ("MantraCore", "kernel", "slots", "MANTRA/KERNEL.ELF"),
        ("boot filesystem", "bootfs", "slots", "MANTRA/BOOTFS.IMG"),
    ]
    esp = read_partition(result.image, "esp", tmp_path)
    slots = [read_partition(result.image, name, tmp_path) for name in ("slot-a", "slot-b")]
    assert sorted(esp) == ["EFI/BOOT/BOOTX64.EFI", "MANTRA/MANIFEST.SIG"]
    assert sorted(slots[0]) == ["MANTRA/BOOTFS.IMG", "MANTRA/KERNEL.ELF", "MANTRA/MANIFEST.SIG"]
    assert slots[0] == slots[1]
    files = {**slots[0], **esp}
    for component in manifest["components"]:
        data = files[component["path"]]
        assert (len(data), hashlib.sha256(data).hexdigest()) == (component["size"], component["sha256"])
    # The kernel's ELF without what follows its segments (debug information).
    kernel = files["MANTRA/KERNEL.ELF"]
    assert kernel.startswith(b"\x7fELF") and b"mantra-kernel x86_64-unknown-none debug features= " in kernel
    assert not kernel.endswith(b"DEBUGINFO")
    assert manifest["image"]["sha256"] == hashlib.sha256(result.image.read_bytes()).hexdigest()
    assert [p["name"] for p in manifest["partitions"]] == ["esp", "slot-a", "slot-b"]


def test_unchanged_inputs_skip_packing(fake: Workspace) -> None:
    first = build(fake, "qemu-x86_64", "default")
    stamp = first.image.stat().st_mtime_ns
    second = build(fake, "qemu-x86_64", "default")
    assert first.packed and not second.packed
    assert second.image.stat().st_mtime_ns == stamp


def test_changed_configuration_repacks(fake: Workspace) -> None:
    build(fake, "qemu-x86_64", "default")
    prj = fake.products_dir / "default" / "prj.conf"
    prj.write_text(prj.read_text() + "CONFIG_TIMER_HZ=1000\n")
    assert build(fake, "qemu-x86_64", "default").packed


def test_cmdline_goes_to_the_slots(fake: Workspace, tmp_path: Path) -> None:
    add_product(fake, "withcmd", "", extra_toml='cmdline = "log=debug ktest=all"')
    result = build(fake, "qemu-x86_64", "withcmd")
    files = read_partition(result.image, "slot-b", tmp_path)
    assert files["MANTRA/CMDLINE.TXT"] == b"log=debug ktest=all"
    kinds = [c["kind"] for c in json.loads(result.manifest.read_text())["components"]]
    assert kinds == ["bootloader", "kernel", "bootfs", "cmdline"]


def test_ktest_and_release_builds(fake: Workspace, tmp_path: Path) -> None:
    result = build(fake, "qemu-x86_64", "default", ktest=True, release=True)
    root = fake.root / "build" / "qemu-x86_64" / "default"
    assert result.image == root / "ktest" / "image.img"
    kernel_call = [c["args"] for c in cargo_calls(tmp_path) if "mantra-kernel" in c["args"]][-1]
    assert kernel_call[kernel_call.index("--features") + 1] == "ktest" and "--release" in kernel_call
    manifest = json.loads(result.manifest.read_text())
    assert (manifest["variant"], manifest["profile"]) == ("ktest", "release")
    assert read_gpt(result.image).partitions[1].type_guid == gpt.MANTRA_SLOT_TYPE


def test_cargo_failure_is_an_error(fake: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CARGO_FAIL", "1")
    with pytest.raises(MantraError, match=r"cargo build of MantraBoot failed \(exit status 101\)"):
        build(fake, "qemu-x86_64", "default")


def test_missing_toolchain_says_what_to_install(fake: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MANTRA_CARGO", "/nonexistent/cargo")
    with pytest.raises(MantraError) as caught:
        build(fake, "qemu-x86_64", "default")
    assert "/nonexistent/cargo not found" in caught.value.message
    assert "rustc-web cargo-web rust-web-src" in caught.value.hint and "MANTRA_CARGO" in caught.value.hint
