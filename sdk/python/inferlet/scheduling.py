"""Market observables: what KV pages cost now and what this process can spend."""

from __future__ import annotations

from wit_world.imports import scheduling as _s

from ._errors import call


def price() -> float:
    return _s.price()


def rent(ctx) -> float:
    return call(_s.rent, ctx._h)


def dividend(model) -> float:
    return call(_s.dividend, model._h)


def balance(model) -> float:
    return call(_s.balance, model._h)


def latency(ctx) -> float:
    return call(_s.latency, ctx._h)
