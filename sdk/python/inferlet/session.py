"""Talk to the client that launched this inferlet: messages and files both ways."""

from __future__ import annotations

import json
from typing import Any

from wit_world.imports import poll as _poll
from wit_world.imports import session as _session

from . import _loop
from ._errors import call


def send(message: Any) -> None:
    """Send a message event to the client (non-strings are JSON-encoded)."""
    _session.send(message if isinstance(message, str) else json.dumps(message))


def send_file(name: str, data: bytes) -> None:
    _session.send_file(name, bytes(data))


async def receive() -> str:
    """The next message (signal) the client sends to this process."""
    h = await _loop.wait_for(_session.receive())
    return call(_poll.take_string, h)


async def receive_file() -> tuple[str, bytes]:
    h = await _loop.wait_for(_session.receive_file())
    return call(_poll.take_file, h)
