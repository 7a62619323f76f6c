"""`mantra sign` and `mantra verify`, and the tamper corpus: an image
holding the real MantraBoot (on a small ESP), MantraCore and boot filesystem
(in slot a; slot b empty) of the default build, so each case copies a few
MiB, signed with a key set made in a temporary directory, then changed one
way per test. Most cases change slot a; the ESP's manifest covers MantraBoot.
`verify` must refuse each with the right reason and a nonzero exit status."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from key_fixtures import fast_kdf, keyset, other_keyset  # noqa: F401 (fixtures)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gpt_reader import read_gpt
from mantra.build import BuildResult
from mantra.cli import app
from mantra.errors import MantraError
from mantra.image import esp, gpt
from mantra.signing import keys, pcr
from mantra.signing.encoding import Envelope, KeyPurpose, KeyRecord, Manifest, RevocationList, Signed, key_id
from mantra.signing.image import MANIFEST_PATH, EspFiles, FatFiles, components, open_esp, open_slot
from mantra.signing.keys import KeySet, raw_public
from mantra.signing.sign import ImageInfo, sign_image
from mantra.signing.verify import VerifyFailure, verify_disk, verify_image
from support import read_partition
from typer.testing import CliRunner

PASSPHRASE = "tamper corpus passphrase"
MIB = 1024 * 1024
ESP_MIB = 34
COMPONENT_PATHS = ("EFI/BOOT/BOOTX64.EFI", "MANTRA/KERNEL.ELF", "MANTRA/BOOTFS.IMG")


def copy_image(source: Path, directory: Path) -> Path:
    """image.img (sparse) and its manifest.json, copied into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "--sparse=always", str(source), str(directory / "image.img")], check=True)
    shutil.copy(source.with_name("manifest.json"), directory / "manifest.json")
    return directory / "image.img"


