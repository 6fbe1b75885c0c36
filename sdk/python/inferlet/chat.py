"""Chat helpers: fills by role, stop tokens, and a streaming decoder of generated tokens.

`Decoder.feed(tokens)` returns one event per call: `Delta(text)` with the new printable text,
`Done(text)` when a stop token arrives (the full reply), `Interrupt(token)` for another
special token, `Idle` when nothing printable came yet (an incomplete UTF-8 sequence).
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import Model


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Done:
    text: str


@dataclass(frozen=True)
class Interrupt:
    token: int


@dataclass(frozen=True)
class Idle:
    pass


Event = Delta | Done | Interrupt | Idle


class Decoder:
    def __init__(self, model: Model, stop: set[int] | list[int] | None = None) -> None:
        self.model = model
        self._stop = set(model.stop_tokens() if stop is None else stop)
        ids, _ = model.tokenizer().special_tokens()
        self._special = set(ids)
        self.reset()

    def reset(self) -> None:
        self._tokens: list[int] = []
        self._emitted = ""
        self._done = False

    def text(self) -> str:
        return self.model.tokenizer().decode(self._tokens)

    def feed(self, tokens: list[int]) -> Event:
        for t in tokens:
            if t in self._stop:
                self._done = True
                return Done(self.text())
            if t in self._special:
                return Interrupt(t)
            self._tokens.append(t)
        full = self.text()
        if full.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for more bytes
            return Idle()
        delta = full.removeprefix(self._emitted)
        self._emitted = full
        return Delta(delta) if delta else Idle()


def stop_tokens(model: Model) -> list[int]:
    return model.stop_tokens()
