"""Rotary position embeddings (rotate-half layout) with the scalings Llama-family models use.

`RotaryEmbedding` turns a flat vector of explicit positions into cos/sin tables once per batch;
every layer of `pie.model.llama` applies them with `apply_rotary`. The frequency formulas follow
the published definitions (default, linear, Llama 3, YaRN) exactly as transformers computes
them, so logits match it bit for bit in float32 up to summation order.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def _inv_freq(
    head_dim: int, theta: float, scaling: dict[str, Any] | None
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [head_dim/2] (float32) and the cos/sin attention factor."""
    exps = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    base = 1.0 / (theta**exps)
    if scaling is None:
        return base, 1.0
    kind = scaling["rope_type"]
    factor = float(scaling.get("factor") or 1.0)
    if kind == "linear":
        return base / factor, 1.0
    if kind == "llama3":
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / base
        inv = torch.where(wavelen > low_wavelen, base / factor, base)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * inv / factor + smooth * inv
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, inv), 1.0
    if kind == "yarn":
        orig = float(scaling["original_max_position_embeddings"])
        attn = scaling.get("attention_factor")
        mscale, mscale_all = scaling.get("mscale"), scaling.get("mscale_all_dim")

        def get_mscale(scale: float, m: float = 1.0) -> float:
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        if attn is None:
            if mscale and mscale_all:
                attn = get_mscale(factor, mscale) / get_mscale(factor, mscale_all)
            else:
                attn = get_mscale(factor)
        beta_fast = scaling.get("beta_fast") or 32
        beta_slow = scaling.get("beta_slow") or 1

        def correction_dim(rot: float) -> float:
            return (head_dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(theta))

        lo, hi = correction_dim(beta_fast), correction_dim(beta_slow)
        if scaling.get("truncate", True):
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, head_dim - 1)
        if lo == hi:
            hi += 0.001  # avoid a zero-width ramp
        ramp = torch.clamp(
            (torch.arange(head_dim // 2, dtype=torch.float32) - lo) / (hi - lo), 0, 1
        )
        pos_freqs = theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
        extrap = 1.0 / pos_freqs
        interp = 1.0 / (factor * pos_freqs)
        keep = 1 - ramp  # share of extrapolation per dimension
        return interp * (1 - keep) + extrap * keep, float(attn)
    raise AssertionError(f"unhandled rope type {kind}")  # ModelConfig validated it


class RotaryEmbedding(torch.nn.Module):
    """cos/sin for explicit positions: `forward(positions [T]) -> (cos, sin) [T, 1, head_dim]`."""

    def __init__(
        self,
        head_dim: int,
        theta: float,
        scaling: dict[str, Any] | None = None,
        freq_factors: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        inv, self.attention_factor = _inv_freq(head_dim, theta, scaling)
        if freq_factors is not None:
            # GGUF files of Llama 3.1+ carry the scaled frequencies as divisors (rope_freqs)
            inv = inv / freq_factors.float()
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # positions: [T] long -> angles [T, D/2] in float32, as transformers does
        freqs = positions[:, None].float() * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        if self.attention_factor != 1.0:
            cos, sin = cos * self.attention_factor, sin * self.attention_factor
        return cos.to(dtype)[:, None, :], sin.to(dtype)[:, None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, H, D]; cos, sin: [T, 1, D]. Rotate-half RoPE (pairs i and i + D/2)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
