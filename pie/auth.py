"""Client authentication: the keystore of public keys and the challenge/response check.

A user is authorised by one or more public keys (Ed25519, RSA of at least 2048 bits, ECDSA on
P-256 or P-384), given in OpenSSH (`ssh-ed25519 AAAA... comment`) or PEM form. The keystore is a
TOML file `authorized_users.toml` under PIE_HOME:

    [users.alice.keys]
    laptop = "ssh-ed25519 AAAA... alice@laptop"

The server sends 48 random bytes (base64) as a challenge; the client signs them with its private
key (RSA: PKCS#1 v1.5 + SHA-256; ECDSA: DER signature with SHA-256 on P-256, SHA-384 on P-384;
Ed25519: plain) and the server verifies against each of the user's keys. `pie run` and other
in-process callers use an internal token instead.

Called by `pie/server.py` (verification), `pie/client.py` (signing), and `pie auth`.
"""

from __future__ import annotations

import base64
import os
import secrets
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

CHALLENGE_BYTES = 48
INTERNAL_USER = "internal"
MIN_RSA_BITS = 2048

PublicKey = rsa.RSAPublicKey | ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


class AuthError(Exception):
    """A key or keystore problem a user can fix; the message says how."""


# --- keys -------------------------------------------------------------------------------------


def _check_key_type(key: object, what: str) -> None:
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        if key.key_size < MIN_RSA_BITS:
            raise AuthError(
                f"The RSA {what} key has {key.key_size} bits; use at least {MIN_RSA_BITS} bits "
                "(or an Ed25519 key)."
            )
    elif isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        if not isinstance(key.curve, (ec.SECP256R1, ec.SECP384R1)):
            raise AuthError(
                f"The ECDSA {what} key uses curve {key.curve.name}; use P-256 or P-384 "
                "(or an Ed25519 key)."
            )
    elif not isinstance(key, (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey)):
        raise AuthError(
            f"Unsupported {what} key type {type(key).__name__}; use Ed25519, RSA (>= 2048 bits) "
            "or ECDSA P-256/P-384."
        )


def parse_public_key(text: str | bytes) -> PublicKey:
    """Parse an OpenSSH (`ssh-ed25519 AAAA...`) or PEM public key; raises `AuthError`."""
    data = text.encode() if isinstance(text, str) else bytes(text)
    data = data.strip()
    try:
        if data.startswith(b"-----BEGIN"):  # SubjectPublicKeyInfo or PKCS#1 RSA
            key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_ssh_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise AuthError(
            f"Not a valid public key ({e}); give an OpenSSH line like 'ssh-ed25519 AAAA...' "
            "or a PEM block."
        ) from None
    _check_key_type(key, "public")
    return key  # type: ignore[return-value]


