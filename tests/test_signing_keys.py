"""Key sets (mantra.signing.keys, `mantra keys`): init, rotate, revoke and
list; private keys encrypted at rest (0600) and refused with a wrong
passphrase; no passphrase and no terminal is an error, not a hang. Keys
are made in temporary directories only."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from mantra.cli import app
from mantra.errors import MantraError
from mantra.signing import keys
from mantra.signing.encoding import KeyRecord, RevocationList, Signed, key_id
from support import mantra
from typer.testing import CliRunner

PASSPHRASE = "correct horse battery"


@pytest.fixture(autouse=True)
def fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cheapest scrypt cost the loader accepts; test_production_cost_is_the_default checks the real one."""
    monkeypatch.setattr(keys, "SCRYPT_LOG2_N", keys.DEV_SCRYPT_LOG2_N)


def invoke(*args: str, passphrase: str | None = PASSPHRASE):
    return CliRunner().invoke(app, list(args), env={keys.PASSPHRASE_ENV: passphrase})  # None: unset


def test_init_makes_the_key_set_layout(tmp_path: Path) -> None:
    directory = tmp_path / "product"
    keyset = keys.init_keyset(directory, PASSPHRASE)
    assert sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")) == sorted([
        "active", "revocations.rev", "root.key", "root.pub", "signing",
        f"signing/{keyset.active_id().hex()}.key", f"signing/{keyset.active_id().hex()}.rec"])
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for private in [directory / "root.key", *directory.glob("signing/*.key")]:
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    # root.pub is a standard PEM public key; verify --root reads it.
    public = serialization.load_pem_public_key((directory / "root.pub").read_bytes())
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert keys.load_root_public(directory / "root.pub") == raw == keyset.root_public
    # One signing key, certified by the root, valid for the default period from now.
    [key] = keyset.keys()
    keyset.root_key.verify(key.signed.signature, key.signed.body)
    assert key.record.issuer == key_id(raw)
    assert abs(key.record.not_before - time.time()) < 60
    assert key.record.not_after - key.record.not_before == keys.DEFAULT_VALIDITY_DAYS * 86400
    signed, revocations = keyset.revocations()
    keyset.root_key.verify(signed.signature, signed.body)
    assert (revocations.version, revocations.revoked) == (1, ())
    assert not keyset.development and not (directory / keys.DEV_MARKER).exists()


def test_private_keys_are_encrypted_at_rest(tmp_path: Path) -> None:
    keyset = keys.init_keyset(tmp_path / "k", PASSPHRASE)
    root = keyset.root_private(PASSPHRASE)
    raw_root = root.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                  serialization.NoEncryption())
    assert raw_root not in (tmp_path / "k" / "root.key").read_bytes()
    signing = keyset.signing_key(keyset.active_id(), PASSPHRASE)
    raw_signing = signing.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                        serialization.NoEncryption())
    assert raw_signing not in (tmp_path / "k" / "signing" / f"{keyset.active_id().hex()}.key").read_bytes()


def test_wrong_passphrase_is_refused(tmp_path: Path) -> None:
    keyset = keys.init_keyset(tmp_path / "k", PASSPHRASE)
    with pytest.raises(MantraError, match="wrong passphrase for .*root.key"):
        keyset.root_private("not the passphrase")
    with pytest.raises(MantraError, match="wrong passphrase for .*signing"):
        keyset.signing_key(keyset.active_id(), "not the passphrase")
    result = invoke("keys", "rotate", str(tmp_path / "k"), passphrase="not the passphrase")
    assert result.exit_code == 1
    assert "wrong passphrase" in result.output and "MANTRA_KEY_PASSPHRASE" in result.output
    assert len(keyset.keys()) == 1  # nothing issued


