"""MantraBoot's verified A/B boot (docs/signing.md, "Verification";
docs/boot-state.md), in QEMU: the golden image boots from slot a and says
both slots verified; the tamper corpus, each case in one slot of a copy of
the default build (changed with mtools, SpoiledImage of test_boot_errors) --
a flipped byte in each component, in the manifest, in its signature and in
the key record, a truncated component, an image of another key set, an
expired, a revoked and an unknown signing key, a missing or malformed
signed manifest, an unsigned command line -- is refused with
`MantraBoot: slot X: refused: image signature check failed: <which check>`
and the other slot boots. With both slots bad MantraBoot stops with
`MantraBoot: error: no bootable slot: ...; <what to try>`.

Each boot stops at MantraBoot's `booting slot` line (or its error)."""

from __future__ import annotations

import dataclasses
import re
import shutil
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mantra.build import BOOTFS_PATH, CMDLINE_PATH, KERNEL_PATH, BuildResult
from mantra.signing import keys
from mantra.signing.encoding import Envelope, Manifest, Signed, key_id
from mantra.signing.image import components, open_slot
from mantra.signing.keys import raw_public
from mantra.signing.sign import ImageInfo
from mantra.workspace import Workspace
from support import mantra
from test_boot_errors import ERROR_TIMEOUT, SpoiledImage, boot_error, tail

pytestmark = pytest.mark.boot

MANIFEST_SIG = "MANTRA/MANIFEST.SIG"
REFUSED = "image signature check failed: "
BOOTING = "MantraBoot: booting slot"
VERIFIED = re.compile(
    r"^MantraBoot: image verified \(key (?P<key>[0-9a-f]{8}), security counter (?P<counter>\d+), "
    r"(?P<components>\d+) components\) in (?P<tsc>\d+) tsc: envelope (?P<envelope>\d+), hashes (?P<hashes>\d+)\r?$",
    re.M,
)
NOTHING_HINT = ("install a signed image into a slot (./mantra slot install TARGET_IMAGE --slot a --from "
                "SIGNED_IMAGE) or flash a new image: ./mantra build")


@pytest.fixture
def spoiled(default_image: BuildResult, tmp_path: Path) -> SpoiledImage:
    """Both slots changed: nothing can boot."""
    return SpoiledImage(default_image, tmp_path)


@pytest.fixture
def spoiled_a(default_image: BuildResult, tmp_path: Path) -> SpoiledImage:
    return SpoiledImage(default_image, tmp_path, slots=("a",))


@pytest.fixture
def spoiled_b(default_image: BuildResult, tmp_path: Path) -> SpoiledImage:
    return SpoiledImage(default_image, tmp_path, slots=("b",))


def refusal(image: SpoiledImage, workspace: Workspace) -> str:
    """Boots `image`, whose slot image.slots[0] was spoiled: MantraBoot must
    refuse that slot, verify and boot the other one. Returns the check that
    failed (after `image signature check failed: `)."""
    bad = image.slots[0]
    good = "b" if bad == "a" else "a"
    result = image.boot(workspace, ERROR_TIMEOUT, until=BOOTING)
    console = result.console_text
    assert result.matched, tail(console)
    assert "MantraBoot: error" not in console, tail(console)
    refused = re.findall(rf"^MantraBoot: slot {bad}: refused: (.*?)\r?$", console, re.M)
    assert len(refused) == 1, tail(console)
    assert re.search(rf"^MantraBoot: slot {good}: verified \(", console, re.M), tail(console)
    assert re.search(rf"^MantraBoot: booting slot {good} \(active, security counter 0\)\r?$", console, re.M), \
        tail(console)
    assert refused[0].startswith(REFUSED), refused[0]
    return refused[0].removeprefix(REFUSED)


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


def sign_by_hand(image: SpoiledImage, *, record: Signed, revocations: Signed, private: Ed25519PrivateKey,
                 **changes) -> None:
    """Writes an envelope assembled from the given parts into the spoiled
    slot, bypassing the checks `sign` makes: for images `sign` would never
    produce."""
    slot = image.slots[0]
    info = ImageInfo.beside(image.image)
    manifest = Manifest(security_counter=0, signed_at=int(time.time()),
                        signing_key=key_id(raw_public(private.public_key())), config_sha256=info.config_sha256,
                        board=info.board, product=info.product, version=info.version,
                        source_revision=info.source_revision, toolchain=info.toolchain,
                        components=tuple(components(open_slot(image.image, slot))))
    body = dataclasses.replace(manifest, **changes).encode()
    image.write(MANIFEST_SIG, Envelope(record, revocations, Signed(body, private.sign(body))).encode())


def dev_keys(default_image: BuildResult) -> keys.KeySet:
    assert default_image.keys is not None
    return keys.load_keyset(default_image.keys)


