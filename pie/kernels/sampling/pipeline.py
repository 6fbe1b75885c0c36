"""`sample_rows`: one launch of the sampling pipeline over a batch's output rows.

Data flow (inside the worker process):

    logits [O, V] fp32 (one row per output row of the batch)
      + SamplerSpec per row (pie.ipc.messages) + allowed [O, V] bool from the logit masks
      -> SamplingState -> every registered stage in order (stage.py; mask, penalties,
         temperature, top-k, top-p, min-p, extensions) -> select (argmax or seeded categorical)
      -> tokens int32 [O] (+ RowResult per row when any row asked for a probe)

Rows with different parameters share one launch: each stage reads its parameters as per-row
columns and runs once over all rows (rows that switch it off get its neutral value), and a
stage no row uses is skipped. So a batch where every row is greedy, or every row has the same
top-k/top-p/temperature, costs one vectorised pass per active stage.

Backend: Triton kernels for CUDA tensors, torch otherwise (`backend=` overrides, for tests).
"""

from __future__ import annotations

import secrets

import numpy as np
import torch

from pie.ipc.messages import RowResult, SamplerSpec
from pie.kernels.brle import allowed_rows
from pie.kernels.sampling.probes import probe_rows, wants_probe
from pie.kernels.sampling.select import select_torch, select_triton
from pie.kernels.sampling.stage import registered_stages
from pie.kernels.sampling.state import NEG_INF, RowParams, SamplingState

_SEED_MASK = (1 << 63) - 1


def _seeds(specs: list[SamplerSpec]) -> np.ndarray:
    """Per-row int64 seeds; seed 0 draws fresh randomness."""
    out = np.empty(len(specs), dtype=np.int64)
    for i, s in enumerate(specs):
        seed = s.seed & _SEED_MASK
        out[i] = seed if seed else (secrets.randbits(63) | 1)
    return out


def _to_device(values: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    out = {}
    for name, a in values.items():
        a = np.ascontiguousarray(a)
        t = torch.from_numpy(a.astype(np.float32) if a.dtype.kind == "f" else a.astype(np.int64))
        out[name] = t.to(device)
    return out


def _check(logits: torch.Tensor, specs: list[SamplerSpec], allowed: torch.Tensor | None) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must be [rows, vocab], got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")
    if len(specs) != logits.shape[0]:
        raise ValueError(
            f"{logits.shape[0]} logit rows but {len(specs)} sampler specs; send one per row"
        )
    if allowed is not None:
        o, v = logits.shape
        words = (o, (v + 31) // 32)
        is_bool = allowed.dtype == torch.bool and tuple(allowed.shape) == (o, v)
        is_words = allowed.dtype == torch.int32 and tuple(allowed.shape) == words
        if not (is_bool or is_words):
            raise ValueError(
                f"allowed must be a bool tensor of shape {(o, v)} or packed int32 words of "
                f"shape {words}, got {allowed.dtype} {tuple(allowed.shape)}"
            )
        if allowed.device != logits.device:
            raise ValueError(f"allowed is on {allowed.device} but logits are on {logits.device}")


def _any_allowed(allowed: torch.Tensor, vocab: int) -> torch.Tensor:
    """[O] bool: the row allows at least one token (bits past the vocabulary do not count)."""
    if allowed.dtype == torch.bool:
        return allowed.any(-1)
    tail = vocab - 32 * (allowed.shape[1] - 1)  # 1..32 real bits in the last word
    last = allowed[:, -1] & (-1 if tail == 32 else (1 << tail) - 1)
    return (allowed[:, :-1] != 0).any(-1) | (last != 0)


def sample_rows(
    logits: torch.Tensor,
    specs: list[SamplerSpec],
    allowed: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[np.ndarray, list[RowResult] | None]:
    """Sample (and probe) every output row of a batch.

    logits: float [O, V]; specs: one `SamplerSpec` per row; allowed: optional bool [O, V]
    (True = allowed) from the per-request logit masks, or the same packed as int32 words
    [O, ceil(V/32)] (bit j of word w is token 32w+j). Returns tokens as numpy int32 [O] (-1
    where `spec.sample` is False) and, only when some row asked for a probe, one `RowResult`
    per row (else None).

    >>> from pie.ipc.messages import SamplerSpec
    >>> tokens, rows = sample_rows(torch.tensor([[0.0, 3.0, 1.0]]), [SamplerSpec()])
    >>> tokens.tolist(), rows
    ([1], None)
    """
    _check(logits, specs, allowed)
    o, v = logits.shape
    if backend is None:
        backend = "triton" if logits.is_cuda else "torch"
    if backend not in ("torch", "triton"):
        raise ValueError(f"unknown sampling backend {backend!r}; use 'torch' or 'triton'")
    device = logits.device
    logits = logits.to(torch.float32).contiguous()
    if allowed is not None:
        allowed = allowed.contiguous()
        some = _any_allowed(allowed, logits.shape[1])
        if not bool(some.all()):
            row = int((~some).nonzero()[0, 0])
            raise ValueError(f"the logit mask of row {row} allows no token; allow at least one")

    tokens = np.full(o, -1, dtype=np.int32)
    sample_mask = np.array([s.sample for s in specs], dtype=bool)
    if sample_mask.any():
        rows = RowParams(specs)
        state = SamplingState(logits, backend, allowed)
        for stage in registered_stages():
            values = stage.read(rows, state)
            if values is None:
                continue
            params = _to_device(values, device)
            if backend == "triton":
                stage.apply_triton(state, params)
            else:
                stage.apply_torch(state, params)
                if not stage.keeps_candidates:
                    state.candidates = None
        temperature = torch.from_numpy(rows.column("temperature", 0.0).astype(np.float32)).to(
            device
        )
        seeds = torch.from_numpy(_seeds(specs)).to(device)
        select = select_triton if backend == "triton" else select_torch
        chosen = select(state, temperature, seeds).cpu().numpy().astype(np.int32)
        tokens = np.where(sample_mask, chosen, -1).astype(np.int32)

    if not any(wants_probe(s) for s in specs):
        return tokens, None
    masked = logits if allowed is None else logits.masked_fill(~allowed_rows(allowed, v), NEG_INF)
    return tokens, probe_rows(masked, specs, tokens, backend)
