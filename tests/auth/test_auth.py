"""Keys, the keystore, and the challenge/response flow over a real server."""

from __future__ import annotations

import base64
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from front import run, running_server

from pie.auth import (
    AuthError,
    Keystore,
    load_private_key,
    new_challenge,
    parse_public_key,
    public_key_text,
    sign_challenge,
    verify_signature,
)
from pie.client import PieClient, PieError


@pytest.fixture(scope="module")
def keys():
    return {
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
        "rsa2048": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "p256": ec.generate_private_key(ec.SECP256R1()),
        "p384": ec.generate_private_key(ec.SECP384R1()),
    }


def openssh_pub(key) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def pem_pub(key) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.mark.parametrize("kind", ["ed25519", "rsa2048", "p256", "p384"])
def test_sign_and_verify_every_key_type_in_both_encodings(keys, kind):
    key = keys[kind]
    challenge = new_challenge()
    sig = sign_challenge(key, challenge)
    for text in (openssh_pub(key), pem_pub(key)):
        pub = parse_public_key(text)
        assert verify_signature(pub, challenge, sig)
        assert not verify_signature(pub, challenge + b"!", sig)
        assert not verify_signature(pub, challenge, sig[:-1] + bytes([sig[-1] ^ 1]))
    other = keys["ed25519" if kind != "ed25519" else "p256"]
    assert not verify_signature(parse_public_key(openssh_pub(other)), challenge, sig)


def test_private_key_files_openssh_and_pem(tmp_path, keys):
    key = keys["p256"]
    ssh = tmp_path / "id_ecdsa"
    ssh.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    pem = tmp_path / "key.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    for path in (ssh, str(pem)):
        loaded = load_private_key(path)
        assert public_key_text(loaded.public_key()) == openssh_pub(key)
    with pytest.raises(AuthError, match="Cannot read"):
        load_private_key(tmp_path / "missing")


def test_weak_or_unsupported_keys_are_rejected():
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(AuthError, match="at least 2048"):
        parse_public_key(openssh_pub(small))
    p521 = ec.generate_private_key(ec.SECP521R1())
    with pytest.raises(AuthError, match="P-256 or P-384"):
        parse_public_key(pem_pub(p521))
    with pytest.raises(AuthError, match="Not a valid public key"):
        parse_public_key("ssh-ed25519 AAAAnotbase64!!")


def test_keystore_roundtrip_and_edits(tmp_path, keys):
    path = tmp_path / "home" / "authorized_users.toml"
    ks = Keystore.load(path)
    assert ks.users == {}
    name = ks.add("alice", openssh_pub(keys["ed25519"]) + " alice@laptop", "laptop")
    assert name == "laptop"
    auto = ks.add("alice", pem_pub(keys["rsa2048"]))
    assert auto.startswith("key-")
    ks.add('odd"user', openssh_pub(keys["p384"]), "k 1")
    with pytest.raises(AuthError, match="already has a key"):
        ks.add("alice", openssh_pub(keys["p256"]), "laptop")
    ks.save()
    again = Keystore.load(path)
    assert set(again.users) == {"alice", 'odd"user'}
    assert again.users["alice"]["laptop"].endswith(" alice@laptop")
    assert len(again.public_keys("alice")) == 2
    again.remove("alice", "laptop")
    with pytest.raises(AuthError, match="no key named"):
        again.remove("alice", "laptop")
    again.remove('odd"user')
    with pytest.raises(AuthError, match="No user"):
        again.remove("nobody")
    again.save()
    assert set(Keystore.load(path).users) == {"alice"}
    assert (path.stat().st_mode & 0o777) == 0o600


def test_challenge_flow_over_the_server(tmp_path, keys):
    ks = Keystore.load(tmp_path / "authorized_users.toml")
    ks.add("alice", openssh_pub(keys["ed25519"]), "a")
    ks.save()

    async def body():
        async with running_server(tmp_path, auth_enabled=True, auth_failure_delay=(0.2, 0.25)) as (
            _,
            uri,
            _pm,
        ):
            async with PieClient(uri, identity="alice") as c:
                # the identity header is not a credential when auth is on
                with pytest.raises(PieError, match="Not authenticated"):
                    await c.ping()
                with pytest.raises(PieError, match="Not authenticated"):
                    await c.list_processes()
                await c.authenticate("alice", keys["ed25519"])
                assert await c.ping() == "Pong"
            async with PieClient(uri) as c:
                t0 = time.monotonic()
                with pytest.raises(PieError, match="Signature verification failed"):
                    await c.authenticate("alice", keys["p256"])  # not alice's key
                assert time.monotonic() - t0 >= 0.2  # the failure was delayed
                with pytest.raises(PieError, match="Not authenticated"):
                    await c.ping()
                with pytest.raises(PieError, match="not authorised"):
                    await c.authenticate("eve", keys["ed25519"])
                with pytest.raises(PieError, match="auth_identify before auth_prove"):
                    from pie import protocol as P

                    await c._request(P.AuthProve, signature=base64.b64encode(b"x").decode())
                # a key added while the server runs works without a restart
                ks2 = Keystore.load(tmp_path / "authorized_users.toml")
                ks2.add("bob", pem_pub(keys["p384"]), "b")
                ks2.save()
                await c.authenticate("bob", keys["p384"])
                assert await c.ping() == "Pong"

    run(body())


def test_internal_token(tmp_path):
    async def body():
        async with running_server(
            tmp_path, auth_enabled=True, internal_token="s3cret", auth_failure_delay=(0.1, 0.12)
        ) as (_, uri, _pm):
            async with PieClient(uri) as c:
                t0 = time.monotonic()
                with pytest.raises(PieError, match="Invalid token"):
                    await c.auth_by_token("guess")
                assert time.monotonic() - t0 >= 0.1
                await c.auth_by_token("s3cret")
                assert await c.ping() == "Pong"
            async with running_server(tmp_path / "x", auth_enabled=True) as (_, uri2, _):  # noqa: SIM117
                async with PieClient(uri2) as c:  # no token configured: tokens never match
                    with pytest.raises(PieError, match="Invalid token"):
                        await c.auth_by_token("")

    run(body())


def test_auth_disabled_accepts_any_identity(tmp_path):
    async def body():
        async with running_server(tmp_path, auth_enabled=False) as (_, uri, _pm):  # noqa: SIM117
            async with PieClient(uri) as c:
                await c.authenticate("zoe")  # no key needed
                assert await c.ping() == "Pong"

    run(body())
