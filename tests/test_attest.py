"""Attestation, host side (mantra.signing.attest): quotes made by a real TPM
(swtpm, driven by tests/tpm_sim.py as OVMF and MantraBoot would measure a
boot, tests/attest_sim.py) verified against the signed manifest of a
reference image, and every way verification must refuse: a wrong nonce, a
bad signature, another AK than the pinned one, an event log that does not
replay to the quoted PCRs, a component that differs from the reference
(named), a reference manifest whose signature fails."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from attest_sim import SimulatedDevice, tiny_pe
from mantra.image import esp, gpt
from mantra.signing import attest, eventlog, keys, pcr, pe, tpm2
from mantra.signing.encoding import DecodeError, Envelope
from mantra.signing.image import MANIFEST_PATH, open_slot
from mantra.signing.keys import KeySet
from mantra.signing.sign import ImageInfo, sign_image
from tpm_sim import SwtpmServer

PASSPHRASE = "attestation test passphrase"
MIB = 1024 * 1024
ESP_MIB = 34
FILES = {"EFI/BOOT/BOOTX64.EFI": tiny_pe(b"\xc3 mantraboot"), "MANTRA/KERNEL.ELF": b"\x7fELF mantracore",
         "MANTRA/BOOTFS.IMG": b"bootfs: init logd demo"}
OTHER_BOOTFS = b"bootfs: init logd demo backdoor"
NONCE = bytes.fromhex("5a" * 32)


@pytest.fixture(scope="module")
def keyset(tmp_path_factory: pytest.TempPathFactory) -> KeySet:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(keys, "SCRYPT_LOG2_N", keys.DEV_SCRYPT_LOG2_N)
        return keys.init_keyset(tmp_path_factory.mktemp("keys") / "product", PASSPHRASE)


@pytest.fixture(scope="module")
def other_keyset(tmp_path_factory: pytest.TempPathFactory) -> KeySet:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(keys, "SCRYPT_LOG2_N", keys.DEV_SCRYPT_LOG2_N)
        return keys.init_keyset(tmp_path_factory.mktemp("keys") / "other", PASSPHRASE)


def make_image(directory: Path, files: dict[str, bytes], keyset: KeySet) -> Path:
    """A signed disk image laid out as ./mantra build does: the bootloader
    on the ESP, the other `files` in slot a (slot b left empty)."""
    directory.mkdir(parents=True, exist_ok=True)
    sources = {}
    for path, data in files.items():
        sources[path] = directory / path.replace("/", "_")
        sources[path].write_bytes(data)
    boot = {p: f for p, f in sources.items() if p.startswith("EFI/")}
    esp.write_esp(directory / "esp.img", ESP_MIB, boot)
    esp.write_esp(directory / "slot.img", ESP_MIB, {p: f for p, f in sources.items() if p not in boot},
                  label=esp.SLOT_LABEL)
    image = directory / "image.img"
    gpt.write_image(image, [gpt.PartitionSpec("esp", gpt.ESP_TYPE, ESP_MIB * MIB, directory / "esp.img"),
                            gpt.PartitionSpec("slot-a", gpt.MANTRA_SLOT_TYPE, ESP_MIB * MIB, directory / "slot.img"),
                            gpt.PartitionSpec("slot-b", gpt.MANTRA_SLOT_TYPE, ESP_MIB * MIB)],
                    align=MIB, disk_guid=uuid.UUID(int=7))
    info = ImageInfo(board="qemu-x86_64", product="default", version="0.1.0", security_counter=3,
                     config_sha256=bytes(32), source_revision="test", toolchain=(), built_components={})
    sign_image(image, keyset, PASSPHRASE, info=info)
    return image


@pytest.fixture(scope="module")
def golden_image(keyset: KeySet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image(tmp_path_factory.mktemp("golden"), FILES, keyset)


@pytest.fixture(scope="module")
def other_image(keyset: KeySet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The golden image with other boot filesystem contents, signed by the same key."""
    return make_image(tmp_path_factory.mktemp("other"), {**FILES, "MANTRA/BOOTFS.IMG": OTHER_BOOTFS}, keyset)


def manifest_body(image: Path) -> bytes:
    return Envelope.decode(open_slot(image, "a").read(MANIFEST_PATH)).manifest.body


