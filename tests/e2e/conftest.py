"""One real engine (controller + portable worker on the default model) shared by the e2e tests.

The engine runs on its own event loop in a background thread, exactly as `pie serve` runs it;
each test talks to it over WebSocket from its own loop (`engine.client(...)`), so a client
that disconnects really closes a socket. PIE_HOME is a fresh temporary directory for the whole
session; only the compiled Python runner is shared with the default home (it is a pure cache),
so the 20-50 s runner build happens at most once per machine.

Auth is on: `alice` and `bob` each have an Ed25519 key in the session keystore; the internal
token also works (`engine.token`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from e2e_engine import RunningEngine

from pie.auth import Keystore, public_key_text
from pie.config import default_config
from pie.paths import PIE_HOME_ENV, runner_cache_dir
from pie.programs import ProgramStore
from pie.sandbox.testing import ensure_runner

USERS = ("alice", "bob")


@pytest.fixture(scope="session")
def e2e_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An isolated PIE_HOME whose runner cache is the default home's (built once if missing)."""
    ensure_runner()
    shared_runner = runner_cache_dir()
    home = tmp_path_factory.mktemp("pie_home")
    (home / "cache").mkdir()
    (home / "cache" / "runner").symlink_to(shared_runner, target_is_directory=True)
    return home


@pytest.fixture(scope="session")
def engine(e2e_home: Path):
    from pie.controller import Engine

    saved = os.environ.get(PIE_HOME_ENV)
    os.environ[PIE_HOME_ENV] = str(e2e_home)
    keys = {u: ed25519.Ed25519PrivateKey.generate() for u in USERS}
    keystore = Keystore(e2e_home / "authorized_users.toml", {})
    for user, key in keys.items():
        keystore.add(user, public_key_text(key.public_key()), "e2e")
    keystore.save()
    eng = Engine(
        default_config(cuda=False),
        host="127.0.0.1",
        port=0,
        auth_enabled=True,
        keystore=keystore,
        programs=ProgramStore(e2e_home / "programs"),
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="pie-engine", daemon=True)
    thread.start()
    running = RunningEngine(eng, loop, keys)
    try:
        running.on_engine_loop(eng.start(lambda msg: None), timeout=300)
        running.url = eng.url
        yield running
    finally:
        with contextlib.suppress(Exception):
            running.on_engine_loop(eng.stop(), timeout=60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        if saved is None:
            os.environ.pop(PIE_HOME_ENV, None)
        else:
            os.environ[PIE_HOME_ENV] = saved
