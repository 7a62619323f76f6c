"""The build driver: Kconfig -> cargo -> disk image.

1. Resolve the configuration (mantra.kconfig) into build/<board>/<product>/config/,
   and put the key set's raw root public key there (root_key.bin), which
   MantraBoot is built with: it verifies MANTRA/MANIFEST.SIG against it.
2. cargo builds MantraBoot (UEFI target) and MantraCore (bare-metal target,
   with `--features ktest` for the in-guest test image) with the Debian
   toolchain, CARGO_TARGET_DIR=build/<board>/target; then, when
   the product has user services, MantraInit and the services' programs
   (mantra-os/user/, same bare-metal target; see mantra.userland).
3. Pack the boot filesystem (the product's product.toml, the resolved
   .config and, with user services, `init.manifest` and the programs), the
   ESP (FAT32, MantraBoot), the slot file system (FAT32: kernel, boot
   filesystem, command line) and the GPT disk image with the ESP and the
   A/B slots, both holding the slot file system (the factory image).
4. Sign it (mantra.signing): MANTRA/MANIFEST.SIG on the ESP (MantraBoot) and
   in each slot (its components), with the product's key set (--keys,
   MANTRA_KEYS, or development keys made on first use in build/keys/<product>),
   and write manifest.json listing every component, the build provenance and
   the signatures.

A newly packed image is a new device: the runner's copy of the firmware
variable store (MantraSlots, MantraRollback) and the swtpm state beside the
image are deleted, so the next boot starts from fresh ones.

cargo is incremental; steps 3 and 4 are skipped when the hashes of
everything that goes into the image (and the signing key) are those of the
last packing.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import time
import tomllib
import uuid
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path

from mantra import kconfig, proc, userland
from mantra.board import Board, load_board
from mantra.console import err, step
from mantra.errors import MantraError
from mantra.image import bootfs, esp, gpt
from mantra.kconfig import ResolvedConfig
from mantra.product import Product, init_manifest, load_product
from mantra.signing import keys as signing_keys
from mantra.signing.sign import ImageInfo, SignResult, sign_disk, usable_key
from mantra.toolchain import RustToolchain
from mantra.workspace import BuildPaths, Workspace

# Paths in a slot (MantraBoot's, on the ESP, is EFI/BOOT/<board's efi_boot_file>).
KERNEL_PATH = esp.KERNEL_PATH
BOOTFS_PATH = esp.BOOTFS_PATH
CMDLINE_PATH = esp.CMDLINE_PATH
# Where a build's key set comes from when --keys is not given.
KEYS_ENV = "MANTRA_KEYS"

# Names of the files in the boot filesystem.
BOOTFS_PRODUCT = "product.toml"
BOOTFS_CONFIG = ".config"
BOOTFS_INIT_MANIFEST = "init.manifest"

# The raw 32-byte root public key MantraBoot is built with (in the generated
# config dir; mantra-os/boot/build.rs embeds it, so a new key set rebuilds it).
ROOT_KEY_FILE = "root_key.bin"

# Partition names of the GPT image.
ESP_PARTITION = "esp"
SLOT_PARTITIONS = ("slot-a", "slot-b")
# manifest.json's partition of a component that is in every slot.
SLOTS_PARTITION = "slots"

MANIFEST_FORMAT = 1
_GUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://mantra-os/disk-image")


@dataclass(frozen=True)
class Component:
    """One thing in the image, as manifest.json lists it."""

    name: str
    kind: str
    partition: str
    path: str  # path on the partition's file system
    size: int
    sha256: str


@dataclass(frozen=True)
class BuildResult:
    board: Board
    product: Product
    config: ResolvedConfig
    image: Path
    manifest: Path
    components: tuple[Component, ...]
    packed: bool  # False when the image was already up to date
    signed_by: str = ""  # hex id of the signing key
    keys: Path | None = None  # the key set that signed the image


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def native_version(workspace: Workspace) -> str:
    """The MantraOS version: [workspace.package] version of mantra-os/Cargo.toml."""
    manifest = workspace.native_dir / "Cargo.toml"
    try:
        with manifest.open("rb") as stream:
            return tomllib.load(stream)["workspace"]["package"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise MantraError(f"cannot read the MantraOS version from {manifest}: {exc}",
                          "it belongs in [workspace.package] version") from None


def _write_if_changed(path: Path, data: bytes) -> None:
    if not path.is_file() or path.read_bytes() != data:
        path.write_bytes(data)


@dataclass(frozen=True)
class _EspFile:
    name: str
    kind: str
    path: str  # on its partition's file system
    source: Path
    partition: str = SLOTS_PARTITION  # ESP_PARTITION, or SLOTS_PARTITION (each slot)


def _compile(workspace: Workspace, board: Board, paths: BuildPaths, *, release: bool,
             ktest: bool) -> tuple[Path, Path]:
    """cargo builds of MantraBoot and MantraCore; returns their artifacts."""
    toolchain = RustToolchain.locate()
    common = dict(crate_dir=workspace.native_dir, target_dir=paths.target_dir, config_dir=paths.config_dir,
                  release=release)
    profile = "release" if release else "debug"
    step(f"Compiling MantraBoot ({board.build.uefi_target}, {profile})")
    boot = toolchain.build_bare_metal(package="mantra-boot", binary="mantra-boot", target=board.build.uefi_target,
                                      what="MantraBoot", **common).with_suffix(".efi")
    variant = " with in-guest tests" if ktest else ""
    step(f"Compiling MantraCore{variant} ({board.build.kernel_target}, {profile})")
    kernel = toolchain.build_bare_metal(package="mantra-kernel", binary="mantra-kernel",
                                        target=board.build.kernel_target, features=("ktest",) if ktest else (),
                                        what=f"MantraCore{variant}", **common)
    for artifact in (boot, kernel):
        if not artifact.is_file():
            raise MantraError(f"cargo reported success but {artifact} does not exist",
                              "check the binary names in mantra-os/boot and mantra-os/kernel")
    return boot, kernel


def _compile_programs(workspace: Workspace, board: Board, paths: BuildPaths, programs: list[userland.Program], *,
                      release: bool) -> list[tuple[str, bytes]]:
    """One cargo build of the user programs (same bare-metal target as the
    kernel); returns (boot filesystem name, stripped ELF) per program."""
    if not programs:
        return []
    toolchain = RustToolchain.locate()
    names = [p.name for p in programs]
    step(f"Compiling the userland: {', '.join(names)} ({board.build.kernel_target}, "
         f"{'release' if release else 'debug'})")
    artifacts = toolchain.build_programs(
        crate_dir=workspace.native_dir, packages=[p.package for p in programs], binaries=names,
        target=board.build.kernel_target, target_dir=paths.target_dir, config_dir=paths.config_dir,
        release=release, what="the userland")
    files = []
    for name, artifact in artifacts.items():
        if not artifact.is_file():
            raise MantraError(f"cargo reported success but {artifact} does not exist",
                              f"check the binary name of program '{name}' in mantra-os/user/")
        files.append((name, userland.strip(name, artifact.read_bytes())))
    return files


def _pack(image_dir: Path, board: Board, esp_files: list[_EspFile], disk_guid: uuid.UUID) -> list[gpt.Partition]:
    """Writes esp.img (MantraBoot), slot.img (the other components) and the
    GPT disk image.img, both slots holding slot.img, in `image_dir`."""
    step(f"Packing the ESP ({board.disk.esp_size_mib} MiB FAT32) and the slot file system "
         f"({board.disk.slot_size_mib} MiB FAT32)")
    esp_image = image_dir / "esp.img"
    esp.write_esp(esp_image, board.disk.esp_size_mib,
                  {f.path: f.source for f in esp_files if f.partition == ESP_PARTITION})
    slot_image = image_dir / "slot.img"
    esp.write_esp(slot_image, board.disk.slot_size_mib,
                  {f.path: f.source for f in esp_files if f.partition == SLOTS_PARTITION}, label=esp.SLOT_LABEL)
    step("Writing the GPT disk image (the same image in slot a and slot b)")
    mib = 1024 * 1024
    specs = [gpt.PartitionSpec(ESP_PARTITION, gpt.ESP_TYPE, board.disk.esp_size_mib * mib, esp_image)]
    specs += [gpt.PartitionSpec(name, gpt.MANTRA_SLOT_TYPE, board.disk.slot_size_mib * mib, slot_image)
              for name in SLOT_PARTITIONS]
    partitions = gpt.write_image(image_dir / "image.img", specs, align=board.disk.align_mib * mib,
                                 disk_guid=disk_guid)
    slot_image.unlink()  # its bytes are in both slots
    return partitions


def _new_device(image_dir: Path) -> None:
    """A new image is a new device: forget the runner's firmware variable
    store and TPM state of the previous image (see mantra.runners)."""
    (image_dir / "firmware-vars.fd").unlink(missing_ok=True)
    shutil.rmtree(image_dir / "tpm", ignore_errors=True)


def _output(cmd: list[str], what: str) -> str | None:
    """The stdout of `cmd`, or None when it cannot run or fails (provenance
    is best effort: a missing git is no reason to fail a build)."""
    try:
        result = proc.run(cmd, what=what, hint="", capture=True, check=False)
    except MantraError:
        return None
    return result.stdout if result.returncode == 0 else None


@functools.cache
def _rustc_version(rustc: str) -> str:
    return (_output([rustc, "--version"], "rustc --version") or "").strip() or "unknown"


def source_revision(workspace: Workspace) -> str:
    """The git commit of the checkout, with "-dirty" when tracked files have
    changed since; "unknown" outside a git checkout."""
    def git(*args: str) -> str | None:
        return _output(["git", "-C", str(workspace.root), *args], f"git {args[0]}")

    head = (git("rev-parse", "--show-toplevel", "HEAD") or "").split()
    if len(head) != 2 or Path(head[0]).resolve() != workspace.root:
        return "unknown"  # no git, or a folder inside some other repository
    status = git("status", "--porcelain", "--untracked-files=no")
    return head[1] + ("-dirty" if status and status.strip() else "")


def provenance(workspace: Workspace, toolchain: RustToolchain) -> dict[str, object]:
    """What built the image: the source revision and the tools' versions."""
    try:
        mantra_version = metadata.version("mantra")
    except metadata.PackageNotFoundError:
        mantra_version = "unknown"
    return {
        "source_revision": source_revision(workspace),
        "toolchain": {
            "rustc": _rustc_version(toolchain.rustc),
            "python": platform.python_version(),
            "mantra": mantra_version,
        },
    }


