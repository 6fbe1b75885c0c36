"""Stage 30: temperature. Rows with temperature T > 0 divide their logits by T.

T == 0 (or below) means greedy: the row is left unscaled and `select` takes its argmax.
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
def _temperature_kernel(Z, T, V, stride_z, BLOCK: tl.constexpr):
    # grid (rows, blocks): read and write BLOCK fp32
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    t = tl.load(T + row)
    z = tl.load(Z + row * stride_z + offs, mask=offs < V)
    tl.store(Z + row * stride_z + offs, z / t, mask=offs < V)


@register
class Temperature(Stage):
    name = "temperature"
    order = 30
    params: ClassVar[dict[str, float]] = {"temperature": 1.0}
    keeps_candidates = False

    def read(self, rows: RowParams, state: SamplingState) -> dict[str, np.ndarray] | None:
        t = rows.column("temperature", 0.0)
        scaled = (t > 0) & (t != 1)
        if not scaled.any():
            return None
        return {"temperature": np.where(t > 0, t, 1.0)}

    def example_params(
        self, num_rows: int, vocab: int, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        return {"temperature": rng.choice([1.0, 0.5, 0.7, 1.3, 2.0], num_rows)}

    def apply_torch(self, state: SamplingState, p: dict[str, torch.Tensor]) -> None:
        state.divide(p["temperature"])

    def apply_triton(self, state: SamplingState, p: dict[str, torch.Tensor]) -> None:
        z = state.writable()
        rows, stride = launch_rows(z)
        block = row_block(z.shape[1])
        _temperature_kernel[(rows, triton.cdiv(z.shape[1], block))](
            z, p["temperature"], z.shape[1], stride, BLOCK=block
        )

    def reference(
        self, z: torch.Tensor, p: dict[str, torch.Tensor], state: SamplingState
    ) -> torch.Tensor:
        return z / p["temperature"].double().cpu()[:, None]
