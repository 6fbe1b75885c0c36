"""Facts about the running process and the engine, and launching child inferlets."""

from __future__ import annotations

import json
from typing import Any

from wit_world.imports import poll as _poll
from wit_world.imports import runtime as _rt

from . import _loop
from ._errors import call


def version() -> str:
    return _rt.version()


def instance_id() -> str:
    return _rt.instance_id()


def username() -> str:
    return _rt.username()


def models() -> list[str]:
    return list(_rt.models())


def set_return(value: Any) -> None:
    """Set the process's return value (non-strings are JSON-encoded)."""
    _rt.set_return(value if isinstance(value, str) else json.dumps(value))


def elapsed() -> float:
    """Seconds since this process started."""
    return _rt.elapsed_us() / 1e6


async def launch(program: str, input: Any = None) -> str:
    """Run another inferlet to completion and return its return value."""
    arg = input if isinstance(input, str) else json.dumps(input or {})
    h = await _loop.wait_for(call(_rt.launch, program, arg))
    return call(_poll.take_string, h)
