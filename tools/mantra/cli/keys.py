"""`mantra keys`: product key sets (init, rotate, revoke, list)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mantra.console import out
from mantra.signing import keys as signing_keys
from mantra.signing.keys import utc

DirArgument = Annotated[Path, typer.Argument(metavar="DIR", file_okay=False, help="The key set's directory.")]
ValidityOption = Annotated[
    int, typer.Option("--validity-days", min=1, help="How long the new signing key may sign images.")
]

keys_app = typer.Typer(
    help="Create and manage a product's signing keys (init, rotate, revoke, list).\n\n"
         "A key set holds an offline Ed25519 root key (DIR/root.pub is what `verify --root` and MantraBoot "
         "trust), image-signing keys it certifies, and its revocation list. Private keys are encrypted with a "
         f"passphrase: a prompt, or ${signing_keys.PASSPHRASE_ENV} for scripts.",
    no_args_is_help=True,
)


def _summary(keyset: signing_keys.KeySet, key: signing_keys.StoredKey) -> None:
    out.print(f"root key:    {keyset.root_id.hex()} ({keyset.dir / signing_keys.ROOT_PUB})", markup=False,
              soft_wrap=True)
    out.print(f"signing key: {key.id.hex()}, valid {utc(key.record.not_before)} to {utc(key.record.not_after)}",
              markup=False, soft_wrap=True)


@keys_app.command("init")
def init(directory: DirArgument, validity_days: ValidityOption = signing_keys.DEFAULT_VALIDITY_DAYS) -> None:
    """Create a key set in DIR (a new or empty directory).

    It holds a root key, a signing key certified by it, and an empty
    revocation list (version 1)."""
    passphrase = signing_keys.passphrase_for(directory, new=True)
    keyset = signing_keys.init_keyset(directory, passphrase, validity_days=validity_days)
    out.print(f"key set created in {escape(str(directory))}")
    _summary(keyset, keyset.active())
    out.print(f"Keep {escape(str(directory / signing_keys.ROOT_KEY))} offline and backed up: only "
              "`keys rotate` and `keys revoke` need it; `sign` needs only the signing key.", soft_wrap=True)


@keys_app.command("rotate")
def rotate(directory: DirArgument, validity_days: ValidityOption = signing_keys.DEFAULT_VALIDITY_DAYS) -> None:
    """Issue a new signing key and make it the one `sign` uses.

    The root certifies it; older keys stay valid until they expire or are revoked."""
    keyset = signing_keys.load_keyset(directory)
    key = signing_keys.rotate(keyset, signing_keys.passphrase_for(directory), validity_days=validity_days)
    out.print(f"new signing key {key.id.hex()} is now active")
    _summary(keyset, key)


@keys_app.command("revoke")
def revoke(directory: DirArgument,
           key_id: Annotated[str, typer.Argument(metavar="KEYID", help="The key's id (or its first 8+ hex digits).")]
           ) -> None:
    """Revoke a signing key: add it to the root-signed revocation list.

    The list's version goes up by one; images signed afterwards carry it,
    and MantraBoot refuses the key."""
    keyset = signing_keys.load_keyset(directory)
    revocations = signing_keys.revoke(keyset, signing_keys.passphrase_for(directory), key_id)
    out.print(f"revocation list version {revocations.version}: {len(revocations.revoked)} revoked key(s)")
    out.print(f"active signing key: {keyset.active_id().hex()}")


@keys_app.command("list")
def list_keys(directory: DirArgument) -> None:
    """Show a key set: root key, signing keys, their validity and state."""
    keyset = signing_keys.load_keyset(directory)
    _, revocations = keyset.revocations()
    active = keyset.active_id()
    now = int(time.time())
    kind = " (DEVELOPMENT: public passphrase, do not ship)" if keyset.development else ""
    out.print(f"root key {keyset.root_id.hex()}{kind}", markup=False)
    out.print("signing keys (id, valid from, valid until, state):")
    for key in keyset.keys():
        if key.id in revocations.revoked:
            state = "revoked"
        elif now > key.record.not_after:
            state = "expired"
        elif now < key.record.not_before:
            state = "not yet valid"
        else:
            state = "valid"
        if key.id == active:
            state += ", active"
        out.print(f"  {key.id.hex()}  {utc(key.record.not_before)}  {utc(key.record.not_after)}  {state}",
                  markup=False, soft_wrap=True)
    out.print(f"revocation list version {revocations.version}, issued {utc(revocations.issued)}")


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