@pytest.fixture(scope="module")
def reference(golden_image: Path, keyset: KeySet) -> attest.Reference:
    return attest.load_reference(golden_image, keyset.root_public)


@pytest.fixture
def tpm(tmp_path: Path):
    with SwtpmServer(tmp_path / "tpm") as server:
        yield server


@pytest.fixture
def device(tpm: SwtpmServer, golden_image: Path) -> SimulatedDevice:
    """A device that booted the golden image."""
    return SimulatedDevice(tpm, manifest_body(golden_image), FILES)


@pytest.fixture
def pin(tmp_path: Path) -> attest.AkPin:
    return attest.AkPin(attest.pin_file(tmp_path / "device", "qemu"))


def refused(blob: bytes, reference: attest.Reference, pin: attest.AkPin, nonce: bytes = NONCE) -> tuple[str, ...]:
    with pytest.raises(attest.AttestFailure) as failure:
        attest.verify(blob, nonce, reference, pin)
    return failure.value.reasons


# --- a golden boot --------------------------------------------------------------------------


def test_golden_boot_verifies(device: SimulatedDevice, reference: attest.Reference, pin: attest.AkPin) -> None:
    blob = device.answer(NONCE)
    lines: list[str] = []
    start = time.perf_counter()
    result = attest.verify(blob, NONCE, reference, pin, lines.append)
    elapsed = time.perf_counter() - start
    text = "\n".join(lines)
    # One line per check, in the documented order.
    order = ["blob:", "AK: ECC NIST P-256", "AK: ", "quote: ECDSA-SHA-256 signature by the AK verifies",
             "quote: TPM_GENERATED_VALUE", "nonce: " + NONCE.hex(), "PCR selection: SHA-256 0-9", "event log: ",
             "firmware: ", "manifest (PCR 8): ", "component MANTRA/KERNEL.ELF: ", "component MANTRA/BOOTFS.IMG: "]
    at = 0
    for prefix in order:
        found = next((i for i in range(at, len(lines)) if lines[i].startswith(prefix)), None)
        assert found is not None, f"no line {prefix!r} after line {at}:\n{text}"
        at = found + 1
    assert "first use" in text and pin.file.is_file(), text
    # The replayed PCRs are what the TPM holds.
    assert result.pcrs == device.tpm.pcr_read(tpm2.ALG_SHA256, range(10))
    assert result.pcrs[8] == pcr.expected_pcrs(reference.manifest_body)[8]
    assert result.pcrs[9] == pcr.expected_pcrs(reference.manifest_body)[9]
    assert elapsed < 1.0, elapsed
    # The second time, the pinned AK is checked (the same TPM derives the same AK).
    lines.clear()
    attest.verify(device.answer(NONCE), NONCE, reference, pin, lines.append)
    assert any(line.startswith("AK: ") and "is the AK pinned in" in line for line in lines), lines


# --- refusals --------------------------------------------------------------------------------


def test_wrong_nonce_is_refused(device: SimulatedDevice, reference: attest.Reference, pin: attest.AkPin) -> None:
    blob = device.answer(bytes(32))  # a quote over another nonce: replayed or stale
    reasons = refused(blob, reference, pin)
    assert reasons == (f"nonce: the quote is over {bytes(32).hex()}, not the nonce sent ({NONCE.hex()}): a replayed "
                       "or stale quote",), reasons
    assert not pin.file.exists()  # an AK is pinned only once it signed our nonce


def test_bad_signature_is_refused(device: SimulatedDevice, reference: attest.Reference, pin: attest.AkPin) -> None:
    blob = device.blob(NONCE)
    signature = tpm2.Signature.decode(blob.signature)
    flipped = signature.s[:-1] + bytes([signature.s[-1] ^ 1])
    bad = dataclasses.replace(blob, signature=dataclasses.replace(signature, s=flipped).encode())
    assert refused(bad.encode(), reference, pin) == (
        "quote: the ECDSA-SHA-256 signature does not verify with the AK",)
    # A quote changed after signing (its clock) fails the same way.
    attest_bytes = bytearray(blob.quote)
    attested = tpm2.Attest.decode(blob.quote)
    changed = dataclasses.replace(attested, raw=b"", clock=attested.clock + 1).encode_tpm2b()
    assert changed != bytes(attest_bytes)
    assert refused(dataclasses.replace(blob, quote=changed).encode(), reference, pin) == (
        "quote: the ECDSA-SHA-256 signature does not verify with the AK",)


