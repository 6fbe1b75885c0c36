"""The composable sampling pipeline: registered stages, seeded selection, probes, BRLE helpers.

The worker calls `sample_rows(logits, specs, allowed)` once per batch; `brle_to_bool` and
`brle_to_bitmask` turn a request's BRLE logit mask into the `allowed` rows. Stages live one per
module in `stages/` (see stage.py and docs/kernels.md).
"""

from pie.kernels.brle import (
    bool_to_bitmask,
    brle_to_bitmask,
    brle_to_bool,
    pack_bitmask,
    unpack_bitmask,
)
from pie.kernels.sampling.pipeline import sample_rows
from pie.kernels.sampling.select import SAMPLE_BLOCK
from pie.kernels.sampling.stage import Stage, register, registered_stages
from pie.kernels.sampling.state import Candidates, RowParams, SamplingState

__all__ = [
    "SAMPLE_BLOCK",
    "Candidates",
    "RowParams",
    "SamplingState",
    "Stage",
    "bool_to_bitmask",
    "brle_to_bitmask",
    "brle_to_bool",
    "pack_bitmask",
    "register",
    "registered_stages",
    "sample_rows",
    "unpack_bitmask",
]
