"""Test-wide settings.

Without a GPU the Triton kernels run under the interpreter; TRITON_INTERPRET must be set before
any `@triton.jit` function is defined, so it is set here, before test modules import `pie`.
"""

import os


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - any failure means no CUDA
        return False


ON_GPU = _has_gpu() and os.environ.get("TRITON_INTERPRET", "0") != "1"
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Property tests: no per-example deadline (the machine is shared, timing is not what they test);
# under CI the examples are derived from each test's source so a submission is judged on one
# fixed, reproducible set of cases.
try:
    from hypothesis import settings

    settings.register_profile("default", deadline=None)
    settings.register_profile("ci", deadline=None, derandomize=True)
    settings.load_profile("ci" if os.environ.get("CI") else "default")
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    pass
