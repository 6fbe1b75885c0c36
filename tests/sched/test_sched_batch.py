"""The batch builder in isolation: descriptor layout, chunk cuts, output order, masks."""

from __future__ import annotations

import asyncio
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pie.ipc.messages import BatchResult, SamplerSpec
from pie.sched.api import EngineError
from pie.sched.batch import brle_prefix, pack, scatter, select
from pie.sched.context import Context, ContextState
from pie.sched.request import PendingForward

PS = 4


def _brle_decode(runs: list[int], length: int) -> list[bool]:
    out, val = [], False
    for r in runs:
        out += [val] * r
        val = not val
    return (out + [False] * length)[:length]


@settings(max_examples=200, deadline=None)
@given(
    runs=st.lists(st.integers(0, 5), max_size=8),
    length=st.integers(0, 30),
)
def test_brle_prefix_keeps_the_prefix_or_refuses(runs, length):
    full = _brle_decode(runs, 64)
    if any(full[length:]):
        with pytest.raises(EngineError):
            brle_prefix(runs, length)
    else:
        cut = brle_prefix(runs, length)
        assert sum(cut) <= length
        assert _brle_decode(cut, length) == full[:length]


def _req(loop, cid: int, n: int, start: int, outs: list[int], pages: list[int]) -> PendingForward:
    ctx = Context(id=cid, owner="p", page_size=PS, working=pages)
    return PendingForward(
        pid="p",
        ctx=ctx,
        tokens=np.arange(100 * cid, 100 * cid + n, dtype=np.int32),
        positions=np.arange(start, start + n, dtype=np.int32),
        out_list=outs,
        samplers=[SamplerSpec(seed=1000 * cid + i) for i in outs],
        masks=None,
        logit_mask=None,
        start=start,
        future=loop.create_future(),
        enqueued=0.0,
        deadline=1e9,
        results=[None] * len(outs),
        n=n,
    )


def test_descriptor_layout_chunks_and_output_order():
    loop = asyncio.new_event_loop()
    a = _req(loop, 1, 10, 2, [9, 0, 4], [7, 8, 9, 10])  # outputs out of input order
    b = _req(loop, 2, 1, 5, [0], [3, 4])
    a2 = _req(loop, 1, 1, 12, [0], [])
    a2.ctx = a.ctx  # a second pass of context 1 must wait for the first
    queue = deque([a, b, a2])
    parts, left, dropped = select(queue, max_tokens=6, max_size=8)
    assert [(p.req, p.lo, p.hi) for p in parts] == [(a, 0, 6)]
    assert list(left) == [a, b, a2] and not dropped
    batch = pack(parts, 1, PS)
    d = batch.descriptor
    assert np.frombuffer(d.token_ids, np.int32).tolist() == list(range(100, 106))
    # KV after the chunk: 2 earlier slots + 6 = 8 slots = 2 pages, the last one full
    assert np.frombuffer(d.kv_page_indices, np.int32).tolist() == [7, 8]
    assert np.frombuffer(d.kv_last_page_len, np.int32).tolist() == [4]
    assert np.frombuffer(d.output_rows, np.int32).tolist() == [0, 4]  # inputs 0 and 4
    assert [s.seed for s in d.samplers] == [1000, 1004]
    scatter(batch, BatchResult(batch_id=1, tokens=np.array([50, 54], np.int32).tobytes()))

    parts, left, _ = select(left, max_tokens=16, max_size=8)
    assert [(p.req, p.lo, p.hi) for p in parts] == [(a, 6, 10), (b, 0, 1)]
    assert list(left) == [a2]
    batch = pack(parts, 2, PS)
    d = batch.descriptor
    assert np.frombuffer(d.qo_indptr, np.int32).tolist() == [0, 4, 5]
    assert np.frombuffer(d.kv_page_indptr, np.int32).tolist() == [0, 3, 5]
    assert np.frombuffer(d.kv_last_page_len, np.int32).tolist() == [4, 2]
    assert np.frombuffer(d.output_rows, np.int32).tolist() == [3, 4]  # a's input 9, b's 0
    done = scatter(batch, BatchResult(batch_id=2, tokens=np.array([59, 20], np.int32).tobytes()))
    assert [p.req for p in done] == [a, b]
    assert [r.token for r in a.results] == [59, 50, 54]  # in the request's output order
    with pytest.raises(EngineError, match="returned 1 tokens for a batch with 2 outputs"):
        scatter(batch, BatchResult(batch_id=2, tokens=np.array([1], np.int32).tobytes()))
    loop.close()


def test_masks_and_logit_masks_are_packed_per_token_and_per_request():
    loop = asyncio.new_event_loop()
    a = _req(loop, 1, 3, 0, [2], [1])
    a.masks = [[0, 1], [1, 1], [0, 3]]
    b = _req(loop, 2, 2, 0, [1], [2])
    b.logit_mask = np.array([3, 2], np.uint32)
    batch = pack(select(deque([a, b]), 64, 8)[0], 1, PS)
    d = batch.descriptor
    assert np.frombuffer(d.mask_indptr, np.int32).tolist() == [0, 2, 4, 6, 6, 6]
    assert np.frombuffer(d.mask_runs, np.uint32).tolist() == [0, 1, 1, 1, 0, 3]
    assert np.frombuffer(d.logit_mask_indptr, np.int32).tolist() == [0, 0, 2]
    assert np.frombuffer(d.logit_mask_runs, np.uint32).tolist() == [3, 2]
    loop.close()


def test_suspended_contexts_wait_in_the_queue():
    loop = asyncio.new_event_loop()
    a = _req(loop, 1, 1, 0, [0], [1])
    b = _req(loop, 2, 1, 0, [0], [2])
    a.ctx.state = ContextState.SUSPENDED
    parts, left, _ = select(deque([a, b]), 64, 8)
    assert [p.req for p in parts] == [b] and list(left) == [a]
    a.ctx.state = ContextState.ACTIVE
    parts, left, _ = select(left, 64, 8)
    assert [p.req for p in parts] == [a] and not left
    loop.close()
