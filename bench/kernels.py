"""Kernel benchmark: paged attention and sampling, our path against a baseline, one table.

    python bench/kernels.py                 # CPU: the torch paths at B = 1 / 32 / 64
    python bench/kernels.py --quick         # fewer repeats
    python bench/kernels.py --threads 1     # pin torch's thread count (robust on a busy box)

On CPU it times what the portable driver runs (`paged_attention` and `sample_rows` on the
torch path) against the straightforward torch code they replaced, measured in the same run:

* attention baseline: gather KV by advanced indexing, repeat K/V for GQA, one SDPA call;
* sampling baseline: the sort-based sampler of vLLM's `forward_native` (full-vocabulary sort for
  top-k/top-p, then an exponential race).

On CUDA it times the Triton kernels against the torch path at serving sizes.
Shapes follow the default model (SmolLM2-135M: 9 query heads, 3 KV heads, head_dim 64,
vocab 49152). Medians over interleaved repeats; the ratio column is baseline / ours.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pie.ipc.messages import SamplerSpec
from pie.kernels.attention import (
    AttentionPlan,
    _paged_attention_torch,
    paged_attention,
    paged_attention_triton,
)
from pie.kernels.sampling import sample_rows

PAGE = 16
HQ, HKV, HEAD_DIM, VOCAB = 9, 3, 64, 49152


def median_ms(
    fns: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None]
) -> dict[str, float]:
    """Interleave the candidates so load spikes hit all of them alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    sync()
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


# --- attention --------------------------------------------------------------------------------


