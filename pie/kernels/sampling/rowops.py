"""Small helpers shared by the sampling stages' Triton kernels and launchers.

`float_key` maps fp32 to int32 preserving order, so thresholds can be found by an exact integer
bisection instead of a sort; `row_block` picks the per-row block width (big blocks under the
interpreter, where the cost is per operation, not per element).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

NEG_INF_KEY = -2139095041  # float_key(-inf)


@triton.jit
def float_key(z):
    """Order-preserving fp32 -> int32 map (monotone for every non-NaN value, -inf included)."""
    bits = z.to(tl.int32, bitcast=True)
    return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def row_block(vocab: int) -> int:
    """Elements per block when one program walks a whole row."""
    cap = 65536 if interpreting() else 4096
    return min(triton.next_power_of_2(max(vocab, 16)), cap)


def launch_rows(z: torch.Tensor) -> tuple[int, int]:
    """(rows, row stride) of a contiguous [O, V] working tensor, checked."""
    assert z.dim() == 2 and z.stride(1) == 1 and z.dtype == torch.float32
    return z.shape[0], z.stride(0)
