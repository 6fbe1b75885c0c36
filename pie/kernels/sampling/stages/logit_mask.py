"""Stage 10: the logit mask. Tokens the request's mask disallows get -inf.

The mask comes from `sample_rows(..., allowed=...)` (bool [O, V], True = allowed), which the
worker builds from each request's BRLE logit mask. The Triton kernel reads it packed, 32 tokens
per int32 word (bit j of word w is token 32w+j, the xgrammar convention).
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from pie.kernels.brle import pack_bitmask
from pie.kernels.sampling.rowops import launch_rows, row_block
from pie.kernels.sampling.stage import Stage, register
from pie.kernels.sampling.state import NEG_INF, RowParams, SamplingState


@triton.jit
def _logit_mask_kernel(Z, Words, V, stride_z, stride_w, BLOCK: tl.constexpr):
    # grid (rows, blocks): read BLOCK fp32 + BLOCK/32 words, write BLOCK fp32
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < V
    z = tl.load(Z + row * stride_z + offs, mask=valid)
    word = tl.load(Words + row * stride_w + offs // 32, mask=valid, other=0)
    ok = ((word >> (offs % 32)) & 1) != 0
    tl.store(Z + row * stride_z + offs, tl.where(ok, z, float("-inf")), mask=valid)


@register
class LogitMask(Stage):
    name = "logit_mask"
    order = 10
    keeps_candidates = False

    def read(self, rows: RowParams, state: SamplingState) -> dict[str, np.ndarray] | None:
        return {} if state.allowed is not None else None

    def example_params(
        self, num_rows: int, vocab: int, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        return {}

    def apply_torch(self, state: SamplingState, p: dict[str, torch.Tensor]) -> None:
        assert state.allowed is not None
        state.writable().masked_fill_(~state.allowed, NEG_INF)

    def apply_triton(self, state: SamplingState, p: dict[str, torch.Tensor]) -> None:
        assert state.allowed is not None
        z = state.writable()
        rows, stride = launch_rows(z)
        words = pack_bitmask(state.allowed)
        block = row_block(z.shape[1])
        _logit_mask_kernel[(rows, triton.cdiv(z.shape[1], block))](
            z, words, z.shape[1], stride, words.stride(0), BLOCK=block
        )

    def reference(
        self, z: torch.Tensor, p: dict[str, torch.Tensor], state: SamplingState
    ) -> torch.Tensor:
        assert state.allowed is not None
        return z.masked_fill(~state.allowed.cpu(), NEG_INF)
