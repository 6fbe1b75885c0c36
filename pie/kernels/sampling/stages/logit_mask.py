"""Stage 10: the logit mask. Tokens the request's mask disallows get -inf.

The mask comes from `sample_rows(..., allowed=...)`: either bool [O, V] (True = allowed), which
the worker builds from each request's BRLE logit mask, or packed int32 words [O, ceil(V/32)]
(bit j of word w is token 32w+j, the xgrammar convention, as a grammar engine produces). The
Triton kernel reads either form as given (no packing pass, no [O, V] temporaries); the torch
path unpacks words to bool.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from pie.kernels.brle import allowed_rows
from pie.kernels.sampling.rowops import launch_rows, row_block
from pie.kernels.sampling.stage import Stage, register
from pie.kernels.sampling.state import NEG_INF, RowParams, SamplingState


@triton.jit
def _logit_mask_kernel(Z, Mask, V, stride_z, stride_m, BLOCK: tl.constexpr, PACKED: tl.constexpr):
    # grid (rows, blocks): read BLOCK fp32 + BLOCK bytes (or BLOCK/32 words), write BLOCK fp32
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < V
    z = tl.load(Z + row * stride_z + offs, mask=valid)
    if PACKED:
        word = tl.load(Mask + row * stride_m + offs // 32, mask=valid, other=0)
        ok = ((word >> (offs % 32)) & 1) != 0
    else:
        ok = tl.load(Mask + row * stride_m + offs, mask=valid, other=0) != 0
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
        state.writable().masked_fill_(~allowed_rows(state.allowed, state.vocab_size), NEG_INF)

    def apply_triton(self, state: SamplingState, p: dict[str, torch.Tensor]) -> None:
        assert state.allowed is not None
        z = state.writable()
        rows, stride = launch_rows(z)
        packed = state.allowed.dtype == torch.int32
        mask = state.allowed if packed else state.allowed.view(torch.uint8)
        assert mask.stride(-1) == 1
        block = row_block(z.shape[1])
        _logit_mask_kernel[(rows, triton.cdiv(z.shape[1], block))](
            z, mask, z.shape[1], stride, mask.stride(0), BLOCK=block, PACKED=packed
        )

    def reference(
        self, z: torch.Tensor, p: dict[str, torch.Tensor], state: SamplingState
    ) -> torch.Tensor:
        assert state.allowed is not None
        return z.masked_fill(~allowed_rows(state.allowed, z.shape[1]).cpu(), NEG_INF)
