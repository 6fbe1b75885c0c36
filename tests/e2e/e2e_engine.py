"""Helpers of the end-to-end tests: a running engine handle, a client-side runner, sources.

`RunningEngine` wraps a booted `pie.controller.Engine` on its background loop (built by the
session fixture in `conftest.py`); `run` runs one test body on a fresh client-side loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

from pie.client import PieClient

EXAMPLES = Path(__file__).resolve().parents[2] / "sdk" / "python" / "examples"


class RunningEngine:
    """A booted `pie.controller.Engine` on a background loop, plus helpers for tests."""

    def __init__(self, engine: Any, loop: asyncio.AbstractEventLoop, keys: dict[str, Any]):
        self.engine = engine
        self.loop = loop
        self.keys = keys
        self.url = engine.url
        self.token = engine.internal_token

    def on_engine_loop(self, coro: Coroutine, timeout: float = 60.0) -> Any:
        """Run `coro` on the engine's loop (to read its state consistently)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stats(self) -> dict:
        async def read() -> dict:
            return self.engine.stats()["default"]

        return self.on_engine_loop(read())

    @contextlib.asynccontextmanager
    async def client(self, user: str | None = "alice") -> AsyncIterator[PieClient]:
        """A connected client, authenticated as `user` (None: by the internal token)."""
        async with PieClient(self.url) as c:
            if user is None:
                await c.auth_by_token(self.token)
            else:
                await c.authenticate(user, self.keys[user])
            yield c


def run(coro: Coroutine, timeout: float = 120.0) -> Any:
    """Run one test body on a fresh client-side loop, bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def wait_until(predicate: Any, timeout: float = 30.0, every: float = 0.1) -> None:
    """Poll `predicate()` (sync) until it is true; fail with the timeout otherwise."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition still false after {timeout} s")
        await asyncio.sleep(every)


def histogram_delta(before: dict, after: dict) -> dict[str, int]:
    """Batches per batch-size bucket recorded between two `stats()` reads."""
    a, b = after["batch_size_histogram"], before["batch_size_histogram"]
    return {k: a[k] - b.get(k, 0) for k in a if a[k] - b.get(k, 0)}


# -- inferlet sources used by several tests ------------------------------------------------

FORK_GREEDY = """
import asyncio, inferlet
async def main(input):
    m = inferlet.Model.load()
    base = inferlet.Context(m)
    base.append(input["prompt"])
    await base.flush()
    forks = [await base.fork() for _ in input["suffixes"]]
    for f, s in zip(forks, input["suffixes"]):
        f.append(s)
    outs = await asyncio.gather(*(
        f.generate_tokens(inferlet.Sampler.argmax(), max_tokens=input["n"], ignore_eos=True)
        for f in forks))
    for f in forks:
        f.release()
    base.release()
    return outs
"""

SNAPSHOT_SAVE = """
import inferlet
async def main(input):
    m = inferlet.Model.load()
    ctx = inferlet.Context(m)
    ctx.append(input["prompt"])
    await ctx.save(input["name"])
    ctx.release()
    return "saved"
"""

SNAPSHOT_OPEN = """
import inferlet
async def main(input):
    m = inferlet.Model.load()
    ctx = inferlet.Context.open(m, input["name"])
    ctx.append(input["suffix"])
    out = await ctx.generate_tokens(inferlet.Sampler.argmax(), max_tokens=input["n"],
                                    ignore_eos=True)
    ctx.release()
    if input.get("delete"):
        inferlet.Context.delete(m, input["name"])
    return out
"""

CRASH = """
import inferlet
async def main(input):
    m = inferlet.Model.load()
    ctx = inferlet.Context(m)
    ctx.append("Hello there, tell me a story")
    await ctx.generate_tokens(inferlet.Sampler.argmax(), max_tokens=2, ignore_eos=True)
    raise RuntimeError("deliberate crash after two tokens")
"""
