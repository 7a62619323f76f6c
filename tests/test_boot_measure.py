"""MantraBoot's measured boot (docs/signing.md, "PCRs"), in QEMU: with
swtpm attached (OVMF then offers EFI_TCG2_PROTOCOL) MantraBoot extends PCR 8
with the signed manifest and PCR 9 with each component it loads, reads them
back with TPM2_PCR_Read and prints them; they must equal what
`mantra.signing.pcr.expected_pcrs` computes from the image's manifest body,
the reference values attestation compares against. Without a TPM it says
that the boot is not measured, and boots on; a TPM that cannot measure (no
SHA-256 PCR bank) stops the boot."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from mantra.build import BuildResult
from mantra.workspace import Workspace
from mantra.qemu import BootResult, boot
from mantra.signing.encoding import Envelope
from mantra.signing.image import MANIFEST_PATH, open_slot
from mantra.signing.pcr import PCR_COMPONENTS, PCR_MANIFEST, events, expected_pcrs
from test_boot_errors import ERROR_TIMEOUT, SpoiledImage, boot_error, tail

pytestmark = pytest.mark.boot

EXITING = "MantraBoot: exiting boot services"
MEASURED = re.compile(
    r"^MantraBoot: measured (?P<events>\d+) events \(TCG2\): PCR8 (?P<pcr8>[0-9a-f]{64}) PCR9 (?P<pcr9>[0-9a-f]{64})\r?$",
    re.M,
)
NO_TPM = "MantraBoot: no TPM (EFI_TCG2_PROTOCOL absent): boot not measured"


def manifest_body(image: BuildResult) -> bytes:
    return Envelope.decode(open_slot(image.image, "a").read(MANIFEST_PATH)).manifest.body


def test_tpm_boot_measures_the_reference_values(default_image: BuildResult) -> None:
    body = manifest_body(default_image)
    expected = expected_pcrs(body)
    # Twice on the same swtpm state: PCRs start from reset on every boot.
    for _ in range(2):
        result = boot(default_image.image, timeout=ERROR_TIMEOUT, until=EXITING, tpm=True)
        console = result.console_text
        assert result.matched, tail(console)
        assert "MantraBoot: error" not in console and NO_TPM not in console, tail(console)
        line = MEASURED.search(console)
        assert line, "no 'measured' line\n" + tail(console)
        assert int(line["events"]) == len(events(body)) == 3, line[0]  # manifest, kernel, boot filesystem
        assert line["pcr8"] == expected[PCR_MANIFEST].hex(), line[0]
        assert line["pcr9"] == expected[PCR_COMPONENTS].hex(), line[0]
        # Measured after verification, before anything of the image is parsed.
        assert console.index("MantraBoot: image verified") < line.start() < console.index("MantraBoot: kernel "), \
            tail(console)


def test_boot_without_tpm_is_not_measured(default_image: BuildResult) -> None:
    result = boot(default_image.image, timeout=ERROR_TIMEOUT, until=EXITING)
    console = result.console_text
    assert result.matched, tail(console)
    assert re.search(rf"^{re.escape(NO_TPM)}\r?$", console, re.M), tail(console)
    assert not MEASURED.search(console), tail(console)
    assert "MantraBoot: error" not in console, tail(console)



class TpmImage(SpoiledImage):
    """A copy of the default image that boots with swtpm; its TPM state is
    `<directory>/tpm`, next to the copy."""

    def boot(self, workspace: Workspace, timeout: float, until: str | None = None, **_) -> BootResult:
        return boot(self.image, timeout=timeout, until=until, workspace=workspace, tpm=True)


def test_tpm_without_sha256_bank_stops_the_boot(default_image: BuildResult, workspace: Workspace,
                                                tmp_path: Path) -> None:
    if shutil.which("swtpm_setup") is None:
        pytest.skip("swtpm_setup (Debian package swtpm-tools) is not installed")
    image = TpmImage(default_image, tmp_path)
    state = tmp_path / "tpm"
    state.mkdir()
    made = subprocess.run(["swtpm_setup", "--tpm2", "--tpmstate", str(state), "--pcr-banks", "sha1", "--overwrite"],
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stdout + made.stderr
    message = boot_error(image, workspace)
    assert message == ("measured boot failed: the TPM's SHA-256 PCR bank is not active (active banks 0x1); "
                       "check the TPM (firmware setup; under QEMU, swtpm) or disable it in the firmware to boot "
                       "unmeasured"), message
