"""``router keys``: key-encryption keys for encryption at rest."""

from __future__ import annotations

import os
from dataclasses import asdict

import click

from router.archive_crypto import EncryptedArchive
from router.cli.context import CliContext
from router.cli.output import emit_json
from router.errors import RouterError
from router.keyring import new_key_text, valid_key_id
from router.services.keys import KeyRotation


@click.group("keys")
def keys_group() -> None:
    """Key-encryption keys for encryption at rest ([encryption] in the config)."""


@keys_group.command("new")
@click.argument("key_id")
@click.pass_obj
def new(obj: CliContext, key_id: str) -> None:
    """Write a new random key as KEY_ID.key in the key folder (mode 0600; never overwrites).

    Then list KEY_ID in encryption.keys, make it encryption.active_key, and run
    `router keys rotate`.
    """
    if not valid_key_id(key_id):
        raise click.UsageError(f"{key_id!r} is not a key id (1-64 letters, digits, _ . -)")
    folder = obj.settings.key_dir
    path = folder / f"{key_id}.key"
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise RouterError(f"{path} already exists; a key is never overwritten") from exc
    except OSError as exc:
        raise RouterError(f"cannot write {path}: {exc.strerror}") from exc
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(new_key_text() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    click.echo(f"wrote {path}")


@keys_group.command("rotate")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_obj
def rotate(obj: CliContext, as_json: bool) -> None:
    """Re-wrap every archive file's data key, and re-encrypt the patient's location text in the
    database, with encryption.active_key. Servers keep running; keep the old keys listed until
    this reports nothing left (exit 1 while files could not be re-wrapped)."""
    app = obj.app()
    if app.keyring is None or not isinstance(app.archive, EncryptedArchive):
        raise RouterError("encryption is not enabled ([encryption] enabled = true)")
    report = KeyRotation(app.sessions, app.archive, app.keyring).rotate()
    if as_json:
        emit_json({**asdict(report), "complete": report.complete})
    else:
        click.echo(
            f"active key {report.active_key_id}: {report.files_rewrapped} file(s) re-wrapped, "
            f"{report.files_current} already current, {len(report.files_missing)} missing, "
            f"{len(report.failed)} failed; {report.values_reencrypted} database value(s) re-encrypted"
        )
        for relative in report.failed[:20]:
            click.echo(f"failed: {relative}", err=True)
    if not report.complete:
        raise SystemExit(1)


def register(cli: click.Group) -> None:
    """Add ``keys`` to the root group."""
    cli.add_command(keys_group)
