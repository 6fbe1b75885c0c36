"""Philox4x32-10 uniforms identical to `triton.language.rand`, and the Gumbel noise built on them.

`tl.rand(seed, offset)` runs Philox4x32-10 with key = (seed low 32 bits, seed high 32 bits) and
counter = (offset, 0, 0, 0), then maps the first output word to [0, 1). `philox_uniform` below
reproduces that stream bit for bit with int64 torch arithmetic, so the torch sampling path and the
Triton kernels draw the same randomness for the same (seed, offset): the same seed gives the
same token on CPU and GPU. Called by the selection stage (`select.py`) and by tests.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

_M32 = 0xFFFFFFFF
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
# Noise uniforms are clamped to [2^-24, 1 - 2^-24]: tl.rand can round to exactly 1.0 in fp32,
# and -log(-log(1.0)) = +inf would pick a token regardless of its logit.
U_MIN = 5.9604645e-08
U_MAX = 0.99999994


def _umulhi32(a: int, b: torch.Tensor) -> torch.Tensor:
    # a * b < 2**64 wraps in int64 but keeps the low 64 bits exact; bits 32..63 are the high word
    return ((b * a) >> 32) & _M32


def _philox(seeds: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """tl.rand for int64 `seeds` and `counters` of broadcastable shapes."""
    if counters.device.type == "cpu":
        return torch.from_numpy(_philox_numpy(seeds.numpy(), counters.numpy()))
    return _philox_torch(seeds, counters)


def _philox_torch(seeds: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    c0 = counters.to(torch.int64) & _M32
    seeds = seeds.to(torch.int64)
    c0, seeds = torch.broadcast_tensors(c0, seeds)
    c1 = torch.zeros_like(c0)
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0 = seeds & _M32
    k1 = (seeds >> 32) & _M32
    for _ in range(10):
        n0 = _umulhi32(_ROUND_B, c2) ^ c1 ^ k0
        n2 = _umulhi32(_ROUND_A, c0) ^ c3 ^ k1
        c1 = (c2 * _ROUND_B) & _M32
        c3 = (c0 * _ROUND_A) & _M32
        c0, c2 = n0, n2
        k0 = (k0 + _KEY_A) & _M32
        k1 = (k1 + _KEY_B) & _M32
    x = torch.where(c0 >= 2**31, c0 - 2**32, c0)  # reinterpret as int32
    x = torch.where(x < 0, -x - 1, x).to(torch.float32)
    return x * torch.tensor(4.6566127342e-10, dtype=torch.float32)


def _philox_numpy(seeds: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """The same rounds in uint64 numpy: on CPU a few hundred tiny torch calls cost more than the
    arithmetic, and numpy's per-call overhead is several times lower."""
    m32 = np.uint64(_M32)
    c0 = counters.astype(np.int64).astype(np.uint64) & m32
    s = seeds.astype(np.int64).astype(np.uint64)
    c0, s = np.broadcast_arrays(c0, s)
    c1 = np.zeros_like(c0)
    c2 = np.zeros_like(c0)
    c3 = np.zeros_like(c0)
    k0 = s & m32
    k1 = s >> np.uint64(32)
    ra, rb = np.uint64(_ROUND_A), np.uint64(_ROUND_B)
    ka, kb = np.uint64(_KEY_A), np.uint64(_KEY_B)
    shift = np.uint64(32)
    for _ in range(10):
        pb = c2 * rb  # < 2**64: exact in uint64
        pa = c0 * ra
        c0, c2 = (pb >> shift) ^ c1 ^ k0, (pa >> shift) ^ c3 ^ k1
        c1, c3 = pb & m32, pa & m32
        k0 = (k0 + ka) & m32
        k1 = (k1 + kb) & m32
    x = c0.astype(np.uint32).view(np.int32)
    x = np.where(x < 0, -(x.astype(np.int64)) - 1, x).astype(np.float32)
    return x * np.float32(4.6566127342e-10)


def philox_uniform(seeds: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Uniforms in [0, 1) equal to `tl.rand(seed, offset)`, one seed per row.

    seeds: [O] int64; offsets: [O, K] or [K] (taken modulo 2**32). Returns [O, K] fp32.
    """
    return _philox(seeds[:, None], offsets if offsets.dim() == 2 else offsets[None, :])


def philox_uniform_pairs(seeds: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Like `philox_uniform` but elementwise: seeds [N] and offsets [N] -> [N]."""
    return _philox(seeds, offsets)


def gumbel_noise(seeds: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """-log(-log(u)) of the clamped uniforms of `philox_uniform(seeds, offsets)`: [O, K] fp32."""
    u = philox_uniform(seeds, offsets).clamp_(U_MIN, U_MAX)
    return -torch.log(-torch.log(u))


def gumbel_noise_pairs(seeds: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Elementwise `gumbel_noise`: seeds [N] and offsets [N] -> [N]."""
    u = philox_uniform_pairs(seeds, offsets).clamp_(U_MIN, U_MAX)
    return -torch.log(-torch.log(u))


@triton.jit
def gumbel_noise_tl(seed, offsets):
    """Triton twin of `gumbel_noise` for one row: the same values for the same (seed, offsets)."""
    u = tl.rand(seed, offsets)
    u = tl.minimum(tl.maximum(u, 5.9604645e-08), 0.99999994)
    return -tl.log(-tl.log(u))


@triton.jit
def _uniform_kernel(Seeds, Offsets, Out, K, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    seed = tl.load(Seeds + row)
    offs = tl.arange(0, BLOCK)
    for start in range(0, K, BLOCK):
        idx = start + offs
        off = tl.load(Offsets + row * K + idx, mask=idx < K, other=0)
        tl.store(Out + row * K + idx, tl.rand(seed, off), mask=idx < K)


def philox_uniform_triton(seeds: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """`tl.rand` itself for [O] seeds and [O, K] int32 offsets (for tests of `philox_uniform`)."""
    offsets = offsets.to(torch.int32).contiguous()
    out = torch.empty(offsets.shape, dtype=torch.float32, device=offsets.device)
    _uniform_kernel[(offsets.shape[0],)](
        seeds.to(torch.int64), offsets, out, offsets.shape[1], BLOCK=1024
    )
    return out
