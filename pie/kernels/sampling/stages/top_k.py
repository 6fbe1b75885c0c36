"""Stage 40: top-k. Keep the tokens whose logit is at least the k-th largest of the row.

Ties: every token equal to the k-th largest value is kept, so a row can keep more than k
tokens. `top_k <= 0` or `top_k >= V` switches the stage off (k larger than the vocabulary keeps
everything). Tokens already removed (-inf) only count when fewer than k finite tokens remain, and
then everything finite is kept.

Triton: an exact bisection over the order-preserving int32 key of the logits (32 counting passes,
no sort). Torch: one `torch.topk` with the batch's largest k, which also seeds the candidate
list that top-p, min-p and selection reuse.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import triton
import triton.language as tl

from pie.kernels.sampling.rowops import NEG_INF_KEY, float_key, launch_rows, row_block
from pie.kernels.sampling.stage import Stage, register
from pie.kernels.sampling.state import NEG_INF, Candidates, RowParams, SamplingState


@triton.jit
def _top_k_kernel(Z, K, V, stride_z, BLOCK: tl.constexpr, NEG_KEY: tl.constexpr):
    # one program per row: 1 + 32 counting passes + 1 masking pass over V fp32
    row = tl.program_id(0)
    k = tl.load(K + row)
    if (k > 0) & (k < V):
        offs0 = tl.arange(0, BLOCK)
        kmax = tl.full([], NEG_KEY, tl.int32)
        for start in range(0, V, BLOCK):
            z = tl.load(
                Z + row * stride_z + start + offs0, mask=start + offs0 < V, other=float("-inf")
            )
            kmax = tl.maximum(kmax, tl.max(float_key(z), 0))
        # largest key t with count(key >= t) >= k
        lo = tl.full([], NEG_KEY, tl.int64)
        hi = kmax.to(tl.int64) + 1
        for _ in range(32):
            mid = lo + (hi - lo) // 2
            cnt = tl.zeros([], tl.int32)
            for start in range(0, V, BLOCK):
                offs = start + offs0
                z = tl.load(Z + row * stride_z + offs, mask=offs < V, other=float("-inf"))
                cnt += tl.sum(((float_key(z) >= mid) & (offs < V)).to(tl.int32), 0)
            take = cnt >= k
            lo = tl.where(take, mid, lo)
            hi = tl.where(take, hi, mid)
        for start in range(0, V, BLOCK):
            offs = start + offs0
            z = tl.load(Z + row * stride_z + offs, mask=offs < V)
            tl.store(
                Z + row * stride_z + offs,
                tl.where(float_key(z) >= lo, z, float("-inf")),
                mask=offs < V,
            )


@register
class TopK(Stage):
    name = "top_k"
    order = 40
    params: ClassVar[dict[str, float]] = {"top_k": 0.0}
    keeps_candidates = True

    def read(self, rows: RowParams, state: SamplingState) -> dict[str, np.ndarray] | None:
        k = rows.column("top_k", 0.0).astype(np.int64)
        active = (k > 0) & (k < state.vocab_size)
        if not active.any():
            return None
        return {"top_k": np.where(active, k, 0)}

    def example_params(
        self, num_rows: int, vocab: int, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        return {"top_k": rng.choice([0, 1, 5, 20, vocab // 2, vocab + 3], num_rows)}

    def apply_torch(self, state: SamplingState, p: dict[str, torch.Tensor]) -> None:
        v = state.vocab_size
        k = p["top_k"]
        active = (k > 0) & (k < v)
        if not bool(active.any()):
            return
        k = torch.where(active, k, torch.ones_like(k))
        if state.threshold is not None:
            state.dense()
        kmax = int(k.max())
        # one extra candidate tells whether ties at the k-th value extend past the list
        n = min(kmax + 1, v)
        raw, ids = torch.topk(state.z, n, dim=-1, sorted=True)  # [O, n] descending
        # a pending temperature divides every row by a positive number: same order, and the
        # same fp32 division `dense()` would do, so the values equal the scaled row exactly
        values = raw / state.scale[:, None] if state.scale is not None else raw
        kth = values.gather(1, (k - 1).clamp(min=0)[:, None])[:, 0]
        threshold = torch.where(active, kth, torch.full_like(kth, NEG_INF))
        if n == v:
            complete = torch.ones_like(active)
        else:
            complete = active & (values[:, -1] < threshold)
            maybe = active & ~complete
            if bool(maybe.any()):  # ties reach the end of the list, or fewer than k finite
                rows = maybe.nonzero()[:, 0]
                thr = threshold[rows, None]
                zr, vr = state.dense()[rows], values[rows]
                outside = ((zr >= thr) & (zr > NEG_INF)).sum(-1)  # kept finite tokens of the row
                inside = ((vr >= thr) & (vr > NEG_INF)).sum(-1)  # ... among the candidates
                complete[rows] = outside == inside
        state.candidates = Candidates(values=values, ids=ids, complete=complete)
        state.remove_below(threshold)

    def apply_triton(self, state: SamplingState, p: dict[str, torch.Tensor]) -> None:
        z = state.writable()
        rows, stride = launch_rows(z)
        _top_k_kernel[(rows,)](
            z, p["top_k"], z.shape[1], stride, BLOCK=row_block(z.shape[1]), NEG_KEY=NEG_INF_KEY
        )

    def reference(
        self, z: torch.Tensor, p: dict[str, torch.Tensor], state: SamplingState
    ) -> torch.Tensor:
        out = z.clone()
        for r in range(z.shape[0]):
            k = int(p["top_k"][r])
            if 0 < k < z.shape[1]:
                kth = torch.sort(z[r], descending=True).values[k - 1]
                out[r] = z[r].masked_fill(z[r] < kth, NEG_INF)
        return out
