"""`mantra attest`: ask a device for a TPM quote over its console and check
it against the signed manifest of the reference image (mantra.signing.attest)."""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from mantra import build as driver
from mantra.cli.common import DEFAULT_BOARD, DEFAULT_PRODUCT, BoardOption, ProductOption, workspace
from mantra.console import out, step
from mantra.errors import MantraError
from mantra.signing import attest as attestation
from mantra.signing.keys import ROOT_PUB, load_root_public
from mantra.workspace import Workspace

# How long the device gets to answer a request once it is up.
DEFAULT_TIMEOUT = 60.0
# How long the QEMU device gets to boot up to attestd (at least).
BOOT_TIMEOUT = 300.0


def _nonce(value: str | None) -> bytes:
    if value is None:
        return secrets.token_bytes(attestation.NONCE_SIZE)
    try:
        nonce = bytes.fromhex(value)
    except ValueError:
        nonce = b""
    if len(nonce) != attestation.NONCE_SIZE:
        raise typer.BadParameter(f"a nonce is {attestation.NONCE_SIZE} bytes: {2 * attestation.NONCE_SIZE} hex "
                                 "digits (leave it out for a random one)", param_hint="--nonce")
    return nonce


def _product_root(ws: Workspace, product: str) -> bytes:
    """The root public key of the key set `mantra build` signs PRODUCT with
    ($MANTRA_KEYS, else the development keys), without making one."""
    chosen = os.environ.get(driver.KEYS_ENV)
    directory = Path(chosen) if chosen else ws.root / "build" / "keys" / product
    pub = directory / ROOT_PUB
    if not pub.is_file():
        raise MantraError(f"no root key to check the reference image with: {ws.relative(pub)} does not exist",
                          "give the product's root public key with --root PUB (DIR/root.pub of its key set)")
    return load_root_public(pub)


def _report(line: str) -> None:
    out.print(f"attest: {line}", markup=False, soft_wrap=True)


def _failed(reasons: tuple[str, ...]) -> typer.Exit:
    for reason in reasons:
        out.print(f"attest: FAILED: {reason}", markup=False, soft_wrap=True)
    return typer.Exit(1)


@contextmanager
def _port_device(url: str, transcript: Path) -> Iterator[attestation.ConsoleLink]:
    """An already running device on `url`."""
    with attestation.ConsoleLink(url, transcript=transcript) as link:
        yield link


