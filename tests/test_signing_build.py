"""`mantra build` signs what it packs: development keys made on first use
(with the warning), a product key set from --keys / MANTRA_KEYS with its
passphrase, the product's security counter, provenance in manifest.json,
and a re-sign when the signing key changes. Most tests use test_build's
stand-in cargo; one checks the real default image."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from mantra.build import BuildResult, build
from mantra.errors import MantraError
from mantra.signing import keys
from mantra.signing.image import MANIFEST_PATH, open_esp, open_slot
from mantra.signing.verify import verify_disk, verify_image
from mantra.workspace import Workspace
from support import ROOT
from test_build import fake  # noqa: F401  (the stand-in cargo fixture)

PASSPHRASE = "product passphrase"
WARNING = "warning: development keys generated in build/keys/default; do not ship images signed with them"


@pytest.fixture(autouse=True)
def fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys, "SCRYPT_LOG2_N", keys.DEV_SCRYPT_LOG2_N)
    monkeypatch.delenv("MANTRA_KEYS", raising=False)
    monkeypatch.delenv(keys.PASSPHRASE_ENV, raising=False)


def test_real_image_is_signed_with_the_development_keys(default_image: BuildResult, workspace: Workspace) -> None:
    root = workspace.root / "build" / "keys" / "default" / "root.pub"
    disk = verify_disk(default_image.image, keys.load_root_public(root))
    verified = disk.primary
    assert disk.esp is not None and set(disk.slots) == {"a", "b"}
    manifest = json.loads(default_image.manifest.read_text())
    assert verified.key.key_id.hex() == manifest["signing"]["key_id"] == default_image.signed_by
    assert manifest["signing"]["development"] is True
    # The ESP's manifest lists MantraBoot, each slot's the rest.
    listed = disk.esp.manifest.components + verified.manifest.components
    assert [(c.path, c.size, c.sha256.hex()) for c in listed] == [
        (c["path"], c["size"], c["sha256"]) for c in manifest["components"]]
    assert disk.slots["b"].manifest == verified.manifest
    envelope = open_slot(default_image.image, "a").read(MANIFEST_PATH)
    assert hashlib.sha256(envelope).hexdigest() == manifest["signing"]["manifest_sig_sha256"]
    envelope = open_esp(default_image.image).read(MANIFEST_PATH)
    assert hashlib.sha256(envelope).hexdigest() == manifest["signing"]["esp_manifest_sig_sha256"]
    assert verified.manifest.source_revision == manifest["provenance"]["source_revision"]
    assert manifest["provenance"]["toolchain"]["rustc"].startswith("rustc ")
    assert verified.manifest.config_sha256.hex() == manifest["config"]["sha256"]


def test_first_build_makes_development_keys_with_a_warning(fake: Workspace, capsys: pytest.CaptureFixture
                                                           ) -> None:  # noqa: F811
    result = build(fake, "qemu-x86_64", "default")
    assert WARNING in capsys.readouterr().err.replace("\n", " ")
    directory = fake.root / "build" / "keys" / "default"
    keyset = keys.load_keyset(directory)
    assert keyset.development and result.keys == directory and result.signed_by == keyset.active_id().hex()
    verify_image(result.image, keyset.root_public, board="qemu-x86_64")
    # MantraBoot is built with the key set's raw root public key.
    assert (fake.build_paths("qemu-x86_64", "default").config_dir / "root_key.bin").read_bytes() == keyset.root_public
    manifest = json.loads(result.manifest.read_text())
    assert manifest["image"]["sha256"] == hashlib.sha256(result.image.read_bytes()).hexdigest()  # after signing
    assert manifest["security_counter"] == 0
    assert manifest["provenance"]["source_revision"] == "unknown"  # the scratch copy is no git checkout
    again = build(fake, "qemu-x86_64", "default")
    assert not again.packed and "development keys generated" not in capsys.readouterr().err


def test_product_keys_from_the_option_and_the_environment(fake: Workspace, tmp_path: Path,  # noqa: F811
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    product_keys = keys.init_keyset(tmp_path / "product-keys", PASSPHRASE)
    with pytest.raises(MantraError, match="a passphrase is required"):
        build(fake, "qemu-x86_64", "default", keys=product_keys.dir)
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "wrong passphrase")
    with pytest.raises(MantraError, match="wrong passphrase"):
        build(fake, "qemu-x86_64", "default", keys=product_keys.dir)
    monkeypatch.setenv(keys.PASSPHRASE_ENV, PASSPHRASE)
    result = build(fake, "qemu-x86_64", "default", keys=product_keys.dir)
    assert result.packed and result.signed_by == product_keys.active_id().hex()
    verify_image(result.image, product_keys.root_public)
    root_key = fake.build_paths("qemu-x86_64", "default").config_dir / "root_key.bin"
    assert root_key.read_bytes() == product_keys.root_public
    assert not (fake.root / "build" / "keys").exists()  # no development keys were needed
    # A new signing key re-signs on the next build, even with nothing else changed.
    keys.rotate(product_keys, PASSPHRASE)
    monkeypatch.setenv("MANTRA_KEYS", str(product_keys.dir))
    again = build(fake, "qemu-x86_64", "default")
    assert again.packed and again.signed_by == product_keys.active_id().hex() != result.signed_by
    assert verify_image(again.image, product_keys.root_public).key.key_id == product_keys.active_id()
    monkeypatch.setenv("MANTRA_KEYS", str(tmp_path / "nowhere"))
    with pytest.raises(MantraError, match="is not a key set"):
        build(fake, "qemu-x86_64", "default")


def test_security_counter_comes_from_the_product(fake: Workspace) -> None:  # noqa: F811
    product = fake.products_dir / "default" / "product.toml"
    product.write_text("security_counter = 12\n" + product.read_text())
    result = build(fake, "qemu-x86_64", "default")
    root = keys.load_keyset(fake.root / "build" / "keys" / "default").root_public
    assert verify_image(result.image, root, min_counter=12).manifest.security_counter == 12
    assert json.loads(result.manifest.read_text())["security_counter"] == 12


def test_revoked_active_key_stops_the_build(fake: Workspace, tmp_path: Path,  # noqa: F811
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    product_keys = keys.init_keyset(tmp_path / "k", PASSPHRASE)
    first = product_keys.active_id()
    keys.rotate(product_keys, PASSPHRASE)
    keys.revoke(product_keys, PASSPHRASE, product_keys.active_id().hex())  # the active one: back to `first`
    assert product_keys.active_id() == first
    [revoked] = product_keys.revocations()[1].revoked
    (product_keys.dir / keys.ACTIVE).write_text(revoked.hex())  # forced back onto the revoked key
    monkeypatch.setenv(keys.PASSPHRASE_ENV, PASSPHRASE)
    with pytest.raises(MantraError, match="is revoked"):
        build(fake, "qemu-x86_64", "default", keys=product_keys.dir)


def test_no_private_key_in_the_repository() -> None:
    tracked = (ROOT / ".gitignore").read_text()
    assert "/build/" in tracked  # development keys live in build/keys/, never committed
