"""Sampling stages and their registry.

A stage is one step of the sampling pipeline: it reads its per-row parameters from the batch's
`SamplerSpec`s and transforms the `SamplingState` (pipeline.py calls `read`, then `apply_torch`
or `apply_triton`). Every stage has three implementations with one semantics:

* `apply_triton`: Triton kernel(s), run on CUDA (and under TRITON_INTERPRET=1 in tests);
* `apply_torch`: plain torch, what CPUs run; it must avoid full-vocabulary sorts when it can;
* `reference`: float64, obviously correct, for tests.

Adding a stage is one module in `pie/kernels/sampling/stages/` that defines a `Stage` subclass
decorated with `@register`; `registered_stages()` imports every module of that package, so no
other file changes. `tests/kernels/test_sampling_stages.py` runs every registered stage's Triton
and torch paths against each other and against its reference.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import ClassVar

import numpy as np
import torch

from pie.kernels.sampling.state import RowParams, SamplingState

_REGISTRY: dict[str, Stage] = {}
_DISCOVERED = False


class Stage:
    """Base class of a registered sampling stage.

    Subclasses set `name`, `order` (position in the pipeline: logit mask 10, penalties 20,
    temperature 30, top-k 40, top-p 50, min-p 60, extension stages 100+) and `params`
    (parameter name -> neutral value, the value that turns the stage off for a row).
    """

    name: ClassVar[str]
    order: ClassVar[float]
    params: ClassVar[dict[str, float]] = {}
    # True when apply_torch keeps SamplingState.candidates consistent with what it removes;
    # otherwise the pipeline drops the candidates after the stage.
    keeps_candidates: ClassVar[bool] = False

    def read(self, rows: RowParams, state: SamplingState) -> dict[str, np.ndarray] | None:
        """Per-row parameter arrays, or None when the stage changes no row of this launch."""
        cols = {p: rows.column(p, neutral) for p, neutral in self.params.items()}
        if not any(np.any(c != self.params[p]) for p, c in cols.items()):
            return None
        return cols

    def example_params(
        self, num_rows: int, vocab: int, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        """Random per-row parameters (some rows neutral) for the registry-wide tests."""
        raise NotImplementedError

    def apply_torch(self, state: SamplingState, p: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def apply_triton(self, state: SamplingState, p: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def reference(
        self, z: torch.Tensor, p: dict[str, torch.Tensor], state: SamplingState
    ) -> torch.Tensor:
        """float64 [O, V] -> float64 [O, V]: the stage's definition, as plainly as possible."""
        raise NotImplementedError


def register(cls: type[Stage]) -> type[Stage]:
    """Class decorator: add one instance of `cls` to the pipeline."""
    if cls.name in _REGISTRY and type(_REGISTRY[cls.name]) is not cls:
        raise ValueError(f"a sampling stage named {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls()
    return cls


def registered_stages() -> list[Stage]:
    """Every registered stage, in pipeline order (imports `pie.kernels.sampling.stages.*` once)."""
    global _DISCOVERED
    if not _DISCOVERED:
        from pie.kernels.sampling import stages

        for mod in pkgutil.iter_modules(stages.__path__):
            importlib.import_module(f"{stages.__name__}.{mod.name}")
        _DISCOVERED = True
    return sorted(_REGISTRY.values(), key=lambda s: s.order)
