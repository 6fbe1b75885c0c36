"""A fake worker that really keeps a paged KV store, so scheduler tests can check data flow.

Each KV slot holds (token, position). A forward pass writes its tokens into the slots its
descriptor names and answers each output row with a token that is a hash of everything that
row can see (slot order, token and position of each visible slot). The same function over a
context's logical history (`expected_token`) is the reference: if page tables, chunking,
forks, copies or prefix sharing were wrong, the answers would differ.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from pie.ipc.messages import BatchDescriptor, BatchResult, CopyPages, WorkerInfo
from pie.sched.api import ModelInfo

VOCAB = 1000


def row_token(tokens: np.ndarray, positions: np.ndarray) -> int:
    """The fake model: a deterministic function of the visible KV (slot order matters)."""
    idx = np.arange(len(tokens), dtype=np.int64)
    h = (tokens.astype(np.int64) * 1_000_003 + positions.astype(np.int64) * 7919 + 1) * (
        idx * 31 + 17
    )
    return int(h.sum() % VOCAB)


def expected_token(tokens: list[int], positions: list[int], upto: int) -> int:
    """Reference output for a causal row that sees slots 0..upto-1 of a context history."""
    return row_token(np.asarray(tokens[:upto]), np.asarray(positions[:upto]))


def brle_decode(runs: np.ndarray, length: int) -> np.ndarray:
    out = np.zeros(length, dtype=bool)
    pos, val = 0, False
    for r in runs.tolist():
        if val:
            out[pos : pos + r] = True
        pos += r
        val = not val
    assert pos <= length, "mask longer than the KV"
    return out


class FakeWorker:
    def __init__(
        self,
        total_pages: int = 64,
        page_size: int = 4,
        max_batch_tokens: int = 256,
        max_batch_size: int = 32,
        latency: float = 0.0,
    ) -> None:
        self.info = WorkerInfo(
            arch="fake",
            vocab_size=VOCAB,
            page_size=page_size,
            total_pages=total_pages,
            host_pages=0,
            max_batch_tokens=max_batch_tokens,
            max_batch_size=max_batch_size,
            max_model_len=4096,
            dtype="float32",
            device="cpu",
        )
        self.latency = latency
        self.mem_tok = np.full((total_pages, page_size), -1, dtype=np.int64)
        self.mem_pos = np.full((total_pages, page_size), -1, dtype=np.int64)
        self.busy = False
        self.batches: list[BatchDescriptor] = []
        self.copies: list[CopyPages] = []
        self.spans: list[tuple[float, float, int]] = []  # (start, end, requests) per batch
        self.dead = False
        self.error = ""
        self.fail_next = 0  # this many coming batches fail

    async def submit(self, msg: object) -> BatchResult:
        if self.dead:
            raise ConnectionError("worker process exited")
        assert not self.busy, "two operations in flight on a sequential worker"
        self.busy = True
        t0 = time.monotonic()
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            if isinstance(msg, CopyPages):
                self.copies.append(msg)
                src = np.frombuffer(msg.src, dtype=np.int32)
                dst = np.frombuffer(msg.dst, dtype=np.int32)
                self.mem_tok[dst] = self.mem_tok[src]
                self.mem_pos[dst] = self.mem_pos[src]
                return BatchResult(batch_id=msg.batch_id)
            assert isinstance(msg, BatchDescriptor)
            self.batches.append(msg)
            if self.fail_next:
                self.fail_next -= 1
                return BatchResult(batch_id=msg.batch_id, error="injected failure")
            if self.error:
                return BatchResult(batch_id=msg.batch_id, error=self.error)
            out = self._run(msg)
            r = len(np.frombuffer(msg.qo_indptr, dtype=np.int32)) - 1
            self.spans.append((t0, time.monotonic(), r))
            return BatchResult(batch_id=msg.batch_id, tokens=np.asarray(out, np.int32).tobytes())
        finally:
            self.busy = False

    def _run(self, d: BatchDescriptor) -> list[int]:
        ps = self.info.page_size
        tok = np.frombuffer(d.token_ids, dtype=np.int32)
        pos = np.frombuffer(d.positions, dtype=np.int32)
        qo = np.frombuffer(d.qo_indptr, dtype=np.int32)
        pages = np.frombuffer(d.kv_page_indices, dtype=np.int32)
        pind = np.frombuffer(d.kv_page_indptr, dtype=np.int32)
        last = np.frombuffer(d.kv_last_page_len, dtype=np.int32)
        rows = np.frombuffer(d.output_rows, dtype=np.int32)
        assert len(d.samplers) == len(rows)
        assert len(tok) <= self.info.max_batch_tokens and len(qo) - 1 <= self.info.max_batch_size
        mruns = np.frombuffer(d.mask_runs, dtype=np.uint32) if d.mask_runs else None
        mind = np.frombuffer(d.mask_indptr, dtype=np.int32) if d.mask_indptr else None
        # write every request's KV first (as the real worker does)
        views = []
        for r in range(len(qo) - 1):
            pt = pages[pind[r] : pind[r + 1]]
            kv_len = (len(pt) - 1) * ps + int(last[r])
            n = int(qo[r + 1] - qo[r])
            slots = np.arange(kv_len - n, kv_len)
            self.mem_tok[pt[slots // ps], slots % ps] = tok[qo[r] : qo[r + 1]]
            self.mem_pos[pt[slots // ps], slots % ps] = pos[qo[r] : qo[r + 1]]
            views.append((pt, kv_len, n))
        out = []
        for t in rows.tolist():
            r = int(np.searchsorted(qo, t, side="right") - 1)
            pt, kv_len, n = views[r]
            j = t - int(qo[r])
            all_slots = np.arange(kv_len)
            if mind is not None and mind[t + 1] > mind[t]:
                visible = all_slots[brle_decode(mruns[mind[t] : mind[t + 1]], kv_len)]
            else:
                visible = all_slots[: kv_len - n + j + 1]
            vt = self.mem_tok[pt[visible // ps], visible % ps]
            vp = self.mem_pos[pt[visible // ps], visible % ps]
            assert (vt >= 0).all(), "a row read a KV slot nobody wrote"
            out.append(row_token(vt, vp))
        return out


class FakeTokenizer:
    def encode(self, text: str) -> list[int]:
        return [ord(c) % VOCAB for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)

    def vocab(self) -> tuple[list[int], list[bytes]]:
        return list(range(VOCAB)), [bytes([i % 256]) for i in range(VOCAB)]

    def special_tokens(self) -> tuple[list[int], list[bytes]]:
        return [0], [b"<eos>"]

    def render_chat(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        return "".join(m["content"] for m in messages)


def model_info(page_size: int = 4) -> ModelInfo:
    return ModelInfo(
        name="fake",
        arch="fake",
        vocab_size=VOCAB,
        page_size=page_size,
        max_model_len=4096,
        eos_token_ids=(0,),
        stop_token_ids=(0,),
        bos_token_id=None,
    )
