"""The guest's asyncio event loop: coroutines run inside the inferlet, waits go to the host.

`asyncio.run()` cannot work under WASI (no self-pipe), so the SDK drives coroutines with a
loop built on `asyncio.BaseEventLoop` whose "selector" asks the host to suspend this guest
until one of the host futures it is waiting on completes (`poll.wait`). Every SDK call that
waits on the engine goes through `wait_for`, so several generations in one inferlet run
concurrently and their forward passes reach the engine together.

Called by the runner (`run_main`) and by every awaiting SDK function (`wait_for`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from wit_world.imports import poll as _poll

# host future handle -> the asyncio future awaiting it
_pending: dict[int, asyncio.Future] = {}


def _resolve(ready: list[int]) -> None:
    for handle in ready:
        fut = _pending.pop(handle, None)
        if fut is not None and not fut.done():
            fut.set_result(handle)


class _HostSelector:
    """Stands in for a selector: the only events a guest waits on are host futures."""

    def select(self, timeout: float | None) -> list:
        if _pending:
            handles = list(_pending)
            if timeout == 0:
                ready = _poll.ready(handles)
            else:
                ready = _poll.wait(handles, -1 if timeout is None else int(timeout * 1e6))
            _resolve(ready)
        elif timeout is None:
            raise RuntimeError(
                "the inferlet awaits something that can never complete "
                "(no host operation is pending)"
            )
        elif timeout > 0:
            _poll.wait([], int(timeout * 1e6))
        return []

    def close(self) -> None:
        pass


class GuestLoop(asyncio.BaseEventLoop):
    def __init__(self) -> None:
        super().__init__()
        self._selector = _HostSelector()

    def _process_events(self, event_list: list) -> None:
        pass

    def _write_to_self(self) -> None:
        pass


def idle() -> bool:
    """Whether nothing else in this guest could run while the caller waits on the host.

    Then a waiting call may block in the host directly (the same wait the loop's selector
    would make, without a trip through the loop).
    """
    loop = asyncio.get_running_loop()
    return not _pending and not loop._ready and not loop._scheduled


async def wait_for(handle: int) -> int:
    """Suspend the calling coroutine until host future `handle` is ready; returns it."""
    if idle():
        while handle not in _poll.wait([handle], -1):
            pass
        return handle
    fut = asyncio.get_running_loop().create_future()
    _pending[handle] = fut
    try:
        return await fut
    finally:
        _pending.pop(handle, None)


# Built at import time, so the runner's pre-initialized snapshot already holds it: a guest
# instance runs one program and is then discarded, so one loop per instance is enough.
_LOOP: GuestLoop | None = GuestLoop()


def run_main(fn: Callable[..., Awaitable[Any]], args: tuple, kwargs: dict) -> Any:
    """Run an async entry function to completion on the guest loop."""
    global _LOOP
    loop = _LOOP if _LOOP is not None and not _LOOP.is_closed() else GuestLoop()
    _LOOP = None  # a second run in the same instance gets a fresh loop
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(fn(*args, **kwargs))
    finally:
        _pending.clear()
        asyncio.set_event_loop(None)
        loop.close()
