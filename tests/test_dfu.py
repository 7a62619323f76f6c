"""`mantra flash --usb`: the DFU 1.1 host (mantra.provision.dfu) against the
simulated device of dfu_sim.py, a pyusb backend that writes a disk image and
keeps the DFU state machine strictly. The images are small signed disk
images made here (made-up kernel and boot filesystem, 4 MiB slots), so no
cargo build is needed."""

from __future__ import annotations

import hashlib
import random
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from key_fixtures import fast_kdf, keyset, other_keyset  # noqa: F401 (fixtures)
import usb.core
from dfu_sim import MIB, SimBackend, SimClock, SimDevice
from mantra.errors import MantraError
from mantra.image import esp, gpt
from mantra.provision import dfu
from mantra.provision.dfu import (
    DeviceInfo,
    DfuError,
    DfuStatus,
    FunctionalDescriptor,
    State,
    Status,
    flash_usb,
    format_result,
    read_payload,
)
from mantra.signing import keys
from mantra.signing.image import open_slot
from mantra.signing.keys import KeySet
from mantra.signing.sign import ImageInfo, sign_image
from mantra.signing.verify import verify_disk
from mantra.workspace import Workspace

BOARD = "qemu-x86_64"
PASSPHRASE = "dfu test passphrase"
SLOT_MIB = 4
ESP_MIB = 2


def make_image(directory: Path, keyset: KeySet, *, board: str = BOARD, seed: int = 1, kernel_kib: int = 700,
               security_counter: int = 0) -> Path:
    """A signed GPT disk image: ESP with a made-up BOOTX64.EFI, slot a with
    a made-up kernel and boot filesystem, slot b empty."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    sources = {}
    for path, size in (("EFI/BOOT/BOOTX64.EFI", 40_000), ("MANTRA/KERNEL.ELF", kernel_kib * 1024),
                       ("MANTRA/BOOTFS.IMG", 150_000)):
        sources[path] = directory / path.replace("/", "_")
        sources[path].write_bytes(rng.randbytes(size))
    esp.write_esp(directory / "esp.img", ESP_MIB, {p: f for p, f in sources.items() if p.startswith("EFI/")})
    esp.write_esp(directory / "slot.img", SLOT_MIB, {p: f for p, f in sources.items() if p.startswith("MANTRA/")},
                  label=esp.SLOT_LABEL)
    specs = [gpt.PartitionSpec("esp", gpt.ESP_TYPE, ESP_MIB * MIB, directory / "esp.img"),
             gpt.PartitionSpec("slot-a", gpt.MANTRA_SLOT_TYPE, SLOT_MIB * MIB, directory / "slot.img"),
             gpt.PartitionSpec("slot-b", gpt.MANTRA_SLOT_TYPE, SLOT_MIB * MIB)]
    image = directory / "image.img"
    gpt.write_image(image, specs, align=MIB, disk_guid=uuid.UUID(int=seed))
    info = ImageInfo(board=board, product="default", version="0.1.0", security_counter=security_counter,
                     config_sha256=bytes(32), source_revision="test", toolchain=(), built_components={})
    sign_image(image, keyset, PASSPHRASE, info=info)
    return image


def partition_bytes(image: Path, slot: str) -> bytes:
    partition = open_slot(image, slot).partition
    with image.open("rb") as disk:
        disk.seek(partition.offset)
        return disk.read(partition.size)


@pytest.fixture(scope="module")
def signed(keyset: KeySet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image(tmp_path_factory.mktemp("signed"), keyset)


@pytest.fixture(scope="module")
def factory_disk(keyset: KeySet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The device's disk: another signed image in slot a (what it runs) and
    old bytes in slot b (the inactive slot DFU writes), which must all go."""
    image = make_image(tmp_path_factory.mktemp("factory"), keyset, seed=2, kernel_kib=300)
    partition = open_slot(image, "b").partition
    with image.open("r+b") as disk:
        disk.seek(partition.offset)
        disk.write(b"\xa5" * partition.size)
    return image


@pytest.fixture
def device_disk(factory_disk: Path, tmp_path: Path) -> Path:
    target = tmp_path / "device.img"
    subprocess.run(["cp", "--sparse=always", str(factory_disk), str(target)], check=True)
    return target


@pytest.fixture
def clock() -> SimClock:
    return SimClock()


def sim(disk: Path, keyset: KeySet, **options) -> SimDevice:
    return SimDevice(disk=disk, board=options.pop("board", BOARD), root_public=keys.load_root_public(
        keyset.dir / keys.ROOT_PUB), **options)


def flash(image: Path, device: SimDevice, clock: SimClock, **options):
    backend = options.pop("backend", None) or SimBackend(device, clock=clock)
    return flash_usb(image, options.pop("vid_pid", None), options.pop("board", BOARD), options.pop("progress", None),
                     backend=backend, clock=clock, **options)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the whole download --------------------------------------------------------


