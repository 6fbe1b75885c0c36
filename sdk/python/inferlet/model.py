"""Models and their tokenizers, as the inferlet sees them (handles to host-side objects)."""

from __future__ import annotations

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
    """A served model. `Model.load()` binds to the default model."""

    def __init__(self, handle: int) -> None:
        self._h = handle
        self.name, self.arch = call(_model.describe, handle)
        self.vocab_size, self.page_size, self.max_seq_len = call(_model.shape, handle)
        self._stop = list(call(_model.stop_tokens, handle))
        self._eos = list(call(_model.eos_tokens, handle))
        self._tokenizer: Tokenizer | None = None

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
