"""`ModelConfig`: the architecture switches of one Llama-family decoder.

Built from a HuggingFace `config.json` (plus `generation_config.json`) by `ModelConfig.from_hf`,
or from GGUF metadata by `pie.model.gguf_checkpoint`. The decoder (`pie.model.llama`), the
loader and the worker read it; nothing here touches weights.

Supported families and their switches:

| arch    | q/k/v bias         | o bias         | QK-norm | notes                                 |
| ------- | ------------------ | -------------- | ------- | ------------------------------------- |
| llama   | `attention_bias`   | `attention_bias` | no    | Llama 2/3, SmolLM; `mlp_bias`         |
| mistral | no                 | no             | no      | sliding window caps the context       |
| qwen2   | yes                | no             | no      | Qwen2 / Qwen2.5                       |
| qwen3   | `attention_bias`   | `attention_bias` | yes   | per-head RMSNorm on q and k           |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pie.model.errors import ModelLoadError

# config.json `model_type` -> our architecture name
SUPPORTED_MODEL_TYPES = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


@dataclass
class ModelConfig:
    """Shapes and per-architecture switches of one decoder (all sizes are global, not per rank)."""

    arch: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # normalised: always has "rope_type"
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    tie_word_embeddings: bool = False
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    sliding_window: int | None = None
    name: str = ""
    source: str = ""  # file or directory the weights come from
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_params(self) -> int:
        """Parameter count (embeddings counted once when tied)."""
        h, d = self.hidden_size, self.head_dim
        attn = h * d * (self.num_heads * 2 + self.num_kv_heads * 2)
        mlp = 3 * h * self.intermediate_size
        per_layer = attn + mlp + 2 * h + (2 * d if self.qk_norm else 0)
        emb = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * per_layer + emb + h

    @staticmethod
    def from_hf(
        cfg: dict[str, Any],
        generation_cfg: dict[str, Any] | None = None,
        source: str = "",
    ) -> ModelConfig:
        """Read a HuggingFace `config.json` dict (transformers 4.x or 5.x layout)."""
        where = f"{source}/config.json" if source else "config.json"
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            known = ", ".join(sorted(SUPPORTED_MODEL_TYPES))
            raise ModelLoadError(
                f"{where}: model_type {model_type!r} is not supported; "
                f"use a model of one of these architectures: {known}"
            )
        arch = SUPPORTED_MODEL_TYPES[model_type]
        act = cfg.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise ModelLoadError(f"{where}: hidden_act {act!r} is not supported (only silu)")
        try:
            hidden = int(cfg["hidden_size"])
            heads = int(cfg["num_attention_heads"])
            num_layers = int(cfg["num_hidden_layers"])
            intermediate = int(cfg["intermediate_size"])
            vocab = int(cfg["vocab_size"])
        except KeyError as e:
            raise ModelLoadError(f"{where} lacks {e.args[0]!r}; re-download the model") from None
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or hidden // heads)
        max_pos = int(cfg.get("max_position_embeddings") or 4096)

        rope_theta, rope_scaling = _read_rope(cfg, where)

        attention_bias = bool(cfg.get("attention_bias", False))
        qkv_bias = {"qwen2": True, "mistral": False}.get(arch, attention_bias)
        o_bias = {"qwen2": False, "mistral": False}.get(arch, attention_bias)

        sliding = cfg.get("sliding_window")
        if arch in ("qwen2", "qwen3") and not cfg.get("use_sliding_window", False):
            sliding = None
        if sliding:
            # Within the window, sliding attention is plain causal attention; capping the
            # context there keeps every sequence we accept exact.
            max_pos = min(max_pos, int(sliding))

        eos: list[int] = []
        for src in (generation_cfg or {}, cfg):
            e = src.get("eos_token_id")
            for t in e if isinstance(e, list) else [e]:
                if isinstance(t, int) and t not in eos:
                    eos.append(t)
        return ModelConfig(
            arch=arch,
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_layers=num_layers,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            max_position=max_pos,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=bool(cfg.get("mlp_bias", False)) and arch == "llama",
            qk_norm=arch == "qwen3",
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            eos_token_ids=tuple(eos),
            bos_token_id=_first_int(cfg.get("bos_token_id")),
            pad_token_id=_first_int(cfg.get("pad_token_id")),
            sliding_window=int(sliding) if sliding else None,
            name=str(cfg.get("_name_or_path", "")),
            source=source,
        )


def _first_int(v: Any) -> int | None:
    if isinstance(v, list):
        v = v[0] if v else None
    return v if isinstance(v, int) else None


def _read_rope(cfg: dict[str, Any], where: str) -> tuple[float, dict[str, Any] | None]:
    """RoPE base and scaling from either `rope_parameters` (5.x) or `rope_theta`/`rope_scaling`."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" in params:
        theta = float(params["rope_theta"])
        scaling: dict[str, Any] | None = dict(params)
    else:
        theta = float(cfg.get("rope_theta", 10000.0))
        scaling = dict(cfg["rope_scaling"]) if cfg.get("rope_scaling") else None
    if scaling is not None:
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        scaling["rope_type"] = rope_type
        scaling.pop("type", None)
        scaling.pop("rope_theta", None)
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ModelLoadError(
                f"{where}: RoPE scaling {rope_type!r} is not supported "
                f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
            )
        if rope_type == "default":
            scaling = None
        else:
            orig = cfg.get("original_max_position_embeddings") or cfg.get("max_position_embeddings")
            scaling.setdefault("original_max_position_embeddings", orig)
    return theta, scaling
