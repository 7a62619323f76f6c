"""`./mantra attest` end to end: the default product boots under QEMU with
swtpm, MantraBoot measures it, the device's attestation service answers a
quote request on the console, and the host verifies it against the signed
manifest of a reference image: the built image itself (a golden boot
passes), and an image built with other boot filesystem contents (it fails,
naming MANTRA/BOOTFS.IMG)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from bootfs_reader import parse as parse_bootfs
from mantra.build import BuildResult
from mantra.image import bootfs
from mantra.runners.console_socket import connect, free_port
from mantra.signing import attest, keys, pe
from mantra.signing.encoding import Envelope
from mantra.signing.image import MANIFEST_PATH, open_esp, open_slot
from mantra.signing.sign import ImageInfo, sign_image
from support import ROOT, mantra

pytestmark = pytest.mark.boot

BOOTFS = "MANTRA/BOOTFS.IMG"
TIMEOUT = 240


def reference_with_other_bootfs(image: BuildResult, directory: Path) -> Path:
    """A copy of the built image whose boot filesystem holds a changed
    product.toml, re-signed with the product's (development) keys: a
    genuine, signed image that differs from the device in one component."""
    directory.mkdir(parents=True, exist_ok=True)
    copy = directory / "image.img"
    subprocess.run(["cp", "--sparse=always", str(image.image), str(copy)], check=True)
    shutil.copy(image.manifest, directory / "manifest.json")
    files = open_slot(copy, "a")
    entries = parse_bootfs(files.read(BOOTFS))
    changed = [(name, data + b"\n# a reference variant\n" if name == "product.toml" else data)
               for name, data in entries]
    assert changed != entries, [name for name, _ in entries]
    files.write(BOOTFS, bootfs.pack(changed))
    keyset = keys.load_keyset(image.keys)
    info = dataclasses.replace(ImageInfo.beside(copy), built_components={})
    sign_image(copy, keyset, keys.DEV_PASSPHRASE, info=info)
    return copy


def bootfs_sha256(image: Path) -> str:
    return hashlib.sha256(open_slot(image, "a").read(BOOTFS)).hexdigest()


@pytest.fixture
def pin(default_image: BuildResult) -> Path:
    """The QEMU device's AK pin beside the built image, removed first: the
    test pins on first use, whatever TPM state the image has."""
    path = attest.pin_file(default_image.image.parent, "qemu")
    path.unlink(missing_ok=True)
    return path


def test_attest_golden_boot_and_a_reference_that_differs(default_image: BuildResult, pin: Path,
                                                          tmp_path: Path) -> None:
    result = mantra("attest", "--timeout", str(TIMEOUT), timeout=TIMEOUT * 2)
    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    lines = output.splitlines()
    assert lines[-1].startswith("attest: OK: the device booted default "), output
    assert re.search(r"^attest: event log: \d+ events, banks .*SHA-256", output, re.M), output
    for path in ("EFI/BOOT/BOOTX64.EFI", "MANTRA/KERNEL.ELF", "MANTRA/BOOTFS.IMG"):
        assert re.search(rf"^attest: component {re.escape(path)}: [0-9a-f]{{64}} = reference", output, re.M), output
    assert "first use" in output and pin.is_file(), output

    # The same device, against a signed reference whose boot filesystem differs.
    other = reference_with_other_bootfs(default_image, tmp_path / "other")
    result = mantra("attest", "--reference", str(other), "--timeout", str(TIMEOUT), timeout=TIMEOUT * 2)
    output = result.stdout
    assert result.returncode == 1, output + result.stderr
    failed = [line for line in output.splitlines() if line.startswith("attest: FAILED: ")]
    assert failed[0] == (f"attest: FAILED: component {BOOTFS}: measured {bootfs_sha256(default_image.image)}, "
                         f"reference {bootfs_sha256(other)}"), output
    assert len(failed) == 2 and failed[1].startswith("attest: FAILED: manifest (PCR 8): measured "), output
    assert "is the AK pinned in" in output, output  # the same TPM: the pinned AK


def test_attest_a_running_device_on_its_console_port(default_image: BuildResult, pin: Path) -> None:
    """`./mantra run --tpm --console-port P` keeps the device running; once
    attestd is up, `./mantra attest --port socket://127.0.0.1:P --ak FILE`
    asks it over pyserial. The AK given with --ak is the one the same TPM
    (tpm/ beside the image) presents to `./mantra attest` under QEMU."""
    # The AK this TPM presents, as `./mantra attest` under QEMU pins it.
    first = mantra("attest", "--timeout", str(TIMEOUT), timeout=TIMEOUT * 2)
    assert first.returncode == 0 and pin.is_file(), first.stdout + first.stderr
    port = free_port()
    port_pin = attest.pin_file(default_image.image.parent, f"socket://127.0.0.1:{port}")
    run = subprocess.Popen([str(ROOT / "mantra"), "run", "--tpm", "--console-port", str(port), "--timeout",
                            str(TIMEOUT * 2)], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    try:
        # Watch the console until attestd serves requests, then hand it over.
        console = connect(port, TIMEOUT)
        console.settimeout(1)
        seen = b""
        deadline = time.monotonic() + TIMEOUT
        while b"answering MANTRA-ATTEST-REQUEST" not in seen:
            assert time.monotonic() < deadline and run.poll() is None, seen.decode(errors="replace")[-2000:]
            try:
                seen += console.recv(65536)
            except socket.timeout:
                pass
        console.close()
        result = mantra("attest", "--port", f"socket://127.0.0.1:{port}", "--ak", str(pin), "--timeout", "60",
                        timeout=TIMEOUT)
    finally:
        run.terminate()
        _, errors = run.communicate(timeout=60)
        port_pin.unlink(missing_ok=True)
    output = result.stdout
    assert result.returncode == 0, output + result.stderr + errors.decode(errors="replace")
    assert f"is the AK given with --ak {pin}" in output, output
    assert output.splitlines()[-1].startswith("attest: OK: the device booted default "), output


def test_authenticode_of_mantraboot_matches_osslsigncode(default_image: BuildResult, tmp_path: Path) -> None:
    """The PCR 4 reference value of the real MantraBoot, against osslsigncode."""
    tool, openssl = shutil.which("osslsigncode"), shutil.which("openssl")
    if tool is None or openssl is None:
        pytest.skip("osslsigncode or openssl is not installed")
    image = open_esp(default_image.image).read("EFI/BOOT/BOOTX64.EFI")
    (tmp_path / "boot.efi").write_bytes(image)
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "k.pem"),
                    "-out", str(tmp_path / "c.pem"), "-subj", "/CN=test", "-days", "1"], check=True,
                   capture_output=True)
    subprocess.run([tool, "sign", "-certs", str(tmp_path / "c.pem"), "-key", str(tmp_path / "k.pem"), "-h", "sha256",
                    "-in", str(tmp_path / "boot.efi"), "-out", str(tmp_path / "signed.efi")], check=True,
                   capture_output=True)
    verified = subprocess.run([tool, "verify", "-in", str(tmp_path / "signed.efi")], capture_output=True, text=True)
    calculated = re.search(r"Calculated message digest\s*:\s*([0-9A-Fa-f]{64})", verified.stdout)
    assert calculated, verified.stdout + verified.stderr
    assert pe.authenticode_hash(image).hex() == calculated[1].lower()


def test_reference_variant_is_signed(default_image: BuildResult, tmp_path: Path) -> None:
    other = reference_with_other_bootfs(default_image, tmp_path / "other")
    keyset = keys.load_keyset(default_image.keys)
    reference = attest.load_reference(other, keyset.root_public)
    assert reference.manifest.component(BOOTFS).sha256.hex() == bootfs_sha256(other) != \
        bootfs_sha256(default_image.image)
    assert Envelope.decode(open_slot(other, "a").read(MANIFEST_PATH)).manifest.body == reference.manifest_body


def test_attest_refuses_a_product_without_attestd() -> None:
    result = mantra("attest", "-p", "utest", timeout=TIMEOUT * 2)
    assert result.returncode == 1
    assert "error: product utest has no attestation service (attestd)" in result.stderr, result.stderr