def attest(
    ctx: typer.Context,
    board: BoardOption = DEFAULT_BOARD,
    product: ProductOption = DEFAULT_PRODUCT,
    reference: Annotated[Path | None, typer.Option(
        "--reference", metavar="IMAGE", dir_okay=False,
        help="The image the device must have booted (default: build/BOARD/PRODUCT/image.img).")] = None,
    root: Annotated[Path | None, typer.Option(
        "--root", metavar="PUB", dir_okay=False,
        help="Root public key the reference's signed manifest must verify with (default: the product's key set, "
             "as ./mantra build uses).")] = None,
    port: Annotated[str | None, typer.Option(
        "--port", metavar="URL",
        help="Attest a running device on this console: socket://HOST:PORT, a pty or a tty (default: boot the "
             "built product under QEMU with a TPM).")] = None,
    ak: Annotated[Path | None, typer.Option(
        "--ak", metavar="FILE", dir_okay=False,
        help="Pin the device's attestation key: a PEM/DER public key or TPM2B_PUBLIC (default: the AK seen on "
             "first use, pinned in attest/ beside the image).")] = None,
    slot: Annotated[str, typer.Option(
        "--slot", metavar="a|b",
        help="The reference image's slot whose signed manifest the device must have booted (MantraBoot prints "
             "'booting slot X').")] = "a",
    nonce: Annotated[str | None, typer.Option(
        "--nonce", metavar="HEX", help="The 32-byte nonce, 64 hex digits (default: random).")] = None,
    timeout: Annotated[float, typer.Option(
        "--timeout", metavar="S", min=1,
        help="How long the device gets to answer (under QEMU it gets at least 300 s to boot).")]
        = DEFAULT_TIMEOUT,
) -> None:
    """Check what a device booted: a TPM quote of PCRs 0-9 over a fresh nonce,
    the event log replayed to it, each measurement against the signed
    manifest of the reference image.

    Without --port the built product boots under QEMU with a TPM (as
    `./mantra run --tpm`) and is asked over its console. Each check is
    printed; `attest: FAILED: ...` names what differs (e.g. the component)
    and the exit status is 1."""
    ws = workspace(ctx)
    request_nonce = _nonce(nonce)
    if port is None:
        built = driver.build(ws, board, product)
        if not any((service.program or service.name) == "attestd" for service in built.product.services):
            raise MantraError(f"product {product} has no attestation service (attestd): nothing on the device "
                              "would answer", "attest a product that runs attestd (e.g. -p default), or add it "
                              "to product.toml as manifests/default/product.toml does")
        device_image = built.image
        reference_image = reference or built.image
    else:
        device_image = None
        reference_image = reference or ws.build_paths(board, product).image_dir(False) / "image.img"
        if not reference_image.is_file():
            raise MantraError(f"no reference image: {ws.relative(reference_image)} does not exist",
                              f"build it (./mantra build -b {board} -p {product}) or give --reference IMAGE")
    root_public = load_root_public(root) if root is not None else _product_root(ws, product)
    try:
        if slot not in ("a", "b"):
            raise MantraError(f"no slot {slot!r}", "give --slot a or --slot b")
        expected = attestation.load_reference(reference_image, root_public, _report, slot=slot)
    except attestation.AttestFailure as failure:
        raise _failed(failure.reasons) from None

    state_dir = (device_image or reference_image).parent
    pin = attestation.AkPin(attestation.pin_file(state_dir, "qemu" if port is None else port), explicit=ak)
    if port is None:
        assert device_image is not None
        device = _qemu_device(ws, device_image, timeout)
    else:
        transcript = state_dir / "attest" / "console.log"
        transcript.parent.mkdir(parents=True, exist_ok=True)
        transcript.write_bytes(b"")
        device = _port_device(port, transcript)
    with device as link:
        step(f"Asking {link.url} for a quote over nonce {request_nonce.hex()}")
        try:
            blob = link.request(request_nonce, timeout)
        except attestation.AttestFailure as failure:
            raise _failed(failure.reasons) from None
    start = time.perf_counter()
    try:
        attestation.verify(blob, request_nonce, expected, pin, _report)
    except attestation.AttestFailure as failure:
        raise _failed(failure.reasons) from None
    elapsed = time.perf_counter() - start
    manifest = expected.manifest
    _report(f"OK: the device booted {manifest.product} {manifest.version} for {manifest.board} as signed "
            f"(security counter {manifest.security_counter}); quote verified in {elapsed * 1000:.1f} ms")


# The lines attestd prints once it serves requests (or knows it cannot).
_ATTESTD_READY = r"attestd: .*(answering MANTRA-ATTEST-REQUEST|attestation requests will be refused)"


class _SessionLink:
    """The console of a board booted by its runner (runners/console_socket.py)."""

    def __init__(self, session) -> None:  # noqa: ANN001 - a ConsoleSession
        self.session = session
        self.url = session.url

    def request(self, nonce: bytes, timeout: float) -> bytes:
        mark = self.session.mark()
        self.session.send_line(attestation.request_line(nonce))
        deadline = time.monotonic() + timeout
        reader = attestation.AnswerReader(nonce)
        start = mark
        while True:
            remaining = max(deadline - time.monotonic(), 0.001)
            try:
                end = self.session.wait_for(r"MANTRA-ATTEST-(END|ERROR)\b", remaining, start=start)
            except MantraError as error:
                raise MantraError(f"the device did not answer the attestation request within {timeout:g} s: "
                                  f"{error.message}", error.hint) from None
            text = self.session.text
            stop = text.find("\n", end.end())
            stop = len(text) if stop < 0 else stop + 1
            for line in re.split(r"[\r\n]", text[start:stop]):
                blob = reader.feed(line)
                if blob is not None:
                    return blob
            start = stop


@contextmanager
def _qemu_device(ws: Workspace, image: Path, timeout: float) -> Iterator[_SessionLink]:
    """The built image booted under QEMU with swtpm, its console on a local
    socket; yields once attestd is up."""
    from mantra.qemu import console_session

    step(f"Booting {ws.relative(image)} with a TPM; console log: {ws.relative(image.parent / 'console.log')}")
    with console_session(image, tpm=True, workspace=ws) as session:
        session.wait_for(_ATTESTD_READY, max(timeout, BOOT_TIMEOUT))
        yield _SessionLink(session)


def register(app: typer.Typer) -> None:
    app.command()(attest)
