"""Stage 100 (extension): locally typical sampling, `SamplerSpec.extra["typical_p"]`.

Meister et al., "Locally Typical Sampling" (the `typical_p` of Hugging Face transformers). With
q = softmax(z) over the kept tokens and entropy H = -sum q log q, a token's atypicality is
|-log q_i - H|, which equals |z_i - E_q[z]|. Keep the least atypical tokens until their mass
reaches tau: token i is kept iff the mass of tokens strictly less atypical than i is below tau
(ties all kept; the least atypical token always survives). `typical_p >= 1` switches it off.

This module is the worked example of docs/kernels.md: a Triton kernel (a bisection over the
int32 key of the atypicality), a torch path (a sort of the atypicality, only on active rows) and
a float64 reference, registered with `@register` and picked up without edits elsewhere.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import triton
import triton.language as tl

from pie.kernels.sampling.rowops import launch_rows, row_block
from pie.kernels.sampling.stage import Stage, register
from pie.kernels.sampling.state import NEG_INF, SamplingState

_INF_KEY = 0x7F800000  # int32 bits of +inf: the key of a removed token's atypicality


@triton.jit
def _typical_p_kernel(Z, Tau, V, stride_z, BLOCK: tl.constexpr, INF_KEY: tl.constexpr):
    # one program per row: 2 statistic passes + 32 mass passes + 1 masking pass over V fp32
    row = tl.program_id(0)
    tau = tl.load(Tau + row)
    if tau < 1.0:
        offs0 = tl.arange(0, BLOCK)
        m = tl.full([], float("-inf"), tl.float32)
        for start in range(0, V, BLOCK):
            z = tl.load(
                Z + row * stride_z + start + offs0, mask=start + offs0 < V, other=float("-inf")
            )
            m = tl.maximum(m, tl.max(z, 0))
        total = tl.zeros([], tl.float32)
        weighted = tl.zeros([], tl.float32)
        for start in range(0, V, BLOCK):
            z = tl.load(
                Z + row * stride_z + start + offs0, mask=start + offs0 < V, other=float("-inf")
            )
            e = tl.exp(z - m)
            total += tl.sum(e, 0)
            weighted += tl.sum(e * tl.where(e > 0.0, z, 0.0), 0)
        mean = weighted / total  # E_q[z]
        target = tau * total
        # smallest key t with mass(key(|z - mean|) <= t) >= target (non-negative floats: the
        # raw int32 bits are already ordered)
        lo = tl.full([], -1, tl.int64)
        hi = tl.full([], INF_KEY, tl.int64)
        for _ in range(32):
            mid = lo + (hi - lo) // 2
            mass = tl.zeros([], tl.float32)
            for start in range(0, V, BLOCK):
                z = tl.load(
                    Z + row * stride_z + start + offs0, mask=start + offs0 < V, other=float("-inf")
                )
                key = tl.abs(z - mean).to(tl.int32, bitcast=True)
                mass += tl.sum(tl.where(key <= mid, tl.exp(z - m), 0.0), 0)
            take = (mass >= target) & (mass > 0.0)  # tau <= 0 still keeps the least atypical
            hi = tl.where(take, mid, hi)
            lo = tl.where(take, lo, mid)
        for start in range(0, V, BLOCK):
            offs = start + offs0
            z = tl.load(Z + row * stride_z + offs, mask=offs < V)
            key = tl.abs(z - mean).to(tl.int32, bitcast=True)
            keep = (key <= hi) & (z > float("-inf"))
            tl.store(Z + row * stride_z + offs, tl.where(keep, z, float("-inf")), mask=offs < V)


@register
class TypicalP(Stage):
    name = "typical_p"
    order = 100
    params: ClassVar[dict[str, float]] = {"typical_p": 1.0}

    def example_params(
        self, num_rows: int, vocab: int, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        return {"typical_p": rng.choice([1.0, 0.0, 0.2, 0.5, 0.9], num_rows)}

    def apply_torch(self, state: SamplingState, p: dict[str, torch.Tensor]) -> None:
        tau = p["typical_p"]
        rows = (tau < 1).nonzero()[:, 0]
        z_all = state.writable()
        z = z_all[rows]  # [n, V]
        m = z.max(-1, keepdim=True).values
        e = torch.exp(z - m)
        total = e.sum(-1, keepdim=True)
        mean = torch.where(e > 0, e * z, torch.zeros_like(z)).sum(-1, keepdim=True) / total
        score = (z - mean).abs()  # +inf for removed tokens
        s_sorted, order = torch.sort(score, dim=-1)
        e_sorted = e.gather(1, order)
        below = torch.cumsum(e_sorted, -1) - e_sorted  # mass strictly less atypical (ties aside)
        n_keep = (below < tau[rows, None] * total).sum(-1).clamp(min=1)
        cut = s_sorted.gather(1, (n_keep - 1)[:, None])
        z_all[rows] = z.masked_fill(score > cut, NEG_INF)

    def apply_triton(self, state: SamplingState, p: dict[str, torch.Tensor]) -> None:
        z = state.writable()
        rows, stride = launch_rows(z)
        _typical_p_kernel[(rows,)](
            z, p["typical_p"], z.shape[1], stride, BLOCK=row_block(z.shape[1]), INF_KEY=_INF_KEY
        )

    def reference(
        self, z: torch.Tensor, p: dict[str, torch.Tensor], state: SamplingState
    ) -> torch.Tensor:
        out = z.clone()
        for r in range(z.shape[0]):
            tau = float(p["typical_p"][r])
            if tau >= 1:
                continue
            q = torch.softmax(z[r], -1)
            logq = torch.log_softmax(z[r], -1)
            entropy = -(q[q > 0] * logq[q > 0]).sum()
            score = (-logq - entropy).abs()
            keep = torch.tensor([float(q[score < score[i]].sum()) < tau for i in range(z.shape[1])])
            keep[torch.argmin(score)] = True
            out[r] = z[r].masked_fill(~keep | (q == 0), NEG_INF)
        return out