def test_altered_key_file_is_refused(tmp_path: Path) -> None:
    keyset = keys.init_keyset(tmp_path / "k", PASSPHRASE)
    path = tmp_path / "k" / "root.key"
    data = bytearray(path.read_bytes())
    data[20] ^= 1  # the salt, which the AEAD authenticates
    path.write_bytes(bytes(data))
    with pytest.raises(MantraError, match="wrong passphrase .*or the file was altered"):
        keyset.root_private(PASSPHRASE)


def test_passphrase_is_required(tmp_path: Path) -> None:
    with pytest.raises(MantraError, match="passphrase is required"):
        keys.init_keyset(tmp_path / "k", "")
    with pytest.raises(MantraError, match="too short"):
        keys.init_keyset(tmp_path / "k", "short")
    # No variable and no terminal: an error saying what to set, never a prompt that hangs.
    result = invoke("keys", "init", str(tmp_path / "k"), passphrase=None)
    assert result.exit_code == 1
    assert "a passphrase is required" in result.output and "MANTRA_KEY_PASSPHRASE" in result.output
    assert not (tmp_path / "k").exists()
    result = invoke("keys", "init", str(tmp_path / "k"), passphrase="")
    assert result.exit_code == 1 and "a passphrase is required" in result.output


def test_prompted_passphrase_is_asked_twice_for_a_new_key_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    monkeypatch.delenv(keys.PASSPHRASE_ENV, raising=False)
    monkeypatch.setattr("sys.stdin.isatty", lambda: True, raising=False)
    asked = []

    def prompt(text, **options):
        asked.append(options)
        return PASSPHRASE

    monkeypatch.setattr("typer.prompt", prompt)
    assert keys.passphrase_for(tmp_path / "new", new=True) == PASSPHRASE
    assert asked == [{"hide_input": True, "confirmation_prompt": True, "err": True}]


def test_init_refuses_an_existing_key_set(tmp_path: Path) -> None:
    keys.init_keyset(tmp_path / "k", PASSPHRASE)
    before = (tmp_path / "k" / "root.pub").read_bytes()
    with pytest.raises(MantraError, match="exists and is not an empty directory"):
        keys.init_keyset(tmp_path / "k", PASSPHRASE)
    assert (tmp_path / "k" / "root.pub").read_bytes() == before


def test_rotate_issues_a_new_active_key_and_keeps_the_old(tmp_path: Path) -> None:
    keyset = keys.init_keyset(tmp_path / "k", PASSPHRASE)
    old = keyset.active()
    # A second later: keys issued within the same second have no age order.
    new = keys.rotate(keyset, PASSPHRASE, validity_days=30, now=old.record.not_before + 1)
    assert keyset.active_id() == new.id != old.id
    assert [k.id for k in keyset.keys()] == [old.id, new.id]
    assert new.record.not_after - new.record.not_before == 30 * 86400
    keyset.signing_key(old.id, PASSPHRASE)  # still there, still usable
    assert keyset.revocations()[1].revoked == ()


def test_revoke_bumps_the_list_version_and_moves_the_active_key(tmp_path: Path) -> None:
    keyset = keys.init_keyset(tmp_path / "k", PASSPHRASE)
    first = keyset.active()
    with pytest.raises(MantraError, match="last usable signing key"):
        keys.revoke(keyset, PASSPHRASE, first.id.hex())
    second = keys.rotate(keyset, PASSPHRASE)
    third = keys.rotate(keyset, PASSPHRASE)
    listed = keys.revoke(keyset, PASSPHRASE, second.id.hex()[:8])  # a prefix is enough
    assert (listed.version, listed.revoked) == (2, (second.id,))
    assert keyset.active_id() == third.id
    listed = keys.revoke(keyset, PASSPHRASE, third.id.hex())  # the active one: the newest usable takes over
    assert listed.version == 3 and set(listed.revoked) == {second.id, third.id}
    assert list(listed.revoked) == sorted(listed.revoked)
    assert keyset.active_id() == first.id
    signed, decoded = keyset.revocations()
    keyset.root_key.verify(signed.signature, signed.body)
    assert decoded == listed
    with pytest.raises(MantraError, match="already revoked"):
        keys.revoke(keyset, PASSPHRASE, second.id.hex())
    with pytest.raises(MantraError, match="names no key"):
        keys.revoke(keyset, PASSPHRASE, "00000000")
    with pytest.raises(MantraError, match="too short"):
        keys.revoke(keyset, PASSPHRASE, "ab")


