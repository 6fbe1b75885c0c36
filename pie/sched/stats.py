"""Scheduler statistics: counters, the batch-size histogram and latency percentiles.

Updated by the scheduler loop after every batch; `Scheduler.stats()` merges them with the page
and process counts into the dict the server reports.
"""

from __future__ import annotations

from collections import deque

import numpy as np

# batch-size buckets: 1, 2-3, 4-7, ..., 64-127, 128+
_BUCKET_LO = (1, 2, 4, 8, 16, 32, 64, 128)
_BUCKET_LABELS = tuple(
    f"{lo}+"
    if i == len(_BUCKET_LO) - 1
    else (f"{lo}" if lo == 1 else f"{lo}-{_BUCKET_LO[i + 1] - 1}")
    for i, lo in enumerate(_BUCKET_LO)
)
_WINDOW = 4096  # recent samples kept for percentiles


def _percentiles(samples: deque[float]) -> dict[str, float]:
    if not samples:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
    a = np.fromiter(samples, dtype=np.float64, count=len(samples)) * 1e3
    p50, p90, p99 = np.percentile(a, (50, 90, 99))
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(a.max())}


class SchedulerStats:
    def __init__(self) -> None:
        self.batches = 0
        self.requests = 0  # forward passes completed
        self.tokens = 0  # input tokens sent to the worker
        self.outputs = 0  # output rows produced
        self.chunks = 0  # extra batches caused by chunked passes
        self.timeouts = 0
        self.failures = 0
        self.histogram = [0] * len(_BUCKET_LO)
        self.queue_wait: deque[float] = deque(maxlen=_WINDOW)  # seconds, arrival -> first sent
        self.batch_latency: deque[float] = deque(maxlen=_WINDOW)  # seconds, submit -> result
        self.latency_ewa = 0.0  # seconds per batch, exponentially weighted (alpha 0.1)
        self._cache: tuple[tuple[int, ...], dict] | None = None

    def record_batch(self, size: int, tokens: int, outputs: int, latency: float) -> None:
        self.batches += 1
        self.tokens += tokens
        self.outputs += outputs
        self.batch_latency.append(latency)
        self.latency_ewa = latency if self.batches == 1 else 0.9 * self.latency_ewa + 0.1 * latency
        b = min(size.bit_length() - 1, len(_BUCKET_LO) - 1)
        self.histogram[max(b, 0)] += 1

    def as_dict(self) -> dict:
        # inferlets may poll observables every step: recompute only after a new batch
        key = (self.batches, self.requests, self.timeouts, self.failures, self.chunks)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._compute())
        return dict(self._cache[1])

    def _compute(self) -> dict:
        return {
            "batches": self.batches,
            "requests": self.requests,
            "tokens": self.tokens,
            "outputs": self.outputs,
            "chunked_parts": self.chunks,
            "timeouts": self.timeouts,
            "latency_s": self.latency_ewa,
            "failures": self.failures,
            "batch_size_histogram": dict(zip(_BUCKET_LABELS, self.histogram)),
            "queue_wait_ms": _percentiles(self.queue_wait),
            "batch_latency_ms": _percentiles(self.batch_latency),
        }
