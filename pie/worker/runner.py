"""`Runner`: turns each message from the request ring into a `BatchResult`.

    BatchDescriptor --ForwardBatch.decode (validate)--> driver.execute --> BatchResult
    CopyPages / SwapOut / SwapIn                    --> driver page ops --> BatchResult
    Health                                          --> BatchResult (empty)

A bad descriptor (or any failure inside one batch) becomes `BatchResult.error` for that batch
only; the runner keeps serving. `pie.worker.main` owns the loop around it.
"""

from __future__ import annotations

import sys
import time
import traceback

import numpy as np

from pie.ipc.messages import (
    BatchDescriptor,
    BatchResult,
    CopyPages,
    Health,
    Request,
    SwapIn,
    SwapOut,
)
from pie.worker.batch import BatchError, ForwardBatch
from pie.worker.drivers.base import Driver


def _pages(data: bytes, name: str) -> np.ndarray:
    if len(data) % 4:
        raise BatchError(f"{name} has {len(data)} bytes, not a whole number of int32 page ids")
    return np.frombuffer(data, dtype="<i4")


class Runner:
    def __init__(self, driver: Driver):
        self.driver = driver
        self.limits = driver.limits()

    def handle(self, msg: Request) -> BatchResult:
        start = time.perf_counter_ns()
        try:
            result = self._dispatch(msg)
        except BatchError as exc:
            result = BatchResult(batch_id=msg.batch_id, error=f"batch {msg.batch_id}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a bug or device failure: report it, keep serving
            traceback.print_exc(file=sys.stderr)
            result = BatchResult(
                batch_id=msg.batch_id,
                error=f"batch {msg.batch_id} failed in the worker: {type(exc).__name__}: {exc}",
            )
        result.forward_us = (time.perf_counter_ns() - start) // 1000
        return result

    def _dispatch(self, msg: Request) -> BatchResult:
        if isinstance(msg, BatchDescriptor):
            batch = ForwardBatch.decode(msg, self.limits)
            tokens, rows = self.driver.execute(batch)
            return BatchResult(
                batch_id=msg.batch_id,
                tokens=np.ascontiguousarray(tokens, dtype="<i4").tobytes(),
                rows=rows or [],
            )
        if isinstance(msg, CopyPages):
            self.driver.copy_pages(_pages(msg.src, "src"), _pages(msg.dst, "dst"))
        elif isinstance(msg, SwapOut):
            self.driver.swap_out(
                _pages(msg.device_pages, "device_pages"), _pages(msg.host_slots, "host_slots")
            )
        elif isinstance(msg, SwapIn):
            self.driver.swap_in(
                _pages(msg.host_slots, "host_slots"), _pages(msg.device_pages, "device_pages")
            )
        elif not isinstance(msg, Health):
            raise BatchError(f"the worker does not handle {type(msg).__name__} messages")
        return BatchResult(batch_id=msg.batch_id)
