"""The model layer: Llama-family decoders over a paged KV cache, their loading and tokenizers.

Public entry points:

    from pie.model import load_model, ModelLoadError
    lm = load_model("HuggingFaceTB/SmolLM2-135M-Instruct")      # repo id, directory or .gguf
    kv = lm.model.allocate_kv(num_pages, page_size)
    logits = lm.model.forward_batch(token_ids, positions, plan, kv, output_rows)

The worker process owns the calls above; `pie generate` and `pie model` use them directly.
Names are imported lazily so that `from pie.model.errors import ModelLoadError` (the CLI does
it at start-up) does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pie.model.errors import ModelLoadError

if TYPE_CHECKING:
    from pie.model.config import ModelConfig
    from pie.model.loader import LoadedModel, load_model, load_tokenizer
    from pie.model.resolve import DEFAULT_MODEL, resolve_model
    from pie.model.tokenizer import Tokenizer

_LAZY = {
    "DEFAULT_MODEL": "pie.model.resolve",
    "resolve_model": "pie.model.resolve",
    "LoadedModel": "pie.model.loader",
    "load_model": "pie.model.loader",
    "load_tokenizer": "pie.model.loader",
    "ModelConfig": "pie.model.config",
    "Tokenizer": "pie.model.tokenizer",
}

__all__ = [
    "DEFAULT_MODEL",
    "LoadedModel",
    "ModelConfig",
    "ModelLoadError",
    "Tokenizer",
    "load_model",
    "load_tokenizer",
    "resolve_model",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pie.model' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