def attention_batch(n_q: list[int], kv_len: list[int], dtype: torch.dtype, device: str):
    n_pages = [-(-length // PAGE) for length in kv_len]
    total = sum(n_pages) + 4
    pages = np.random.default_rng(0).permutation(total)[: sum(n_pages)]
    qo = np.concatenate([[0], np.cumsum(n_q)])
    indptr = np.concatenate([[0], np.cumsum(n_pages)])
    last = [length - (n - 1) * PAGE for length, n in zip(kv_len, n_pages)]
    kv = torch.randn(total, 2, PAGE, HKV, HEAD_DIM, dtype=dtype, device=device)
    q = torch.randn(int(qo[-1]), HQ, HEAD_DIM, dtype=dtype, device=device)
    plan = AttentionPlan.build(qo, pages, indptr, last, PAGE, device=device)
    return q, kv, plan


def attention_baseline(q: torch.Tensor, kv: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
    """The straightforward version: advanced-index gather, repeat_interleave for GQA, SDPA."""
    t, hq, d = q.shape
    p, _, s, hkv, _ = kv.shape
    flat = kv.view(p * 2 * s, hkv, d)
    k = flat[plan.gather_slots].transpose(1, 2).repeat_interleave(hq // hkv, dim=1)
    v = flat[plan.gather_slots + s].transpose(1, 2).repeat_interleave(hq // hkv, dim=1)
    qb = q[plan.query_rows].transpose(1, 2)
    out = torch.nn.functional.scaled_dot_product_attention(qb, k, v, attn_mask=plan.mask)
    result = q.new_empty(t, hq, d)
    result[plan.query_rows[plan.query_valid]] = out.transpose(1, 2)[plan.query_valid]
    return result


# --- sampling ---------------------------------------------------------------------------------


def sampling_baseline(logits: torch.Tensor, specs: list[SamplerSpec]) -> torch.Tensor:
    """vLLM forward_native style: temperature, full sort for top-k/top-p, min-p, exponential race."""
    t = torch.tensor([s.temperature for s in specs])
    k = torch.tensor([s.top_k for s in specs])
    p = torch.tensor([s.top_p for s in specs])
    greedy = t <= 0
    z = logits / torch.where(greedy, torch.ones_like(t), t)[:, None]
    if bool((k > 0).any() or (p < 1).any()):
        zs, idx = z.sort(-1)
        v = z.shape[1]
        kk = torch.where(k > 0, k, torch.full_like(k, v)).clamp(max=v)
        kth = zs.gather(1, (v - kk)[:, None])
        zs = zs.masked_fill(zs < kth, float("-inf"))
        cum = zs.softmax(-1).cumsum(-1)
        drop = cum <= (1 - p)[:, None]
        drop[:, -1] = False
        zs = zs.masked_fill(drop, float("-inf"))
        z = torch.empty_like(zs).scatter_(1, idx, zs)
    mp = torch.tensor([s.min_p for s in specs])
    if bool((mp > 0).any()):
        probs = z.softmax(-1)
        z = z.masked_fill(probs < mp[:, None] * probs.amax(-1, keepdim=True), float("-inf"))
    q = torch.empty_like(z).exponential_()
    return torch.where(greedy, logits.argmax(-1), (z.softmax(-1) / q).argmax(-1))


SAMPLERS = {
    "greedy": SamplerSpec(),
    "temperature": SamplerSpec(temperature=0.8, seed=1),
    "top-k+top-p+T": SamplerSpec(temperature=0.8, top_k=50, top_p=0.9, seed=1),
    "top-p+T": SamplerSpec(temperature=0.8, top_p=0.9, seed=1),
    "min-p+T": SamplerSpec(temperature=0.8, min_p=0.05, seed=1),
}


def llm_like_logits(b: int, device: str) -> torch.Tensor:
    """Heavy-tailed rows like a language model's (a few likely tokens, a long flat tail)."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(b, VOCAB, generator=g) * 2.0
    z[:, :200] += torch.linspace(12, 4, 200)  # a peaked head
    return z[:, torch.randperm(VOCAB, generator=g)].contiguous().to(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    repeats = 5 if args.quick else 15
    base_name = "torch path" if cuda else "baseline"
    ours_name = "Triton" if cuda else "torch path"
    rows: list[tuple[str, str, float, float]] = []

    dtype = torch.bfloat16 if cuda else torch.float32
    for b in (1, 32, 64):
        q, kv, plan = attention_batch([1] * b, [1024] * b, dtype, device)
        rows.append(
            attention_row(
                f"attention decode B={b} KV=1024 {str(dtype)[6:]}", q, kv, plan, cuda, repeats, sync
            )
        )
    q, kv, plan = attention_batch([512], [512], dtype, device)
    rows.append(
        attention_row(f"attention prefill 512 {str(dtype)[6:]}", q, kv, plan, cuda, repeats, sync)
    )

    for b in (1, 32, 64):
        logits = llm_like_logits(b, device)
        for name, spec in SAMPLERS.items():
            r = median_ms(sampling_fns(logits, [spec] * b, cuda), repeats, sync)
            rows.append((f"sample B={b} {name}", "", r["base"], r["ours"]))

    print(f"device: {device}, torch threads: {torch.get_num_threads()}, repeats: {repeats}")
    print(f"| case | {base_name} ms | {ours_name} ms | ratio |")
    print("|---|---:|---:|---:|")
    for name, _, base, ours in rows:
        print(f"| {name} | {base:.2f} | {ours:.2f} | {base / ours:.1f}x |")


def sampling_fns(logits: torch.Tensor, specs: list[SamplerSpec], cuda: bool) -> dict:
    fns = {"ours": lambda: sample_rows(logits, specs)}
    if cuda:  # Triton against our own torch path on the same device
        fns["base"] = lambda: sample_rows(logits, specs, backend="torch")
    else:
        fns["base"] = lambda: sampling_baseline(logits, specs)
    return fns


def attention_row(
    name: str,
    q: torch.Tensor,
    kv: torch.Tensor,
    plan: AttentionPlan,
    cuda: bool,
    repeats: int,
    sync,
) -> tuple[str, str, float, float]:
    if cuda:  # Triton against our own torch path on the same device
        fns = {
            "ours": lambda: paged_attention_triton(q, kv, plan),
            "base": lambda: _paged_attention_torch(q, kv, plan, None),
        }
    else:
        fns = {
            "ours": lambda: paged_attention(q, kv, plan),
            "base": lambda: attention_baseline(q, kv, plan),
        }
    r = median_ms(fns, repeats, sync)
    return (name, "", r["base"], r["ours"])


if __name__ == "__main__":
    main()
