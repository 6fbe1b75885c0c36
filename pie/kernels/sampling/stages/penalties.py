"""Stage 20: repetition, presence and frequency penalties over each row's `history`.

For a token that occurs c > 0 times in the row's history (`SamplerSpec.history`, int32 ids):

    z = z / repetition_penalty   if z > 0 else   z * repetition_penalty
    z = z - frequency_penalty * c - presence_penalty

Tokens that never occur are untouched. Neutral values: 1, 0, 0.

The torch path touches only the (row, token) pairs of the history; the Triton kernel reads a
dense per-row count matrix built on the device.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import triton
import triton.language as tl

from pie.kernels.sampling.rowops import launch_rows, row_block
from pie.kernels.sampling.stage import Stage, register
from pie.kernels.sampling.state import RowParams, SamplingState


@triton.jit
def _penalty_kernel(Z, Counts, Rep, Pres, Freq, V, stride_z, stride_c, BLOCK: tl.constexpr):
    # grid (rows, blocks): read BLOCK fp32 + BLOCK int32, write BLOCK fp32
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < V
    z = tl.load(Z + row * stride_z + offs, mask=valid)
    c = tl.load(Counts + row * stride_c + offs, mask=valid, other=0)
    rep = tl.load(Rep + row)
    pres = tl.load(Pres + row)
    freq = tl.load(Freq + row)
    pen = tl.where(z > 0, z / rep, z * rep)
    pen = pen - freq * c.to(tl.float32) - pres
    tl.store(Z + row * stride_z + offs, tl.where(c > 0, pen, z), mask=valid)


def _history_pairs(
    p: dict[str, torch.Tensor], vocab: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, tokens, counts) of the distinct (row, token) pairs in the histories."""
    flat = p["history_rows"] * vocab + p["history_ids"]
    uniq, counts = torch.unique(flat, return_counts=True)
    return uniq // vocab, uniq % vocab, counts


@register
class Penalties(Stage):
    name = "penalties"
    order = 20
    params: ClassVar[dict[str, float]] = {
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
    }
    keeps_candidates = False

    def read(self, rows: RowParams, state: SamplingState) -> dict[str, np.ndarray] | None:
        cols = super().read(rows, state)
        if cols is None:
            return None
        ids = [np.frombuffer(s.history, dtype=np.int32) for s in rows.specs]
        if not any(len(h) for h in ids):
            return None
        hist = np.concatenate(ids).astype(np.int64)
        if hist.size and (hist.min() < 0 or hist.max() >= state.vocab_size):
            bad = int(hist[(hist < 0) | (hist >= state.vocab_size)][0])
            raise ValueError(
                f"sampler history holds token id {bad}, outside the vocabulary of "
                f"{state.vocab_size}; send ids in [0, {state.vocab_size})"
            )
        cols["history_ids"] = hist
        cols["history_rows"] = np.repeat(np.arange(len(ids)), [len(h) for h in ids])
        return cols

    def example_params(
        self, num_rows: int, vocab: int, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        n = rng.integers(0, 12, num_rows)
        return {
            "repetition_penalty": rng.choice([1.0, 1.1, 1.5, 0.8], num_rows),
            "presence_penalty": rng.choice([0.0, 0.5, -0.3], num_rows),
            "frequency_penalty": rng.choice([0.0, 0.2], num_rows),
            "history_ids": rng.integers(0, vocab, int(n.sum())),
            "history_rows": np.repeat(np.arange(num_rows), n),
        }

    def apply_torch(self, state: SamplingState, p: dict[str, torch.Tensor]) -> None:
        z = state.writable()
        r, t, c = _history_pairs(p, z.shape[1])
        x = z[r, t]
        rep = p["repetition_penalty"][r]
        x = torch.where(x > 0, x / rep, x * rep)
        x = x - p["frequency_penalty"][r] * c.to(torch.float32) - p["presence_penalty"][r]
        z[r, t] = x

    def apply_triton(self, state: SamplingState, p: dict[str, torch.Tensor]) -> None:
        z = state.writable()
        rows, stride = launch_rows(z)
        counts = torch.zeros(z.shape, dtype=torch.int32, device=z.device)
        counts.view(-1).index_add_(
            0,
            p["history_rows"] * z.shape[1] + p["history_ids"],
            torch.ones_like(p["history_ids"], dtype=torch.int32),
        )
        block = row_block(z.shape[1])
        _penalty_kernel[(rows, triton.cdiv(z.shape[1], block))](
            z,
            counts,
            p["repetition_penalty"],
            p["presence_penalty"],
            p["frequency_penalty"],
            z.shape[1],
            stride,
            counts.stride(0),
            BLOCK=block,
        )

    def reference(
        self, z: torch.Tensor, p: dict[str, torch.Tensor], state: SamplingState
    ) -> torch.Tensor:
        out = z.clone()
        rows = p["history_rows"].cpu().tolist()
        ids = p["history_ids"].cpu().tolist()
        for r in range(z.shape[0]):
            seen = [t for rr, t in zip(rows, ids) if rr == r]
            rep = float(p["repetition_penalty"][r])
            pres = float(p["presence_penalty"][r])
            freq = float(p["frequency_penalty"][r])
            for t in set(seen):
                x = float(z[r, t])
                x = x / rep if x > 0 else x * rep
                out[r, t] = x - freq * seen.count(t) - pres
        return out
