"""Binary run-length encoded (BRLE) masks -> bool rows and packed bitmasks.

Runs alternate starting with *False* (see `pie.ipc.messages`). `AttentionPlan.build` decodes
attention masks with `brle_decode`; the worker turns a request's logit mask into the `allowed`
rows of `sample_rows` with `brle_to_bool` (an empty encoding allows everything), and the Triton
mask stage reads the packed int32 words of `pack_bitmask`. All work is vectorised numpy/torch:
no Python loop per run.
"""

from __future__ import annotations

import numpy as np
import torch


def _check_runs(runs: np.ndarray, length: int) -> int:
    total = int(runs.sum()) if runs.size else 0
    if runs.size and int(runs.min()) < 0:
        raise ValueError("run lengths of a mask must be non-negative")
    if total > length:
        raise ValueError(f"mask covers {total} positions but the row has only {length}")
    return total


def brle_decode(runs: np.ndarray, length: int) -> np.ndarray:
    """Decode one BRLE to a bool row of `length`; positions past the last run are False.

    >>> brle_decode(np.array([2, 3]), 6).tolist()
    [False, False, True, True, True, False]
    """
    runs = np.asarray(runs, dtype=np.int64)
    total = _check_runs(runs, length)
    out = np.zeros(length, dtype=bool)
    out[:total] = np.repeat((np.arange(runs.size) & 1).astype(bool), runs)
    return out


def brle_to_bool(runs: np.ndarray | bytes | list[int], length: int) -> np.ndarray:
    """Decode a BRLE logit mask into a bool row of `length` (True = allowed).

    An empty encoding allows everything; positions past the last run are masked out.

    >>> brle_to_bool([2, 3], 6).tolist()
    [False, False, True, True, True, False]
    """
    if isinstance(runs, (bytes, bytearray, memoryview)):
        runs = np.frombuffer(runs, dtype=np.uint32)
    runs = np.asarray(runs, dtype=np.int64)
    if runs.size == 0:
        return np.ones(length, dtype=bool)
    return brle_decode(runs, length)


def bool_to_bitmask(allowed: np.ndarray) -> np.ndarray:
    """Pack bool rows [..., V] into int32 words [..., ceil(V/32)]; bit j of word w is token 32w+j."""
    allowed = np.asarray(allowed, dtype=bool)
    v = allowed.shape[-1]
    pad = (-v) % 32
    if pad:
        allowed = np.concatenate([allowed, np.zeros(allowed.shape[:-1] + (pad,), bool)], -1)
    packed = np.packbits(allowed, axis=-1, bitorder="little")  # uint8, little-endian bits
    return np.ascontiguousarray(packed).view(np.int32)


def brle_to_bitmask(runs: np.ndarray | bytes | list[int], length: int) -> np.ndarray:
    """Decode a BRLE logit mask straight into packed int32 words [ceil(length/32)]."""
    return bool_to_bitmask(brle_to_bool(runs, length))


def pack_bitmask(allowed: torch.Tensor) -> torch.Tensor:
    """Torch version of `bool_to_bitmask` that stays on the tensor's device: [O, V] -> [O, W]."""
    o, v = allowed.shape
    w = (v + 31) // 32
    padded = torch.zeros(o, w * 32, dtype=torch.int64, device=allowed.device)
    padded[:, :v] = allowed
    shifts = torch.arange(32, device=allowed.device, dtype=torch.int64)
    words = (padded.view(o, w, 32) << shifts).sum(-1)  # < 2**32: fits int64
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack_bitmask(words: torch.Tensor, length: int) -> torch.Tensor:
    """Inverse of `pack_bitmask`: int32 [O, W] -> bool [O, length]."""
    shifts = torch.arange(32, device=words.device, dtype=torch.int32)
    bits = (words.unsqueeze(-1) >> shifts) & 1
    return bits.bool().reshape(words.shape[0], -1)[:, :length]


def allowed_rows(allowed: torch.Tensor, vocab: int) -> torch.Tensor:
    """A logit mask as bool [O, V]: bool rows pass through, packed int32 words are unpacked."""
    return unpack_bitmask(allowed, vocab) if allowed.dtype == torch.int32 else allowed
