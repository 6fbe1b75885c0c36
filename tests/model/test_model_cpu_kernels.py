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
