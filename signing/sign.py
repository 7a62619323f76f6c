"""`mantra sign`: the signed manifests of a built image, written as
MANTRA/MANIFEST.SIG into its ESP (the bootloader) and each slot (kernel,
boot filesystem, command line)."""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from mantra.errors import MantraError
from mantra.image import gpt
from mantra.signing.encoding import Envelope, Manifest, Signed
from mantra.signing.image import MANIFEST_PATH, SLOTS, FatFiles, components, kind_of, open_esp, open_slot
from mantra.signing.keys import KeySet, StoredKey, utc


@dataclass(frozen=True)
class ImageInfo:
    """What the manifest says besides the components: from the
    manifest.json that `mantra build` writes beside the image."""

    board: str
    product: str
    version: str
    security_counter: int
    config_sha256: bytes
    source_revision: str
    toolchain: tuple[tuple[str, str], ...]
    # path on the ESP -> SHA-256 (hex) as the build recorded it
    built_components: dict[str, str]

    @classmethod
    def beside(cls, image: Path) -> ImageInfo:
        path = image.with_name("manifest.json")
        try:
            data = json.loads(path.read_text())
            provenance = data.get("provenance", {})
            return cls(
                board=data["board"], product=data["product"], version=data["version"],
                security_counter=int(data.get("security_counter", 0)),
                config_sha256=bytes.fromhex(data["config"]["sha256"]),
                source_revision=provenance.get("source_revision", "unknown"),
                toolchain=tuple(sorted(provenance.get("toolchain", {}).items())),
                built_components={c["path"]: c["sha256"] for c in data["components"]},
            )
        except FileNotFoundError:
            raise MantraError(f"no manifest.json beside {image} (board, product, version and provenance come from it)",
                              "sign an image as ./mantra build wrote it, in its build directory") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise MantraError(f"{path} is not a manifest.json of ./mantra build: {exc!r}",
                              "rebuild the image") from None


@dataclass(frozen=True)
class SignResult:
    key: StoredKey
    manifest: Manifest
    envelope: bytes
    # What was signed: "ESP", "slot a", "slot b".
    target: str = "ESP"


def usable_key(keyset: KeySet, now: int) -> StoredKey:
    """The active signing key, refused if revoked or outside its validity."""
    key = keyset.active()
    _, revocations = keyset.revocations()
    hint = f"issue a new signing key: ./mantra keys rotate {keyset.dir}"
    if key.id in revocations.revoked:
        raise MantraError(f"the active signing key {key.id.hex()} is revoked", hint)
    if not key.record.not_before <= now <= key.record.not_after:
        raise MantraError(f"the active signing key {key.id.hex()} is not valid now (valid "
                          f"{utc(key.record.not_before)} to {utc(key.record.not_after)})", hint)
    return key


def targets(image: Path, slot: str | None) -> list[FatFiles]:
    """What `sign`/`verify` cover: the ESP and every slot that holds a file
    system (slot None), or the one slot `slot`."""
    try:
        if slot is not None:
            return [open_slot(image, slot)]
        return [open_esp(image)] + [f for f in (open_slot(image, s) for s in SLOTS) if f.has_filesystem()]
    except gpt.GptError as exc:
        raise MantraError(f"{image}: {exc}", "rebuild the image with ./mantra build") from None


def sign_disk(image: Path, keyset: KeySet, passphrase: str, *, info: ImageInfo | None = None,
              security_counter: int | None = None, now: int | None = None, slot: str | None = None
              ) -> list[SignResult]:
    """Signs the components of each file system of `image` (the ESP's
    bootloader, each slot's kernel, boot filesystem and command line; with
    `slot`, that slot only) with the key set's active key, and writes each
    one's envelope to its MANTRA/MANIFEST.SIG (replacing an older one)."""
    info = info or ImageInfo.beside(image)
    now = int(time.time()) if now is None else now
    chosen = targets(image, slot)
    for files in chosen:
        if not files.has_filesystem():
            raise MantraError(f"{image}: {files.label} holds no file system (an empty slot)",
                              f"install an image into it first: ./mantra slot install {image} --slot "
                              f"{files.label.removeprefix('slot ')} --from SIGNED_IMAGE")
    key = usable_key(keyset, now)
    revocations, _ = keyset.revocations()
    private = keyset.signing_key(key.id, passphrase)
    results = []
    for files in chosen:
        found = components(files)
        for component in found:
            built = info.built_components.get(component.path)
            if built is not None and built != component.sha256.hex():
                raise MantraError(f"{component.path} on the {files.label} is not what the build wrote (sha256 "
                                  f"{component.sha256.hex()}, manifest.json says {built})",
                                  "rebuild the image before signing it")
        expected = {p for p in info.built_components if kind_of(p) in files.kinds}
        missing = sorted(expected - {c.path for c in found})
        if missing:
            raise MantraError(f"{image}: the {files.label} lacks {', '.join(missing)}, which manifest.json lists",
                              "rebuild the image before signing it")
        if not found:
            raise MantraError(f"{image}: the {files.label} holds no component to sign", "rebuild the image")
        manifest = Manifest(
            security_counter=info.security_counter if security_counter is None else security_counter,
            signed_at=now, signing_key=key.id, config_sha256=info.config_sha256, board=info.board,
            product=info.product, version=info.version, source_revision=info.source_revision,
            toolchain=info.toolchain, components=tuple(found))
        try:
            body = manifest.encode()
        except (ValueError, struct.error) as exc:
            raise MantraError(f"cannot encode the manifest of the {files.label}: {exc}",
                              "see docs/signing.md for what it may hold") from None
        envelope = Envelope(key.signed, revocations, Signed(body, private.sign(body))).encode()
        files.write(MANIFEST_PATH, envelope)
        results.append(SignResult(key, manifest, envelope, files.label))
    return results


def sign_image(image: Path, keyset: KeySet, passphrase: str, *, info: ImageInfo | None = None,
               security_counter: int | None = None, now: int | None = None, slot: str | None = None
               ) -> SignResult:
    """sign_disk, returning the result of the first slot signed (the ESP's
    when the image has no slot contents)."""
    results = sign_disk(image, keyset, passphrase, info=info, security_counter=security_counter, now=now, slot=slot)
    return next((r for r in results if r.target != "ESP"), results[0])
