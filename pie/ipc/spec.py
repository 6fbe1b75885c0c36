"""What a worker process is told when it is spawned: `WorkerSpec`, and the device groups.

The controller turns each `[[model]]` of the config into one `WorkerSpec` per data-parallel
device group (`worker_specs`) and hands it to `pie.ipc.client.WorkerClient.start`, which
spawns one process per tensor-parallel rank with `dataclasses.replace(spec, tp_rank=r, ...)`.
The spec is a plain picklable dataclass so the worker never depends on the config module.

Worker options (the `[model.driver.options]` table; all optional):

| option | default | meaning |
| --- | --- | --- |
| kv_page_size | 16 | tokens per KV page |
| total_pages | 1024 (CPU) / from gpu_mem_utilization (GPU) | KV pages in the device pool |
| gpu_mem_utilization | 0.85 | GPU: fraction of device memory for weights plus KV |
| host_pages | total_pages // 4 | host-memory slots for suspended (swapped-out) pages |
| max_batch_tokens | 10240 | tokens per batch the worker accepts |
| max_batch_size | 512 | requests per batch the worker accepts |
| max_dist_size | 32 | largest top-k distribution a sampler may ask for |
| num_threads | 1 | torch intra-op threads per worker process |
| omp_wait_policy | passive | OpenMP wait policy (passive holds up under load) |
| runtime_quant | "" | portable driver: "int8" runs projections and LM head on int8 weights (CPU, float32) |
| spin_us | 100 | microseconds a ring wait spins before parking |
| ring_slots | 8 | slots per ring (requests in flight) |
| ring_slot_bytes | 8 MiB | bytes per slot: the largest descriptor or result |
| vocab_size | 49152 | dummy driver: vocabulary size |
| step_latency_us | 0 | dummy driver: simulated time of one forward pass |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_OPTIONS: dict[str, Any] = {
    "kv_page_size": 16,
    "max_batch_tokens": 10240,
    "max_batch_size": 512,
    "max_dist_size": 32,
    "num_threads": 1,
    "omp_wait_policy": "passive",
    "runtime_quant": "",
    "spin_us": 100,
    "ring_slots": 8,
    "ring_slot_bytes": 8 << 20,
    "gpu_mem_utilization": 0.85,
    "vocab_size": 49152,
    "step_latency_us": 0,
}


@dataclass(frozen=True)
class WorkerSpec:
    """Everything one worker process (one tensor-parallel rank) needs to start."""

    model: str = ""  # hf repo id, snapshot directory or .gguf path (unused by the dummy driver)
    driver: str = "portable"  # portable | cuda_native | dummy
    devices: tuple[str, ...] = ("cpu",)  # one per tensor-parallel rank
    dtype: str = "float32"  # activation dtype
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 42
    name: str = "model"  # the model's name in the config, for messages
    tp_rank: int = 0
    # filled in by WorkerClient.start
    request_ring: str = ""
    response_ring: str = ""
    dist_init: str = ""  # torch.distributed init_method when tp_size > 1

    @property
    def tp_size(self) -> int:
        return len(self.devices)

    @property
    def device(self) -> str:
        return self.devices[self.tp_rank]

    def option(self, key: str, default: Any = None) -> Any:
        """A driver option: the configured value, else the worker default, else `default`."""
        if key in self.options and self.options[key] is not None:
            return self.options[key]
        return DEFAULT_OPTIONS.get(key, default)


def worker_specs(model: Any) -> list[WorkerSpec]:
    """One WorkerSpec per data-parallel device group of a configured model.

    `model` is a `pie.config.ModelConfig` (read by attribute, so this module does not import
    the config): its driver's `groups` split `device` by `tensor_parallel_size` as the config
    reference describes (4 GPUs with tensor_parallel_size 2 are two groups of two; a lone
    "cpu" hosts every rank itself), and its typed options fill in the driver defaults.
    """
    drv = model.driver
    typed = drv.typed_options()
    if typed is None:
        raise ValueError(
            f"model {model.name!r}: driver {drv.type!r} does not run in pie's worker processes"
        )
    options = {f: getattr(typed, f) for f in typed.__struct_fields__}
    return [
        WorkerSpec(
            model=model.hf_repo,
            driver=drv.type,
            devices=tuple(group),
            dtype=drv.activation_dtype,
            options=options,
            seed=drv.random_seed,
            name=model.name,
        )
        for group in drv.groups
    ]


def device_groups(devices: list[str] | str, tensor_parallel_size: int = 1) -> list[tuple[str, ...]]:
    """Split a device list into data-parallel groups of `tensor_parallel_size` devices.

    Consecutive devices form a group: 4 GPUs with tensor_parallel_size 2 give two groups of
    two; tensor_parallel_size 1 gives one replica per device. A single "cpu" with
    tensor_parallel_size N is one group of N CPU ranks (the CPU hosts every rank).
    """
    if isinstance(devices, str):
        devices = [d.strip() for d in devices.split(",") if d.strip()]
    if tensor_parallel_size < 1:
        raise ValueError(f"tensor_parallel_size must be at least 1, got {tensor_parallel_size}")
    if not devices:
        raise ValueError('the model has no device; set [model.driver].device, e.g. ["cpu"]')
    if devices == ["cpu"]:
        return [("cpu",) * tensor_parallel_size]
    if len(devices) % tensor_parallel_size:
        raise ValueError(
            f"{len(devices)} devices cannot be split into tensor-parallel groups of "
            f"{tensor_parallel_size}; list a multiple of tensor_parallel_size devices"
        )
    return [
        tuple(devices[i : i + tensor_parallel_size])
        for i in range(0, len(devices), tensor_parallel_size)
    ]