def test_golden_image_is_verified(default_image: BuildResult, tmp_path: Path, workspace: Workspace) -> None:
    image = SpoiledImage(default_image, tmp_path)
    result = image.boot(workspace, ERROR_TIMEOUT, until="MantraBoot: exiting boot services")
    console = result.console_text
    assert result.matched, tail(console)
    assert "MantraBoot: error" not in console and "refused" not in console, tail(console)
    # A new image is a new device: both slots verify and are active; a boots.
    assert "MantraBoot: no valid MantraSlots variable: a factory-fresh device" in console, tail(console)
    for slot in "ab":
        assert re.search(rf"^MantraBoot: slot {slot}: verified \(key {default_image.signed_by[:8]}, security "
                         r"counter 0, revocation list 1, 2 components\) in \d+ tsc", console, re.M), tail(console)
    assert re.search(r"^MantraBoot: booting slot a \(active, security counter 0\)\r?$", console, re.M), tail(console)
    line = VERIFIED.search(console)
    assert line, "no 'image verified' line\n" + tail(console)
    assert line["key"] == default_image.signed_by[:8], line[0]
    assert int(line["counter"]) == default_image.product.security_counter, line[0]
    assert int(line["components"]) == 2, line[0]  # kernel and boot filesystem (the firmware loaded MantraBoot)
    assert int(line["tsc"]) == int(line["envelope"]) + int(line["hashes"]) > 0, line[0]
    # Verified before the kernel is even parsed.
    assert line.start() < console.index("MantraBoot: kernel "), tail(console)