def test_another_ak_than_pinned_is_refused(tmp_path: Path, golden_image: Path, reference: attest.Reference,
                                           pin: attest.AkPin) -> None:
    # First use: the AK of one TPM is pinned.
    with SwtpmServer(tmp_path / "tpm-a") as tpm:
        attest.verify(SimulatedDevice(tpm, manifest_body(golden_image), FILES).answer(NONCE), NONCE, reference, pin)
    pinned = pin.file.read_bytes()
    # Another TPM (another endorsement seed) derives another AK from the template.
    with SwtpmServer(tmp_path / "tpm-b") as tpm:
        blob = SimulatedDevice(tpm, manifest_body(golden_image), FILES).answer(NONCE)
    (reason,) = refused(blob, reference, pin)
    new = pin.file.with_name(pin.file.name + ".new")
    assert reason.startswith(f"AK: the device's AK changed: {pin.file} pins "), reason
    assert f"--ak {new}" in reason and f"delete {pin.file}" in reason, reason
    assert pin.file.read_bytes() == pinned  # the pin is not replaced
    # Pinning the new AK explicitly (--ak) accepts it and re-pins.
    lines: list[str] = []
    attest.verify(blob, NONCE, reference, attest.AkPin(pin.file, explicit=new), lines.append)
    assert pin.file.read_bytes() == new.read_bytes() != pinned
    assert any("is the AK given with --ak" in line and "once the quote verifies" in line for line in lines), lines
    # ... and an explicit AK that is not the device's is refused.
    old = tmp_path / "old.pem"
    old.write_bytes(pinned)
    (reason,) = refused(blob, reference, attest.AkPin(pin.file, explicit=old))
    assert reason.startswith("AK: the device's AK ") and f"is not the AK in {old}" in reason, reason


def test_ak_not_of_the_template_is_refused(device: SimulatedDevice, reference: attest.Reference,
                                           pin: attest.AkPin) -> None:
    # A signing key that is not restricted could sign a forged TPMS_ATTEST.
    template = dataclasses.replace(tpm2.ak_template(), attributes=tpm2.AK_ATTRIBUTES & ~tpm2.OBJ_RESTRICTED)
    reasons = refused(device.answer(NONCE, template=template), reference, pin)
    assert reasons == ("AK: not the AK template of docs/boot-state.md: objectAttributes is fixedTPM | fixedParent | "
                       "sensitiveDataOrigin | userWithAuth | noDA | sign, the template has fixedTPM | fixedParent | "
                       "sensitiveDataOrigin | userWithAuth | noDA | restricted | sign",), reasons
    rsa = tpm2.Public(tpm2.ALG_RSA, tpm2.ALG_SHA256, tpm2.AK_ATTRIBUTES, b"", (tpm2.ALG_NULL,), tpm2.ALG_RSASSA,
                      tpm2.ALG_SHA256, key_bits=2048)
    reasons = refused(device.answer(NONCE, template=rsa), reference, pin)
    assert reasons == ("AK: not the AK template of docs/boot-state.md: type is RSA, the template has ECC",), reasons
    assert not pin.file.exists()  # nothing is pinned from a refused key


def test_ak_template_survives_power_cuts(tmp_path: Path) -> None:
    """Why the AK template has noDA: a dictionary-attack-protected key used
    before a non-orderly shutdown (a power cut; MantraOS never sends
    TPM2_Shutdown) counts as a failed try at the next startup, and after
    swtpm's 3 tries the TPM refuses the key with TPM_RC_LOCKOUT. With noDA
    the AK quotes on every boot."""
    selection = [tpm2.PcrSelection(tpm2.ALG_SHA256, tuple(range(10)))]
    without = dataclasses.replace(tpm2.ak_template(), attributes=tpm2.AK_ATTRIBUTES & ~tpm2.OBJ_NO_DA)
    results: dict[str, list[str]] = {}
    for name, template in (("without noDA", without), ("template", tpm2.ak_template())):
        results[name] = []
        for _ in range(5):  # five boots of the same TPM, each ended by a power cut
            with SwtpmServer(tmp_path / name) as tpm:
                handle, _, _ = tpm.create_primary(template)
                try:
                    tpm.quote(handle, NONCE, selection)
                    results[name].append("ok")
                except tpm2.TpmError as error:
                    results[name].append(hex(error.code))
    assert results == {"without noDA": ["ok", "ok", "ok", "0x921", "0x921"], "template": ["ok"] * 5}, results