@pytest.fixture(scope="module")
def unsigned(default_image: BuildResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default build's components on a 34 MiB ESP and 34 MiB slot a (slot b empty, sparse), unsigned."""
    work = tmp_path_factory.mktemp("unsigned")
    files = {**read_partition(default_image.image, "esp", work), **read_partition(default_image.image, "slot-a", work)}
    sources = {}
    for path in COMPONENT_PATHS:
        sources[path] = work / path.replace("/", "_")
        sources[path].write_bytes(files[path])
    esp.write_esp(work / "esp.img", ESP_MIB, {p: f for p, f in sources.items() if p.startswith("EFI/")})
    esp.write_esp(work / "slot.img", ESP_MIB, {p: f for p, f in sources.items() if not p.startswith("EFI/")},
                  label=esp.SLOT_LABEL)
    specs = [gpt.PartitionSpec("esp", gpt.ESP_TYPE, ESP_MIB * MIB, work / "esp.img"),
             gpt.PartitionSpec("slot-a", gpt.MANTRA_SLOT_TYPE, ESP_MIB * MIB, work / "slot.img"),
             gpt.PartitionSpec("slot-b", gpt.MANTRA_SLOT_TYPE, ESP_MIB * MIB)]
    gpt.write_image(work / "image.img", specs, align=MIB, disk_guid=uuid.UUID(int=1))
    shutil.copy(default_image.manifest, work / "manifest.json")
    return work / "image.img"


@pytest.fixture(scope="module")
def signed(unsigned: Path, keyset: KeySet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    image = copy_image(unsigned, tmp_path_factory.mktemp("signed"))
    sign_image(image, keyset, PASSPHRASE)
    return image


@pytest.fixture
def image(signed: Path, tmp_path: Path) -> Path:
    """A fresh copy of the signed image for one test to change."""
    return copy_image(signed, tmp_path / "image")


def verify(image: Path, root: Path, *options: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["verify", str(image), "--root", str(root), *options])
    return result.exit_code, result.output


def refused(image: Path, root: Path, reason: str, *options: str) -> str:
    """Runs `mantra verify`, expecting exit status 1 and `verify: FAILED: <reason...>`."""
    status, output = verify(image, root, *options)
    assert status == 1, output
    failed = [line for line in output.splitlines() if line.startswith("verify: FAILED: ")]
    assert failed and any(line.removeprefix("verify: FAILED: ").startswith(reason) for line in failed), output
    assert "verify: OK" not in output
    return output


def root_pub(keyset: KeySet) -> Path:
    return keyset.dir / keys.ROOT_PUB


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def slot_a(image: Path) -> FatFiles:
    return open_slot(image, "a")


def files_of(image: Path, path: str) -> FatFiles:
    """The file system holding `path`: the ESP for MantraBoot, else slot a."""
    return open_esp(image) if path.startswith("EFI/") else slot_a(image)


def rewrite_envelope(image: Path, change: Callable[[bytes], bytes]) -> None:
    files = slot_a(image)
    files.write(MANIFEST_PATH, change(files.read(MANIFEST_PATH)))


def sign_by_hand(image: Path, *, record: Signed, revocations: Signed, private: Ed25519PrivateKey,
                 **changes) -> None:
    """Writes an envelope assembled from the given parts, bypassing the
    checks `sign` makes: for images `sign` would never produce (in slot a)."""
    files = slot_a(image)
    info = ImageInfo.beside(image)
    manifest = Manifest(security_counter=0, signed_at=int(time.time()),
                        signing_key=key_id(raw_public(private.public_key())), config_sha256=info.config_sha256,
                        board=info.board, product=info.product, version=info.version,
                        source_revision=info.source_revision, toolchain=info.toolchain,
                        components=tuple(components(files)))
    body = dataclasses.replace(manifest, **changes).encode()
    files.write(MANIFEST_PATH, Envelope(record, revocations, Signed(body, private.sign(body))).encode())


# --- a good image ---------------------------------------------------------------


def test_signed_image_verifies_and_prints_every_check(signed: Path, keyset: KeySet) -> None:
    status, output = verify(signed, root_pub(keyset), "--min-counter", "0", "--board", "qemu-x86_64")
    assert status == 0, output
    key = keyset.active_id().hex()
    for line in (
        "verify: image: GPT ok",
        f"verify: envelope: {MANIFEST_PATH}",
        f"verify: key record: key {key} certified by root key {keyset.root_id.hex()}",
        f"verify: revocation list: version 1, 0 revoked, key {key} not revoked",
        f"verify: manifest: signature by key {key} ok (default 0.1.0 for qemu-x86_64",
        "verify: validity: signed",
        "verify: security counter: 0 >= minimum 0",
        "verify: board: qemu-x86_64",
        *(f"verify: component {path}: " for path in COMPONENT_PATHS),
        f"verify: OK: {signed} is default 0.1.0 for qemu-x86_64, security counter 0, signed by key {key}",
    ):
        assert line in output, f"{line!r} missing from:\n{output}"


def test_manifest_describes_the_image(signed: Path, keyset: KeySet, default_image: BuildResult) -> None:
    verified = verify_image(signed, keyset.root_public)
    manifest = verified.manifest
    info = ImageInfo.beside(default_image.image)
    assert (manifest.board, manifest.product, manifest.version) == ("qemu-x86_64", "default", "0.1.0")
    assert manifest.config_sha256 == info.config_sha256
    assert [(c.kind.label, c.path) for c in manifest.components] == [
        ("kernel", "MANTRA/KERNEL.ELF"), ("bootfs", "MANTRA/BOOTFS.IMG")]
    assert [c.sha256.hex() for c in manifest.components] == [info.built_components[p] for p in COMPONENT_PATHS[1:]]
    esp_manifest = verify_disk(signed, keyset.root_public).esp.manifest
    assert [(c.kind.label, c.path) for c in esp_manifest.components] == [("bootloader", "EFI/BOOT/BOOTX64.EFI")]
    assert dict(manifest.toolchain).keys() == {"rustc", "python", "mantra"}
    assert manifest.source_revision == info.source_revision != ""
    assert verified.key.key_id == keyset.active_id()
    # The reference PCRs follow from the signed bytes alone.
    values = pcr.expected_pcrs(verified.envelope.manifest.body)
    assert set(values) == {8, 9}


def test_sign_through_the_cli(unsigned: Path, keyset: KeySet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                              ) -> None:
    image = copy_image(unsigned, tmp_path)
    monkeypatch.setenv(keys.PASSPHRASE_ENV, PASSPHRASE)
    result = CliRunner().invoke(app, ["sign", str(image), "--keys", str(keyset.dir), "--counter", "5"])
    assert result.exit_code == 0, result.output
    assert f"signed {image}: {MANIFEST_PATH}" in result.output and "security counter 5" in result.output
    assert verify_image(image, keyset.root_public).manifest.security_counter == 5
    result = CliRunner().invoke(app, ["sign", str(image)], env={"MANTRA_KEYS": None})
    assert result.exit_code == 1 and "--keys DIR" in result.output


def test_sign_refuses_a_changed_image(unsigned: Path, keyset: KeySet, tmp_path: Path) -> None:
    image = copy_image(unsigned, tmp_path)
    files = slot_a(image)
    files.write("MANTRA/KERNEL.ELF", flip(files.read("MANTRA/KERNEL.ELF"), 100))
    with pytest.raises(MantraError, match="MANTRA/KERNEL.ELF on the slot a is not what the build wrote"):
        sign_image(image, keyset, PASSPHRASE)
    files.write("MANTRA/EXTRA.BIN", b"rides along")
    with pytest.raises(MantraError, match="not a component MantraBoot knows"):
        sign_image(image, keyset, PASSPHRASE)


def test_sign_refuses_a_wrong_passphrase(unsigned: Path, keyset: KeySet, tmp_path: Path) -> None:
    image = copy_image(unsigned, tmp_path)
    with pytest.raises(MantraError, match="wrong passphrase"):
        sign_image(image, keyset, "not the passphrase")
    assert MANIFEST_PATH not in open_esp(image).paths()


# --- the tamper corpus ------------------------------------------------------------


@pytest.mark.parametrize("path", COMPONENT_PATHS)
def test_flipped_byte_in_a_component(image: Path, keyset: KeySet, path: str) -> None:
    files = files_of(image, path)
    original = files.read(path)
    files.write(path, flip(original, len(original) // 2))
    output = refused(image, root_pub(keyset), f"component {path}: sha256 mismatch (expected ")
    assert f"got " in output
    for other in COMPONENT_PATHS:  # the others still check out, and say so
        if other != path:
            assert f"verify: component {other}: " in output


def test_component_of_another_size(image: Path, keyset: KeySet) -> None:
    files = slot_a(image)
    kernel = files.read("MANTRA/KERNEL.ELF")
    files.write("MANTRA/KERNEL.ELF", kernel + b"\0")
    refused(image, root_pub(keyset),
            f"component MANTRA/KERNEL.ELF: size mismatch (expected {len(kernel)} bytes, got {len(kernel) + 1})")


def test_flipped_byte_in_the_manifest(image: Path, keyset: KeySet) -> None:
    envelope = Envelope.decode(slot_a(image).read(MANIFEST_PATH))
    start = envelope.encode().index(envelope.manifest.body)
    for at in (16, 60, len(envelope.manifest.body) - 5):  # counter, config hash, last component's path
        rewrite_envelope(image, lambda data: flip(data, start + at))
        refused(image, root_pub(keyset), f"manifest: signature by key {keyset.active_id().hex()} does not verify")
        rewrite_envelope(image, lambda data: flip(data, start + at))  # back to the signed bytes


def test_flipped_byte_in_the_signature(image: Path, keyset: KeySet) -> None:
    rewrite_envelope(image, lambda data: flip(data, len(data) - 10))
    refused(image, root_pub(keyset), "manifest: signature by key")


def test_flipped_byte_in_the_key_record(image: Path, keyset: KeySet) -> None:
    rewrite_envelope(image, lambda data: flip(data, 16 + 8 + 40))  # inside the public key
    refused(image, root_pub(keyset), "key record: root signature does not verify")


def test_flipped_byte_in_the_revocation_list(image: Path, keyset: KeySet) -> None:
    envelope = Envelope.decode(slot_a(image).read(MANIFEST_PATH))
    start = envelope.encode().index(envelope.revocations.body)
    rewrite_envelope(image, lambda data: flip(data, start + 16))  # the list version
    refused(image, root_pub(keyset), "revocation list: root signature does not verify")


def test_malformed_envelope(image: Path, keyset: KeySet) -> None:
    rewrite_envelope(image, lambda data: data[:-1])
    refused(image, root_pub(keyset), f"signed manifest {MANIFEST_PATH} is malformed: envelope: header says")


def test_wrong_root_key(signed: Path, keyset: KeySet, other_keyset: KeySet) -> None:
    refused(signed, root_pub(other_keyset), f"key record: issued by root key {keyset.root_id.hex()}, not by the "
                                            f"given root key {other_keyset.root_id.hex()}")


def test_image_of_another_key_set(unsigned: Path, other_keyset: KeySet, keyset: KeySet, tmp_path: Path) -> None:
    image = copy_image(unsigned, tmp_path)
    sign_image(image, other_keyset, PASSPHRASE)
    refused(image, root_pub(keyset), f"key record: issued by root key {other_keyset.root_id.hex()}")


def test_expired_key(unsigned: Path, fast_kdf, tmp_path: Path) -> None:
    now = int(time.time())
    expired = keys.init_keyset(tmp_path / "expired", PASSPHRASE, not_before=now - 10 * 86400, validity_days=1)
    image = copy_image(unsigned, tmp_path / "image")
    with pytest.raises(MantraError, match="is not valid now"):  # sign refuses it...
        sign_image(image, expired, PASSPHRASE)
    key = expired.active()  # ...so sign by hand, today, with the key that expired nine days ago
    revocations, _ = expired.revocations()
    sign_by_hand(image, record=key.signed, revocations=revocations,
                 private=expired.signing_key(key.id, PASSPHRASE))
    refused(image, root_pub(expired), f"key record: key {key.id.hex()} had expired when the image was signed")


def test_key_not_yet_valid(unsigned: Path, fast_kdf, tmp_path: Path) -> None:
    future = keys.init_keyset(tmp_path / "future", PASSPHRASE, not_before=int(time.time()) + 86400)
    image = copy_image(unsigned, tmp_path / "image")
    key = future.active()
    sign_by_hand(image, record=key.signed, revocations=future.revocations()[0],
                 private=future.signing_key(key.id, PASSPHRASE))
    refused(image, root_pub(future), f"key record: key {key.id.hex()} was not yet valid when the image was signed")


def test_expired_since_signing_still_verifies(unsigned: Path, fast_kdf, tmp_path: Path) -> None:
    """The key must have been valid when it signed (MantraBoot has no trusted
    clock); a key that expired later does not brick the devices."""
    start = int(time.time()) - 10 * 86400
    old = keys.init_keyset(tmp_path / "old", PASSPHRASE, not_before=start, validity_days=2)
    image = copy_image(unsigned, tmp_path / "image")
    sign_image(image, old, PASSPHRASE, now=start + 86400)
    status, output = verify(image, root_pub(old))
    assert status == 0, output
    assert "the key has expired since" in output


def test_revoked_key(unsigned: Path, fast_kdf, tmp_path: Path) -> None:
    keyset = keys.init_keyset(tmp_path / "k", PASSPHRASE)
    old = keyset.active()
    new = keys.rotate(keyset, PASSPHRASE)
    keys.revoke(keyset, PASSPHRASE, old.id.hex())
    image = copy_image(unsigned, tmp_path / "image")
    # sign uses the new key and carries the new list: fine.
    result = sign_image(image, keyset, PASSPHRASE)
    assert result.key.id == new.id
    verified = verify_image(image, keyset.root_public)
    assert verified.revocations.version == 2 and verified.revocations.revoked == (old.id,)
    # The revoked key signing an image that carries the current list: refused.
    sign_by_hand(image, record=old.signed, revocations=keyset.revocations()[0],
                 private=keyset.signing_key(old.id, PASSPHRASE))
    refused(image, root_pub(keyset), f"key record: key {old.id.hex()} is revoked (revocation list version 2)")


def test_old_revocation_list_is_refused_with_min_revocations(image: Path, keyset: KeySet) -> None:
    refused(image, root_pub(keyset), "revocation list: version 1 is older than the minimum 2", "--min-revocations", "2")
    assert verify(image, root_pub(keyset), "--min-revocations", "1")[0] == 0


def test_unknown_signing_key(image: Path, keyset: KeySet) -> None:
    """A legitimate key record, but the manifest signed by a key the root never certified."""
    stranger = Ed25519PrivateKey.generate()
    sign_by_hand(image, record=keyset.active().signed, revocations=keyset.revocations()[0], private=stranger)
    refused(image, root_pub(keyset), f"manifest: signed by key {key_id(raw_public(stranger.public_key())).hex()}, "
                                     "which the key record does not certify")


def test_forged_key_record(image: Path, keyset: KeySet) -> None:
    """A record that names our root as issuer, signed by someone else's root."""
    stranger, fake_root = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    now = int(time.time())
    body = KeyRecord(KeyPurpose.IMAGE_SIGNING, raw_public(stranger.public_key()), now - 60, now + 86400,
                     keyset.root_id).encode()
    sign_by_hand(image, record=Signed(body, fake_root.sign(body)), revocations=keyset.revocations()[0],
                 private=stranger)
    refused(image, root_pub(keyset), "key record: root signature does not verify")


def test_downgraded_security_counter(unsigned: Path, keyset: KeySet, tmp_path: Path) -> None:
    image = copy_image(unsigned, tmp_path)
    sign_image(image, keyset, PASSPHRASE, security_counter=3)
    refused(image, root_pub(keyset), "security counter 3 is lower than the minimum 4 (downgrade refused)",
            "--min-counter", "4")
    status, output = verify(image, root_pub(keyset), "--min-counter", "3")
    assert status == 0 and "security counter: 3 >= minimum 3" in output


def test_truncated_image(image: Path, keyset: KeySet) -> None:
    size = image.stat().st_size
    for length in (size - 512, 20 * MIB, 4096):
        with image.open("r+b") as stream:
            stream.truncate(length)
        refused(image, root_pub(keyset), f"image truncated: the GPT says the disk is {size} bytes, the file has "
                                         f"{length}")
    with image.open("r+b") as stream:
        stream.truncate(600)
    refused(image, root_pub(keyset), "image truncated: 600 bytes, too short for a GPT header")


def test_unsigned_image(unsigned: Path, keyset: KeySet) -> None:
    refused(unsigned, root_pub(keyset), f"no signed manifest: {MANIFEST_PATH} is not on the ESP")


def test_file_outside_the_manifest(image: Path, keyset: KeySet) -> None:
    """A kernel command line added after signing would change how the kernel
    runs without touching a signed byte: refused."""
    slot_a(image).write("MANTRA/CMDLINE.TXT", b"log=debug")
    refused(image, root_pub(keyset), "slot a file MANTRA/CMDLINE.TXT is not in the manifest (a cmdline MantraBoot "
                                     "would load")
    # Nothing unsigned rides along on the ESP either.
    slot_a(image).write("MANTRA/CMDLINE.TXT", b"")
    open_esp(image).write("EFI/BOOT/EXTRA.EFI", b"MZ")
    refused(image, root_pub(keyset), "ESP file EFI/BOOT/EXTRA.EFI is not in the manifest (a file")


def test_missing_component(image: Path, keyset: KeySet) -> None:
    files = slot_a(image)
    subprocess.run(["mdel", "-i", f"{image}@@{files.offset}", "::/MANTRA/BOOTFS.IMG"], check=True)
    refused(image, root_pub(keyset), "component MANTRA/BOOTFS.IMG: missing from the slot a")


def test_wrong_board(image: Path, keyset: KeySet) -> None:
    refused(image, root_pub(keyset), "board: the image is for qemu-x86_64, expected qemu-aarch64",
            "--board", "qemu-aarch64")


def test_verify_library_reports_every_failed_component(image: Path, keyset: KeySet) -> None:
    files = slot_a(image)
    for path in ("MANTRA/KERNEL.ELF", "MANTRA/BOOTFS.IMG"):
        files.write(path, flip(files.read(path), 0))
    with pytest.raises(VerifyFailure) as failure:
        verify_image(image, keyset.root_public)
    assert [reason.split(":")[0] for reason in failure.value.reasons] == [
        "component MANTRA/KERNEL.ELF", "component MANTRA/BOOTFS.IMG"]


def test_bad_root_key_file(signed: Path, tmp_path: Path) -> None:
    (tmp_path / "root.pub").write_text("not a key")
    status, output = verify(signed, tmp_path / "root.pub")
    assert status == 1 and "is not an Ed25519 public key" in output and "try:" in output


def test_verify_through_the_bootstrap_script(signed: Path, keyset: KeySet, image: Path) -> None:
    from support import mantra

    result = mantra("verify", str(signed), "--root", str(root_pub(keyset)))
    assert result.returncode == 0 and "verify: OK" in result.stdout, result.stdout + result.stderr
    files = slot_a(image)
    files.write("MANTRA/KERNEL.ELF", flip(files.read("MANTRA/KERNEL.ELF"), 7))
    result = mantra("verify", str(image), "--root", str(root_pub(keyset)))
    assert result.returncode == 1
    assert "verify: FAILED: component MANTRA/KERNEL.ELF: sha256 mismatch (expected " in result.stdout


def test_esp_files_round_trip(image: Path) -> None:
    files: EspFiles = open_esp(image)
    files.write("MANTRA/TEST.BIN", bytes(range(256)) * 3)
    assert files.read("MANTRA/TEST.BIN") == bytes(range(256)) * 3
    assert "MANTRA/TEST.BIN" in files.paths()


def test_envelope_overhead_is_small(signed: Path) -> None:
    envelope = slot_a(signed).read(MANIFEST_PATH)
    decoded = Envelope.decode(envelope)
    assert len(envelope) < 2048, len(envelope)
    assert RevocationList.decode(decoded.revocations.body).version == 1


# --- slots: --slot, a manifest on the wrong partition, slot install -------------------


def test_verify_one_slot_and_report_an_empty_one(image: Path, keyset: KeySet) -> None:
    status, output = verify(image, root_pub(keyset))
    assert status == 0 and "verify: slot b: empty" in output and "verify: note: slot b is empty" in output, output
    assert "(slot a)" in output and "verify: OK: " in output
    status, output = verify(image, root_pub(keyset), "--slot", "a")
    assert status == 0 and "--- ESP ---" not in output and "(slot a)" in output, output
    refused(image, root_pub(keyset), "slot b holds no file system (an empty slot)", "--slot", "b")
    status, output = verify(image, root_pub(keyset), "--slot", "c")
    assert status == 1 and "no slot 'c'" in output


def test_esp_manifest_in_a_slot_is_refused(image: Path, keyset: KeySet) -> None:
    """The ESP's envelope is validly signed but lists only MantraBoot: in a
    slot it covers neither the kernel nor the boot filesystem."""
    slot_a(image).write(MANIFEST_PATH, open_esp(image).read(MANIFEST_PATH))
    output = refused(image, root_pub(keyset), "component EFI/BOOT/BOOTX64.EFI: a bootloader does not belong on "
                                              "the slot a")
    assert "verify: FAILED: slot a file MANTRA/KERNEL.ELF is not in the manifest" in output


def test_slot_install_stages_a_signed_slot(image: Path, signed: Path, keyset: KeySet, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """`slot install` copies slot a of a newer signed image into slot b of a
    device image; only that slot changes."""
    newer = copy_image(signed, tmp_path / "newer")
    monkeypatch.setenv(keys.PASSPHRASE_ENV, PASSPHRASE)
    result = CliRunner().invoke(app, ["sign", str(newer), "--keys", str(keyset.dir), "--counter", "7", "--slot", "a"])
    assert result.exit_code == 0 and "security counter 7" in result.output and "(slot a)" in result.output, \
        result.output
    before = image.read_bytes()
    esp_before = open_esp(image).read(MANIFEST_PATH)
    result = CliRunner().invoke(app, ["slot", "install", str(image), "--slot", "b", "--from", str(newer),
                                      "--root", str(root_pub(keyset))])
    assert result.exit_code == 0, result.output
    assert f"into slot b of {image}" in result.output
    disk = verify_disk(image, keyset.root_public)
    assert disk.slots["a"].manifest.security_counter == 0 and disk.slots["b"].manifest.security_counter == 7
    assert open_esp(image).read(MANIFEST_PATH) == esp_before
    slot_b = open_slot(image, "b").partition
    after = image.read_bytes()
    assert after[:slot_b.offset] == before[:slot_b.offset]
    assert after[slot_b.offset + slot_b.size:] == before[slot_b.offset + slot_b.size:]
    # A source that does not verify against the given root is not installed.
    files = slot_a(newer)
    files.write("MANTRA/KERNEL.ELF", flip(files.read("MANTRA/KERNEL.ELF"), 3))
    result = CliRunner().invoke(app, ["slot", "install", str(image), "--slot", "a", "--from", str(newer),
                                      "--root", str(root_pub(keyset))])
    assert result.exit_code == 1 and "slot a does not verify: component MANTRA/KERNEL.ELF: sha256 mismatch" in \
        result.output, result.output
    assert verify_disk(image, keyset.root_public).slots["a"].manifest.security_counter == 0
