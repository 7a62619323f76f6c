"""The real image of the default product (MantraBoot and MantraCore built
by cargo): GPT layout from board.toml, ESP and slot files as manifest.json
says, boot filesystem contents, and a second build that changes nothing."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from bootfs_reader import parse as parse_bootfs
from gpt_reader import read_gpt
from mantra.board import Board
from mantra.build import BuildResult, build
from mantra.image import gpt
from mantra.workspace import Workspace
from support import read_partition

MIB = 1024 * 1024


def test_gpt_layout_follows_board_data(default_image: BuildResult, board: Board) -> None:
    disk = read_gpt(default_image.image)
    assert [(p.name, p.type_guid) for p in disk.partitions] == [
        ("esp", gpt.ESP_TYPE), ("slot-a", gpt.MANTRA_SLOT_TYPE), ("slot-b", gpt.MANTRA_SLOT_TYPE)]
    sizes = [(p.last_lba - p.first_lba + 1) * 512 for p in disk.partitions]
    assert sizes == [board.disk.esp_size_mib * MIB] + [board.disk.slot_size_mib * MIB] * 2
    assert all(p.first_lba * 512 % (board.disk.align_mib * MIB) == 0 for p in disk.partitions)
    manifest = json.loads(default_image.manifest.read_text())
    assert [(p["name"], p["first_lba"], p["last_lba"]) for p in manifest["partitions"]] == [
        (p.name, p.first_lba, p.last_lba) for p in disk.partitions]


def test_esp_and_slots_hold_the_components_of_the_manifest(default_image: BuildResult, tmp_path: Path) -> None:
    esp = read_partition(default_image.image, "esp", tmp_path)
    slot_a = read_partition(default_image.image, "slot-a", tmp_path)
    slot_b = read_partition(default_image.image, "slot-b", tmp_path)
    manifest = json.loads(default_image.manifest.read_text())
    assert sorted(esp) == ["EFI/BOOT/BOOTX64.EFI", "MANTRA/MANIFEST.SIG"]
    assert sorted(slot_a) == ["MANTRA/BOOTFS.IMG", "MANTRA/KERNEL.ELF", "MANTRA/MANIFEST.SIG"]
    assert slot_a == slot_b  # the factory image in both slots
    assert esp["MANTRA/MANIFEST.SIG"] != slot_a["MANTRA/MANIFEST.SIG"]  # each lists its own components
    files = {**slot_a, **esp}
    assert [(c["partition"], c["path"]) for c in manifest["components"]] == [
        ("esp", "EFI/BOOT/BOOTX64.EFI"), ("slots", "MANTRA/KERNEL.ELF"), ("slots", "MANTRA/BOOTFS.IMG")]
    for component in manifest["components"]:
        data = files[component["path"]]
        assert len(data) == component["size"], component["path"]
        assert hashlib.sha256(data).hexdigest() == component["sha256"], component["path"]
    assert files["EFI/BOOT/BOOTX64.EFI"][:2] == b"MZ"  # PE/COFF, as UEFI loads it
    kernel = files["MANTRA/KERNEL.ELF"]
    assert kernel[:4] == b"\x7fELF" and kernel[4] == 2 and kernel[18] == 62  # ELF64, x86_64


def test_boot_filesystem_holds_product_and_config(default_image: BuildResult, workspace: Workspace,
                                                  tmp_path: Path) -> None:
    files = read_partition(default_image.image, "slot-a", tmp_path)
    config_dir = workspace.build_paths("qemu-x86_64", "default").config_dir
    bootfs = parse_bootfs(files["MANTRA/BOOTFS.IMG"])
    assert bootfs[:2] == [
        ("product.toml", (workspace.products_dir / "default" / "product.toml").read_bytes()),
        (".config", (config_dir / ".config").read_bytes()),
    ]
    # Then init.manifest and the user programs (tests/test_userland_build.py looks inside).
    assert [name for name, _ in bootfs[2:]] == ["init.manifest", "init", "logd", "demo", "crashy"]


def test_manifest_names_board_product_version_and_config(default_image: BuildResult, workspace: Workspace) -> None:
    manifest = json.loads(default_image.manifest.read_text())
    assert (manifest["board"], manifest["product"], manifest["version"]) == ("qemu-x86_64", "default", "0.1.0")
    dotconfig = workspace.root / manifest["config"]["path"]
    assert manifest["config"]["sha256"] == hashlib.sha256(dotconfig.read_bytes()).hexdigest()


def test_second_build_changes_nothing_and_takes_seconds(default_image: BuildResult, workspace: Workspace) -> None:
    before = default_image.image.stat().st_mtime_ns
    started = time.monotonic()
    again = build(workspace, "qemu-x86_64", "default")
    elapsed = time.monotonic() - started
    assert not again.packed
    assert again.image.stat().st_mtime_ns == before
    assert elapsed < 30, f"a no-change build took {elapsed:.1f} s"
