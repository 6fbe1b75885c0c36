"""Known gaps of the Triton interpreter that the kernels work around.

Strict xfail: the day upstream fixes one, the test passes, CI goes red, and the workaround
(the DOT_F32 upcast and the fp32 output buffer under the interpreter in
`pie.kernels.attention`) can be dropped.
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

pytestmark = pytest.mark.interpreter_only


@triton.jit
def _dot16(A, B, C):
    r = tl.arange(0, 16)
    a = tl.load(A + r[:, None] * 16 + r[None, :])
    b = tl.load(B + r[:, None] * 16 + r[None, :])
    tl.store(C + r[:, None] * 16 + r[None, :], tl.dot(a, b))


@triton.jit
def _square(X, Y):
    r = tl.arange(0, 16)
    x = tl.load(X + r)
    tl.store(Y + r, x * x)


@pytest.mark.xfail(
    strict=True, reason="triton#11584: the interpreter multiplies raw bf16 bits in tl.dot"
)
def test_bf16_dot_in_interpreter():
    a, b = torch.randn(16, 16).bfloat16(), torch.randn(16, 16).bfloat16()
    c = torch.empty(16, 16)
    _dot16[(1,)](a, b, c)
    assert torch.allclose(c, a.float() @ b.float(), atol=1e-2)


@pytest.mark.xfail(
    strict=True, reason="the interpreter stores bf16 as uint16: arithmetic is integer math"
)
def test_bf16_elementwise_in_interpreter():
    x = torch.randn(16).bfloat16()
    y = torch.empty(16, dtype=torch.bfloat16)
    _square[(1,)](x, y)
    assert torch.allclose(y.float(), (x * x).float(), atol=1e-2)


@triton.jit
def _to_bf16(X, Y):
    r = tl.arange(0, 1024)
    tl.store(Y + r, tl.load(X + r).to(tl.bfloat16))


@pytest.mark.xfail(strict=True, reason="the interpreter truncates fp32 -> bf16 instead of rounding")
def test_bf16_store_rounds_to_nearest_in_interpreter():
    x = torch.randn(1024)
    y = torch.empty(1024, dtype=torch.bfloat16)
    _to_bf16[(1,)](x, y)
    assert torch.equal(y, x.bfloat16())


def test_fp16_dot_in_interpreter_is_exact_enough():
    """The control: fp16 needs no workaround, so the kernels only upcast bf16."""
    a, b = torch.randn(16, 16).half(), torch.randn(16, 16).half()
    c = torch.empty(16, 16)
    _dot16[(1,)](a, b, c)
    assert torch.allclose(c, a.float() @ b.float(), atol=1e-2)
