"""Helpers for the front-end tests: a real `Server` over a fake process manager."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from fake_processes import FakeProcessManager

from pie.auth import Keystore
from pie.programs import ProgramStore
from pie.server import Server, ServerOptions


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


def run(coro, timeout: float = 20.0):
    """Run one test coroutine on a fresh loop, bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))
