"""`pie auth add|remove|list`: manage the public keys allowed to connect.

Thin commands over `pie.auth.Keystore` (`$PIE_HOME/authorized_users.toml`). The server re-reads
the keystore on every login, so changes apply without a restart. Registered on the root app by
`pie_cli.main`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from pie.auth import AuthError, Keystore
from pie_cli.errors import UserError

auth_app = typer.Typer(
    help="Manage the users and public keys allowed to connect when auth.enabled is true.",
    no_args_is_help=True,
)

KeystoreOption = typer.Option(
    None, "--keystore", help="Keystore file (default: $PIE_HOME/authorized_users.toml)."
)


def _load(path: Path | None) -> Keystore:
    try:
        return Keystore.load(path)
    except AuthError as e:
        raise UserError(str(e)) from None


@auth_app.command("add")
def add(
    user: str = typer.Argument(..., help="Username the client will authenticate as."),
    key_name: str | None = typer.Argument(None, help="Name for this key (default: a timestamp)."),
    key: str | None = typer.Option(
        None,
        "--key",
        "-k",
        help="The public key, or a path to a .pub/.pem file; default: read from stdin.",
    ),
    keystore: Path | None = KeystoreOption,
) -> None:
    """Authorise a public key (OpenSSH or PEM; Ed25519, RSA >= 2048, ECDSA P-256/P-384)."""
    if key is None:
        if sys.stdin.isatty():
            typer.echo("Paste the public key, then press Ctrl-D:", err=True)
        text = sys.stdin.read()
    elif Path(key).expanduser().is_file():
        text = Path(key).expanduser().read_text()
    else:
        text = key
    if not text.strip():
        raise UserError(
            "No public key given; pipe it in (`pie auth add alice < id.pub`) or pass --key."
        )
    ks = _load(keystore)
    try:
        name = ks.add(user, text, key_name)
    except AuthError as e:
        raise UserError(str(e)) from None
    ks.save()
    typer.echo(f"Added key {name!r} for user {user!r} ({ks.path}).")


@auth_app.command("remove")
def remove(
    user: str = typer.Argument(..., help="The user."),
    key_name: str | None = typer.Argument(None, help="The key to remove; omit to remove the user."),
    keystore: Path | None = KeystoreOption,
) -> None:
    """Remove one key of a user, or the user with all their keys."""
    ks = _load(keystore)
    try:
        ks.remove(user, key_name)
    except AuthError as e:
        raise UserError(str(e)) from None
    ks.save()
    what = f"key {key_name!r} of user {user!r}" if key_name else f"user {user!r}"
    typer.echo(f"Removed {what}.")


@auth_app.command("list")
def list_(keystore: Path | None = KeystoreOption) -> None:
    """List the authorised users and their keys."""
    ks = _load(keystore)
    if not ks.users:
        typer.echo(f"No users in {ks.path}; add one with `pie auth add USER < key.pub`.")
        return
    for user in sorted(ks.users):
        typer.echo(user)
        for name, text in sorted(ks.users[user].items()):
            parts = text.split()
            kind = parts[0] if not text.startswith("-----") else "pem"
            tail = parts[1][-12:] if len(parts) > 1 else ""
            comment = " ".join(parts[2:]) if len(parts) > 2 else ""
            typer.echo(f"  {name}: {kind} ...{tail} {comment}".rstrip())


def register(app: typer.Typer) -> None:
    app.add_typer(auth_app, name="auth")