def test_a_record_not_signed_by_the_root_is_refused(tmp_path: Path) -> None:
    keyset = keys.init_keyset(tmp_path / "k", PASSPHRASE)
    other = keys.init_keyset(tmp_path / "other", PASSPHRASE)
    foreign = other.active()
    (tmp_path / "k" / "signing" / f"{foreign.id.hex()}.rec").write_bytes(foreign.signed.encode())
    with pytest.raises(MantraError, match="is not signed by this key set's root key"):
        keyset.keys()


def test_keys_commands(tmp_path: Path) -> None:
    directory = tmp_path / "product"
    result = invoke("keys", "init", str(directory), "--validity-days", "100")
    assert result.exit_code == 0, result.output
    keyset = keys.load_keyset(directory)
    first = keyset.active_id().hex()
    assert f"root key:    {keyset.root_id.hex()}" in result.output and first in result.output
    result = invoke("keys", "rotate", str(directory))
    assert result.exit_code == 0, result.output
    second = keyset.active_id().hex()
    assert second != first and f"new signing key {second} is now active" in result.output
    result = invoke("keys", "revoke", str(directory), first)
    assert result.exit_code == 0, result.output
    assert "revocation list version 2: 1 revoked key(s)" in result.output
    result = invoke("keys", "list", str(directory), passphrase=None)  # public data: no passphrase needed
    assert result.exit_code == 0, result.output
    assert f"{first}" in result.output and "revoked" in result.output
    assert f"{second}" in result.output and "valid, active" in result.output
    assert "revocation list version 2" in result.output
    result = invoke("keys", "list", str(tmp_path / "nothing"))
    assert result.exit_code == 1 and "is not a key set" in result.output and "keys init" in result.output


def test_keys_init_through_the_bootstrap_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(keys.PASSPHRASE_ENV, PASSPHRASE)
    result = mantra("keys", "init", str(tmp_path / "k"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "k" / "root.pub").is_file()


def test_production_cost_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys, "SCRYPT_LOG2_N", 17)
    keyset = keys.init_keyset(tmp_path / "k", PASSPHRASE)
    assert (tmp_path / "k" / "root.key").read_bytes()[12] == 17  # log2(N) in the header
    assert keyset.root_private(PASSPHRASE)


def test_development_key_sets_use_the_public_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(keys.PASSPHRASE_ENV, raising=False)
    directory = tmp_path / "dev"
    keyset = keys.init_keyset(directory, keys.DEV_PASSPHRASE, development=True)
    assert keyset.development and "do not ship" in (directory / keys.DEV_MARKER).read_text()
    assert keys.passphrase_for(directory) == keys.DEV_PASSPHRASE
    assert (directory / "root.key").read_bytes()[12] == keys.DEV_SCRYPT_LOG2_N
    # A product key set never falls back to it.
    keys.init_keyset(tmp_path / "prod", PASSPHRASE)
    with pytest.raises(MantraError, match="passphrase is required"):
        keys.passphrase_for(tmp_path / "prod")


def test_records_and_lists_decode_from_the_files(tmp_path: Path) -> None:
    keyset = keys.init_keyset(tmp_path / "k", PASSPHRASE)
    record_file = tmp_path / "k" / "signing" / f"{keyset.active_id().hex()}.rec"
    signed = Signed.split(record_file.read_bytes())
    assert KeyRecord.decode(signed.body).key_id == keyset.active_id()
    rev = Signed.split((tmp_path / "k" / "revocations.rev").read_bytes())
    assert RevocationList.decode(rev.body).issuer == keyset.root_id
    assert os.stat(record_file).st_mode & 0o777 == 0o644
