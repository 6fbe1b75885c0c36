"""A forward pass waiting in the scheduler: its arrays, its progress and its future.

Built by `Scheduler.forward` from a `ForwardRequest` once the pass has been validated and its
KV slots claimed; consumed by `pie.sched.batch` (which may send it in several chunks) and
resolved by the scheduler loop with one `RowResult` per requested output.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np

from pie.ipc.messages import RowResult, SamplerSpec
from pie.sched.context import Context


@dataclass(eq=False, slots=True)
class PendingForward:
    pid: str
    ctx: Context
    tokens: np.ndarray  # int32 [n]
    positions: np.ndarray  # int32 [n]
    out_list: list[int]  # input index of each output, in request order
    samplers: list[SamplerSpec]
    masks: list[list[int]] | None  # one BRLE row per input token, over the KV after the pass
    logit_mask: np.ndarray | None  # uint32 BRLE over the vocabulary
    start: int  # KV slot of tokens[0]
    future: asyncio.Future[list[RowResult]]
    enqueued: float
    deadline: float
    n: int = 0  # number of input tokens
    sent: int = 0  # tokens already handed to the worker in earlier chunks
    results: list[RowResult | None] = field(default_factory=list)
    # chained input: tokens[0] is the token of output `feed_slot` of pass `feed`, which has
    # not finished yet; the pass is not runnable until then (see Scheduler._feed_followers)
    feed: PendingForward | None = None
    feed_slot: int = 0
    followers: list[PendingForward] | None = None

    @property
    def size(self) -> int:
        return self.n

    @property
    def end(self) -> int:
        return self.start + self.n
