"""`load_model`: model spec -> ready-to-run decoder, tokenizer and config.

The worker process calls it once per rank at start-up; `pie generate`, the tests and
`bench/forward.py` call it directly. Resolution is `pie.model.resolve`; the files are read by
`Snapshot` (safetensors directories) or `GGUFCheckpoint` (.gguf), and the weights land in
`pie.model.llama.LlamaModel`, sharded for the rank when tensor parallelism is on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pie.model.config import ModelConfig
from pie.model.errors import ModelLoadError
from pie.model.gguf_checkpoint import GGUFCheckpoint
from pie.model.llama import LlamaModel, check_quant
from pie.model.resolve import ResolvedModel, resolve_model
from pie.model.snapshot import Snapshot
from pie.model.tokenizer import Tokenizer

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


@dataclass
class LoadedModel:
    """What `load_model` returns: the decoder, its tokenizer and config, and where they came from."""

    config: ModelConfig
    tokenizer: Tokenizer
    model: LlamaModel
    source: ResolvedModel


def parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """Accept a torch dtype or its config spelling ("bfloat16", "float32", ...)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower().removeprefix("torch.")]
    except KeyError:
        raise ModelLoadError(
            f"activation dtype {dtype!r} is not supported; use one of float32, bfloat16, float16"
        ) from None


def open_checkpoint(spec: str) -> tuple[ResolvedModel, Snapshot | GGUFCheckpoint]:
    """Resolve a spec and open its files (metadata only; no weights are read yet)."""
    resolved = resolve_model(spec)
    ckpt: Snapshot | GGUFCheckpoint = (
        GGUFCheckpoint(resolved.path) if resolved.kind == "gguf" else Snapshot(resolved.path)
    )
    return resolved, ckpt


def load_tokenizer(spec: str) -> Tokenizer:
    """The tokenizer alone (no weights), for callers that only need text <-> ids."""
    _, ckpt = open_checkpoint(spec)
    return (
        ckpt.tokenizer()
        if isinstance(ckpt, GGUFCheckpoint)
        else Tokenizer.from_dir(ckpt.dir, ckpt.config)
    )


def load_model(
    spec: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str = torch.float32,
    tp_rank: int = 0,
    tp_size: int = 1,
    tp_group: object | None = None,
    quant: str = "",
) -> LoadedModel:
    """Resolve `spec`, read config and tokenizer, and load (this rank's shard of) the weights.

    `quant` is the runtime weight quantization applied after loading (`LlamaModel.quantize`):
    "" keeps the weights in `dtype`, "int8" (CPU, float32) turns the projections and the LM
    head into int8.
    """
    dtype = parse_dtype(dtype)
    device = torch.device(device)
    quant = quant or ""
    check_quant(quant, device, dtype)  # before reading any weights
    if tp_size < 1 or not 0 <= tp_rank < tp_size:
        raise ModelLoadError(f"tensor-parallel rank {tp_rank} is outside a group of size {tp_size}")
    resolved, ckpt = open_checkpoint(spec)
    cfg = ckpt.config
    if not cfg.name:
        cfg.name = spec
    if not cfg.tie_word_embeddings and not ckpt.has("lm_head.weight"):
        cfg.tie_word_embeddings = True  # checkpoints that drop the head share the embedding
    if isinstance(ckpt, GGUFCheckpoint):
        tokenizer = ckpt.tokenizer()
        freq_factors = ckpt.rope_freq_factors()
    else:
        tokenizer = Tokenizer.from_dir(ckpt.dir, cfg)
        freq_factors = None
    if not cfg.eos_token_ids:
        cfg.eos_token_ids = tokenizer.eos_token_ids
    if cfg.bos_token_id is None:
        cfg.bos_token_id = tokenizer.bos_token_id
    # parameters start as uninitialised (untouched) memory and are replaced tensor by tensor
    model = LlamaModel(cfg, tp_rank, tp_size, tp_group, rope_freq_factors=freq_factors)
    model.load_weights(ckpt, dtype, device)
    if isinstance(ckpt, Snapshot):
        ckpt.close()
    model.eval()
    model.quantize(quant)
    return LoadedModel(config=cfg, tokenizer=tokenizer, model=model, source=resolved)