def load_private_key(source: str | bytes | Path, password: bytes | None = None) -> PrivateKey:
    """Load an OpenSSH or PEM (PKCS#1/PKCS#8/SEC1) private key from a path or the key bytes."""
    if isinstance(source, Path) or (
        isinstance(source, str) and "-----BEGIN" not in source and len(source) < 4096
    ):
        path = Path(source).expanduser()
        try:
            data = path.read_bytes()
        except OSError as e:
            raise AuthError(f"Cannot read private key {path}: {e.strerror}.") from None
    else:
        data = source.encode() if isinstance(source, str) else bytes(source)
    try:
        if b"BEGIN OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, password)
        else:
            key = serialization.load_pem_private_key(data, password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise AuthError(
            f"Not a usable private key ({e}); give an unencrypted OpenSSH or PEM private key."
        ) from None
    _check_key_type(key, "private")
    return key  # type: ignore[return-value]


def sign_challenge(key: PrivateKey, challenge: bytes) -> bytes:
    """Sign a challenge the way the server verifies it (see the module docstring)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(challenge)
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(challenge, padding.PKCS1v15(), hashes.SHA256())
    if isinstance(key, ec.EllipticCurvePrivateKey):
        algo = hashes.SHA384() if isinstance(key.curve, ec.SECP384R1) else hashes.SHA256()
        return key.sign(challenge, ec.ECDSA(algo))
    raise AuthError(f"Unsupported private key type {type(key).__name__}.")


def verify_signature(key: PublicKey, challenge: bytes, signature: bytes) -> bool:
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, challenge)
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, challenge, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ec.EllipticCurvePublicKey):
            algo = hashes.SHA384() if isinstance(key.curve, ec.SECP384R1) else hashes.SHA256()
            key.verify(signature, challenge, ec.ECDSA(algo))
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def public_key_text(key: PublicKey) -> str:
    """The OpenSSH one-line form of a public key."""
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def new_challenge() -> bytes:
    return secrets.token_bytes(CHALLENGE_BYTES)


def new_internal_token() -> str:
    """The per-boot token `pie run` authenticates with (48 random bytes, URL-safe base64)."""
    return secrets.token_urlsafe(CHALLENGE_BYTES)


def decode_signature(signature_b64: str) -> bytes | None:
    try:
        return base64.b64decode(signature_b64, validate=True)
    except (ValueError, TypeError):
        return None


# --- keystore ---------------------------------------------------------------------------------


def default_keystore_path() -> Path:
    from pie.paths import keys_path

    return keys_path()


def _toml_str(s: str) -> str:
    # TOML basic strings share JSON's escapes for everything we can meet here.
    out = ['"']
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


_BARE_KEY = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def _toml_key(s: str) -> str:
    return s if s and set(s) <= _BARE_KEY else _toml_str(s)


@dataclass
class Keystore:
    """The authorised users and their named public keys, persisted as TOML."""

    path: Path
    users: dict[str, dict[str, str]]  # user -> key name -> OpenSSH/PEM text

    @classmethod
    def load(cls, path: Path | None = None) -> Keystore:
        path = Path(path) if path is not None else default_keystore_path()
        if not path.exists():
            return cls(path, {})
        try:
            doc = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise AuthError(f"The keystore {path} is not valid TOML ({e}); fix or delete it.")
        users: dict[str, dict[str, str]] = {}
        for user, entry in (doc.get("users") or {}).items():
            keys = (entry or {}).get("keys") or {}
            users[user] = {str(k): str(v) for k, v in keys.items()}
        return cls(path, users)

    def save(self) -> None:
        lines = ["# Public keys allowed to connect, managed by `pie auth add|remove|list`.", ""]
        for user in sorted(self.users):
            lines.append(f"[users.{_toml_key(user)}.keys]")
            for name, key in sorted(self.users[user].items()):
                lines.append(f"{_toml_key(name)} = {_toml_str(key)}")
            lines.append("")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines))
        os.chmod(tmp, 0o600)
        tmp.replace(self.path)

    def add(self, user: str, key_text: str, key_name: str | None = None) -> str:
        """Add a key (validated) for a user; returns the key's name."""
        if not user or any(c.isspace() for c in user):
            raise AuthError("A username must be non-empty and contain no spaces.")
        key = parse_public_key(key_text)
        name = key_name or datetime.now(UTC).strftime("key-%Y%m%d-%H%M%S")
        keys = self.users.setdefault(user, {})
        if name in keys:
            raise AuthError(
                f"User {user!r} already has a key named {name!r}; pick another name or remove it "
                "first."
            )
        canonical = public_key_text(key)
        comment = key_text.strip().split(None, 2)
        if not key_text.strip().startswith("-----") and len(comment) == 3:
            canonical += " " + comment[2]
        keys[name] = canonical
        return name

    def remove(self, user: str, key_name: str | None = None) -> None:
        """Remove one key of a user, or the user with all their keys."""
        if user not in self.users:
            raise AuthError(
                f"No user {user!r} in the keystore; `pie auth list` shows who is there."
            )
        if key_name is None:
            del self.users[user]
            return
        if key_name not in self.users[user]:
            raise AuthError(
                f"User {user!r} has no key named {key_name!r}; `pie auth list` shows their keys."
            )
        del self.users[user][key_name]
        if not self.users[user]:
            del self.users[user]

    def public_keys(self, user: str) -> list[PublicKey]:
        """The user's keys that parse; a corrupt entry never locks out the others."""
        out = []
        for text in self.users.get(user, {}).values():
            try:
                out.append(parse_public_key(text))
            except AuthError:
                continue
        return out

    def verify(self, user: str, challenge: bytes, signature: bytes) -> bool:
        return any(verify_signature(k, challenge, signature) for k in self.public_keys(user))
