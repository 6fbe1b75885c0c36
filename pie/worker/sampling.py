"""The worker's door to the sampling pipeline: logits [O, V] -> tokens and per-row probes.

There is one sampling implementation in the project, `pie.kernels.sampling.sample_rows` (the
composable pipeline: registered stages with Triton kernels and plain-torch references, seeded
selection, probes). Drivers call it through `sample` here, which checks the rows' extension
parameters against the registered stages and adapts a `ForwardBatch`'s logit masks to the
boolean tensor the pipeline takes. CPU logits take the pipeline's torch path, CUDA logits its
Triton path.
"""

from __future__ import annotations

import numpy as np
import torch

from pie.ipc.messages import RowResult, SamplerSpec
from pie.kernels.sampling import registered_stages, sample_rows
from pie.worker.batch import BatchError


def check_extra(samplers: list[SamplerSpec]) -> None:
    """Refuse extension-stage parameters that no registered stage reads (a misspelt stage)."""
    if not any(s.extra for s in samplers):
        return
    known = {p for st in registered_stages() for p in st.params}
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
    when any sampler asked for a probe (else None). A request the pipeline refuses (say, a
    logit mask that allows nothing) becomes a BatchError for that batch.
    """
    check_extra(samplers)
    mask = None if allowed is None else torch.from_numpy(allowed).to(logits.device)
    try:
        tokens, rows = sample_rows(logits, samplers, mask)
    except ValueError as exc:
        raise BatchError(f"sampling failed: {exc}") from None
    return np.asarray(tokens, dtype=np.int32), rows
