"""The `cuda_native` driver: the portable driver on a CUDA device, where the Triton kernels of
`pie.kernels` take the hot path (paged attention, sampling) through the kernels' own dispatch.

This is the hook for GPU-specific work (CUDA graphs, fused kernels): override `forward` here.
On a machine without CUDA it refuses to start with a message naming the alternative.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pie.ipc.spec import WorkerSpec
from pie.worker.drivers.portable import PortableDriver


class CudaNativeDriver(PortableDriver):
    def __init__(
        self,
        spec: WorkerSpec,
        progress: Callable[[str], None] | None = None,
        tp_group: object = None,
    ):
        if not torch.cuda.is_available() or not spec.device.startswith("cuda"):
            raise RuntimeError(
                f"the cuda_native driver needs a CUDA device (got {spec.device!r}"
                f"{'' if torch.cuda.is_available() else ', and no CUDA is available'}); "
                f'set [model.driver] type = "portable" to run on this machine'
            )
        super().__init__(spec, progress, tp_group)
