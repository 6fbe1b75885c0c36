"""Every registered sampling stage: Triton path == torch path == float64 reference.

Parametrized over the registry, so a new stage module is tested here without edits.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pie.kernels.sampling import SamplingState, registered_stages
from pie.kernels.sampling.stage import Stage, register

STAGES = registered_stages()


def _params(values: dict[str, np.ndarray], device: str) -> dict[str, torch.Tensor]:
    out = {}
    for name, a in values.items():
        a = np.asarray(a)
        t = torch.from_numpy(a.astype(np.float32) if a.dtype.kind == "f" else a.astype(np.int64))
        out[name] = t.to(device)
    return out


def _batch(num_rows: int, vocab: int, seed: int, device: str):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_rows, vocab, generator=g) * 3
    logits[:, 40:60] = logits[:, 0:20]  # exact ties
    logits[:, 100:110] = float("-inf")  # tokens removed by an earlier stage
    allowed = torch.rand(num_rows, vocab, generator=g) < 0.8
    allowed[:, 0] = True
    return logits.to(device), allowed.to(device)


@pytest.mark.parametrize("vocab", [300, 1500])
@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_stage_triton_equals_torch_equals_reference(stage: Stage, vocab: int, device: str):
    rng = np.random.default_rng(vocab)
    logits, allowed = _batch(8, vocab, vocab, device)
    p = _params(stage.example_params(8, vocab, rng), device)

    on_torch = SamplingState(logits.cpu(), "torch", allowed.cpu())
    stage.apply_torch(on_torch, {k: v.cpu() for k, v in p.items()})
    z_torch = on_torch.dense()

    on_triton = SamplingState(logits, "triton", allowed)
    stage.apply_triton(on_triton, p)
    z_triton = on_triton.dense().cpu()

    z_ref = stage.reference(logits.double().cpu(), {k: v.cpu() for k, v in p.items()}, on_torch)

    kept = torch.isfinite(z_ref)
    assert torch.equal(torch.isfinite(z_torch), kept), "torch path keeps a different set"
    assert torch.equal(torch.isfinite(z_triton), kept), "Triton path keeps a different set"
    torch.testing.assert_close(z_torch[kept].double(), z_ref[kept], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z_triton[kept], z_torch[kept], rtol=1e-6, atol=1e-6)
    assert not torch.equal(z_ref, logits.double().cpu()), "example parameters changed nothing"


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_stage_is_neutral_at_its_neutral_values(stage: Stage):
    if not stage.params:
        pytest.skip("stage has no scalar parameters")
    logits, allowed = _batch(4, 300, 1, "cpu")
    neutral = {k: np.full(4, v) for k, v in stage.params.items()}
    if stage.name == "penalties":
        neutral |= {"history_ids": np.array([1, 2, 3]), "history_rows": np.array([0, 1, 3])}
    state = SamplingState(logits, "torch", allowed)
    stage.apply_torch(state, _params(neutral, "cpu"))
    assert torch.equal(state.dense(), logits)


def test_stage_names_are_unique_and_ordered():
    names = [s.name for s in STAGES]
    assert len(set(names)) == len(names)
    assert names[:6] == ["logit_mask", "penalties", "temperature", "top_k", "top_p", "min_p"]
    assert "typical_p" in names  # discovered from its module, registered nowhere else

    class Clash(Stage):
        name = "top_k"
        order = 1

    with pytest.raises(ValueError, match="already registered"):
        register(Clash)
