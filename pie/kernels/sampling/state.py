"""The working state one sampling launch threads through its stages.

`sample_rows` (pipeline.py) builds a `SamplingState` from the batch's logits, then every
registered stage transforms it in pipeline order, and the selection step reads it. Removing a
token means setting its working logit to -inf.

Two representations of the same kept set live here, so the CPU path never sorts a whole vocabulary:

* `z`: the dense working logits `[O, V]` fp32. The Triton path always keeps it exact.
* `scale`, `threshold` and `candidates` (torch path only): temperature only records a per-row
  `scale` (positive scaling keeps the order, so top-k can run on the unscaled row); threshold filters (top-k, top-p, min-p) only
  raise a per-row `threshold` ("tokens with z < threshold are removed"), which is folded into `z`
  lazily by `dense()`. `candidates` holds the highest logits of each row, sorted descending; for
  rows flagged `complete` every kept token is among them, so selection can work on `[O, K]`
  instead of `[O, V]`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from pie.ipc.messages import SamplerSpec

NEG_INF = float("-inf")

_scratch = threading.local()


def scratch(name: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A float32 work buffer reused across launches on this thread.

    Writing into memory that is already mapped is several times faster on CPU than a fresh
    multi-megabyte allocation per call (page faults). The buffer is valid until the next request
    for the same name on this thread, i.e. within one `sample_rows` call.
    """
    bufs = getattr(_scratch, "bufs", None)
    if bufs is None:
        bufs = _scratch.bufs = {}
    n = 1
    for d in shape:
        n *= d
    buf = bufs.get((name, device))
    if buf is None or buf.numel() < n:
        buf = bufs[(name, device)] = torch.empty(n, dtype=torch.float32, device=device)
    return buf[:n].view(shape)


@dataclass
class Candidates:
    """The top logits of each row: values sorted descending (-inf once removed) and their ids."""

    values: torch.Tensor  # [O, K] fp32
    ids: torch.Tensor  # [O, K] int64
    complete: torch.Tensor  # [O] bool: every kept token of the row is a candidate


class RowParams:
    """Per-row parameter columns read from the batch's `SamplerSpec`s, built once per name.

    A name that is a `SamplerSpec` field reads that field; any other name reads
    `spec.extra[name]` (the parameters of registered extension stages).
    """

    _FIELDS = frozenset(SamplerSpec.__struct_fields__)

    def __init__(self, specs: list[SamplerSpec]):
        self.specs = specs
        self._columns: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.specs)

    def column(self, name: str, neutral: float) -> np.ndarray:
        """Values of parameter `name` for every row; rows that do not set it read `neutral`."""
        col = self._columns.get(name)
        if col is None:
            if name in self._FIELDS:
                col = np.array([getattr(s, name) for s in self.specs], dtype=np.float64)
            else:
                col = np.array([s.extra.get(name, neutral) for s in self.specs], dtype=np.float64)
            self._columns[name] = col
        return col


class SamplingState:
    """Working logits of one launch plus the per-row facts stages share."""

    def __init__(self, logits: torch.Tensor, backend: str, allowed: torch.Tensor | None = None):
        self.backend = backend  # "torch" or "triton"
        self.z = logits  # not owned until `writable()` copies it: the caller's tensor is read-only
        self._owned = False
        self.allowed = allowed  # [O, V] bool or None
        self.threshold: torch.Tensor | None = None  # [O] fp32, torch path
        self.scale: torch.Tensor | None = None  # [O] fp32, torch path: working logits = z / scale
        self.candidates: Candidates | None = None  # torch path

    @property
    def num_rows(self) -> int:
        return self.z.shape[0]

    @property
    def vocab_size(self) -> int:
        return self.z.shape[1]

    def writable(self) -> torch.Tensor:
        """The dense logits, exact and safe to modify in place."""
        z = self.dense()
        if not self._owned:
            self.z = z = z.clone()
            self._owned = True
        return z

    def replace(self, z: torch.Tensor) -> None:
        """Install a freshly computed dense tensor (owned; no pending scale or threshold)."""
        self.z = z
        self._owned = True
        self.threshold = None
        self.scale = None

    def divide(self, scale: torch.Tensor) -> None:
        """Divide every row by `scale` [O] (> 0), lazily: folded in by `dense()`."""
        self.dense()
        self.scale = scale

    def dense(self) -> torch.Tensor:
        """The dense logits with the pending scale and threshold applied."""
        if self.scale is not None:
            scale, self.scale = self.scale, None
            self.z = torch.div(
                self.z, scale[:, None], out=scratch("dense", self.z.shape, self.z.device)
            )
            self._owned = True
        if self.threshold is not None:
            thr, self.threshold = self.threshold, None
            z = self.writable()
            z.masked_fill_(z < thr[:, None], NEG_INF)
        return self.z

    def remove_below(self, threshold: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """Remove tokens whose logit is below `threshold` [O] (-inf = keep all) in `rows` (bool [O])."""
        if rows is not None:
            threshold = torch.where(rows, threshold, torch.full_like(threshold, NEG_INF))
        self.threshold = (
            threshold if self.threshold is None else torch.maximum(self.threshold, threshold)
        )
        if self.candidates is not None:
            c = self.candidates
            c.values.masked_fill_(c.values < threshold[:, None], NEG_INF)
