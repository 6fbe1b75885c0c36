"""Messages between inferlets: FIFO queues (push/pull) and broadcast topics (subscribe).

One in-process hub, owned by the `ProcessManager` and shared by every inferlet it runs.
A pushed message goes to exactly one puller (the longest-waiting one, else it queues);
a broadcast goes to every subscription open at that moment and is dropped when there is none.
Everything here runs on the controller's event loop; pulls and subscription reads return
`asyncio.Future`s the sandbox turns into guest futures.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque


class Subscription:
    """Messages broadcast on one topic after it was opened, buffered until read."""

    def __init__(self, hub: MessageHub, topic: str, max_buffer: int) -> None:
        self.hub = hub
        self.topic = topic
        self._buffer: deque[str] = deque(maxlen=max_buffer)
        self._waiters: deque[asyncio.Future] = deque()
        self.closed = False

    def _deliver(self, message: str) -> None:
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(message)
                return
        self._buffer.append(message)

    def next(self) -> asyncio.Future:
        """A future of the next message (resolved at once if one is buffered)."""
        fut = asyncio.get_running_loop().create_future()
        if self._buffer:
            fut.set_result(self._buffer.popleft())
        elif self.closed:
            fut.set_exception(RuntimeError(f"subscription to {self.topic!r} is closed"))
        else:
            self._waiters.append(fut)
        return fut

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.hub._subs[self.topic].discard(self)
        for w in self._waiters:
            if not w.done():
                w.cancel()
        self._waiters.clear()


class MessageHub:
    def __init__(self, max_queue: int = 10_000) -> None:
        self._queues: dict[str, deque[str]] = defaultdict(deque)
        self._pullers: dict[str, deque[asyncio.Future]] = defaultdict(deque)
        self._subs: dict[str, set[Subscription]] = defaultdict(set)
        self.max_queue = max_queue

    def push(self, topic: str, message: str) -> None:
        pullers = self._pullers[topic]
        while pullers:
            fut = pullers.popleft()
            if not fut.done():
                fut.set_result(message)
                return
        queue = self._queues[topic]
        if len(queue) >= self.max_queue:
            raise OverflowError(f"queue {topic!r} holds {self.max_queue} unread messages")
        queue.append(message)

    def pull(self, topic: str) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        queue = self._queues.get(topic)
        if queue:
            fut.set_result(queue.popleft())
        else:
            self._pullers[topic].append(fut)
        return fut

    def broadcast(self, topic: str, message: str) -> int:
        """Deliver to every open subscription; returns how many received it."""
        subs = list(self._subs.get(topic, ()))
        for s in subs:
            s._deliver(message)
        return len(subs)

    def subscribe(self, topic: str, max_buffer: int = 10_000) -> Subscription:
        sub = Subscription(self, topic, max_buffer)
        self._subs[topic].add(sub)
        return sub

    def pending(self, topic: str) -> int:
        return len(self._queues.get(topic, ()))
