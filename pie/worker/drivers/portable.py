"""The `portable` driver: the model layer's torch decoder on CPU or GPU, with a paged KV pool.

    ForwardBatch (numpy views) -> LongTensors + AttentionPlan -> LlamaModel.forward_batch
        -> logits [O, V] float32 -> pie.worker.sampling.sample -> tokens, probe rows

KV pool size: `total_pages` when set; otherwise on a GPU as many pages as
`gpu_mem_utilization` of the device leaves after the weights, and on CPU 1024 pages.
Host swap space: `host_pages` slots (default a quarter of the pool), pinned on CUDA.
`runtime_quant = "int8"` (CPU, float32) loads the projections and LM head as int8 weights.
With tensor parallelism each rank holds its heads' share of the KV; the leader samples.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from pie.ipc.messages import RowResult
from pie.ipc.spec import WorkerSpec
from pie.kernels.attention import AttentionPlan
from pie.worker.batch import ForwardBatch
from pie.worker.drivers.base import Driver
from pie.worker.sampling import sample

CPU_DEFAULT_PAGES = 1024


class PortableDriver(Driver):
    def __init__(
        self,
        spec: WorkerSpec,
        progress: Callable[[str], None] | None = None,
        tp_group: object = None,
    ):
        super().__init__(spec)
        from pie.model import DEFAULT_MODEL, load_model

        torch.set_num_threads(max(1, int(spec.option("num_threads"))))
        say = progress or (lambda _text: None)
        self.torch_device = torch.device(spec.device)
        self.device = str(self.torch_device)
        model = spec.model or DEFAULT_MODEL
        say(f"loading {model} on {self.device}")
        self.lm = load_model(
            model,
            device=self.torch_device,
            dtype=spec.dtype,
            tp_rank=spec.tp_rank,
            tp_size=spec.tp_size,
            tp_group=tp_group,
            quant=str(spec.option("runtime_quant") or ""),
        )
        cfg = self.lm.config
        self.arch = cfg.arch
        self.vocab_size = cfg.vocab_size
        self.max_model_len = int(spec.option("max_model_len", cfg.max_position))
        self.dtype = str(self.lm.model.dtype).removeprefix("torch.")
        self.total_pages = self._pool_pages(spec)
        self.host_pages = int(spec.option("host_pages", max(1, self.total_pages // 4)))
        if self.torch_device.type == "cpu":
            from pie.kernels import cpu_kernels

            if not cpu_kernels.is_built():
                say("compiling the C++ CPU kernels (once per machine, about a minute)")
            cpu_kernels.available()  # build or load now, not inside the first batch
        say(f"allocating {self.total_pages} KV pages of {self.page_size} tokens")
        self.kv = self.lm.model.allocate_kv(self.total_pages, self.page_size)
        # [layers, host_pages, 2, page, kv_heads_local, head_dim]; untouched until swapped into
        self.host_kv = torch.empty(
            (self.kv.shape[0], self.host_pages, *self.kv.shape[2:]),
            dtype=self.kv.dtype,
            pin_memory=self.torch_device.type == "cuda",
        )

    def page_bytes(self) -> int:
        """Bytes of one KV page on this rank, over all layers."""
        c = self.lm.config
        heads = self.lm.model.num_kv_heads_local
        return c.num_layers * 2 * self.page_size * heads * c.head_dim * self.lm.model.dtype.itemsize

    def _pool_pages(self, spec: WorkerSpec) -> int:
        pages = spec.option("total_pages")
        if pages is not None:
            return int(pages)
        if self.torch_device.type != "cuda":
            return CPU_DEFAULT_PAGES
        free, total = torch.cuda.mem_get_info(self.torch_device)
        util = float(spec.option("gpu_mem_utilization"))
        budget = util * total - (total - free)
        pages = int(budget // self.page_bytes())
        if pages < 1:
            raise RuntimeError(
                f"no room for a KV cache on {self.device} at gpu_mem_utilization {util}; "
                f"raise gpu_mem_utilization or use a smaller model"
            )
        return pages

    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        """logits [O, V] float32 of the batch's output rows."""
        dev = self.torch_device
        plan = AttentionPlan.build(
            batch.qo_indptr,
            batch.kv_page_indices,
            batch.kv_page_indptr,
            batch.kv_last_page_len,
            self.page_size,
            batch.mask_runs,
            batch.mask_indptr,
            dev,
        )
        ids = torch.from_numpy(batch.token_ids.astype(np.int64)).to(dev)
        pos = torch.from_numpy(batch.positions.astype(np.int64)).to(dev)
        rows = torch.from_numpy(batch.output_rows.astype(np.int64)).to(dev)
        return self.lm.model.forward_batch(ids, pos, plan, self.kv, rows)

    def execute(self, batch: ForwardBatch) -> tuple[np.ndarray, list[RowResult] | None]:
        if batch.num_tokens == 0:
            return np.zeros(0, dtype=np.int32), None
        logits = self.forward(batch)
        if not self.is_leader or len(batch.output_rows) == 0:
            return np.zeros(0, dtype=np.int32), None
        return sample(logits, batch.samplers, batch.allowed_tokens(self.vocab_size))

    def _copy_pages(self, src: np.ndarray, dst: np.ndarray) -> None:
        s = torch.from_numpy(src.astype(np.int64)).to(self.torch_device)
        d = torch.from_numpy(dst.astype(np.int64)).to(self.torch_device)
        self.kv[:, d] = self.kv[:, s]

    def _swap_out(self, device_pages: np.ndarray, host_slots: np.ndarray) -> None:
        d = torch.from_numpy(device_pages.astype(np.int64)).to(self.torch_device)
        h = torch.from_numpy(host_slots.astype(np.int64))
        self.host_kv[:, h] = self.kv[:, d].to("cpu")

    def _swap_in(self, host_slots: np.ndarray, device_pages: np.ndarray) -> None:
        d = torch.from_numpy(device_pages.astype(np.int64)).to(self.torch_device)
        h = torch.from_numpy(host_slots.astype(np.int64))
        self.kv[:, d] = self.host_kv[:, h].to(self.torch_device)

    def close(self) -> None:
        self.kv = None
        self.host_kv = None
