"""`Driver`: what a worker backend implements, and the checks every backend shares.

A driver owns the weights, the KV page pool (device pages plus host slots for swapped-out
pages) and the forward pass of one tensor-parallel rank. The runner (`pie.worker.runner`) hands
it validated `ForwardBatch`es and page operations; drivers never see the ring.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from pie.ipc.messages import RowResult, WorkerInfo
from pie.ipc.spec import WorkerSpec
from pie.worker.batch import BatchError, ForwardBatch, WorkerLimits


class Driver(ABC):
    """One rank's model backend. Subclasses set the attributes below in `__init__`."""

    arch: str
    vocab_size: int
    page_size: int
    total_pages: int
    host_pages: int
    max_model_len: int
    dtype: str
    device: str

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.page_size = int(spec.option("kv_page_size"))
        self.max_batch_tokens = int(spec.option("max_batch_tokens"))
        self.max_batch_size = int(spec.option("max_batch_size"))
        self.max_dist_size = int(spec.option("max_dist_size"))
        self.is_leader = spec.tp_rank == 0

    @abstractmethod
    def execute(self, batch: ForwardBatch) -> tuple[np.ndarray, list[RowResult] | None]:
        """Forward the batch and sample its output rows: int32 tokens [O] and probe rows.

        Tensor-parallel followers run the same forward (its collectives need every rank) and
        may return empty results; only the leader's answer is sent.
        """

    def copy_pages(self, src: np.ndarray, dst: np.ndarray) -> None:
        self._check_pages("src", src, self.total_pages, "KV pool")
        self._check_pages("dst", dst, self.total_pages, "KV pool")
        self._same_length(src, dst)
        self._copy_pages(src, dst)

    def swap_out(self, device_pages: np.ndarray, host_slots: np.ndarray) -> None:
        self._check_pages("device_pages", device_pages, self.total_pages, "KV pool")
        self._check_pages("host_slots", host_slots, self.host_pages, "host swap space")
        self._same_length(device_pages, host_slots)
        self._swap_out(device_pages, host_slots)

    def swap_in(self, host_slots: np.ndarray, device_pages: np.ndarray) -> None:
        self._check_pages("host_slots", host_slots, self.host_pages, "host swap space")
        self._check_pages("device_pages", device_pages, self.total_pages, "KV pool")
        self._same_length(device_pages, host_slots)
        self._swap_in(host_slots, device_pages)

    # backends override these; the defaults suit drivers without a real KV pool
    def _copy_pages(self, src: np.ndarray, dst: np.ndarray) -> None:
        pass

    def _swap_out(self, device_pages: np.ndarray, host_slots: np.ndarray) -> None:
        pass

    def _swap_in(self, host_slots: np.ndarray, device_pages: np.ndarray) -> None:
        pass

    @staticmethod
    def _check_pages(name: str, idx: np.ndarray, limit: int, what: str) -> None:
        bad = (idx < 0) | (idx >= limit)
        if bad.any():
            i = int(np.argmax(bad))
            raise BatchError(f"{name}[{i}] = {int(idx[i])} is outside the {what} of {limit} pages")

    @staticmethod
    def _same_length(a: np.ndarray, b: np.ndarray) -> None:
        if len(a) != len(b):
            raise BatchError(f"page lists differ in length ({len(a)} and {len(b)}); pair them up")

    def limits(self) -> WorkerLimits:
        return WorkerLimits(
            vocab_size=self.vocab_size,
            page_size=self.page_size,
            total_pages=self.total_pages,
            max_batch_tokens=self.max_batch_tokens,
            max_batch_size=self.max_batch_size,
            max_model_len=self.max_model_len,
            max_dist_size=self.max_dist_size,
        )

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            arch=self.arch,
            vocab_size=self.vocab_size,
            page_size=self.page_size,
            total_pages=self.total_pages,
            host_pages=self.host_pages,
            max_batch_tokens=self.max_batch_tokens,
            max_batch_size=self.max_batch_size,
            max_model_len=self.max_model_len,
            dtype=self.dtype,
            device=self.device,
        )

    def close(self) -> None:
        """Release device memory (the process is about to exit)."""
