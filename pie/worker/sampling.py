"""The worker's door to the sampling pipeline: logits [O, V] -> tokens and per-row probes.

There is one sampling implementation in the project, `pie.kernels.sampling.sample_rows` (the
composable pipeline with its Triton kernels and plain-torch references); drivers call it through
`sample` here, which only adapts the logit masks of a `ForwardBatch` to the boolean tensor the
pipeline takes. When the pipeline module is absent, a greedy-only fallback keeps the worker
usable for argmax decoding and refuses anything else with a clear error.
"""

from __future__ import annotations

import numpy as np
import torch

from pie.ipc.messages import RowResult, SamplerSpec
from pie.worker.batch import BatchError

try:
    from pie.kernels.sampling import registered_stages as _registered_stages
    from pie.kernels.sampling import sample_rows as _sample_rows
except ImportError:  # the pipeline module is not part of this build
    _sample_rows = _registered_stages = None


def check_extra(samplers: list[SamplerSpec]) -> None:
    """Refuse extension-stage parameters that no registered stage reads (a misspelt stage)."""
    if not any(s.extra for s in samplers):
        return
    known = set()
    if _registered_stages is not None:
        known = {p for st in _registered_stages() for p in st.params}
        known -= set(SamplerSpec.__struct_fields__)
    for i, s in enumerate(samplers):
        for key in s.extra:
            if key not in known:
                raise BatchError(
                    f"sampler {i} sets {key!r}, which no registered sampling stage reads "
                    f"(extension parameters: {', '.join(sorted(known)) or 'none'})"
                )


def sample(
    logits: torch.Tensor, samplers: list[SamplerSpec], allowed: np.ndarray | None
) -> tuple[np.ndarray, list[RowResult] | None]:
    """Run each row's sampler. logits: float32 [O, V]; allowed: bool [O, V] or None.

    Returns int32 tokens [O] (-1 where a sampler asked for no token) and the per-row results
    when any sampler asked for a probe (else None).
    """
    check_extra(samplers)
    mask = None if allowed is None else torch.from_numpy(allowed).to(logits.device)
    if _sample_rows is not None:
        try:
            tokens, rows = _sample_rows(logits, samplers, mask)
        except (ValueError, KeyError) as exc:
            raise BatchError(f"sampling failed: {exc}") from None
        return np.asarray(tokens, dtype=np.int32), rows
    return _greedy_only(logits, samplers, mask)


def _greedy_only(
    logits: torch.Tensor, samplers: list[SamplerSpec], mask: torch.Tensor | None
) -> tuple[np.ndarray, list[RowResult] | None]:
    for i, s in enumerate(samplers):
        if s.temperature != 0.0 or s.dist_k >= 0 or s.raw_logits or s.logprob_ids or s.entropy:
            raise BatchError(
                f"sampler {i} asks for more than greedy decoding, which needs the sampling "
                f"pipeline (pie.kernels.sampling); install a complete pie build"
            )
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    tokens = torch.argmax(logits, dim=-1).to(torch.int32).cpu().numpy()
    for i, s in enumerate(samplers):
        if not s.sample:
            tokens[i] = -1
    return tokens, None