def test_rsa_quote_signature_verifies(device: SimulatedDevice) -> None:
    """The parsers and the RSASSA verification, on a real RSA quote."""
    rsa = tpm2.Public(tpm2.ALG_RSA, tpm2.ALG_SHA256, tpm2.AK_ATTRIBUTES, b"", (tpm2.ALG_NULL,), tpm2.ALG_RSASSA,
                      tpm2.ALG_SHA256, key_bits=2048)
    blob = device.blob(NONCE, template=rsa)
    ak = tpm2.Public.decode(blob.ak_public)
    signature = tpm2.Signature.decode(blob.signature)
    quote = tpm2.Attest.decode(blob.quote)
    assert (ak.key_bits, signature.sig_alg, quote.extra_data) == (2048, tpm2.ALG_RSASSA, NONCE)
    signature.verify(ak, quote.raw)
    with pytest.raises(tpm2.SignatureError, match="does not verify"):
        signature.verify(ak, quote.raw + b"x")


def test_other_pcr_selection_is_refused(device: SimulatedDevice, reference: attest.Reference,
                                        pin: attest.AkPin) -> None:
    selection = tpm2.PcrSelection(tpm2.ALG_SHA256, tuple(range(8)))
    assert refused(device.answer(NONCE, selection=selection), reference, pin) == (
        "quote: PCR selection SHA-256 0-7, expected SHA-256 0-9",)
    selection = tpm2.PcrSelection(tpm2.ALG_SHA1, tuple(range(10)))
    assert refused(device.answer(NONCE, selection=selection), reference, pin) == (
        "quote: PCR selection SHA-1 0-9, expected SHA-256 0-9",)


def _with_log(blob: attest.Blob, log: eventlog.EventLog) -> bytes:
    return dataclasses.replace(blob, event_log=log.encode()).encode()


def test_event_log_that_does_not_replay_is_refused(device: SimulatedDevice, reference: attest.Reference,
                                                   pin: attest.AkPin) -> None:
    blob = device.blob(NONCE)
    log = eventlog.EventLog.decode(blob.event_log)
    # A log that claims the reference kernel while the TPM measured something else.
    events = list(log.events)
    index = next(i for i, e in enumerate(events) if e.data == b"MANTRA/KERNEL.ELF")
    digests = tuple((alg, bytes(len(value))) for alg, value in events[index].digests)
    events[index] = dataclasses.replace(events[index], digests=digests)
    (reason,) = refused(_with_log(blob, dataclasses.replace(log, events=tuple(events))), reference, pin)
    assert reason.startswith("event log: does not replay to the quoted PCRs: replayed pcrDigest "), reason
    assert "(the log was altered, or an extend was not logged)" in reason, reason
    # A log with an event left out.
    (reason,) = refused(_with_log(blob, dataclasses.replace(log, events=log.events[:-1])), reference, pin)
    assert reason.startswith("event log: does not replay to the quoted PCRs"), reason
    # The log of another boot (an extra extend since): the same.
    device.tpm.pcr_extend(9, {tpm2.ALG_SHA256: bytes(32), tpm2.ALG_SHA1: bytes(20)})
    (reason,) = refused(device.answer(NONCE), reference, pin)
    assert reason.startswith("event log: does not replay to the quoted PCRs"), reason


def test_component_that_differs_is_named(tpm: SwtpmServer, other_image: Path, reference: attest.Reference,
                                         pin: attest.AkPin) -> None:
    """The device booted the other image (another boot filesystem): the
    quote and log are genuine, the boot filesystem is not the reference's."""
    files = {**FILES, "MANTRA/BOOTFS.IMG": OTHER_BOOTFS}
    blob = SimulatedDevice(tpm, manifest_body(other_image), files).answer(NONCE)
    reasons = refused(blob, reference, pin)
    measured = hashlib.sha256(OTHER_BOOTFS).hexdigest()
    expected = hashlib.sha256(FILES["MANTRA/BOOTFS.IMG"]).hexdigest()
    assert reasons[0] == f"component MANTRA/BOOTFS.IMG: measured {measured}, reference {expected}", reasons
    # The manifest differs too (it lists the boot filesystem's hash); the kernel does not.
    assert len(reasons) == 2 and reasons[1].startswith("manifest (PCR 8): measured "), reasons
    assert not any("KERNEL" in r for r in reasons), reasons


