"""Stage 50: top-p (nucleus). Keep the smallest set of most likely tokens holding mass >= p.

Exactly: with probabilities q = softmax(z) over the tokens still kept (so after top-k, the mass
is renormalised over the top-k set), token i is kept iff the mass of the tokens strictly more
likely than i is below p. Ties with the last kept token are all kept, and the most likely
token always survives (p <= 0 keeps only it and its ties). `top_p >= 1` switches the stage off.

Triton: a bisection for the largest logit key t with mass(key >= t) >= p * mass (32 passes, no
sort). Torch: the same cut found on the sorted candidate list of top-k when it is complete,
otherwise on `torch.topk` candidates of growing size (256, 4096, then the whole row) that are
known to reach past the cut. Both are exact; neither sorts a whole vocabulary in the common case.
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
def _top_p_kernel(Z, P, V, stride_z, BLOCK: tl.constexpr, NEG_KEY: tl.constexpr):
    # one program per row: 2 + 32 mass passes + 1 masking pass over V fp32
    row = tl.program_id(0)
    p = tl.load(P + row)
    if p < 1.0:
        offs0 = tl.arange(0, BLOCK)
        m = tl.full([], float("-inf"), tl.float32)
        for start in range(0, V, BLOCK):
            z = tl.load(
                Z + row * stride_z + start + offs0, mask=start + offs0 < V, other=float("-inf")
            )
            m = tl.maximum(m, tl.max(z, 0))
        total = tl.zeros([], tl.float32)
        for start in range(0, V, BLOCK):
            z = tl.load(
                Z + row * stride_z + start + offs0, mask=start + offs0 < V, other=float("-inf")
            )
            total += tl.sum(tl.exp(z - m), 0)
        target = p * total
        # largest key t with mass(key >= t) >= target
        lo = tl.full([], NEG_KEY, tl.int64)
        hi = float_key(m).to(tl.int64) + 1
        for _ in range(32):
            mid = lo + (hi - lo) // 2
            mass = tl.zeros([], tl.float32)
            for start in range(0, V, BLOCK):
                z = tl.load(
                    Z + row * stride_z + start + offs0, mask=start + offs0 < V, other=float("-inf")
                )
                mass += tl.sum(tl.where(float_key(z) >= mid, tl.exp(z - m), 0.0), 0)
            take = mass >= target
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


def _cut(
    values: torch.Tensor, p: torch.Tensor, total: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Threshold per row from candidates sorted descending, and whether the candidates reach it.

    values: [O, K]; p: [O]; total: [O] mass of the whole row relative to values[:, 0].
    """
    e = torch.exp(values - values[:, :1])
    above = torch.cumsum(e, -1) - e  # mass strictly before each candidate (ties aside)
    target = (p * total)[:, None]
    n_keep = (above < target).sum(-1).clamp(min=1)
    threshold = values.gather(1, (n_keep - 1)[:, None])[:, 0]
    # the cut is inside the list iff the mass of all candidates reaches the target
    reached = (above[:, -1] + e[:, -1]) >= target[:, 0]
    return threshold, reached


@register
class TopP(Stage):
    name = "top_p"
    order = 50
    params: ClassVar[dict[str, float]] = {"top_p": 1.0}
    keeps_candidates = True

    def read(self, rows: RowParams, state: SamplingState) -> dict[str, np.ndarray] | None:
        p = rows.column("top_p", 1.0)
        if not (p < 1).any():
            return None
        return {"top_p": p}

    def example_params(
        self, num_rows: int, vocab: int, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        return {"top_p": rng.choice([1.0, 0.0, 0.3, 0.8, 0.95], num_rows)}

    def apply_torch(self, state: SamplingState, p: dict[str, torch.Tensor]) -> None:
        top_p = p["top_p"]
        active = top_p < 1
        c = state.candidates
        if c is not None and bool(c.complete[active].all()):
            # every kept token is a candidate: the row's mass is the candidates' mass
            e = torch.exp(c.values - c.values[:, :1])
            threshold, _ = _cut(c.values, top_p, e.sum(-1))
        else:
            z = state.dense()
            m = z.amax(-1, keepdim=True)
            total = torch.exp(z - m).sum(-1)
            k = min(256, z.shape[1])
            while True:
                values, ids = torch.topk(z, k, dim=-1, sorted=True)
                threshold, reached = _cut(values, top_p, total)
                if bool(reached[active].all()) or k == z.shape[1]:
                    break
                k = min(k * 16, z.shape[1])
            # a row is complete when its candidates hold every token it keeps: it has no finite
            # token past the list, or top-p cut it strictly inside the list
            complete = (values[:, -1] == NEG_INF) | (active & reached & (threshold > values[:, -1]))
            if k == z.shape[1]:
                complete[:] = True
            state.candidates = Candidates(values=values, ids=ids, complete=complete)
        state.remove_below(threshold, rows=active)

    def apply_triton(self, state: SamplingState, p: dict[str, torch.Tensor]) -> None:
        z = state.writable()
        rows, stride = launch_rows(z)
        _top_p_kernel[(rows,)](
            z, p["top_p"], z.shape[1], stride, BLOCK=row_block(z.shape[1]), NEG_KEY=NEG_INF_KEY
        )

    def reference(
        self, z: torch.Tensor, p: dict[str, torch.Tensor], state: SamplingState
    ) -> torch.Tensor:
        out = z.clone()
        for r in range(z.shape[0]):
            top_p = float(p["top_p"][r])
            if top_p >= 1:
                continue
            q = torch.softmax(z[r], -1)
            keep = torch.tensor([float(q[z[r] > z[r, i]].sum()) < top_p for i in range(z.shape[1])])
            keep[torch.argmax(z[r])] = True
            out[r] = z[r].masked_fill(~keep, NEG_INF)
        return out
