"""Constrained decoding: grammars compiled and walked on the host, masks applied per step.

A constraint is any object with `step(accepted_tokens) -> brle` (the mask for the next token);
`build_constraint(model)` objects (`Regex`, `JsonSchema`, `AnyJson`) build one lazily.
"""

from __future__ import annotations

from wit_world.imports import inference as _inf

from ._errors import call


class Grammar:
    def __init__(self, handle: int) -> None:
        self._h = handle

    @staticmethod
    def from_regex(pattern: str) -> Grammar:
        return Grammar(call(_inf.grammar_from_regex, pattern))

    @staticmethod
    def from_json_schema(schema: str) -> Grammar:
        return Grammar(call(_inf.grammar_from_json_schema, schema))

    @staticmethod
    def json() -> Grammar:
        return Grammar(call(_inf.grammar_json))


class Matcher:
    def __init__(self, grammar: Grammar, model) -> None:
        self._h = call(_inf.matcher_create, grammar._h, model._h)

    def accept_tokens(self, tokens: list[int]) -> None:
        call(_inf.matcher_accept, self._h, list(tokens))

    def next_token_logit_mask(self) -> list[int]:
        return list(call(_inf.matcher_mask, self._h))

    def is_terminated(self) -> bool:
        return call(_inf.matcher_is_terminated, self._h)

    def reset(self) -> None:
        call(_inf.matcher_reset, self._h)


class GrammarConstraint:
    def __init__(self, matcher: Matcher) -> None:
        self.matcher = matcher

    def step(self, accepted: list[int]) -> list[int]:
        if accepted:
            self.matcher.accept_tokens(accepted)
        return self.matcher.next_token_logit_mask()


class _Builder:
    def __init__(self, make) -> None:
        self._make = make

    def build_constraint(self, model) -> GrammarConstraint:
        return GrammarConstraint(Matcher(self._make(), model))


def Regex(pattern: str) -> _Builder:
    return _Builder(lambda: Grammar.from_regex(pattern))


def JsonSchema(schema: str) -> _Builder:
    return _Builder(lambda: Grammar.from_json_schema(schema))


def AnyJson() -> _Builder:
    return _Builder(Grammar.json)