def test_component_missing_or_extra_is_named(tpm: SwtpmServer, golden_image: Path, reference: attest.Reference,
                                             pin: attest.AkPin) -> None:
    # A device whose MantraBoot measured a command line the reference does not have.
    device = SimulatedDevice(tpm, manifest_body(golden_image), FILES)
    device.boot()
    tpm.pcr_extend(9, device.log.measure(9, pcr.EV_IPL, b"debug=1", b"MANTRA/CMDLINE.TXT"))
    reasons = refused(device.answer(NONCE), reference, pin)
    assert reasons == (f"component MANTRA/CMDLINE.TXT: measured {hashlib.sha256(b'debug=1').hexdigest()}, not in "
                       "the reference image",), reasons


def test_bootloader_that_differs_is_named(tpm: SwtpmServer, golden_image: Path, reference: attest.Reference,
                                          pin: attest.AkPin) -> None:
    """The firmware started another bootloader (PCR 4) than the reference's."""
    other = tiny_pe(b"\xc3 another loader")
    blob = SimulatedDevice(tpm, manifest_body(golden_image), {**FILES, "EFI/BOOT/BOOTX64.EFI": other}).answer(NONCE)
    reasons = refused(blob, reference, pin)
    assert reasons == (f"component EFI/BOOT/BOOTX64.EFI: measured {pe.authenticode_hash(other).hex()} (PCR 4, "
                       f"Authenticode), reference {pe.authenticode_hash(FILES['EFI/BOOT/BOOTX64.EFI']).hex()}",), reasons


def test_authenticode_hash_matches_osslsigncode(tmp_path: Path) -> None:
    """pe.authenticode_hash against an independent implementation: the
    digest osslsigncode computes when it signs (and verifies) the image."""
    tool = shutil.which("osslsigncode")
    openssl = shutil.which("openssl")
    if tool is None or openssl is None:
        pytest.skip("osslsigncode or openssl is not installed")
    image = FILES["EFI/BOOT/BOOTX64.EFI"]
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
    # The signature appended by signing is not part of the hash.
    assert pe.authenticode_hash((tmp_path / "signed.efi").read_bytes()) == pe.authenticode_hash(image)


def test_reference_manifest_must_verify(golden_image: Path, keyset: KeySet, other_keyset: KeySet,
                                        tmp_path: Path) -> None:
    # The wrong root key: the reference is not this product's.
    with pytest.raises(attest.AttestFailure) as failure:
        attest.load_reference(golden_image, other_keyset.root_public)
    (reason,) = failure.value.reasons
    assert reason.startswith(f"reference image {golden_image} (slot a): key record: issued by root key "), reason
    # A manifest changed after signing.
    copy = tmp_path / "image.img"
    copy.write_bytes(golden_image.read_bytes())
    files = open_slot(copy, "a")
    raw = bytearray(files.read(MANIFEST_PATH))
    envelope = Envelope.decode(bytes(raw))
    at = bytes(raw).index(envelope.manifest.body) + 16  # the security counter
    raw[at] ^= 1
    files.write(MANIFEST_PATH, bytes(raw))
    with pytest.raises(attest.AttestFailure) as failure:
        attest.load_reference(copy, keyset.root_public)
    (reason,) = failure.value.reasons
    assert reason == (f"reference image {copy} (slot a): manifest: signature by key {keyset.active_id().hex()} does not verify "
                      "(the manifest or its signature was changed after signing)"), reason


def test_reference_events_are_the_signed_manifests(reference: attest.Reference) -> None:
    assert [(e.pcr, e.data) for e in reference.events] == [
        (8, "manifest"), (9, "MANTRA/KERNEL.ELF"), (9, "MANTRA/BOOTFS.IMG")]
    assert reference.events[2].digest == hashlib.sha256(FILES["MANTRA/BOOTFS.IMG"]).digest()


# --- the console protocol -------------------------------------------------------------------


