"""Samplers (pick a token) and probes (read a distribution) attached to forward-pass rows.

A sampler runs on the host next to the logits; only the chosen token (or the small result a
probe asks for) crosses into the guest.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Sampler:
    """How to choose the next token. Build one with the class methods."""

    temperature: float = 0.0
    k: int = 0  # top-k (0 = off)
    p: float = 1.0  # top-p (1 = off)
    mp: float = 0.0  # min-p (0 = off)
    seed: int = 0

    @staticmethod
    def argmax() -> Sampler:
        return Sampler()

    greedy = argmax

    @staticmethod
    def multinomial(temperature: float = 1.0, seed: int = 0) -> Sampler:
        return Sampler(temperature=temperature, seed=seed)

    @staticmethod
    def top_p(temperature: float = 1.0, p: float = 0.9, seed: int = 0) -> Sampler:
        return Sampler(temperature=temperature, p=p, seed=seed)

    @staticmethod
    def top_k(temperature: float = 1.0, k: int = 50, seed: int = 0) -> Sampler:
        return Sampler(temperature=temperature, k=k, seed=seed)

    @staticmethod
    def min_p(temperature: float = 1.0, p: float = 0.05, seed: int = 0) -> Sampler:
        return Sampler(temperature=temperature, mp=p, seed=seed)

    @staticmethod
    def top_k_top_p(temperature: float = 1.0, k: int = 50, p: float = 0.9, seed: int = 0) -> Sampler:
        return Sampler(temperature=temperature, k=k, p=p, seed=seed)

    def with_seed(self, seed: int) -> Sampler:
        return replace(self, seed=seed)


@dataclass(frozen=True)
class Probe:
    """What to read from an output row without choosing a token."""

    dist_k: int = -1
    temperature: float = 1.0
    raw_logits: bool = False
    logprob_ids: tuple[int, ...] = field(default_factory=tuple)
    entropy_: bool = False
    kind: str = "distribution"

    @staticmethod
    def distribution(k: int = 0, temperature: float = 1.0) -> Probe:
        """Top-k (ids, probabilities) after temperature; k = 0 is the whole vocabulary."""
        return Probe(dist_k=k, temperature=temperature, kind="distribution")

    @staticmethod
    def logits() -> Probe:
        """The raw logits row as float32 little-endian bytes."""
        return Probe(raw_logits=True, kind="logits")

    @staticmethod
    def logprob(token: int) -> Probe:
        return Probe(logprob_ids=(token,), kind="logprob")

    @staticmethod
    def logprobs(tokens: list[int]) -> Probe:
        return Probe(logprob_ids=tuple(tokens), kind="logprobs")

    @staticmethod
    def entropy() -> Probe:
        return Probe(entropy_=True, kind="entropy")


def sampler_record(index: int, s: Sampler | Probe):
    """The WIT record for one output slot."""
    from wit_world.imports.inference import Sampler as _Rec

    if isinstance(s, Sampler):
        return _Rec(index, float(s.temperature), int(s.k), float(s.p), float(s.mp),
                    int(s.seed), True, -1, False, [], False)
    return _Rec(index, float(s.temperature), 0, 1.0, 0.0, 0, False, int(s.dist_k),
                bool(s.raw_logits), list(s.logprob_ids), bool(s.entropy_))
