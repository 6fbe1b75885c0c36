"""Kernel test settings: which cases run where.

Without a GPU the Triton kernels run under TRITON_INTERPRET=1 (set by tests/conftest.py before
any kernel module is imported) at small shapes. `gpu` cases need compiled Triton; `full_size`
cases (serving shapes) run on a GPU, or under the interpreter when PIE_FULL_SIZE=1;
`interpreter_only` cases check the interpreter itself and are skipped on a GPU.
"""

from __future__ import annotations

import os

import pytest
import torch

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
FULL_SIZE = ON_GPU or os.environ.get("PIE_FULL_SIZE", "0") == "1"

if not ON_GPU:
    # make the interpreter stricter: device_assert fires and int32 overflow in index math raises
    import contextlib

    with contextlib.suppress(ImportError, AttributeError):  # private API: may move upstream
        from triton.runtime import interpreter as _interp

        _interp.interpreter_builder.options = _interp.InterpreterOptions(debug=True)


@pytest.fixture(autouse=True)
def _kernel_markers(request: pytest.FixtureRequest) -> None:
    node = request.node
    if node.get_closest_marker("gpu") and not ON_GPU:
        pytest.skip("needs a CUDA device (compiled Triton)")
    if node.get_closest_marker("full_size") and not FULL_SIZE:
        pytest.skip("serving-size case: runs on a GPU, or with PIE_FULL_SIZE=1")
    if node.get_closest_marker("interpreter_only") and ON_GPU:
        pytest.skip("checks the Triton interpreter itself")


@pytest.fixture(scope="session")
def device() -> str:
    return "cuda" if ON_GPU else "cpu"
