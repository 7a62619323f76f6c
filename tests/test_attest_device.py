"""The device side of attestation, in QEMU with swtpm: MantraBoot hands the
TCG event log to the kernel, attestd answers `MANTRA-ATTEST-REQUEST
<nonce>` on the console (a TCP socket, `console_session`) with the log and
a TPM quote over the nonce (docs/boot-state.md, "Attestation console
protocol"). Checked here: the answer's framing and SHA-256, the quote's
nonce, PCR selection and signature by the AK, the event log replaying to
the quoted PCR digest, and MantraBoot's PCR 8/9 events being those
`mantra.signing.pcr` computes. Without a TPM attestd refuses requests."""

from __future__ import annotations

import hashlib
import os
import re
import time

import pytest
from attest_reader import (
    TAG_AK_PUBLIC,
    TAG_ATTEST,
    TAG_EVENT_LOG,
    TAG_SIGNATURE,
    TPM_ALG_SHA256,
    answer_blob,
    blob_sections,
    parse_attest,
    parse_ecc_public,
    parse_ecdsa_signature,
    parse_event_log,
    replay_sha256,
)
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from mantra.build import BuildResult
from mantra.qemu import console_session
from mantra.signing.encoding import Envelope
from mantra.signing.image import MANIFEST_PATH, open_slot
from mantra.signing.pcr import EV_IPL, events

pytestmark = pytest.mark.boot

READY = r"attestd: (TPM \(TIS/FIFO.*|no TPM.*)"
ANSWERED = r"MANTRA-ATTEST-(END|ERROR) .*"
BOOT_TIMEOUT = 240
ANSWER_TIMEOUT = 120
# The template's TPMA_OBJECT: fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | noDA | restricted | sign.
AK_ATTRIBUTES = 0x00050472


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def test_quote_over_the_console(default_image: BuildResult) -> None:
    body = Envelope.decode(open_slot(default_image.image, "a").read(MANIFEST_PATH)).manifest.body
    with console_session(default_image.image, tpm=True) as console:
        ready = console.wait_for(READY, timeout=BOOT_TIMEOUT)
        assert ready[0].startswith("attestd: TPM (TIS/FIFO"), tail(console.text)
        assert re.search(r"^eventlog: \d+ bytes\r?$", console.text, re.M), tail(console.text)
        for attempt in range(2):  # a second request gets a fresh quote
            nonce = os.urandom(32)
            mark = console.mark()
            started = time.monotonic()
            console.send_line(f"MANTRA-ATTEST-REQUEST {nonce.hex()}")
            console.wait_for(ANSWERED, timeout=ANSWER_TIMEOUT, start=mark)
            answer = console.text[mark:]
            print(f"attempt {attempt}: answered in {time.monotonic() - started:.2f} s wall clock")
            answered_nonce, blob = answer_blob(answer)
            assert answered_nonce == nonce.hex()
            sections = blob_sections(blob)
            assert sorted(sections) == [TAG_EVENT_LOG, TAG_AK_PUBLIC, TAG_ATTEST, TAG_SIGNATURE]

            # The quote: over this nonce, SHA-256 PCRs 0-9, signed by the AK.
            attest = parse_attest(sections[TAG_ATTEST])
            assert attest.extra_data == nonce
            assert attest.pcr_select == bytes.fromhex("00000001000b03ff0300")
            ak = parse_ecc_public(sections[TAG_AK_PUBLIC])
            assert (ak.name_alg, ak.attributes, ak.scheme, ak.scheme_hash, ak.curve) == \
                (TPM_ALG_SHA256, AK_ATTRIBUTES, 0x0018, TPM_ALG_SHA256, 0x0003)
            hash_alg, r, s = parse_ecdsa_signature(sections[TAG_SIGNATURE])
            assert hash_alg == TPM_ALG_SHA256
            key = ec.EllipticCurvePublicNumbers(int.from_bytes(ak.x, "big"), int.from_bytes(ak.y, "big"),
                                                ec.SECP256R1()).public_key()
            key.verify(encode_dss_signature(r, s), attest.body, ec.ECDSA(hashes.SHA256()))  # raises if forged
            if attempt == 0:
                first_ak = sections[TAG_AK_PUBLIC]
            else:
                assert sections[TAG_AK_PUBLIC] == first_ak, "the AK template must always derive the same key"

            # The event log replays to the quoted PCRs: it is complete,
            # ExitBootServices events (final events table) included.
            log = parse_event_log(sections[TAG_EVENT_LOG])
            pcrs = replay_sha256(log, range(10))
            assert hashlib.sha256(b"".join(pcrs[i] for i in range(10))).digest() == attest.pcr_digest, \
                "the event log does not replay to the quoted PCR values"
            assert any(e.data.startswith(b"Exit Boot Services Invocation") for e in log), \
                "no ExitBootServices event: the final events table was not appended"
            # MantraBoot's events: exactly what mantra.signing.pcr expects.
            ours = [(e.pcr, e.event_type, e.digests[TPM_ALG_SHA256], e.data.decode(errors="replace"))
                    for e in log if e.pcr in (8, 9)]
            assert ours == [(e.pcr, EV_IPL, e.digest, e.data) for e in events(body)]
            print(f"event log {len(sections[TAG_EVENT_LOG])} bytes, {len(log)} events; blob {len(blob)} bytes")

        # A malformed request gets an error that says what to send.
        mark = console.mark()
        console.send_line("MANTRA-ATTEST-REQUEST 1234")
        error = console.wait_for(ANSWERED, timeout=ANSWER_TIMEOUT, start=mark)
        assert error[0].startswith("MANTRA-ATTEST-ERROR bad request: the nonce is not 64 hex digits"), error[0]
        assert "KERNEL FAULT" not in console.text and "KERNEL PANIC" not in console.text, tail(console.text)


def test_without_tpm_requests_are_refused(default_image: BuildResult) -> None:
    with console_session(default_image.image) as console:
        ready = console.wait_for(READY, timeout=BOOT_TIMEOUT)
        assert ready[0].startswith("attestd: no TPM"), tail(console.text)
        mark = console.mark()
        console.send_line(f"MANTRA-ATTEST-REQUEST {os.urandom(32).hex()}")
        answer = console.wait_for(ANSWERED, timeout=ANSWER_TIMEOUT, start=mark)
        assert answer[0].rstrip() == "MANTRA-ATTEST-ERROR no TPM", answer[0]
        # Said once at start, not per request.
        assert console.text.count("attestd: no TPM") == 1, tail(console.text)
