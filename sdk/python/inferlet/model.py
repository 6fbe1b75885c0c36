"""Models and their tokenizers, as the inferlet sees them (handles to host-side objects)."""

from __future__ import annotations

import functools

from wit_world.imports import model as _model
from wit_world.imports import runtime as _runtime

from ._errors import call


class Tokenizer:
    """Encode and decode text for one model; the vocabulary lives on the host."""

    def __init__(self, model: Model) -> None:
        self._h = model._h

    def encode(self, text: str) -> list[int]:
        return list(call(_model.encode, self._h, text))

    def decode(self, tokens: list[int]) -> str:
        return call(_model.decode, self._h, list(tokens))

    def vocabs(self) -> tuple[list[int], list[bytes]]:
        return call(_model.vocabs, self._h)

    def special_tokens(self) -> tuple[list[int], list[bytes]]:
        return call(_model.special_tokens, self._h)


class Model:
    """A served model. `Model.load()` binds to the default model.

    Its facts (`name`, `arch`, `vocab_size`, `page_size`, `max_seq_len`, stop and EOS tokens)
    are asked of the host when first read: an inferlet that never reads them saves the calls.
    """

    def __init__(self, handle: int) -> None:
        self._h = handle
        self._tokenizer: Tokenizer | None = None

    @functools.cached_property
    def _described(self) -> tuple[str, str]:
        return tuple(call(_model.describe, self._h))

    @functools.cached_property
    def _dims(self) -> tuple[int, int, int]:
        return tuple(call(_model.shape, self._h))

    @functools.cached_property
    def _stop(self) -> list[int]:
        return list(call(_model.stop_tokens, self._h))

    @functools.cached_property
    def _eos(self) -> list[int]:
        return list(call(_model.eos_tokens, self._h))

    @property
    def name(self) -> str:
        return self._described[0]

    @property
    def arch(self) -> str:
        return self._described[1]

    @property
    def vocab_size(self) -> int:
        return self._dims[0]

    @property
    def page_size(self) -> int:
        return self._dims[1]

    @property
    def max_seq_len(self) -> int:
        return self._dims[2]

    @staticmethod
    def load(name: str | None = None) -> Model:
        """Bind to a served model by its configured name (None or "" = the default)."""
        return Model(call(_model.load, name or ""))

    @staticmethod
    def default() -> Model:
        return Model.load()

    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = Tokenizer(self)
        return self._tokenizer

    def stop_tokens(self) -> list[int]:
        """Tokens that end an assistant turn."""
        return list(self._stop)

    def eos_tokens(self) -> list[int]:
        return list(self._eos)

    def render_chat(self, messages: list[tuple[str, str]], add_generation_prompt: bool) -> str:
        return call(_model.render_chat, self._h, list(messages), add_generation_prompt)

    def __repr__(self) -> str:
        return f"Model({self.name!r})"


def models() -> list[str]:
    """Names of the served models (the first is the default)."""
    return list(_runtime.models())
