"""Messages between inferlets: queues (push/pull, one consumer each) and broadcast topics."""

from __future__ import annotations

import json
from typing import Any

from wit_world.imports import messaging as _msg
from wit_world.imports import poll as _poll

from . import _loop
from ._errors import call


def _text(message: Any) -> str:
    return message if isinstance(message, str) else json.dumps(message)


def push(topic: str, message: Any) -> None:
    _msg.push(topic, _text(message))


async def pull(topic: str) -> str:
    h = await _loop.wait_for(_msg.pull(topic))
    return call(_poll.take_string, h)


def broadcast(topic: str, message: Any) -> None:
    _msg.broadcast(topic, _text(message))


class Subscription:
    """Messages broadcast on a topic after subscribing; `async for msg in sub`."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._h = _msg.subscribe(topic)
        self._closed = False

    async def next(self) -> str:
        h = await _loop.wait_for(call(_msg.next, self._h))
        return call(_poll.take_string, h)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> str:
        if self._closed:
            raise StopAsyncIteration
        return await self.next()

    def unsubscribe(self) -> None:
        if not self._closed:
            self._closed = True
            _msg.unsubscribe(self._h)

    def __enter__(self) -> Subscription:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.unsubscribe()


def subscribe(topic: str) -> Subscription:
    return Subscription(topic)
