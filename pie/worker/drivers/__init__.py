"""Worker backends by name: `portable` (torch, CPU or GPU), `cuda_native` (Triton kernels on
CUDA), `dummy` (no weights). `make_driver` is called once per worker process by
`pie.worker.main`."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from pie.ipc.spec import WorkerSpec
from pie.worker.drivers.base import Driver

DRIVERS: dict[str, str] = {
    "portable": "pie.worker.drivers.portable:PortableDriver",
    "cuda_native": "pie.worker.drivers.cuda_native:CudaNativeDriver",
    "dummy": "pie.worker.drivers.dummy:DummyDriver",
}


def make_driver(
    spec: WorkerSpec, progress: Callable[[str], None] | None = None, tp_group: object = None
) -> Driver:
    """Build the driver the spec names (loading weights and allocating the KV pool)."""
    target = DRIVERS.get(spec.driver)
    if target is None:
        raise ValueError(
            f"unknown driver {spec.driver!r}; set [model.driver].type to one of "
            f"{', '.join(sorted(DRIVERS))}"
        )
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)(spec, progress, tp_group)


__all__ = ["DRIVERS", "Driver", "make_driver"]
