"""Splits a reasoning model's output into its thinking part (`<think>...</think>`) and the rest.

`Decoder.feed(tokens)` returns `Start` when thinking begins, `Delta(text)` for thinking text,
`End(text)` with the whole thought when it closes, and `Idle` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import Model

OPEN, CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class Start:
    pass


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class End:
    text: str


@dataclass(frozen=True)
class Idle:
    pass


Event = Start | Delta | End | Idle


class Decoder:
    def __init__(self, model: Model) -> None:
        self.model = model
        self.reset()

    def reset(self) -> None:
        self._tokens: list[int] = []
        self._state = "before"  # before -> thinking -> after
        self._seen = 0

    def feed(self, tokens: list[int]) -> Event:
        self._tokens.extend(tokens)
        text = self.model.tokenizer().decode(self._tokens)
        if self._state == "before":
            i = text.find(OPEN)
            if i < 0:
                return Idle()
            self._state, self._seen = "thinking", i + len(OPEN)
            return Start()
        if self._state == "thinking":
            start = text.find(OPEN) + len(OPEN)
            j = text.find(CLOSE, start)
            if j >= 0:
                self._state = "after"
                return End(text[start:j])
            safe = len(text) - _partial_suffix(text, CLOSE)  # hold back a partial "</think"
            if safe > self._seen:
                delta, self._seen = text[self._seen:safe], safe
                return Delta(delta)
        return Idle()


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
