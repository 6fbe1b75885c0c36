"""`Tokenizer`: text <-> token ids, the vocabulary as bytes, special and stop tokens, chat rendering.

Built by the loader from a model directory (`tokenizer.json` + `tokenizer_config.json`, with
the chat template from `chat_template.jinja` or the config) or from GGUF metadata
(`pie.model.gguf_checkpoint`). The worker and the inferlet host use it through the
`TokenizerService` protocol of `pie.sched.api`; `pie generate` uses it directly.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import tokenizers

from pie.model.chat_template import ChatTemplate
from pie.model.config import ModelConfig
from pie.model.errors import ModelLoadError

# Special tokens that end an assistant turn in common chat formats; each counts as a stop
# token when the vocabulary has it as a special token.
END_OF_TURN_TOKENS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "<|end|>",
    "<end_of_turn>",
    "</s>",
)
_SPECIAL_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the model's chat template and stop tokens."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        chat_template: str | None = None,
        special_tokens_map: dict[str, str] | None = None,
        eos_token_ids: tuple[int, ...] = (),
        bos_token_id: int | None = None,
        source: str = "",
    ) -> None:
        self.backend = backend
        self.source = source
        self.special_tokens_map = dict(special_tokens_map or {})
        self.chat_template = (
            ChatTemplate(chat_template, self.special_tokens_map) if chat_template else None
        )
        self.bos_token_id = bos_token_id
        if self.bos_token_id is None and "bos_token" in self.special_tokens_map:
            self.bos_token_id = backend.token_to_id(self.special_tokens_map["bos_token"])
        eos = list(eos_token_ids)
        if "eos_token" in self.special_tokens_map:
            tid = backend.token_to_id(self.special_tokens_map["eos_token"])
            if tid is not None:
                eos.append(tid)
        self.eos_token_ids = tuple(dict.fromkeys(eos))
        specials = {
            tok.content: i for i, tok in backend.get_added_tokens_decoder().items() if tok.special
        }
        stops = list(self.eos_token_ids) + [
            specials[t] for t in END_OF_TURN_TOKENS if t in specials
        ]
        self.stop_token_ids = tuple(dict.fromkeys(stops))

    # --- construction -------------------------------------------------------------------------

    @staticmethod
    def from_dir(directory: str | Path, config: ModelConfig | None = None) -> Tokenizer:
        """Load `tokenizer.json` and `tokenizer_config.json` (and `chat_template.jinja`) from a directory."""
        from pie.model.snapshot import read_json

        d = Path(directory)
        path = d / "tokenizer.json"
        if not path.is_file():
            extra = (
                " (a SentencePiece tokenizer.model alone is not supported)"
                if (d / "tokenizer.model").is_file()
                else ""
            )
            raise ModelLoadError(
                f"{d} has no tokenizer.json{extra}; re-download the model with its tokenizer"
            )
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - the library raises many types
            raise ModelLoadError(
                f"{path} is not a valid tokenizer file ({e}); re-download it"
            ) from None
        tcfg = (
            read_json(d / "tokenizer_config.json")
            if (d / "tokenizer_config.json").is_file()
            else {}
        )
        smap = (
            read_json(d / "special_tokens_map.json")
            if (d / "special_tokens_map.json").is_file()
            else {}
        )
        special: dict[str, str] = {}
        for key in _SPECIAL_KEYS:
            content = _token_content(tcfg.get(key)) or _token_content(smap.get(key))
            if content is not None:
                special[key] = content
        template: Any = None
        jinja = d / "chat_template.jinja"
        if jinja.is_file():
            template = jinja.read_text(encoding="utf-8")
        elif (d / "chat_template.json").is_file():
            template = read_json(d / "chat_template.json").get("chat_template")
        else:
            template = tcfg.get("chat_template")
        if isinstance(template, list):  # named templates: use "default"
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        return Tokenizer(
            backend,
            chat_template=template,
            special_tokens_map=special,
            eos_token_ids=config.eos_token_ids if config else (),
            bos_token_id=config.bos_token_id if config else None,
            source=str(d),
        )

    # --- TokenizerService ---------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; special-token strings in the text map to their ids."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[list[int]]:
        return [
            e.ids for e in self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)
        ]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def vocab(self) -> tuple[list[int], list[bytes]]:
        """Every token id with the exact bytes it stands for (for constrained decoding)."""
        return self._vocab

    def special_tokens(self) -> tuple[list[int], list[bytes]]:
        added = sorted(
            (i, t.content) for i, t in self.backend.get_added_tokens_decoder().items() if t.special
        )
        return [i for i, _ in added], [c.encode("utf-8") for _, c in added]

    @property
    def has_chat_template(self) -> bool:
        return self.chat_template is not None

    def render_chat(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        """Render messages with the model's chat template, exactly as transformers does."""
        if self.chat_template is None:
            raise ValueError(
                f"the model at {self.source or 'this path'} has no chat template; send raw text instead"
            )
        return self.chat_template.render(
            messages, add_generation_prompt=add_generation_prompt, **kwargs
        )

    # --- internals ----------------------------------------------------------------------------

    @cached_property
    def _vocab(self) -> tuple[list[int], list[bytes]]:
        raw = self.backend.get_vocab(with_added_tokens=True)  # token string -> id
        added = {t.content for t in self.backend.get_added_tokens_decoder().values()}
        byte_level = self._is_byte_level()
        items = sorted(raw.items(), key=lambda kv: kv[1])
        ids: list[int] = []
        out: list[bytes] = []
        for tok, i in items:
            ids.append(i)
            if tok in added:
                out.append(tok.encode("utf-8"))
            elif byte_level:
                try:
                    out.append(bytes(_UNICODE_TO_BYTE[c] for c in tok))
                except KeyError:
                    out.append(tok.encode("utf-8"))
            elif len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
                out.append(bytes([int(tok[3:5], 16)]))  # SentencePiece byte fallback
            else:
                out.append(tok.replace("\u2581", " ").encode("utf-8"))
        return ids, out

    def _is_byte_level(self) -> bool:
        decoder = json.loads(self.backend.to_str()).get("decoder") or {}
        parts = (
            decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
        )
        return any(p.get("type") == "ByteLevel" for p in parts)
