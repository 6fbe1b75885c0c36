"""Typed message endpoints over a `Ring`: msgpack framing with reusable codecs.

A `Channel` wraps one ring endpoint and one message type (`Request` for the controller ->
worker direction, `Response` for the way back). Encoders and decoders are built once per
channel; encoding goes into a reused buffer and decoding reads straight from the slot's
memoryview, so the only copies are the one into the slot and msgspec's copy of each bytes
field (which then outlives the slot).

Bulk arrays inside messages are raw bytes; read them with `as_array`, which is
`numpy.frombuffer` (no per-element Python work, no copy).

    ctrl -- Channel.send(BatchDescriptor) --> [request ring] --> Channel.recv() -- worker
    ctrl <-- Channel.recv() -- [response ring] <-- Channel.send(BatchResult) ---- worker
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import msgspec
import numpy as np

from pie.ipc.messages import Request, Response
from pie.ipc.ring import MessageTooLarge, Ring

T = TypeVar("T")


class Codec(Generic[T]):
    """A reusable msgpack encoder/decoder pair for one message type."""

    def __init__(self, kind: Any):
        self.kind = kind
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(kind)
        self._buf = bytearray(1 << 16)

    def encode(self, msg: T) -> bytearray:
        """Encode into the codec's reused buffer (valid until the next `encode`)."""
        self._encoder.encode_into(msg, self._buf)
        return self._buf

    def decode(self, data: bytes | memoryview) -> T:
        return self._decoder.decode(data)


class Channel(Generic[T]):
    """One ring endpoint that sends or receives messages of type `kind`.

    `send` raises MessageTooLarge (naming both sizes) for a message bigger than a slot;
    `recv` returns the decoded message, which owns its data (the slot is released at once).
    """

    def __init__(self, ring: Ring, kind: Any):
        self.ring = ring
        self.codec: Codec[T] = Codec(kind)

    def send(
        self, msg: T, timeout: float | None = None, alive: Callable[[], bool] | None = None
    ) -> None:
        buf = self.codec.encode(msg)
        n = len(buf)
        if n > self.ring.slot_bytes:
            raise MessageTooLarge(
                f"{type(msg).__name__} of {n} bytes does not fit a ring slot of "
                f"{self.ring.slot_bytes} bytes; raise the `ring_slot_bytes` driver option or "
                f"send less per batch"
            )
        self.ring.write(buf, timeout, alive)

    def recv(self, timeout: float | None = None, alive: Callable[[], bool] | None = None) -> T:
        with self.ring.read(timeout, alive) as view:
            return self.codec.decode(view)

    def recv_raw(
        self, timeout: float | None = None, alive: Callable[[], bool] | None = None
    ) -> bytes:
        """The next message's bytes, undecoded (for forwarding to tensor-parallel followers)."""
        return self.ring.read_bytes(timeout, alive)

    def close(self) -> None:
        self.ring.close()


def as_array(data: bytes, dtype: str | np.dtype) -> np.ndarray:
    """A read-only numpy view of a bytes field (`int32`, `uint32`, `float32`, ...)."""
    return np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<"))


def to_bytes(values: Any, dtype: str | np.dtype) -> bytes:
    """Pack a sequence or array as little-endian raw bytes for a bytes field."""
    return np.ascontiguousarray(values, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


def request_channel(ring: Ring) -> Channel[Request]:
    return Channel(ring, Request)


def response_channel(ring: Ring) -> Channel[Response]:
    return Channel(ring, Response)


__all__ = [
    "Channel",
    "Codec",
    "MessageTooLarge",
    "as_array",
    "request_channel",
    "response_channel",
    "to_bytes",
]
