"""The model's forward pass with the C++ CPU kernels (fused block layers) and without."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pie.kernels import cpu_kernels
from pie.kernels.attention import AttentionPlan
from pie.model import llama, load_model

pytestmark = pytest.mark.skipif(
    not cpu_kernels.available(), reason="the C++ CPU kernels could not be built here"
)


def test_model_forward_with_and_without_fused_layers(tiny_checkpoints, monkeypatch):
    """A ragged prefill + decode through the fused layers equals the torch ops' within 1e-4."""
    for path in tiny_checkpoints.values():
        model = load_model(str(path)).model
        kv_a, kv_b = model.allocate_kv(16, 4), model.allocate_kv(16, 4)
        lens = [7, 3]
        plan = AttentionPlan.build(
            np.array([0, 7, 10]),
            np.array([0, 1, 2, 3, 4]),
            np.array([0, 2, 3]),
            np.array([3, 3]),
            4,
        )
        ids = torch.arange(3, 13)
        pos = torch.tensor([p for n in lens for p in range(n)])
        rows = torch.arange(10)
        fused = model.forward_batch(ids, pos, plan, kv_a, rows)
        monkeypatch.setattr(llama, "_cpu_ops", lambda: None)
        plain = model.forward_batch(ids, pos, plan, kv_b, rows)
        monkeypatch.undo()
        assert (fused - plain).abs().max().item() < 1e-4
        assert torch.allclose(kv_a, kv_b, atol=1e-5)


def test_int8_rescale_folded_into_the_next_pass_gives_the_same_bits(tiny_checkpoints, monkeypatch):
    """Above 32 rows the int8 projections hand their per-row rescale to the next C++ pass
    (SiLU*up, the residual add + norm, the residual add); the logits and the KV are bit for
    bit those of rescaling first."""
    for path in tiny_checkpoints.values():
        model = load_model(str(path)).model
        model.quantize("int8")
        n = 40  # one 40-token prefill: more rows than ONEDNN_MIN_ROWS
        assert n > llama.ONEDNN_MIN_ROWS
        plan = AttentionPlan.build(
            np.array([0, n]), np.arange(10), np.array([0, 10]), np.array([4]), 4
        )
        ids = torch.arange(3, 3 + n)
        pos = torch.arange(n)
        rows = torch.arange(n)
        kv_a, kv_b = model.allocate_kv(12, 4), model.allocate_kv(12, 4)
        calls: list[bool] = []

        def spy(self, x, ops, unscaled=llama.Int8Linear.unscaled, calls=calls):
            y, s = unscaled(self, x, ops)
            calls.append(s is not None)
            return y, s

        monkeypatch.setattr(llama.Int8Linear, "unscaled", spy)
        folded = model.forward_batch(ids, pos, plan, kv_a, rows)
        assert calls and all(calls)  # every foldable projection took the folded path
        monkeypatch.setattr(llama.Int8Linear, "unscaled", lambda self, x, ops: (self(x), None))
        first = model.forward_batch(ids, pos, plan, kv_b, rows)
        monkeypatch.undo()
        assert torch.equal(folded, first)
        assert torch.equal(kv_a, kv_b)
