"""`pie auth add|remove|list` against a temporary PIE_HOME."""

from __future__ import annotations

import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from pie_cli.auth import register
from pie_cli.errors import UserError
from typer.testing import CliRunner

from pie.auth import Keystore


def _app():
    app = typer.Typer()
    register(app)

    @app.command("noop")
    def _noop() -> None:
        pass

    return app


def _invoke(app, args, stdin=None):
    try:
        return CliRunner().invoke(app, args, input=stdin, catch_exceptions=False)
    except UserError as e:
        return e


def test_add_list_remove(tmp_path, monkeypatch):
    monkeypatch.setenv("PIE_HOME", str(tmp_path))
    app = _app()
    pub = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    r = _invoke(app, ["auth", "add", "alice", "laptop"], stdin=pub + " alice@box\n")
    assert r.exit_code == 0 and "laptop" in r.output
    keyfile = tmp_path / "k.pub"
    keyfile.write_text(pub)
    assert _invoke(app, ["auth", "add", "bob", "--key", str(keyfile)]).exit_code == 0
    r = _invoke(app, ["auth", "list"])
    assert "alice" in r.output and "laptop: ssh-ed25519" in r.output and "alice@box" in r.output
    assert set(Keystore.load().users) == {"alice", "bob"}
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    weak_text = weak.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    e = _invoke(app, ["auth", "add", "carol"], stdin=weak_text)
    assert isinstance(e, UserError) and "2048" in str(e)
    e = _invoke(app, ["auth", "add", "carol"], stdin="")
    assert isinstance(e, UserError) and "No public key" in str(e)
    e = _invoke(app, ["auth", "remove", "alice", "desk"])
    assert isinstance(e, UserError) and "no key named 'desk'" in str(e)
    assert _invoke(app, ["auth", "remove", "alice"]).exit_code == 0
    assert set(Keystore.load().users) == {"bob"}
