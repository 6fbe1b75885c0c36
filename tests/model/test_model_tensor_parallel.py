"""Tensor parallelism over a gloo group of two CPU processes equals the single-process model."""

from __future__ import annotations

import socket

import torch
import torch.multiprocessing as mp
from fixtures.model_helpers import tensor_parallel_batch, tensor_parallel_rank

from pie.model import load_model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_rank_logits_match_single_process(tiny_checkpoints, tmp_path):
    path = str(tiny_checkpoints["qwen2"])  # q/k/v biases, GQA 4:2, tied head
    out = tmp_path / "rank0.pt"
    mp.spawn(tensor_parallel_rank, args=(2, _free_port(), path, str(out)), nprocs=2, join=True)
    got = torch.load(out)
    lm = load_model(path)
    ids, pos, plan = tensor_parallel_batch()
    ref = lm.model.forward_batch(ids, pos, plan, lm.model.allocate_kv(8, 4), torch.arange(len(ids)))
    assert got["kv_shape"] == (2, 8, 2, 4, 1, lm.config.head_dim)  # one KV head per rank
    assert (got["logits"] - ref).abs().max().item() < 1e-4
