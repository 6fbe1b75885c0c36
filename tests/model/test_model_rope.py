"""RoPE frequency scalings against transformers' own definitions, read through our config parser."""

from __future__ import annotations

import pytest
import torch

from pie.model.config import ModelConfig
from pie.model.errors import ModelLoadError
from pie.model.rope import _inv_freq

SCALINGS = [
    {"rope_type": "linear", "factor": 4.0},
    {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
    {
        "rope_type": "yarn",
        "factor": 8.0,
        "original_max_position_embeddings": 4096,
        "beta_fast": 16,
        "beta_slow": 2,
        "mscale": 0.707,
        "mscale_all_dim": 1.0,
    },
    {
        "rope_type": "yarn",
        "factor": 2.0,
        "original_max_position_embeddings": 2048,
        "attention_factor": 1.3,
        "truncate": False,
    },
]


@pytest.mark.parametrize("scaling", SCALINGS, ids=lambda s: s["rope_type"])
def test_rope_scaling_matches_transformers(scaling):
    from transformers import Qwen2Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf_cfg = Qwen2Config(
        hidden_size=256,
        num_attention_heads=4,
        max_position_embeddings=131072,
        rope_parameters={"rope_theta": 500000.0, **scaling},
    )
    ref_inv, ref_attn = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](hf_cfg, torch.device("cpu"))
    cfg = ModelConfig.from_hf(hf_cfg.to_dict())
    assert cfg.rope_scaling["rope_type"] == scaling["rope_type"] and cfg.rope_theta == 500000.0
    inv, attn = _inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    assert torch.allclose(inv, ref_inv.float(), rtol=1e-6, atol=0)
    assert attn == pytest.approx(ref_attn)


def test_old_style_rope_scaling_and_unsupported_type():
    base = {
        "model_type": "llama",
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 1,
        "intermediate_size": 96,
        "vocab_size": 10,
        "rope_theta": 1e6,
    }
    cfg = ModelConfig.from_hf({**base, "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert cfg.rope_theta == 1e6
    assert cfg.rope_scaling["rope_type"] == "linear" and cfg.rope_scaling["factor"] == 2.0
    with pytest.raises(ModelLoadError, match="RoPE scaling 'longrope' is not supported"):
        ModelConfig.from_hf({**base, "rope_scaling": {"rope_type": "longrope", "factor": 2.0}})