def product_keys(workspace: Workspace, product: str, keys: Path | None) -> signing_keys.KeySet:
    """The key set a build signs with: `keys`, else $MANTRA_KEYS, else the
    development keys in build/keys/<product>, made on first use (with a warning)."""
    chosen = keys or (Path(os.environ[KEYS_ENV]) if os.environ.get(KEYS_ENV) else None)
    if chosen is not None:
        return signing_keys.load_keyset(chosen.resolve())
    directory = workspace.root / "build" / "keys" / product
    if not (directory / signing_keys.ROOT_PUB).is_file():
        try:
            signing_keys.init_keyset(directory, signing_keys.DEV_PASSPHRASE,
                                     validity_days=signing_keys.DEV_VALIDITY_DAYS, development=True)
        except (MantraError, OSError):
            if not (directory / signing_keys.ROOT_PUB).is_file():  # not made by a concurrent build
                raise
        err.print(f"[yellow]warning:[/] development keys generated in {workspace.relative(directory)}; "
                  "do not ship images signed with them", soft_wrap=True)
    return signing_keys.load_keyset(directory)


def build(workspace: Workspace, board_name: str, product_name: str, *, release: bool = False,
          ktest: bool = False, service_args: dict[str, tuple[str, ...]] | None = None,
          variant: str | None = None, keys: Path | None = None) -> BuildResult:
    """Builds build/<board>/<product>/image.img (ktest/image.img with `ktest`)
    and signs it with the key set `keys` (see product_keys).

    `service_args` replaces the startup arguments of the named services, and
    `variant` puts the image in build/<board>/<product>/<variant>/ (used by
    `mantra fuzz`, so the product's own image stays as its manifest says)."""
    board = load_board(workspace, board_name)
    product = load_product(workspace, product_name)
    if service_args:
        unknown = sorted(set(service_args) - {s.name for s in product.user_services})
        if unknown:
            raise MantraError(f"product {product.name} has no user service {', '.join(unknown)}",
                              f"services: {', '.join(s.name for s in product.user_services)}")
        product = replace(product, services=tuple(
            replace(s, args=service_args.get(s.name, s.args)) for s in product.services))
    step(f"Configuring {board.name}/{product.name}")
    config, outputs = kconfig.configure(workspace, board, product)
    paths = workspace.build_paths(board.name, product.name)
    programs = userland.programs_for(workspace, product)  # checks the programs before compiling anything
    keyset = product_keys(workspace, product.name, keys)
    _write_if_changed(paths.config_dir / ROOT_KEY_FILE, keyset.root_public)
    boot, kernel = _compile(workspace, board, paths, release=release, ktest=ktest)
    program_files = _compile_programs(workspace, board, paths, programs, release=release)

    image_dir = paths.image_dir(ktest, variant)
    image_dir.mkdir(parents=True, exist_ok=True)
    bootfs_files = [(BOOTFS_PRODUCT, product.data_file.read_bytes()), (BOOTFS_CONFIG, outputs.dotconfig.read_bytes())]
    if program_files:
        bootfs_files.append((BOOTFS_INIT_MANIFEST, init_manifest(product).encode()))
        bootfs_files += program_files
    bootfs_image = image_dir / "bootfs.img"
    _write_if_changed(bootfs_image, bootfs.pack(bootfs_files))
    # The kernel goes onto the ESP without its debug information (most of a
    # debug build's bytes, which MantraBoot would otherwise read and hash);
    # the full ELF stays in the cargo target directory for debuggers.
    loaded_kernel = image_dir / "kernel.elf"
    _write_if_changed(loaded_kernel, userland.strip("MantraCore", kernel.read_bytes(),
                                                    "check the kernel's linker script (mantra-os/kernel)"))
    esp_files = [
        _EspFile("MantraBoot", "bootloader", f"EFI/BOOT/{board.build.efi_boot_file}", boot, ESP_PARTITION),
        _EspFile("MantraCore", "kernel", KERNEL_PATH, loaded_kernel),
        _EspFile("boot filesystem", "bootfs", BOOTFS_PATH, bootfs_image),
    ]
    if product.cmdline is not None:
        cmdline = image_dir / "cmdline.txt"
        _write_if_changed(cmdline, product.cmdline.encode("utf-8"))
        esp_files.append(_EspFile("kernel command line", "cmdline", CMDLINE_PATH, cmdline))
    components = tuple(
        Component(f.name, f.kind, f.partition, f.path, f.source.stat().st_size, _file_sha256(f.source))
        for f in esp_files
    )

    variant = variant or ("ktest" if ktest else "default")
    manifest = {
        "format": MANIFEST_FORMAT,
        "board": board.name,
        "product": product.name,
        "variant": variant,
        "version": native_version(workspace),
        "profile": "release" if release else "debug",
        "services": [asdict(service) for service in product.services],
        "config": {"path": workspace.relative(outputs.dotconfig), "sha256": outputs.sha256()},
        "security_counter": product.security_counter,
        "provenance": provenance(workspace, RustToolchain.locate()),
        "disk": asdict(board.disk),
        "components": [asdict(c) for c in components],
        "bootfs": [{"name": name, "size": len(data), "sha256": _sha256(data)} for name, data in bootfs_files],
    }
    key = usable_key(keyset, int(time.time()))
    revocations, _ = keyset.revocations()
    manifest["signing"] = {"keys": workspace.relative(keyset.dir), "development": keyset.development,
                           "root_key_id": keyset.root_id.hex(), "key_id": key.id.hex(),
                           "key_record_sha256": _sha256(key.signed.encode()),
                           "revocations_sha256": _sha256(revocations.encode())}
    image = image_dir / "image.img"
    manifest_path = image_dir / "manifest.json"
    # Everything that goes into the image, hashed: unchanged means nothing to repack.
    inputs = _sha256(json.dumps(manifest, sort_keys=True).encode())
    stamp = image_dir / "image.inputs"
    if image.is_file() and manifest_path.is_file() and stamp.is_file() and stamp.read_text() == inputs:
        step(f"Image up to date: {workspace.relative(image)}")
        return BuildResult(board, product, config, image, manifest_path, components, packed=False,
                           signed_by=key.id.hex(), keys=keyset.dir)

    disk_guid = uuid.uuid5(_GUID_NAMESPACE, f"{board.name}/{product.name}/{variant}")
    stamp.unlink(missing_ok=True)  # an interrupted pack or sign must not look up to date
    _new_device(image_dir)
    partitions = _pack(image_dir, board, esp_files, disk_guid)
    signed = _sign(workspace, image, keyset, manifest)
    # The slots' envelope (the same in both), and the ESP's.
    manifest["signing"]["manifest_sig_sha256"] = _sha256(next(r for r in signed if r.target != "ESP").envelope)
    manifest["signing"]["esp_manifest_sig_sha256"] = _sha256(next(r for r in signed if r.target == "ESP").envelope)
    manifest["image"] = {"path": image.name, "size": image.stat().st_size, "sha256": _file_sha256(image)}
    manifest["partitions"] = [
        {"name": p.name, "type_guid": str(p.type_guid), "guid": str(p.unique_guid), "first_lba": p.first_lba,
         "last_lba": p.last_lba, "size": p.size}
        for p in partitions
    ]
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    stamp.write_text(inputs)
    return BuildResult(board, product, config, image, manifest_path, components, packed=True,
                       signed_by=signed[0].key.id.hex(), keys=keyset.dir)


def _sign(workspace: Workspace, image: Path, keyset: signing_keys.KeySet, manifest: dict) -> list[SignResult]:
    """Signs the freshly packed `image` from the build's own `manifest`."""
    kind = "development keys" if keyset.development else "keys"
    step(f"Signing the image with the {kind} in {workspace.relative(keyset.dir)}")
    provenance_data = manifest["provenance"]
    info = ImageInfo(
        board=manifest["board"], product=manifest["product"], version=manifest["version"],
        security_counter=manifest["security_counter"], config_sha256=bytes.fromhex(manifest["config"]["sha256"]),
        source_revision=provenance_data["source_revision"],
        toolchain=tuple(sorted(provenance_data["toolchain"].items())),
        built_components={c["path"]: c["sha256"] for c in manifest["components"]})
    passphrase = signing_keys.passphrase_for(keyset.dir)
    return sign_disk(image, keyset, passphrase, info=info)
