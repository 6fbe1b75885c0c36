"""The `dummy` driver: no weights, deterministic pseudo-random tokens, for testing at scale.

Token-only batches never import torch, so a dummy worker starts in well under a second.
The token of an output row is a hash of (the row's input token, its position, the worker seed,
the sampler seed), reduced to the ids the row's logit mask allows, so the same request gives the
same tokens whatever else shares its batch, and constrained decoding can be tested without a
model. Rows whose sampler asks for probes (distributions, logits, log-probs, entropy) get
pseudo-random logits from the same hash and go through the real sampling pipeline.

`step_latency_us` simulates the time of a forward pass; the KV pool is bookkeeping only.
"""

from __future__ import annotations

import time

import numpy as np

from pie.ipc.messages import RowResult
from pie.ipc.spec import WorkerSpec
from pie.worker.batch import BatchError, ForwardBatch
from pie.worker.drivers.base import Driver

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser over a uint64 array (vectorised)."""
    x = x.astype(np.uint64, copy=True)  # array arithmetic wraps silently (no overflow warning)
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


class DummyDriver(Driver):
    def __init__(self, spec: WorkerSpec, progress=None, tp_group=None):
        super().__init__(spec)
        self.arch = "dummy"
        self.vocab_size = int(spec.option("vocab_size"))
        self.total_pages = int(spec.option("total_pages", 1024))
        self.host_pages = int(spec.option("host_pages", max(1, self.total_pages // 4)))
        self.max_model_len = int(spec.option("max_model_len", 8192))
        self.dtype = spec.dtype
        self.device = "cpu"
        self.step_s = float(spec.option("step_latency_us")) * 1e-6
        self.seed = np.uint64(spec.seed & 0xFFFFFFFFFFFFFFFF)

    def row_hashes(self, batch: ForwardBatch) -> np.ndarray:
        rows = batch.output_rows
        tok = batch.token_ids[rows].astype(np.uint64)
        pos = batch.positions[rows].astype(np.uint64)
        seeds = np.fromiter((s.seed for s in batch.samplers), dtype=np.uint64, count=len(rows))
        return mix64(mix64(tok * np.uint64(1_000_003) + pos) ^ self.seed ^ mix64(seeds))

    def execute(self, batch: ForwardBatch) -> tuple[np.ndarray, list[RowResult] | None]:
        if self.step_s:
            time.sleep(self.step_s)
        n = len(batch.output_rows)
        if n == 0:
            return np.zeros(0, dtype=np.int32), None
        h = self.row_hashes(batch)
        allowed = batch.allowed_tokens(self.vocab_size)
        if allowed is None:
            tokens = (h % np.uint64(self.vocab_size)).astype(np.int32)
        else:
            counts = allowed.sum(axis=1)
            if (counts == 0).any():
                o = int(np.argmax(counts == 0))
                raise BatchError(f"the logit mask of output row {o} allows no token")
            # the (h mod count)-th allowed id of each row, without a Python loop over the vocab
            k = (h % counts.astype(np.uint64)).astype(np.int64)
            csum = np.cumsum(allowed, axis=1)
            tokens = np.argmax(csum > k[:, None], axis=1).astype(np.int32)
        for i, s in enumerate(batch.samplers):
            if not s.sample:
                tokens[i] = -1
        probes = [
            i
            for i, s in enumerate(batch.samplers)
            if s.dist_k >= 0 or s.raw_logits or s.logprob_ids or s.entropy or s.extra
        ]
        if not probes:
            return tokens, None
        import torch  # only probes need it: a token-only dummy worker starts without torch

        from pie.worker.sampling import sample

        rows = [RowResult(token=int(t)) for t in tokens.tolist()]
        logits = torch.empty(len(probes), self.vocab_size, dtype=torch.float32)
        gen = torch.Generator()
        for j, i in enumerate(probes):
            gen.manual_seed(int(h[i] & np.uint64(0x7FFFFFFFFFFFFFFF)))
            logits[j] = torch.randn(self.vocab_size, generator=gen) * 3.0
        sub_allowed = None if allowed is None else allowed[probes]
        sub_tokens, sub_rows = sample(logits, [batch.samplers[i] for i in probes], sub_allowed)
        for j, i in enumerate(probes):
            if sub_rows is not None:
                rows[i] = sub_rows[j]
            tokens[i] = sub_tokens[j]
            rows[i].token = int(sub_tokens[j])
        return tokens, rows