def test_answer_lines_round_trip_through_console_noise() -> None:
    blob = bytes(range(256)) * 3
    lines = attest.answer_lines(NONCE, blob)
    assert lines[0] == f"MANTRA-ATTEST-BEGIN {NONCE.hex()} {len(blob)}"
    assert len(lines) == 2 + -(-len(blob) // 72)
    noisy = ["logd: demo: tick 4", f"{attest.REQUEST} {NONCE.hex()}"]  # the device may echo the request
    for number, line in enumerate(lines):
        noisy.append(f"[attestd] {line}" if number % 2 else line)  # a marker may follow other text
        noisy.append("demo: still here")
    assert attest.read_answer(noisy, NONCE) == blob


def test_answer_to_another_nonce_is_skipped() -> None:
    stale = attest.answer_lines(bytes(32), b"old answer")
    assert attest.read_answer(stale + attest.answer_lines(NONCE, b"new answer"), NONCE) == b"new answer"
    with pytest.raises(attest.AttestFailure, match=f"no MANTRA-ATTEST-BEGIN line for nonce {NONCE.hex()}"):
        attest.read_answer(stale, NONCE)


@pytest.mark.parametrize("change, message", [
    (lambda ls: ls[:2] + ls[3:], "MANTRA-ATTEST-DATA line 2 arrived where 1 was expected"),
    (lambda ls: ls[:-1] + ["MANTRA-ATTEST-END " + "0" * 64], "the blob's SHA-256 is "),
    (lambda ls: ls[:-2] + ls[-1:], "the answer holds 144 bytes, 200 were announced"),
    (lambda ls: ls[:1] + ["MANTRA-ATTEST-DATA 0 !!!!"] + ls[2:], "MANTRA-ATTEST-DATA line 0: not base64"),
    (lambda ls: ["MANTRA-ATTEST-BEGIN abc 5"], "malformed MANTRA-ATTEST-BEGIN line"),
    (lambda ls: [f"MANTRA-ATTEST-BEGIN {NONCE.hex()} 99999999"], "announces a 99999999-byte blob"),
    (lambda ls: ls[:1] + ["attestd: MANTRA-ATTEST-ERROR TPM2_Quote: TPM response code 0x101"],
     "the device answered MANTRA-ATTEST-ERROR: TPM2_Quote: TPM response code 0x101"),
    (lambda ls: ls[:2], "the answer ended after 72 of 200 bytes"),
])
def test_malformed_answers_are_refused(change, message: str) -> None:
    lines = attest.answer_lines(NONCE, bytes(range(200)))  # 3 DATA lines
    with pytest.raises(attest.AttestFailure, match=message.replace("(", r"\(").replace(")", r"\)")):
        attest.read_answer(change(lines), NONCE)


# --- strict parsers ---------------------------------------------------------------------------


def test_blob_framing_is_strict() -> None:
    blob = attest.Blob(b"log", b"ak", b"quote", b"sig")
    data = blob.encode()
    assert attest.Blob.decode(data) == blob
    assert data[:16] == b"MTRA-ATQ" + bytes([1, 0, 4, 0]) + len(data).to_bytes(4, "little")
    cases = {
        b"MTRA-XXX" + data[8:]: "bad magic",
        data[:8] + b"\x02" + data[9:]: "version 2",
        data + b"\x00": "header says",
        data[:12] + (len(data) + 1).to_bytes(4, "little") + data[16:] + b"\x00": "1 trailing bytes",
        data[:16] + b"\x02" + data[17:]: "section 0 has tag 2, expected 1 (event log)",
        data[:18] + b"\x01" + data[19:]: "reserved field of section 1",
        data[:20] + b"\xff" + data[21:]: "section 1 (event log) is 255 bytes",
    }
    for bad, message in cases.items():
        with pytest.raises(DecodeError, match=message.replace("(", r"\(").replace(")", r"\)")):
            attest.Blob.decode(bad)


def test_event_log_parser_is_strict() -> None:
    builder = eventlog.LogBuilder()
    builder.measure(0, eventlog.EV_S_CRTM_VERSION, b"v", b"v")
    builder.measure(9, pcr.EV_IPL, b"kernel", b"MANTRA/KERNEL.ELF")
    data = builder.encode()
    log = eventlog.EventLog.decode(data)
    assert log.encode() == data and len(log.events) == 2
    assert log.spec_id.algorithms == ((tpm2.ALG_SHA1, 20), (tpm2.ALG_SHA256, 32))
    spec_size = len(log.spec_id.encode_event())
    first = log.events[0].encode()
    cases = {
        data + b"\x00": "truncated",  # a byte after the last event starts a new, incomplete one
        data[:-1]: "truncated: event 2 event data needs 17 bytes, 16 left",
        b"\x01" + data[1:]: "not the Spec ID event",
        data[:32] + b"Spec ID Event02\x00" + data[48:]: "Spec ID signature",
        # An event with one digest where the Spec ID event lists two.
        data[:spec_size + 8] + (1).to_bytes(4, "little") + data[spec_size + 12:]: "event 1: 1 digests",
        # A digest of an algorithm the log does not list (SHA-384 in place of SHA-1).
        data[:spec_size + 12] + tpm2.ALG_SHA384.to_bytes(2, "little") + data[spec_size + 14:]:
            "event 1: a digest of SHA-384, which the Spec ID event does not list",
        data[:spec_size] + (24).to_bytes(4, "little") + data[spec_size + 4:]: "event 1: PCR 24",
        data[:spec_size + len(first) - 5] + (0xFFFFFF).to_bytes(4, "little") + data[spec_size + len(first) - 1:]:
            "event 1: 16777215 bytes of event data",
    }
    for bad, message in cases.items():
        with pytest.raises(DecodeError, match=message):
            eventlog.EventLog.decode(bad)


def test_event_log_replay_skips_no_action_and_honours_startup_locality() -> None:
    builder = eventlog.LogBuilder([tpm2.ALG_SHA256])
    builder.no_action(eventlog.STARTUP_LOCALITY_SIGNATURE + b"\x03")
    digest = builder.measure(0, eventlog.EV_S_CRTM_VERSION, b"v", b"v")[tpm2.ALG_SHA256]
    log = eventlog.EventLog.decode(builder.encode())
    assert log.startup_locality() == 3
    assert log.replay()[0] == hashlib.sha256(bytes(31) + b"\x03" + digest).digest()
    with pytest.raises(DecodeError, match="no SHA-1 digests"):
        log.replay(tpm2.ALG_SHA1)


def test_tpm_structure_parsers_are_strict(device: SimulatedDevice) -> None:
    blob = device.blob(NONCE)
    ak = tpm2.Public.decode(blob.ak_public)
    assert ak.encode_tpm2b() == blob.ak_public and not tpm2.template_differences(ak)
    with pytest.raises(DecodeError, match="size field says"):
        tpm2.Public.decode(blob.ak_public + b"\x00")
    with pytest.raises(DecodeError, match="trailing bytes"):
        tpm2.Public.decode((len(ak.tpmt) + 1).to_bytes(2, "big") + ak.tpmt + b"\x00")
    quote = tpm2.Attest.decode(blob.quote)
    assert quote.encode_tpm2b() == blob.quote
    wrong_magic = dataclasses.replace(quote, raw=b"", magic=0xFF544348).encode_tpm2b()
    with pytest.raises(DecodeError, match="is not TPM_GENERATED_VALUE"):
        tpm2.Attest.decode(wrong_magic)
    wrong_type = dataclasses.replace(quote, raw=b"", type=0x8014).encode_tpm2b()
    with pytest.raises(DecodeError, match="type TPM_ST_ATTEST_CERTIFY, expected TPM_ST_ATTEST_QUOTE"):
        tpm2.Attest.decode(wrong_type)
    with pytest.raises(DecodeError, match="trailing bytes"):
        tpm2.Signature.decode(blob.signature + b"\x00")
    with pytest.raises(DecodeError, match="sigAlg HMAC"):
        tpm2.Signature.decode(tpm2.ALG_HMAC.to_bytes(2, "big") + blob.signature[2:])


# --- `mantra attest --port` against a device on a TCP console ------------------------------


class ConsoleServer:
    """A device console on 127.0.0.1: prints some boot noise, reads the
    request line, then answers with `answer(nonce)`'s lines (or `reply`)."""

    def __init__(self, answer, *, reply: list[str] | None = None) -> None:
        import socket
        import threading

        self.answer = answer
        self.reply = reply
        self.requests: list[str] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"socket://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            connection.sendall(b"MantraCore ready\r\ndemo: tick\r\n")
            data = b""
            while b"\n" not in data and b"\r" not in data:
                chunk = connection.recv(4096)
                if not chunk:
                    return
                data += chunk
            line = data.decode().strip()
            self.requests.append(line)
            nonce = bytes.fromhex(line.split()[-1])
            lines = self.reply if self.reply is not None else attest.answer_lines(nonce, self.answer(nonce))
            for number, text in enumerate(lines):
                connection.sendall(f"{text}\r\n".encode())
                if number == 1:
                    connection.sendall(b"logd: a line in between\r\n")
            connection.recv(1)  # until the host hangs up

    def close(self) -> None:
        self.listener.close()


def run_cli(*args: str):
    from mantra.cli import app
    from typer.testing import CliRunner

    return CliRunner().invoke(app, ["attest", *args], catch_exceptions=False)


def test_attest_command_over_a_socket(device: SimulatedDevice, golden_image: Path, other_image: Path,
                                      keyset: KeySet, tmp_path: Path) -> None:
    server = ConsoleServer(device.answer)
    try:
        root = str(keyset.dir / "root.pub")
        result = run_cli("--port", server.url, "--reference", str(golden_image), "--root", root,
                         "--nonce", NONCE.hex())
    finally:
        server.close()
    assert server.requests == [f"MANTRA-ATTEST-REQUEST {NONCE.hex()}"]
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"attest: reference: {golden_image} slot a: default 0.1.0 for qemu-x86_64"), result.output
    assert lines[-1].startswith("attest: OK: the device booted default 0.1.0 for qemu-x86_64 as signed"), result.output
    pinned = golden_image.parent / "attest" / f"ak-socket_127.0.0.1_{server.url.rsplit(':', 1)[1]}.pem"
    assert pinned.is_file() and "first use" in result.output
    assert b"logd: a line in between" in (golden_image.parent / "attest" / "console.log").read_bytes()

    # The same device against a reference with another boot filesystem: the component is named.
    server = ConsoleServer(device.answer)
    try:
        result = run_cli("--port", server.url, "--reference", str(other_image), "--root", root)
    finally:
        server.close()
    assert result.exit_code == 1, result.output
    failed = [line for line in result.output.splitlines() if "FAILED" in line]
    assert failed[0] == (f"attest: FAILED: component MANTRA/BOOTFS.IMG: measured "
                         f"{hashlib.sha256(FILES['MANTRA/BOOTFS.IMG']).hexdigest()}, reference "
                         f"{hashlib.sha256(OTHER_BOOTFS).hexdigest()}"), result.output


