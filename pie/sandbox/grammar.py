"""Host-side grammars for constrained decoding: regular expressions and simple JSON schemas.

A `Grammar` is a compiled regular expression (JSON schemas are translated to one; "any JSON"
is a bounded-depth expression). A `Matcher` walks it token by token: `mask()` returns the
BRLE vocabulary mask of tokens that keep the text a prefix of some match, computed with the
`regex` module's partial matching over the decoded vocabulary (grouped by first character,
so a rejected character rules out its whole group at once; cached per matcher state).
It is exact for the grammar; its cost grows with the number of tokens whose first character
the grammar allows.

Called by `pie/sandbox/host.py` (the `inference` grammar and matcher imports).
"""

from __future__ import annotations

import json
from typing import Any

import regex

_MAX_PATTERN = 10_000


class GrammarError(Exception):
    """A grammar the guest gave cannot be compiled; the message says what to change."""


_STRING = r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"'
_NUMBER = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
_INTEGER = r"-?(?:0|[1-9][0-9]*)"
_WS = r"[ \n]?"


def _any_json(depth: int) -> str:
    scalar = f"(?:{_STRING}|{_NUMBER}|true|false|null)"
    if depth == 0:
        return scalar
    inner = _any_json(depth - 1)
    arr = rf"\[{_WS}(?:{inner}(?:{_WS},{_WS}{inner})*)?{_WS}\]"
    obj = rf"\{{{_WS}(?:{_STRING}{_WS}:{_WS}{inner}(?:{_WS},{_WS}{_STRING}{_WS}:{_WS}{inner})*)?{_WS}\}}"
    return f"(?:{scalar}|{arr}|{obj})"


def _schema_regex(s: Any, depth: int = 0) -> str:
    if depth > 8:
        raise GrammarError("the JSON schema nests deeper than 8 levels")
    if not isinstance(s, dict):
        raise GrammarError("a JSON schema must be an object")
    if "enum" in s:
        return "(?:" + "|".join(regex.escape(json.dumps(v)) for v in s["enum"]) + ")"
    if "const" in s:
        return regex.escape(json.dumps(s["const"]))
    t = s.get("type")
    if t == "string":
        return _STRING
    if t == "integer":
        return _INTEGER
    if t == "number":
        return _NUMBER
    if t == "boolean":
        return "(?:true|false)"
    if t == "null":
        return "null"
    if t == "array":
        item = _schema_regex(s.get("items", {}), depth + 1) if s.get("items") else _any_json(1)
        return rf"\[{_WS}(?:{item}(?:{_WS},{_WS}{item})*)?{_WS}\]"
    if t == "object" or "properties" in s:
        props = s.get("properties", {})
        if not props:
            return _any_json(2)
        parts = [rf'"{regex.escape(k)}"{_WS}:{_WS}{_schema_regex(v, depth + 1)}'
                 for k, v in props.items()]
        return rf"\{{{_WS}" + rf"{_WS},{_WS}".join(parts) + rf"{_WS}\}}"
    if t is None and not s:
        return _any_json(2)
    raise GrammarError(f"unsupported JSON schema type {t!r}")


class Grammar:
    def __init__(self, pattern: str) -> None:
        if len(pattern) > _MAX_PATTERN * 10:
            raise GrammarError("the grammar is too large")
        try:
            self.regex = regex.compile(pattern)
        except regex.error as e:
            raise GrammarError(f"invalid regular expression: {e}") from None
        self.pattern = pattern

    @staticmethod
    def from_regex(pattern: str) -> Grammar:
        if len(pattern) > _MAX_PATTERN:
            raise GrammarError(f"regular expressions are limited to {_MAX_PATTERN} characters")
        return Grammar(pattern)

    @staticmethod
    def from_json_schema(schema: str) -> Grammar:
        try:
            s = json.loads(schema)
        except ValueError as e:
            raise GrammarError(f"the JSON schema is not valid JSON: {e}") from None
        return Grammar(_schema_regex(s))

    @staticmethod
    def any_json() -> Grammar:
        return Grammar(_any_json(3))


class Vocab:
    """Decoded token strings of one model (built once per engine)."""

    def __init__(self, size: int, texts: dict[int, str], stop: set[int]) -> None:
        self.size = size
        self.texts = texts
        self.stop = stop
        # tokens grouped by first character: a character the grammar rejects rules out
        # its whole group with one check
        self.by_first: dict[str, list[tuple[int, str]]] = {}
        for t, piece in texts.items():
            if piece:
                self.by_first.setdefault(piece[0], []).append((t, piece))


_VOCABS: dict[int, Vocab] = {}


def vocab_of(engine: Any) -> Vocab:
    key = id(engine)
    v = _VOCABS.get(key)
    if v is None:
        ids, toks = engine.tokenizer.vocab()
        special = set(engine.tokenizer.special_tokens()[0])
        texts = {}
        for i, b in zip(ids, toks):
            if i in special:
                continue
            try:
                texts[int(i)] = bytes(b).decode("utf-8")
            except UnicodeDecodeError:
                continue  # partial UTF-8 pieces are never allowed under a grammar
        v = Vocab(engine.info.vocab_size, texts, set(engine.info.stop_token_ids))
        _VOCABS[key] = v
    return v


class Matcher:
    def __init__(self, grammar: Grammar, vocab: Vocab) -> None:
        self.grammar = grammar
        self.vocab = vocab
        self.reset()

    def reset(self) -> None:
        self.text = ""
        self._cache: tuple[str, list[int]] | None = None

    def _viable(self, text: str) -> bool:
        return self.grammar.regex.fullmatch(text, partial=True) is not None

    def is_terminated(self) -> bool:
        return self.grammar.regex.fullmatch(self.text) is not None

    def accept(self, tokens: list[int]) -> None:
        for t in tokens:
            if t in self.vocab.stop and self.is_terminated():
                continue
            piece = self.vocab.texts.get(t)
            if piece is None or not self._viable(self.text + piece):
                raise GrammarError(f"token {t} does not fit the grammar here")
            self.text += piece

    def mask(self) -> list[int]:
        if self._cache is not None and self._cache[0] == self.text:
            return self._cache[1]
        allowed = [False] * self.vocab.size
        text = self.text
        for first, group in self.vocab.by_first.items():
            if not self._viable(text + first):
                continue
            for t, piece in group:
                if len(piece) == 1 or self._viable(text + piece):
                    allowed[t] = True
        if self.is_terminated():
            for t in self.vocab.stop:
                if t < self.vocab.size:
                    allowed[t] = True
        runs, cur, count = [], False, 0
        for a in allowed:
            if a == cur:
                count += 1
            else:
                runs.append(count)
                cur, count = a, 1
        runs.append(count)
        self._cache = (self.text, runs)
        return runs
