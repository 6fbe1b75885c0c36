"""The model layer: Llama-family decoders over a paged KV cache, their loading and tokenizers.

Public entry points:

    from pie.model import load_model, ModelLoadError
    lm = load_model("HuggingFaceTB/SmolLM2-135M-Instruct")      # repo id, directory or .gguf
    kv = lm.model.allocate_kv(num_pages, page_size)
    logits = lm.model.forward_batch(token_ids, positions, plan, kv, output_rows)

The worker process owns the calls above; `pie generate` and `pie model` use them directly.
"""

from pie.model.config import ModelConfig
from pie.model.errors import ModelLoadError
from pie.model.loader import LoadedModel, load_model, load_tokenizer
from pie.model.resolve import DEFAULT_MODEL, resolve_model
from pie.model.tokenizer import Tokenizer

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