def test_attest_command_reports_device_errors_and_silence(golden_image: Path, keyset: KeySet) -> None:
    root = str(keyset.dir / "root.pub")
    server = ConsoleServer(None, reply=["MANTRA-ATTEST-ERROR no TPM (tpm: none)"])
    try:
        result = run_cli("--port", server.url, "--reference", str(golden_image), "--root", root)
    finally:
        server.close()
    assert result.exit_code == 1
    assert "attest: FAILED: the device answered MANTRA-ATTEST-ERROR: no TPM (tpm: none)" in result.output
    server = ConsoleServer(None, reply=["nothing to see"])
    try:
        result = run_cli("--port", server.url, "--reference", str(golden_image), "--root", root, "--timeout", "1")
    finally:
        server.close()
    assert result.exit_code == 1
    assert "the device did not answer the attestation request within 1 s" in result.output, result.output
    result = run_cli("--port", "socket://127.0.0.1:1", "--reference", str(golden_image), "--root", root)
    assert result.exit_code == 1 and "cannot open the device's console socket://127.0.0.1:1" in result.output
    result = run_cli("--nonce", "abcd", "--port", "x")
    assert result.exit_code == 2 and "--nonce" in result.output


def test_attest_command_checks_the_reference_before_the_device(golden_image: Path, keyset: KeySet,
                                                               other_keyset: KeySet) -> None:
    """A reference that does not verify against --root stops `attest`
    before it talks to the device (the port here would refuse a connection)."""
    result = run_cli("--port", "socket://127.0.0.1:1", "--reference", str(golden_image), "--root",
                     str(other_keyset.dir / "root.pub"))
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"attest: FAILED: reference image {golden_image} (slot a): key record: issued by root key "
                                    f"{keyset.root_id.hex()}, not by the given root key"), result.output
    assert "cannot open the device's console" not in result.output