@pytest.mark.parametrize(("slot", "path"), [("a", KERNEL_PATH), ("b", BOOTFS_PATH)], ids=["kernel-a", "bootfs-b"])
def test_flipped_component_byte_is_refused(default_image: BuildResult, tmp_path: Path, workspace: Workspace,
                                           slot: str, path: str) -> None:
    spoiled = SpoiledImage(default_image, tmp_path, slots=(slot,))
    data = spoiled.read(path)
    spoiled.write(path, flip(data, len(data) // 2))
    message = refusal(spoiled, workspace)
    assert message.startswith(f"component {path}: sha256 mismatch (expected "), message


def test_truncated_component_is_refused(spoiled_b: SpoiledImage, workspace: Workspace) -> None:
    kernel = spoiled_b.read(KERNEL_PATH)
    spoiled_b.write(KERNEL_PATH, kernel[:4096])
    message = refusal(spoiled_b, workspace)
    assert message == f"component {KERNEL_PATH}: size mismatch (expected {len(kernel)} bytes, got 4096)", message


def test_flipped_manifest_signature_is_refused(spoiled_b: SpoiledImage, default_image: BuildResult,
                                               workspace: Workspace) -> None:
    envelope = spoiled_b.read(MANIFEST_SIG)
    spoiled_b.write(MANIFEST_SIG, flip(envelope, len(envelope) - 10))  # in section 3's signature
    message = refusal(spoiled_b, workspace)
    assert message == (f"manifest: signature by key {default_image.signed_by} does not verify (the manifest or its "
                       "signature was changed after signing)"), message


def test_flipped_manifest_byte_is_refused(spoiled_a: SpoiledImage, workspace: Workspace) -> None:
    envelope = spoiled_a.read(MANIFEST_SIG)
    body = Envelope.decode(envelope).manifest.body
    at = envelope.index(body) + len(body) - 20  # in the last component's path
    spoiled_a.write(MANIFEST_SIG, flip(envelope, at))
    message = refusal(spoiled_a, workspace)
    assert message.startswith("manifest: signature by key ") and "does not verify" in message, message


def test_flipped_key_record_byte_is_refused(spoiled_b: SpoiledImage, default_image: BuildResult,
                                           workspace: Workspace) -> None:
    envelope = spoiled_b.read(MANIFEST_SIG)
    spoiled_b.write(MANIFEST_SIG, flip(envelope, 16 + 8 + 40))  # the certified public key
    root_id = dev_keys(default_image).root_id.hex()
    message = refusal(spoiled_b, workspace)
    assert message.startswith(f"key record: root signature does not verify with root key {root_id} "), message


def test_image_signed_by_another_key_set_is_refused(spoiled_a: SpoiledImage, default_image: BuildResult,
                                                    workspace: Workspace, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong root key: slot a signed with another product's key set."""
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "another product's passphrase")
    other = tmp_path / "other-keys"
    made = mantra("keys", "init", str(other))
    assert made.returncode == 0, made.stdout + made.stderr
    signed = mantra("sign", str(spoiled_a.image), "--keys", str(other), "--slot", "a")
    assert signed.returncode == 0, signed.stdout + signed.stderr
    other_root = keys.load_keyset(other).root_id.hex()
    trusted_root = dev_keys(default_image).root_id.hex()
    message = refusal(spoiled_a, workspace)
    assert message == (f"key record: issued by root key {other_root}, not by the trusted root key {trusted_root} "
                       "(signed with another key set)"), message


def test_expired_signing_key_is_refused(spoiled_b: SpoiledImage, default_image: BuildResult,
                                        workspace: Workspace) -> None:
    """Signed after the key's validity ended (the key record says so)."""
    keyset = dev_keys(default_image)
    key = keyset.active()
    revocations, _ = keyset.revocations()
    sign_by_hand(spoiled_b, record=key.signed, revocations=revocations,
                 private=keyset.signing_key(key.id, keys.DEV_PASSPHRASE), signed_at=key.record.not_after + 1)
    message = refusal(spoiled_b, workspace)
    assert message.startswith(f"key record: key {key.id.hex()} had expired when the image was signed (signed at "
                              f"{key.record.not_after + 1}, key valid until {key.record.not_after}"), message


def test_revoked_signing_key_is_refused(spoiled_a: SpoiledImage, default_image: BuildResult,
                                        workspace: Workspace, tmp_path: Path) -> None:
    """The build's key, revoked by a newer revocation list of the same root
    (a copy of the development key set: rotate, then revoke the old key)."""
    copy = tmp_path / "keys"
    shutil.copytree(dev_keys(default_image).dir, copy)
    keyset = keys.load_keyset(copy)
    old = keyset.active()
    keys.rotate(keyset, keys.DEV_PASSPHRASE)
    keys.revoke(keyset, keys.DEV_PASSPHRASE, old.id.hex())
    revocations, listed = keyset.revocations()
    assert listed.version == 2 and old.id in listed.revoked
    sign_by_hand(spoiled_a, record=old.signed, revocations=revocations,
                 private=keyset.signing_key(old.id, keys.DEV_PASSPHRASE))
    message = refusal(spoiled_a, workspace)
    assert message == f"key record: key {old.id.hex()} is revoked (revocation list version 2)", message


def test_unknown_signing_key_is_refused(spoiled_b: SpoiledImage, default_image: BuildResult,
                                        workspace: Workspace) -> None:
    """The manifest signed by a key no key record certifies."""
    keyset = dev_keys(default_image)
    key = keyset.active()
    revocations, _ = keyset.revocations()
    stranger = Ed25519PrivateKey.generate()
    sign_by_hand(spoiled_b, record=key.signed, revocations=revocations, private=stranger)
    message = refusal(spoiled_b, workspace)
    stranger_id = key_id(raw_public(stranger.public_key())).hex()
    assert message == (f"manifest: signed by key {stranger_id}, which the key record does not certify (it "
                       f"certifies {key.id.hex()}): unknown signing key"), message


def test_missing_signed_manifest_is_refused(spoiled_b: SpoiledImage, workspace: Workspace) -> None:
    spoiled_b.delete(MANIFEST_SIG)
    message = refusal(spoiled_b, workspace)
    assert message == f"signed manifest {MANIFEST_SIG} not found in the slot (unsigned image)", message


def test_malformed_signed_manifest_is_refused(spoiled_a: SpoiledImage, workspace: Workspace) -> None:
    envelope = spoiled_a.read(MANIFEST_SIG)
    spoiled_a.write(MANIFEST_SIG, envelope + b"\0")  # one trailing byte: the header's total length disagrees
    message = refusal(spoiled_a, workspace)
    assert message.startswith(f"signed manifest {MANIFEST_SIG} is malformed: envelope: header says "), message


def test_unsigned_command_line_is_refused(spoiled_b: SpoiledImage, workspace: Workspace) -> None:
    spoiled_b.write(CMDLINE_PATH, b"log.level=trace\n")
    message = refusal(spoiled_b, workspace)
    assert message == f"{CMDLINE_PATH} is not in the manifest (a kernel command line that nothing verifies)", message


def test_both_slots_bad_stops_with_what_to_do(default_image: BuildResult, tmp_path: Path,
                                              workspace: Workspace) -> None:
    """A different fault in each slot: nothing bootable, one error line naming both."""
    spoiled = SpoiledImage(default_image, tmp_path, slots=("a",))
    kernel = spoiled.read(KERNEL_PATH)
    spoiled.write(KERNEL_PATH, flip(kernel, 100))
    spoiled.slots = ("b",)
    envelope = spoiled.read(MANIFEST_SIG)
    spoiled.write(MANIFEST_SIG, flip(envelope, len(envelope) - 10))
    message = boot_error(spoiled, workspace)
    assert message.startswith(f"no bootable slot: slot a refused ({REFUSED}component {KERNEL_PATH}: sha256 mismatch "
                              "(expected "), message
    assert f"), slot b refused ({REFUSED}manifest: signature by key " in message, message
    assert message.endswith("; " + NOTHING_HINT), message
