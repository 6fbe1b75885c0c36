"""Stage 60: min-p. Keep tokens whose probability is at least min_p times the top probability.

In logits: keep z_i >= max(z) + log(min_p), computed in fp32 on the (temperature-scaled) working
logits. The most likely token always survives. `min_p <= 0` switches the stage off.
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


@triton.jit
def _min_p_kernel(Z, MinP, V, stride_z, BLOCK: tl.constexpr):
    # one program per row: one max pass + one masking pass over V fp32
    row = tl.program_id(0)
    mp = tl.load(MinP + row)
    if mp > 0.0:
        offs0 = tl.arange(0, BLOCK)
        m = tl.full([], float("-inf"), tl.float32)
        for start in range(0, V, BLOCK):
            z = tl.load(
                Z + row * stride_z + start + offs0, mask=start + offs0 < V, other=float("-inf")
            )
            m = tl.maximum(m, tl.max(z, 0))
        threshold = m + tl.log(mp)
        for start in range(0, V, BLOCK):
            offs = start + offs0
            z = tl.load(Z + row * stride_z + offs, mask=offs < V)
            tl.store(
                Z + row * stride_z + offs, tl.where(z >= threshold, z, float("-inf")), mask=offs < V
            )


@register
class MinP(Stage):
    name = "min_p"
    order = 60
    params: ClassVar[dict[str, float]] = {"min_p": 0.0}
    keeps_candidates = True

    def example_params(
        self, num_rows: int, vocab: int, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        return {"min_p": rng.choice([0.0, 0.05, 0.2, 0.9], num_rows)}

    def apply_torch(self, state: SamplingState, p: dict[str, torch.Tensor]) -> None:
        mp = p["min_p"]
        active = mp > 0
        c = state.candidates
        if c is not None and bool(c.complete[active].all()):
            m = c.values[:, 0]  # candidates are sorted and the maximum is never removed
        else:
            m = state.z.amax(-1)  # pending thresholds never remove the maximum either
            if state.scale is not None:
                m = m / state.scale
        threshold = m + torch.log(torch.where(active, mp, torch.ones_like(mp)))
        state.remove_below(threshold, rows=active)

    def apply_triton(self, state: SamplingState, p: dict[str, torch.Tensor]) -> None:
        z = state.writable()
        rows, stride = launch_rows(z)
        _min_p_kernel[(rows,)](z, p["min_p"], z.shape[1], stride, BLOCK=row_block(z.shape[1]))

    def reference(
        self, z: torch.Tensor, p: dict[str, torch.Tensor], state: SamplingState
    ) -> torch.Tensor:
        q = torch.softmax(z, -1)
        mp = p["min_p"].double().cpu()[:, None]
        drop = (q < mp * q.max(-1, keepdim=True).values) & (mp > 0)
        return z.masked_fill(drop, NEG_INF)
