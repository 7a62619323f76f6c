"""MantraBoot's verified boot (docs/signing.md, "Verification"), in QEMU:
the golden image boots and says it verified; a changed byte in a component
or in the signed manifest, an image signed by another key set, a missing or
malformed MANTRA/MANIFEST.SIG and an unsigned command line are each refused
with `MantraBoot: error: image signature check failed: <which check>; <what
to try>`, before MantraBoot parses any byte of the image.

The images are copies of the default build changed on their ESP with
mtools (SpoiledImage of test_boot_errors)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mantra.build import BOOTFS_PATH, CMDLINE_PATH, KERNEL_PATH, BuildResult
from mantra.signing import keys
from mantra.signing.encoding import Envelope
from mantra.workspace import Workspace
from support import mantra
from test_boot_errors import ERROR_TIMEOUT, SpoiledImage, boot_error, tail

pytestmark = pytest.mark.boot

MANIFEST_SIG = "MANTRA/MANIFEST.SIG"
HINT = "rebuild and re-sign the image (./mantra build) or flash a good one"
REFUSED = "image signature check failed: "
VERIFIED = re.compile(
    r"^MantraBoot: image verified \(key (?P<key>[0-9a-f]{8}), security counter (?P<counter>\d+), "
    r"(?P<components>\d+) components\) in (?P<tsc>\d+) tsc: envelope (?P<envelope>\d+), hashes (?P<hashes>\d+)\r?$",
    re.M,
)


@pytest.fixture
def spoiled(default_image: BuildResult, tmp_path: Path) -> SpoiledImage:
    return SpoiledImage(default_image, tmp_path)


def refusal(image: SpoiledImage, workspace: Workspace) -> str:
    """MantraBoot's signature refusal of `image`: the check that failed."""
    message = boot_error(image, workspace)
    assert message.startswith(REFUSED) and message.endswith("; " + HINT), message
    return message.removeprefix(REFUSED).removesuffix("; " + HINT)


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


def test_golden_image_is_verified(spoiled: SpoiledImage, default_image: BuildResult, workspace: Workspace) -> None:
    result = spoiled.boot(workspace, ERROR_TIMEOUT, until="MantraBoot: exiting boot services")
    console = result.console_text
    assert result.matched, tail(console)
    assert "MantraBoot: error" not in console, tail(console)
    line = VERIFIED.search(console)
    assert line, "no 'image verified' line\n" + tail(console)
    assert line["key"] == default_image.signed_by[:8], line[0]
    assert int(line["counter"]) == default_image.product.security_counter, line[0]
    assert int(line["components"]) == 2, line[0]  # kernel and boot filesystem (the firmware loaded MantraBoot)
    assert int(line["tsc"]) == int(line["envelope"]) + int(line["hashes"]) > 0, line[0]
    # Verified before the kernel is even parsed.
    assert line.start() < console.index("MantraBoot: kernel "), tail(console)


@pytest.mark.parametrize("path", [KERNEL_PATH, BOOTFS_PATH], ids=["kernel", "bootfs"])
def test_flipped_component_byte_is_refused(spoiled: SpoiledImage, workspace: Workspace, path: str) -> None:
    data = spoiled.read(path)
    spoiled.write(path, flip(data, len(data) // 2))
    message = refusal(spoiled, workspace)
    assert message.startswith(f"component {path}: sha256 mismatch (expected "), message


def test_truncated_component_is_refused(spoiled: SpoiledImage, workspace: Workspace) -> None:
    kernel = spoiled.read(KERNEL_PATH)
    spoiled.write(KERNEL_PATH, kernel[:4096])
    message = refusal(spoiled, workspace)
    assert message == f"component {KERNEL_PATH}: size mismatch (expected {len(kernel)} bytes, got 4096)", message


def test_flipped_manifest_signature_is_refused(spoiled: SpoiledImage, default_image: BuildResult,
                                               workspace: Workspace) -> None:
    envelope = spoiled.read(MANIFEST_SIG)
    spoiled.write(MANIFEST_SIG, flip(envelope, len(envelope) - 10))  # in section 3's signature
    message = refusal(spoiled, workspace)
    assert message == (f"manifest: signature by key {default_image.signed_by} does not verify (the manifest or its "
                       "signature was changed after signing)"), message


def test_flipped_manifest_byte_is_refused(spoiled: SpoiledImage, workspace: Workspace) -> None:
    envelope = spoiled.read(MANIFEST_SIG)
    body = Envelope.decode(envelope).manifest.body
    at = envelope.index(body) + len(body) - 20  # in the last component's path
    spoiled.write(MANIFEST_SIG, flip(envelope, at))
    message = refusal(spoiled, workspace)
    assert message.startswith("manifest: signature by key ") and "does not verify" in message, message


def test_flipped_key_record_byte_is_refused(spoiled: SpoiledImage, default_image: BuildResult,
                                           workspace: Workspace) -> None:
    envelope = spoiled.read(MANIFEST_SIG)
    spoiled.write(MANIFEST_SIG, flip(envelope, 16 + 8 + 40))  # the certified public key
    root_id = keys.load_keyset(default_image.keys).root_id.hex()
    message = refusal(spoiled, workspace)
    assert message.startswith(f"key record: root signature does not verify with root key {root_id} "), message


def test_image_signed_by_another_key_set_is_refused(spoiled: SpoiledImage, default_image: BuildResult,
                                                    workspace: Workspace, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "another product's passphrase")
    other = tmp_path / "other-keys"
    made = mantra("keys", "init", str(other))
    assert made.returncode == 0, made.stdout + made.stderr
    signed = mantra("sign", str(spoiled.image), "--keys", str(other))
    assert signed.returncode == 0, signed.stdout + signed.stderr
    other_root = keys.load_keyset(other).root_id.hex()
    trusted_root = keys.load_keyset(default_image.keys).root_id.hex()
    message = refusal(spoiled, workspace)
    assert message == (f"key record: issued by root key {other_root}, not by the trusted root key {trusted_root} "
                       "(signed with another key set)"), message


def test_missing_signed_manifest_is_refused(spoiled: SpoiledImage, workspace: Workspace) -> None:
    spoiled.delete(MANIFEST_SIG)
    message = refusal(spoiled, workspace)
    assert message == f"signed manifest {MANIFEST_SIG} not found on the boot partition (unsigned image)", message


def test_malformed_signed_manifest_is_refused(spoiled: SpoiledImage, workspace: Workspace) -> None:
    envelope = spoiled.read(MANIFEST_SIG)
    spoiled.write(MANIFEST_SIG, envelope + b"\0")  # one trailing byte: the header's total length disagrees
    message = refusal(spoiled, workspace)
    assert message.startswith(f"signed manifest {MANIFEST_SIG} is malformed: envelope: header says "), message


def test_unsigned_command_line_is_refused(spoiled: SpoiledImage, workspace: Workspace) -> None:
    spoiled.write(CMDLINE_PATH, b"log.level=trace\n")
    message = refusal(spoiled, workspace)
    assert message == f"{CMDLINE_PATH} is not in the manifest (a kernel command line that nothing verifies)", message
