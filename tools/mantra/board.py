"""Boards: board-support/<name>/ holds a board's Kconfig fragment
(Kconfig.board), its defconfig and its data (board.toml), read here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mantra.errors import MantraError
from mantra.tomldata import Table
from mantra.workspace import Workspace

DEFAULT_BOARD = "qemu-x86_64"


@dataclass(frozen=True)
class QemuData:
    """How QEMU emulates the board (board.toml [qemu])."""

    binary: str
    machine: str
    cpu: str
    memory: str
    smp: int
    accel: str
    disk_interface: str
    devices: tuple[str, ...]
    firmware_code: Path
    firmware_vars: Path
    # QEMU -device model of the board's TPM when booted with a TPM (`--tpm`,
    # backed by swtpm), or None when the board has none.
    tpm_device: str | None = None


@dataclass(frozen=True)
class BuildData:
    """Rust targets and boot file name (board.toml [build])."""

    uefi_target: str
    kernel_target: str
    efi_boot_file: str


@dataclass(frozen=True)
class DiskLayout:
    """Sizes of the GPT disk's partitions (board.toml [disk])."""

    align_mib: int
    esp_size_mib: int
    slot_size_mib: int


@dataclass(frozen=True)
class UsbIds:
    """The USB IDs of the board's DFU function (board.toml [usb]): `pid` in
    runtime mode, `dfu_pid` in DFU mode (often the same)."""

    vid: int
    pid: int
    dfu_pid: int

    def __str__(self) -> str:
        ids = f"{self.vid:04x}:{self.pid:04x}"
        return ids if self.dfu_pid == self.pid else f"{ids} (DFU mode {self.vid:04x}:{self.dfu_pid:04x})"


@dataclass(frozen=True)
class Board:
    name: str
    dir: Path
    description: str
    arch: str
    runner: str
    qemu: QemuData
    console_index: int
    build: BuildData
    disk: DiskLayout
    # None when the board has no USB DFU function (no [usb] table).
    usb: UsbIds | None = None

    @property
    def kconfig(self) -> Path:
        return self.dir / "Kconfig.board"

    @property
    def defconfig(self) -> Path:
        return self.dir / "defconfig"

    @property
    def data_file(self) -> Path:
        return self.dir / "board.toml"


def board_names(workspace: Workspace) -> list[str]:
    """Every board of the checkout: the folders of board-support/ with a board.toml."""
    if not workspace.boards_dir.is_dir():
        return []
    return sorted(d.name for d in workspace.boards_dir.iterdir() if (d / "board.toml").is_file())


def load_board(workspace: Workspace, name: str) -> Board:
    """Reads board-support/<name>/; an unknown name is an error listing the boards there are."""
    directory = workspace.boards_dir / name
    if "/" in name or not (directory / "board.toml").is_file():
        known = ", ".join(board_names(workspace)) or "none"
        raise MantraError(
            f"unknown board '{name}' (boards: {known})",
            "pick one of those with -b BOARD, or add board-support/<name>/ (see README.md)",
        )
    data = Table.load(directory / "board.toml")
    qemu = data.table("qemu")
    firmware = qemu.table("firmware")
    build = data.table("build")
    disk = data.table("disk")
    board = Board(
        name=name,
        dir=directory,
        description=data.string("description"),
        arch=data.string("arch"),
        runner=data.string("runner"),
        qemu=QemuData(
            binary=qemu.string("binary"),
            machine=qemu.string("machine"),
            cpu=qemu.string("cpu"),
            memory=qemu.string("memory"),
            smp=qemu.integer("smp", minimum=1),
            accel=qemu.string("accel"),
            disk_interface=qemu.string("disk_interface"),
            devices=tuple(qemu.strings("devices", default=[])),
            firmware_code=Path(firmware.string("code")),
            firmware_vars=Path(firmware.string("vars")),
            tpm_device=qemu.string("tpm_device", default=None),
        ),
        console_index=data.table("serial").integer("console_index"),
        build=BuildData(
            uefi_target=build.string("uefi_target"),
            kernel_target=build.string("kernel_target"),
            efi_boot_file=build.string("efi_boot_file"),
        ),
        disk=DiskLayout(
            align_mib=disk.integer("align_mib", minimum=1),
            esp_size_mib=disk.integer("esp_size_mib", minimum=33),
            slot_size_mib=disk.integer("slot_size_mib", minimum=1),
        ),
        usb=_usb_ids(data.table("usb")) if data.has("usb") else None,
    )
    for required in (board.kconfig, board.defconfig):
        if not required.is_file():
            raise MantraError(f"board {name} has no {required.name}", f"add {workspace.relative(required)}")
    return board


def _usb_ids(usb: Table) -> UsbIds:
    usb.check_keys(("vid", "pid", "dfu_pid"), "[usb]")
    values = {key: usb.integer(key, default=None) for key in ("vid", "pid", "dfu_pid")}
    values["dfu_pid"] = values["pid"] if values["dfu_pid"] is None else values["dfu_pid"]
    for key, value in values.items():
        if value is None:
            usb.integer(key)  # the missing-key error
        if not 0 <= value <= 0xFFFF:
            raise MantraError(f"{usb.file}: `usb.{key}` must be a 16-bit USB ID (0 to 0xffff), not {value:#x}",
                              "fix the value in the file")
    return UsbIds(**values)