def test_full_download_detach_and_reenumeration(signed: Path, device_disk: Path, keyset: KeySet,
                                                clock: SimClock) -> None:
    device = sim(device_disk, keyset)
    running = partition_bytes(device_disk, "a")
    lines: list[str] = []
    result = flash(signed, device, clock, log=lines.append)

    # The inactive slot now holds exactly the image's slot a, the running slot is untouched.
    assert partition_bytes(device_disk, "b") == partition_bytes(signed, "a")
    assert partition_bytes(device_disk, "a") == running
    verify_disk(device_disk, keys.load_root_public(keyset.dir / keys.ROOT_PUB), board=BOARD, slot="b")
    # Detached (DFU_DETACH, then the host's USB reset), found again in DFU mode, reset at the end.
    assert result.detached and device.detaches == 1
    assert device.resets == 2
    assert device.generation >= 3  # runtime -> DFU mode -> runtime: two re-enumerations
    assert device.booted == ["slot b (pending)"]
    assert device.mode == "runtime" and device.state == State.APP_IDLE
    assert device.erases == 1 and device.manifestations == 1
    assert device.stalls == [] and device.poll_violations == 0
    payload = read_payload(signed, "a")
    assert result.bytes == len(payload.data) == sum(device.dnload_sizes)
    assert result.transfers == len(device.dnload_sizes) - 1  # and the zero-length one
    assert (result.target_slot, result.board, result.serial, result.device) == ("b", BOARD, "MANTRA-0001",
                                                                                "1209:0001")
    assert result.sha256 == digest(payload.data)
    assert any("back in DFU mode" in line for line in lines)
    text = format_result(result)
    assert f"into slot b of the {BOARD} board at USB 1209:0001 serial MANTRA-0001" in text
    assert f"{result.bytes} bytes" in text and f"{result.transfers} transfers of up to 4096 bytes" in text


def test_payload_is_the_slot_up_to_its_last_data(signed: Path) -> None:
    payload = read_payload(signed, "a")
    whole = partition_bytes(signed, "a")
    assert len(payload.data) % dfu.PAGE == 0 and 0 < len(payload.data) < len(whole)
    assert whole.startswith(payload.data) and not whole[len(payload.data):].strip(b"\0")
    assert payload.data[-dfu.PAGE:].strip(b"\0")  # the last page holds data
    assert payload.manifest.board == BOARD


def test_dfu_mode_ids_from_board_data_and_serial_match(signed: Path, device_disk: Path, keyset: KeySet,
                                                       clock: SimClock, scratch: Workspace) -> None:
    """A device whose DFU mode has another PID (board.toml [usb] dfu_pid),
    next to another board's device with the same IDs but another serial."""
    board_toml = scratch.boards_dir / BOARD / "board.toml"
    board_toml.write_text(board_toml.read_text().replace("dfu_pid = 0x0001", "dfu_pid = 0x0002"))
    device = sim(device_disk, keyset, dfu_pid=0x0002, serial="BENCH-7")
    bystander_disk = device_disk.with_name("bystander.img")
    shutil.copy(device_disk, bystander_disk)
    bystander = sim(bystander_disk, keyset, dfu_pid=0x0002, serial="BENCH-8")
    backend = SimBackend(device, bystander, clock=clock)
    with pytest.raises(DfuError, match="2 USB DFU devices 1209:0001 or 1209:0002 are attached") as error:
        flash(signed, device, clock, backend=backend, workspace=scratch)
    assert error.value.kind == "usage" and device.detaches == 0
    result = flash(signed, device, clock, backend=backend, workspace=scratch, serial="BENCH-7")
    assert result.device == "1209:0002" and result.serial == "BENCH-7"
    assert partition_bytes(device_disk, "b") == partition_bytes(signed, "a")
    assert bystander.detaches == 0 and bystander.dnload_sizes == []


def test_device_that_detaches_by_itself(signed: Path, device_disk: Path, keyset: KeySet, clock: SimClock) -> None:
    device = sim(device_disk, keyset, will_detach=True, reenumerate_ms=700)
    start = clock.now()
    result = flash(signed, device, clock)
    assert result.detached and device.detaches == 1
    assert device.resets == 1  # only the final one: bitWillDetach means no reset after DFU_DETACH
    assert clock.now() - start >= 0.7  # it waited for the device to come back
    assert partition_bytes(device_disk, "b") == partition_bytes(signed, "a")


def test_device_already_in_dfu_mode(signed: Path, device_disk: Path, keyset: KeySet, clock: SimClock) -> None:
    device = sim(device_disk, keyset, start_in_dfu_mode=True)
    result = flash(signed, device, clock)
    assert not result.detached and device.detaches == 0
    assert partition_bytes(device_disk, "b") == partition_bytes(signed, "a")


