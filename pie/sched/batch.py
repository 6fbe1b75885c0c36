"""The batch builder: queued forward passes -> one `BatchDescriptor` -> results back per pass.

Data flow (all in the controller process):

    PendingForward queue --select--> [Part(req, lo, hi)] --pack (numpy)--> BatchDescriptor
    BatchResult --scatter--> each part's RowResults into its request, in the request's order

Selection walks the queue in arrival order and takes at most one pass per context (a later
pass of the same context depends on the earlier one's KV), skips contexts whose pages are not
resident (suspended) and chained passes whose input token is not known yet, and stays within
the worker's caps `max_batch_tokens` and `max_batch_size`. A pass larger than the room left is cut into
prefix chunks: chunk `[lo, hi)` writes its tokens and attends over KV slots `0 .. start+hi`,
exactly what the unchunked pass would have seen for those rows, so chunking is invisible to
the inferlet. Outputs that fall inside a chunk are produced by that chunk.

Packing concatenates int32 arrays; no per-token Python loop except for custom attention
masks, which are per-token lists to begin with.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import cast

import numpy as np

from pie.ipc.messages import BatchDescriptor, BatchResult, RowResult, SamplerSpec
from pie.sched.api import EngineError
from pie.sched.context import ContextState
from pie.sched.request import PendingForward


@dataclass(slots=True)
class Part:
    req: PendingForward
    lo: int  # first input index of the chunk
    hi: int  # one past its last input index
    outs: list[int] | None  # positions in req.out_list this chunk produces; None = whole pass

    @property
    def final(self) -> bool:
        return self.hi == self.req.size


@dataclass(slots=True)
class Batch:
    descriptor: BatchDescriptor
    parts: list[Part]
    num_tokens: int
    num_outputs: int


ACTIVE = ContextState.ACTIVE


def brle_prefix(runs: list[int], length: int) -> list[int]:
    """The first `length` positions of a BRLE, or EngineError if later positions are allowed."""
    out: list[int] = []
    pos = 0
    allowed = False
    for r in runs:
        if pos + r <= length:
            out.append(r)
        else:
            keep = max(length - pos, 0)
            if allowed and r > keep:
                raise EngineError(
                    f"an attention mask lets a token attend to KV slot {max(pos, length)}, "
                    "which a later part of the same pass writes; a pass whose tokens see later "
                    "tokens must fit in one batch (max_batch_tokens)"
                )
            if keep:
                out.append(keep)
        pos += r
        allowed = not allowed
    return out


def select(
    queue: deque[PendingForward], max_tokens: int, max_size: int
) -> tuple[list[Part], deque[PendingForward], list[PendingForward]]:
    """Pick the parts of the next batch.

    Returns (parts, the queue left after this batch, passes dropped because their context or
    caller went away).
    """
    parts: list[Part] = []
    left: deque[PendingForward] = deque()
    dropped: list[PendingForward] = []
    seen: set[int] = set()
    budget = max_tokens
    for req in queue:
        if req.future.done() or not req.ctx.alive:
            dropped.append(req)
            continue
        cid = req.ctx.id
        if (
            budget == 0
            or len(parts) >= max_size
            or cid in seen
            or req.ctx.state is not ACTIVE
            or req.feed is not None  # its input token is still being computed
        ):
            seen.add(cid)
            left.append(req)
            continue
        seen.add(cid)
        lo = req.sent
        hi = req.n if req.n - lo <= budget else lo + budget
        if lo == 0 and hi == req.n:
            outs = None
        else:
            outs = [j for j, i in enumerate(req.out_list) if lo <= i < hi]
        parts.append(Part(req, lo, hi, outs))
        req.sent = hi
        budget -= hi - lo
        if hi < req.n:
            left.append(req)
    return parts, left, dropped


def pack(parts: list[Part], batch_id: int, page_size: int) -> Batch:
    """Build the descriptor for `parts` (in order)."""
    tok_chunks: list[np.ndarray] = []
    pos_chunks: list[np.ndarray] = []
    tables: list[np.ndarray] = []
    q_lens: list[int] = []
    p_lens: list[int] = []
    last: list[int] = []
    rows: list[int] = []
    samplers: list[SamplerSpec] = []
    any_mask = False
    any_logit = False
    base = 0
    for part in parts:
        req, lo, hi = part.req, part.lo, part.hi
        if part.outs is None:  # the whole pass in one part: no slicing
            tok_chunks.append(req.tokens)
            pos_chunks.append(req.positions)
            if req.out_list:
                rows.extend([base + i for i in req.out_list])
                samplers.extend(req.samplers)
        else:
            tok_chunks.append(req.tokens[lo:hi])
            pos_chunks.append(req.positions[lo:hi])
            if part.outs:
                rows.extend([req.out_list[j] - lo + base for j in part.outs])
                samplers.extend([req.samplers[j] for j in part.outs])
        kv_len = req.start + hi
        npages = (kv_len + page_size - 1) // page_size
        table = req.ctx.page_table()
        tables.append(table if npages == len(table) else table[:npages])
        q_lens.append(hi - lo)
        p_lens.append(npages)
        last.append(kv_len - (npages - 1) * page_size)
        any_mask |= req.masks is not None
        any_logit |= req.logit_mask is not None
        base += hi - lo

    def indptr(lens: list[int]) -> bytes:
        out = np.zeros(len(lens) + 1, dtype=np.int32)
        np.cumsum(lens, out=out[1:])
        return out.tobytes()

    desc = BatchDescriptor(
        batch_id=batch_id,
        token_ids=np.concatenate(tok_chunks).tobytes(),
        positions=np.concatenate(pos_chunks).tobytes(),
        qo_indptr=indptr(q_lens),
        kv_page_indices=np.concatenate(tables).tobytes(),
        kv_page_indptr=indptr(p_lens),
        kv_last_page_len=np.asarray(last, dtype=np.int32).tobytes(),
        output_rows=np.asarray(rows, dtype=np.int32).tobytes(),
        samplers=samplers,
    )
    if any_mask:
        desc.mask_runs, desc.mask_indptr = _pack_masks(parts, base)
    if any_logit:
        runs = [
            p.req.logit_mask if p.req.logit_mask is not None else np.zeros(0, np.uint32)
            for p in parts
        ]
        desc.logit_mask_runs = np.concatenate(runs).astype(np.uint32).tobytes()
        desc.logit_mask_indptr = indptr([len(r) for r in runs])
    return Batch(descriptor=desc, parts=parts, num_tokens=base, num_outputs=len(samplers))


def _pack_masks(parts: list[Part], num_tokens: int) -> tuple[bytes, bytes]:
    """Per-token BRLE rows (empty row = causal) for the tokens of `parts`."""
    lens = np.zeros(num_tokens, dtype=np.int32)
    runs: list[int] = []
    t = 0
    for part in parts:
        req = part.req
        if req.masks is None:
            t += part.hi - part.lo
            continue
        kv_len = req.start + part.hi
        for row in req.masks[part.lo : part.hi]:
            if not part.final:
                row = brle_prefix(row, kv_len)
            runs.extend(row)
            lens[t] = len(row)
            t += 1
    indptr = np.zeros(num_tokens + 1, dtype=np.int32)
    np.cumsum(lens, out=indptr[1:])
    return np.asarray(runs, dtype=np.uint32).tobytes(), indptr.tobytes()


def scatter(batch: Batch, result: BatchResult) -> list[Part]:
    """Store each row of `result` in its request; returns the parts that completed a request.

    Raises EngineError when the result does not match the batch (wrong number of rows).
    """
    o = batch.num_outputs
    rows = result.rows
    tokens = np.frombuffer(result.tokens, dtype=np.int32) if result.tokens else None
    if rows:
        if len(rows) != o:
            raise EngineError(f"worker returned {len(rows)} rows for a batch with {o} outputs")
    elif o and (tokens is None or len(tokens) != o):
        count = 0 if tokens is None else len(tokens)
        raise EngineError(f"worker returned {count} tokens for a batch with {o} outputs")
    finished: list[Part] = []
    k = 0
    for part in batch.parts:
        req = part.req
        m = len(req.results) if part.outs is None else len(part.outs)
        if m:
            got: list[RowResult]
            if rows:
                got = rows[k : k + m]
            else:
                assert tokens is not None
                got = [RowResult(token=t) for t in tokens[k : k + m].tolist()]
            if part.outs is None:
                req.results = cast("list[RowResult | None]", got)
            else:
                for j, r in zip(part.outs, got):
                    req.results[j] = r
            k += m
        if part.final:
            finished.append(part)
    return finished
