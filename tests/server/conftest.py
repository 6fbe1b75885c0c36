"""Shared helpers for the front-end tests: a real `Server` over a fake process manager."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fake_processes import FakeProcessManager  # noqa: E402

from pie.auth import Keystore  # noqa: E402
from pie.programs import ProgramStore  # noqa: E402
from pie.server import Server, ServerOptions  # noqa: E402


@contextlib.asynccontextmanager
async def running_server(root: Path, *, stats=None, max_concurrent=None, **opts):
    opts.setdefault("port", 0)
    opts.setdefault("auth_enabled", False)
    opts.setdefault("auth_failure_delay", (0.0, 0.01))
    pm = FakeProcessManager(max_concurrent)
    store = ProgramStore(root / "programs")
    keystore = Keystore.load(root / "authorized_users.toml")
    server = Server(pm, store, ServerOptions(**opts), keystore=keystore, stats=stats)
    await server.start()
    try:
        yield server, f"ws://127.0.0.1:{server.port}", pm
    finally:
        await server.close()
        await pm.shutdown()


@pytest.fixture
def run():
    def _run(coro, timeout: float = 20.0):
        return asyncio.run(asyncio.wait_for(coro, timeout))

    return _run