def test_device_that_does_not_come_back_in_dfu_mode(signed: Path, device_disk: Path, keyset: KeySet,
                                                    clock: SimClock) -> None:
    device = sim(device_disk, keyset, ignore_reset_in_detach=True)
    with pytest.raises(DfuError, match="did not come back in DFU mode within 11.0 s") as error:
        flash(signed, device, clock)
    assert error.value.kind == "reenumeration" and "run the same command again" in error.value.hint
    assert device.dnload_sizes == []


@pytest.mark.parametrize("transfer_size", [64, 1000, 4096, 16384])
def test_transfer_size_is_honoured(signed: Path, device_disk: Path, keyset: KeySet, clock: SimClock,
                                   transfer_size: int) -> None:
    """Blocks of wTransferSize bytes, but never more than the 4096 bytes
    libusb moves in one control transfer (the backend refuses more)."""
    device = sim(device_disk, keyset, transfer_size=transfer_size, start_in_dfu_mode=True)
    result = flash(signed, device, clock)
    total = len(read_payload(signed, "a").data)
    block = min(transfer_size, 4096)
    count = -(-total // block)
    assert result.transfer_size == block and result.device_transfer_size == transfer_size
    assert result.transfers == count
    assert device.dnload_sizes[:-2] == [block] * (count - 1)
    assert device.dnload_sizes[-2] == total - block * (count - 1) and device.dnload_sizes[-1] == 0
    assert device.dnload_blocks == [n & 0xFFFF for n in range(count + 1)]
    assert partition_bytes(device_disk, "b") == partition_bytes(signed, "a")


def test_block_numbers_wrap_at_65536(keyset: KeySet, tmp_path: Path, device_disk: Path, clock: SimClock) -> None:
    image = make_image(tmp_path / "big", keyset, seed=3, kernel_kib=3000)
    device = sim(device_disk, keyset, transfer_size=32, start_in_dfu_mode=True, poll_timeout_ms=0)
    result = flash(image, device, clock)
    assert result.transfers > 65536
    assert device.dnload_blocks[65535:65538] == [65535, 0, 1]
    assert partition_bytes(device_disk, "b") == partition_bytes(image, "a")


def test_poll_timeouts_are_honoured(signed: Path, device_disk: Path, keyset: KeySet, clock: SimClock) -> None:
    device = sim(device_disk, keyset, start_in_dfu_mode=True, poll_timeout_ms=7, erase_poll_ms=300,
                 manifest_poll_ms=250)
    result = flash(signed, device, clock)
    assert device.poll_violations == 0 and device.stalls == []
    # The erase (block 0), every other block, and manifestation each waited what the device asked.
    assert clock.sleeps.count(0.3) == 1 and clock.sleeps.count(0.25) == 1
    assert clock.sleeps.count(0.007) == result.transfers - 1
    assert result.seconds == pytest.approx(0.3 + 0.25 + 0.007 * (result.transfers - 1))


def test_a_host_that_does_not_wait_is_stalled(signed: Path, device_disk: Path, keyset: KeySet, clock: SimClock,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The double enforces bwPollTimeout: a host polling early gets a STALL."""
    monkeypatch.setattr(dfu.DfuInterface, "wait", lambda self, poll_timeout_ms: None)
    device = sim(device_disk, keyset, start_in_dfu_mode=True)
    with pytest.raises(DfuError, match="stalled DFU_GETSTATUS while downloading") as error:
        flash(signed, device, clock)
    assert error.value.kind == "stall" and error.value.status == Status.ERR_STALLEDPKT
    assert device.poll_violations == 1 and device.state == State.DFU_IDLE  # cleared with DFU_CLRSTATUS


@pytest.mark.parametrize("tolerant", [True, False])
def test_manifestation(signed: Path, device_disk: Path, keyset: KeySet, clock: SimClock, tolerant: bool) -> None:
    device = sim(device_disk, keyset, manifestation_tolerant=tolerant, manifest_poll_ms=120)
    result = flash(signed, device, clock)
    assert result.manifestation_tolerant is tolerant
    # What the host asked after its last DFU_DNLOAD (the zero-length one), in which state, and the answers.
    end = max(i for i, (_, name, _) in enumerate(device.requests) if name == "DNLOAD")
    assert device.dnload_sizes[-1] == 0
    assert [(name, state) for _, name, state in device.requests[end:]] == [
        ("DNLOAD", "dfuDNLOAD-IDLE"), ("GETSTATUS", "dfuMANIFEST-SYNC"), ("GETSTATUS", "dfuMANIFEST")]
    if tolerant:  # back in dfuIDLE after manifestation
        assert device.answers[-2:] == ["dfuMANIFEST", "dfuIDLE"] and device.timeouts == 0
    else:  # in dfuMANIFEST-WAIT-RESET the device answers nothing: the host resets it all the same
        assert device.answers[-1] == "dfuMANIFEST" and device.timeouts == 1
    assert clock.sleeps.count(0.12) == 1
    assert device.booted == ["slot b (pending)"] and device.manifestations == 1
    assert partition_bytes(device_disk, "b") == partition_bytes(signed, "a")


# -- errors -------------------------------------------------------------------


def test_stall_mid_transfer_is_cleared_and_reported(signed: Path, device_disk: Path, keyset: KeySet,
                                                   clock: SimClock) -> None:
    device = sim(device_disk, keyset, stall_at_block=3)
    with pytest.raises(DfuError) as error:
        flash(signed, device, clock)
    message = str(error.value)
    assert error.value.kind == "stall" and error.value.status == Status.ERR_STALLEDPKT
    assert "stalled DFU_DNLOAD while downloading (block 3)" in message
    assert "state dfuERROR, status errSTALLEDPKT" in message and "cleared (DFU_CLRSTATUS)" in message
    assert "run the same command again" in error.value.hint
    assert device.state == State.DFU_IDLE and device.status == Status.OK  # CLRSTATUS reached the device
    assert device.requests[-2:] == [(clock.now(), "GETSTATUS", "dfuERROR"), (clock.now(), "CLRSTATUS", "dfuERROR")]
    assert device.booted == []  # nothing activated
    # The same command again works.
    flash(signed, device, clock)
    assert partition_bytes(device_disk, "b") == partition_bytes(signed, "a")


@pytest.mark.parametrize("start_state, start_status, fix", [
    (State.DFU_DNLOAD_IDLE, Status.OK, "ABORT"),
    (State.DFU_UPLOAD_IDLE, Status.OK, "ABORT"),
    (State.DFU_ERROR, Status.ERR_WRITE, "CLRSTATUS"),
    (State.DFU_DNLOAD_SYNC, Status.OK, "ABORT"),  # DFU_GETSTATUS moves it on to dfuDNLOAD-IDLE
])
def test_device_found_in_another_state(signed: Path, device_disk: Path, keyset: KeySet, clock: SimClock,
                                       start_state: State, start_status: Status, fix: str) -> None:
    device = sim(device_disk, keyset, start_in_dfu_mode=True, start_state=start_state, start_status=start_status)
    flash(signed, device, clock)
    names = [name for _, name, _ in device.requests]
    assert names[:2] == ["GETSTATUS", fix] and device.stalls == []
    assert partition_bytes(device_disk, "b") == partition_bytes(signed, "a")


def test_wrong_state_mid_download_aborts_and_retries_once(signed: Path, device_disk: Path, keyset: KeySet,
                                                         clock: SimClock) -> None:
    device = sim(device_disk, keyset, lose_session_at=[5])
    result = flash(signed, device, clock)
    assert result.retries == 1 and device.erases == 2
    assert ("ABORT", "dfuIDLE") in [(name, state) for _, name, state in device.requests]
    assert device.dnload_blocks.count(0) == 2 and device.dnload_blocks[:7] == [0, 1, 2, 3, 4, 5, 0]
    assert partition_bytes(device_disk, "b") == partition_bytes(signed, "a")
    assert "1 restart after DFU_ABORT" in format_result(result)


def test_wrong_state_twice_is_an_error(signed: Path, device_disk: Path, keyset: KeySet, clock: SimClock) -> None:
    device = sim(device_disk, keyset, lose_session_at=[5, 2])
    with pytest.raises(DfuError, match=r"after DFU_DNLOAD of block 2: the device is in state dfuIDLE, expected "
                                       r"dfuDNLOAD-IDLE \(again after DFU_ABORT and a new download\)") as error:
        flash(signed, device, clock)
    assert error.value.kind == "state" and error.value.state == State.DFU_IDLE
    assert device.booted == []


ERROR_STATUSES = [s for s in Status if s != Status.OK]


@pytest.mark.parametrize("status", ERROR_STATUSES, ids=[s.label for s in ERROR_STATUSES])
def test_every_error_status_is_named(signed: Path, device_disk: Path, keyset: KeySet, clock: SimClock,
                                     status: Status) -> None:
    device = sim(device_disk, keyset, status_at_block={4: status}, start_in_dfu_mode=True)
    with pytest.raises(DfuError) as error:
        flash(signed, device, clock)
    message = str(error.value)
    assert error.value.kind == "status" and error.value.status == status and error.value.state == State.DFU_ERROR
    assert f"the USB device reports {status.label} while downloading at block 4: {status.meaning}" in message
    assert "cleared with DFU_CLRSTATUS" in message
    assert error.value.hint == status.advice and error.value.hint
    if status == Status.ERR_VENDOR:
        assert "(the device says: MantraBoot: slot b: block I/O error at LBA 4242)" in message
    assert device.state == State.DFU_IDLE and device.status == Status.OK
    assert error.value.written == 4 * 4096 and device.booted == []


@pytest.mark.parametrize("tolerant", [True, False])
def test_error_status_at_manifestation(signed: Path, device_disk: Path, keyset: KeySet, clock: SimClock,
                                       tolerant: bool) -> None:
    device = sim(device_disk, keyset, status_at_manifest=Status.ERR_VERIFY, manifestation_tolerant=tolerant)
    with pytest.raises(DfuError, match="reports errVERIFY while manifesting .*: the written slot failed the "
                                       "device's verification") as error:
        flash(signed, device, clock)
    assert "./mantra verify --slot" in error.value.hint and device.booted == []


def test_device_verification_catches_a_slot_that_does_not_verify(signed: Path, device_disk: Path, keyset: KeySet,
                                                                 clock: SimClock,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The double checks the written slot as MantraBoot does: bytes changed
    in transit (here: by a host bug) end in errVERIFY, not in a boot."""
    original = dfu.DfuInterface.dnload

    def corrupting(self, block: int, data: bytes) -> None:
        original(self, block, data[:-1] + bytes([data[-1] ^ 0xFF]) if block == 10 else data)

    monkeypatch.setattr(dfu.DfuInterface, "dnload", corrupting)
    device = sim(device_disk, keyset, start_in_dfu_mode=True)
    with pytest.raises(DfuError, match="errVERIFY"):
        flash(signed, device, clock)
    assert device.booted == [] and device.manifestations == 1


def test_unplug_mid_transfer_says_run_the_same_command_again(signed: Path, device_disk: Path, keyset: KeySet,
                                                            clock: SimClock) -> None:
    device = sim(device_disk, keyset, unplug_at_block=10)
    running = partition_bytes(device_disk, "a")
    with pytest.raises(DfuError) as error:
        flash(signed, device, clock)
    assert error.value.kind == "gone" and error.value.written == 10 * 4096
    assert "went away while downloading at block 10 (40960 of" in str(error.value)
    assert "its running slot was not touched" in str(error.value)
    assert error.value.hint == "reconnect the board and run the same command again"
    assert partition_bytes(device_disk, "a") == running
    device.replug(clock.now())
    flash(signed, device, clock)  # ... and it works
    assert partition_bytes(device_disk, "b") == partition_bytes(signed, "a")


# -- refused before anything is written ------------------------------------------


def untouched(device: SimDevice, disk: Path, before: str) -> None:
    assert device.dnload_sizes == [] and device.erases == 0
    assert digest(partition_bytes(disk, "b")) == before


def test_device_of_another_board_is_refused(signed: Path, device_disk: Path, keyset: KeySet,
                                            clock: SimClock) -> None:
    before = digest(partition_bytes(device_disk, "b"))
    device = sim(device_disk, keyset, board="rpi4")
    with pytest.raises(DfuError, match="the USB device is a rpi4 board, not qemu-x86_64: nothing was written") as e:
        flash(signed, device, clock)
    assert e.value.kind == "refused"
    untouched(device, device_disk, before)


def test_image_for_another_board_is_refused_before_the_device_is_touched(keyset: KeySet, tmp_path: Path,
                                                                         device_disk: Path, clock: SimClock) -> None:
    image = make_image(tmp_path / "rpi", keyset, board="rpi4")
    before = digest(partition_bytes(device_disk, "b"))
    device = sim(device_disk, keyset)
    with pytest.raises(DfuError, match="slot a is built for board rpi4, not qemu-x86_64: nothing was written"):
        flash(image, device, clock)
    assert device.requests == [] and device.detaches == 0
    untouched(device, device_disk, before)


def test_image_of_another_product_is_refused(signed: Path, device_disk: Path, keyset: KeySet,
                                             other_keyset: KeySet, clock: SimClock) -> None:
    """The device trusts another product's root key."""
    before = digest(partition_bytes(device_disk, "b"))
    device = sim(device_disk, other_keyset)
    with pytest.raises(DfuError, match=r"slot a does not verify: key record: issued by root key [0-9a-f]+, not by "
                                       r"the given root key [0-9a-f]+ .*nothing was written") as error:
        flash(signed, device, clock)
    assert error.value.kind == "refused"
    untouched(device, device_disk, before)


def test_given_root_key_must_be_the_devices(signed: Path, device_disk: Path, keyset: KeySet, other_keyset: KeySet,
                                            clock: SimClock) -> None:
    before = digest(partition_bytes(device_disk, "b"))
    device = sim(device_disk, other_keyset)
    with pytest.raises(DfuError, match="does not verify"):  # checked before the device is touched
        flash(signed, device, clock, root=other_keyset.dir / keys.ROOT_PUB)
    assert device.requests == []
    with pytest.raises(DfuError, match=r"the device trusts root key .*\(a device of another product\)"):
        flash(signed, device, clock, root=keyset.dir / keys.ROOT_PUB)
    untouched(device, device_disk, before)


def test_rollback_is_refused(signed: Path, device_disk: Path, keyset: KeySet, clock: SimClock) -> None:
    before = digest(partition_bytes(device_disk, "b"))
    device = sim(device_disk, keyset, rollback_minimum=5)
    with pytest.raises(DfuError, match="security counter 0 is lower than the minimum 5"):
        flash(signed, device, clock)
    untouched(device, device_disk, before)


def test_unsigned_or_empty_slot_is_refused(signed: Path, device_disk: Path, keyset: KeySet, clock: SimClock) -> None:
    device = sim(device_disk, keyset)
    with pytest.raises(DfuError, match="slot b is empty: nothing to flash"):
        flash(signed, device, clock, from_slot="b")
    assert device.requests == []


# -- discovery -----------------------------------------------------------------


def test_no_device_found_names_the_udev_rule(signed: Path, device_disk: Path, keyset: KeySet,
                                            clock: SimClock) -> None:
    with pytest.raises(DfuError) as error:
        flash(signed, sim(device_disk, keyset), clock, backend=SimBackend(clock=clock))
    assert error.value.kind == "not-found"
    assert str(error.value).startswith("no USB DFU device 1209:0001 found (board qemu-x86_64)")
    assert 'ATTRS{idVendor}=="1209", ATTRS{idProduct}=="0001"' in error.value.hint and "udev" in error.value.hint
    # Another VID:PID than the device's.
    with pytest.raises(DfuError, match="no USB DFU device 0483:df11 found"):
        flash(signed, sim(device_disk, keyset), clock, vid_pid="0483:df11")
    with pytest.raises(DfuError, match="not a USB VID:PID: '12:zz'"):
        flash(signed, sim(device_disk, keyset), clock, vid_pid="12:zz")


def test_permission_denied_names_the_udev_rule(signed: Path, device_disk: Path, keyset: KeySet, clock: SimClock,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    backend = SimBackend(sim(device_disk, keyset), clock=clock)

    def denied(handle):
        raise usb.core.USBError("Access denied (insufficient permissions)", -3, 13)

    monkeypatch.setattr(backend, "open_device", denied)
    with pytest.raises(DfuError, match="no permission to open USB device 1209:0001") as error:
        flash(signed, backend.devices[0], clock, backend=backend)
    assert error.value.kind == "permission" and 'TAG+="uaccess"' in error.value.hint


def test_read_only_device_is_refused(signed: Path, device_disk: Path, keyset: KeySet, clock: SimClock) -> None:
    device = sim(device_disk, keyset, can_download=False)
    with pytest.raises(DfuError, match="does not accept downloads"):
        flash(signed, device, clock)


def test_progress_callback(signed: Path, device_disk: Path, keyset: KeySet, clock: SimClock) -> None:
    calls: list[tuple[int, int]] = []
    result = flash(signed, sim(device_disk, keyset), clock, progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, result.bytes) and calls[-1] == (result.bytes, result.bytes)
    assert len(calls) == result.transfers + 1
    assert all(a[0] < b[0] for a, b in zip(calls, calls[1:]))
    with dfu.rich_progress() as update:  # the CLI's bar takes the same calls
        for done, total in calls:
            update(done, total)


def test_dfu_error_is_a_mantra_error() -> None:
    error = DfuError("gone", "what", "hint")
    assert isinstance(error, MantraError) and str(error) == "what\ntry: hint"


# -- the formats -----------------------------------------------------------------


def test_functional_descriptor() -> None:
    raw = bytes([9, 0x21, 0x0B, 0xE8, 0x03, 0x00, 0x08, 0x10, 0x01])
    parsed = FunctionalDescriptor.parse(raw)
    assert parsed == FunctionalDescriptor(0x0B, 1000, 2048, 0x0110)
    assert parsed.can_download and parsed.can_upload and parsed.will_detach and not parsed.manifestation_tolerant
    assert parsed.encode() == raw
    # Found among other class-specific descriptors; a DFU 1.0 descriptor (7 bytes) reads as 1.0.
    other = bytes([5, 0x24, 0, 0x10, 0x01])
    assert FunctionalDescriptor.find(b"", other + raw) == parsed
    assert FunctionalDescriptor.find(bytes([7, 0x21, 0x04, 0xFF, 0x00, 0x40, 0x00])) == FunctionalDescriptor(
        0x04, 255, 64, 0x0100)
    assert FunctionalDescriptor.find(other) is None
    with pytest.raises(dfu.DfuProtocolError):
        FunctionalDescriptor.parse(bytes([9, 0x21, 0x01]))


def test_status_and_device_info_records() -> None:
    status = DfuStatus.parse(bytes([0x03, 0x10, 0x27, 0x00, 0x0A, 0x05]))
    assert status == DfuStatus(Status.ERR_WRITE, 10000, State.DFU_ERROR, 5)
    assert (status.status_label, status.state_label) == ("errWRITE", "dfuERROR")
    assert status.encode() == bytes([0x03, 0x10, 0x27, 0x00, 0x0A, 0x05])
    with pytest.raises(dfu.DfuProtocolError):
        DfuStatus.parse(b"\0" * 5)
    info = DeviceInfo("qemu-x86_64", bytes(range(32)), 7, "b", 128 * MIB)
    assert DeviceInfo.parse(info.encode()) == info
    with pytest.raises(dfu.DfuProtocolError):
        DeviceInfo.parse(info.encode()[:-1])
    with pytest.raises(dfu.DfuProtocolError):
        DeviceInfo.parse(b"XDFU" + info.encode()[4:])
    assert [s.label for s in State] == ["appIDLE", "appDETACH", "dfuIDLE", "dfuDNLOAD-SYNC", "dfuDNBUSY",
                                        "dfuDNLOAD-IDLE", "dfuMANIFEST-SYNC", "dfuMANIFEST",
                                        "dfuMANIFEST-WAIT-RESET", "dfuUPLOAD-IDLE", "dfuERROR"]
    assert [int(s) for s in Status] == list(range(16))


# -- the double itself is strict -------------------------------------------------------


def test_simulated_device_is_strict(device_disk: Path, keyset: KeySet, clock: SimClock) -> None:
    """Requests a state does not allow are stalled (EPIPE) and end in
    dfuERROR/errSTALLEDPKT, as a real DFU 1.1 device answers them."""
    device = sim(device_disk, keyset, start_in_dfu_mode=True, transfer_size=64)
    found = dfu.find_dfu([(0x1209, 0x0001)], SimBackend(device, clock=clock))[0]
    request = dfu.DfuInterface(found, clock, lambda line: None)

    def stalls(call) -> None:
        with pytest.raises(dfu._Stalled):
            call()
        assert device.state == State.DFU_ERROR and device.status == Status.ERR_STALLEDPKT
        assert request.get_status().status == Status.ERR_STALLEDPKT
        request.clear_status()
        assert request.get_state() == State.DFU_IDLE

    stalls(request.clear_status)  # DFU_CLRSTATUS in dfuIDLE
    stalls(lambda: request.dnload(0, b""))  # zero-length DFU_DNLOAD in dfuIDLE
    stalls(lambda: request.dnload(0, bytes(65)))  # longer than wTransferSize
    stalls(lambda: request.upload(0, 64))  # DFU_UPLOAD on the slot's alternate setting
    request.dnload(0, bytes(64))
    assert request.get_status().state == State.DFU_DNBUSY
    stalls(request.get_status)  # before bwPollTimeout
    request.dnload(0, bytes(64))
    request.wait(request.get_status().poll_timeout_ms)
    assert request.get_status().state == State.DFU_DNLOAD_IDLE
    stalls(lambda: request.dnload(5, bytes(64)))  # block 5 after block 0
    with pytest.raises(dfu._Stalled):
        request.detach(100)  # DFU_DETACH in DFU mode


def test_interrupted_download_leaves_the_device_idle(signed: Path, device_disk: Path, keyset: KeySet,
                                                     clock: SimClock) -> None:
    """Ctrl-C during the download: the device is taken back to dfuIDLE
    (DFU_ABORT), nothing is activated, and the next run starts cleanly."""
    device = sim(device_disk, keyset, start_in_dfu_mode=True)

    def interrupt(done: int, total: int) -> None:
        if done >= 5 * 4096:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        flash(signed, device, clock, progress=interrupt)
    assert device.state == State.DFU_IDLE and device.requests[-1][1:] == ("ABORT", "dfuDNLOAD-IDLE")
    assert device.booted == [] and device.stalls == []
    flash(signed, device, clock)
    assert partition_bytes(device_disk, "b") == partition_bytes(signed, "a")


def test_board_usb_ids_are_data(scratch: Workspace) -> None:
    from mantra.board import UsbIds, load_board

    assert load_board(scratch, BOARD).usb == UsbIds(0x1209, 0x0001, 0x0001)
    board_toml = scratch.boards_dir / BOARD / "board.toml"
    text = board_toml.read_text()
    board_toml.write_text(text.replace("dfu_pid = 0x0001\n", ""))
    assert load_board(scratch, BOARD).usb == UsbIds(0x1209, 0x0001, 0x0001)  # dfu_pid defaults to pid
    board_toml.write_text(text.replace("pid = 0x0001\ndfu_pid", "pid = 0x10000\ndfu_pid"))
    with pytest.raises(MantraError, match=r"`usb.pid` must be a 16-bit USB ID \(0 to 0xffff\), not 0x10000"):
        load_board(scratch, BOARD)
    board_toml.write_text(text.replace("vid = 0x1209\n", "vendor = 0x1209\n"))
    with pytest.raises(MantraError, match="unknown key `usb.vendor`"):
        load_board(scratch, BOARD)
    start = text.index("[usb]")
    board_toml.write_text(text[:start])
    assert load_board(scratch, BOARD).usb is None
    with pytest.raises(DfuError, match="board qemu-x86_64 has no USB IDs"):
        dfu._ids(None, load_board(scratch, BOARD))


def test_a_dfu_device_that_is_not_mantraboot_is_refused(signed: Path, device_disk: Path, keyset: KeySet,
                                                        clock: SimClock) -> None:
    before = digest(partition_bytes(device_disk, "b"))
    device = sim(device_disk, keyset, info_alt=False)
    with pytest.raises(DfuError, match=r"is not MantraBoot's DFU function: its DFU interface has alternate settings "
                                       r"\[0\]") as error:
        flash(signed, device, clock)
    assert error.value.kind == "descriptor"
    untouched(device, device_disk, before)


def test_the_flash_command_over_usb(signed: Path, device_disk: Path, keyset: KeySet, clock: SimClock,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`./mantra flash -b BOARD --usb [VID:PID] IMAGE` (tools/mantra/cli/flash.py)
    with the simulated device in place of libusb: the slot is written and
    format_result printed; no device → "error:" + "try:" with the udev hint,
    exit status 1, nothing printed before it."""
    from mantra.cli import app
    from typer.testing import CliRunner

    device = sim(device_disk, keyset)
    backends = iter([SimBackend(device, clock=clock), SimBackend(clock=clock)])
    monkeypatch.setattr(dfu, "_libusb", lambda: next(backends))
    monkeypatch.setattr(dfu, "SystemClock", lambda: clock)

    done = CliRunner().invoke(app, ["flash", "-b", BOARD, str(signed), "--usb", "1209:0001"])
    assert done.exit_code == 0, done.output
    assert "into slot b of the qemu-x86_64 board at USB 1209:0001 serial MANTRA-0001" in done.output
    assert partition_bytes(device_disk, "b") == partition_bytes(signed, "a")
    failed = CliRunner().invoke(app, ["flash", "-b", BOARD, "--usb", str(signed)])
    assert failed.exit_code == 1
    assert "error: no USB DFU device 1209:0001 found" in failed.output
    assert "try: connect the board's USB device port" in failed.output and "udev rule" in failed.output


@pytest.mark.parametrize("version, what", [(0x011A, r"DFU version 1\.1a \(ST's DfuSe"),
                                           (0x0200, r"DFU version 2\.00,")])
def test_other_dfu_versions_are_refused(signed: Path, device_disk: Path, keyset: KeySet, clock: SimClock,
                                        version: int, what: str) -> None:
    device = sim(device_disk, keyset, dfu_version=version, start_in_dfu_mode=True)
    with pytest.raises(DfuError, match=what + ".*not DFU 1.1: nothing was written"):
        flash(signed, device, clock)
    assert device.dnload_sizes == [] and device.requests == []


def test_dfu_1_0_device(signed: Path, device_disk: Path, keyset: KeySet, clock: SimClock) -> None:
    device = sim(device_disk, keyset, dfu_version=0x0100)
    flash(signed, device, clock)
    assert partition_bytes(device_disk, "b") == partition_bytes(signed, "a")


def test_hil_dfu_flasher(signed: Path, device_disk: Path, keyset: KeySet, clock: SimClock) -> None:
    """A HIL place with `flasher = "dfu"` flashes through flash_usb: the slot
    is written; a board that refuses the image is a test failure, a missing
    device an infrastructure error (mantra.hil's classification)."""
    from mantra.hil.drivers import DfuFlasher
    from mantra.hil.errors import FlashError, TestFailure
    from mantra.hil.power import NoPower, PowerDriver
    from mantra.hil.resources import USBDFUDevice, USBMatch

    class Console:
        place = "bench-1"
        closed = False

        def close(self) -> None:
            self.closed = True

    def flasher(device: SimDevice | None) -> DfuFlasher:
        return DfuFlasher(USBDFUDevice(USBMatch(0x1209, 0x0001, "MANTRA-0001")), board=BOARD, default_image=signed,
                          backend=SimBackend(device, clock=clock) if device else SimBackend(clock=clock),
                          clock=clock)

    console = Console()
    good = flasher(sim(device_disk, keyset))
    good.enter_flash_mode(PowerDriver(NoPower(), off_time=0), console)  # type: ignore[arg-type]
    assert console.closed
    report = good.flash(None, console)  # type: ignore[arg-type]
    assert "into slot b of the qemu-x86_64 board" in report, report
    assert partition_bytes(device_disk, "b") == partition_bytes(signed, "a")
    with pytest.raises(TestFailure, match="bench-1: the board refused the image: .*rpi4"):
        flasher(sim(device_disk, keyset, board="rpi4")).flash(None, console)  # type: ignore[arg-type]
    with pytest.raises(FlashError, match="bench-1: flashing over USB failed: no USB DFU device"):
        flasher(None).flash(None, console)  # type: ignore[arg-type]
