"""Turns host-side errors (componentize-py `Err`) into Python exceptions inferlets can catch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from componentize_py_types import Err


class PieError(RuntimeError):
    """An operation the engine refused; the message says why."""


def call(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except Err as e:
        raise PieError(str(e.value)) from None
