"""Probes: what a row can ask for besides (or instead of) a token.

All probes read the row's logits after the logit mask only (no penalties, no filters):

* entropy: H = -sum q log q of q = softmax(z); masked tokens contribute 0.
* logprob_ids: log softmax(z) at the given ids (-inf for masked ids).
* raw_logits: the masked logits row itself, float32.
* dist_k: the top-k of softmax(z / T) as (ids, probs), most likely first (ties: lower id
  first is not guaranteed); T is the row's temperature, or 1 when the temperature is 0.
  `dist_k == 0` returns the whole vocabulary, `dist_k > V` is clamped to V, and masked
  tokens (probability 0) are left out.

`row_stats_triton` / `row_stats_torch` compute the shared per-row statistics (logsumexp and
entropy of z * inv_t) in one pass; `probe_rows` assembles the `RowResult`s.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from pie.ipc.messages import RowResult, SamplerSpec
from pie.kernels.sampling.rowops import row_block


@triton.jit
def _row_stats_kernel(Z, InvT, Lse, Ent, V, stride_z, BLOCK: tl.constexpr):
    # one program per row: two passes over V fp32, write 2 floats
    row = tl.program_id(0)
    inv_t = tl.load(InvT + row)
    offs0 = tl.arange(0, BLOCK)
    m = tl.full([], float("-inf"), tl.float32)
    for start in range(0, V, BLOCK):
        x = tl.load(Z + row * stride_z + start + offs0, mask=start + offs0 < V, other=float("-inf"))
        m = tl.maximum(m, tl.max(x * inv_t, 0))
    s = tl.zeros([], tl.float32)
    w = tl.zeros([], tl.float32)
    for start in range(0, V, BLOCK):
        x = tl.load(Z + row * stride_z + start + offs0, mask=start + offs0 < V, other=float("-inf"))
        x = x * inv_t
        e = tl.exp(x - m)
        s += tl.sum(e, 0)
        w += tl.sum(e * tl.where(e > 0.0, x, 0.0), 0)
    lse = m + tl.log(s)
    tl.store(Lse + row, lse)
    tl.store(Ent + row, lse - w / s)


def row_stats_triton(z: torch.Tensor, inv_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logsumexp, entropy) of each row of z * inv_t: z [O, V] fp32, inv_t [O] fp32."""
    assert z.dim() == 2 and z.stride(1) == 1 and z.dtype == torch.float32
    lse = torch.empty(z.shape[0], dtype=torch.float32, device=z.device)
    ent = torch.empty_like(lse)
    _row_stats_kernel[(z.shape[0],)](
        z, inv_t, lse, ent, z.shape[1], z.stride(0), BLOCK=row_block(z.shape[1])
    )
    return lse, ent


def row_stats_torch(z: torch.Tensor, inv_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch twin of `row_stats_triton`."""
    x = z * inv_t[:, None]
    lse = torch.logsumexp(x, -1)
    q = torch.exp(x - lse[:, None])
    ent = lse - torch.where(q > 0, q * x, torch.zeros_like(x)).sum(-1)
    return lse, ent


def row_stats_reference(z: torch.Tensor, inv_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 definition: logsumexp and -sum q log q."""
    x = z.double().cpu() * inv_t.double().cpu()[:, None]
    logq = torch.log_softmax(x, -1)
    q = logq.exp()
    ent = -torch.where(q > 0, q * logq, torch.zeros_like(q)).sum(-1)
    return torch.logsumexp(x, -1), ent


def wants_probe(spec: SamplerSpec) -> bool:
    return spec.dist_k >= 0 or spec.raw_logits or bool(spec.logprob_ids) or spec.entropy


def probe_rows(
    masked: torch.Tensor, specs: list[SamplerSpec], tokens: np.ndarray, backend: str
) -> list[RowResult]:
    """One RowResult per row; `masked` [O, V] fp32 are the logits after the logit mask."""
    v = masked.shape[1]
    stats = row_stats_triton if backend == "triton" else row_stats_torch
    results = [RowResult(token=int(t)) for t in tokens.tolist()]
    need_lse = [i for i, s in enumerate(specs) if s.entropy or s.logprob_ids]
    if need_lse:
        rows = torch.tensor(need_lse, device=masked.device)
        lse, ent = stats(masked[rows].contiguous(), torch.ones(len(need_lse), device=masked.device))
        lse_h, ent_h = lse.cpu().numpy(), ent.cpu().numpy()
        for j, i in enumerate(need_lse):
            s = specs[i]
            if s.entropy:
                results[i].entropy = float(ent_h[j])
            if s.logprob_ids:
                ids = np.frombuffer(s.logprob_ids, dtype=np.int32)
                if ids.size and (ids.min() < 0 or ids.max() >= v):
                    raise ValueError(
                        f"row {i} asks for log-probs of token ids outside the vocabulary of {v}; "
                        f"send ids in [0, {v})"
                    )
                lp = masked[i, torch.from_numpy(ids.astype(np.int64)).to(masked.device)] - float(
                    lse_h[j]
                )
                results[i].logprobs = lp.to(torch.float32).cpu().numpy().tobytes()
    dist_rows = [i for i, s in enumerate(specs) if s.dist_k >= 0]
    if dist_rows:
        temps = np.array([specs[i].temperature for i in dist_rows], dtype=np.float64)
        inv_t = torch.tensor(
            np.where(temps > 0, 1.0 / np.where(temps > 0, temps, 1.0), 1.0),
            dtype=torch.float32,
            device=masked.device,
        )
        rows = torch.tensor(dist_rows, device=masked.device)
        sub = masked[rows].contiguous()
        lse, _ = stats(sub, inv_t)
        for j, i in enumerate(dist_rows):
            k = specs[i].dist_k
            k = v if k == 0 else min(k, v)
            x = sub[j] * inv_t[j]
            vals, ids = torch.topk(x, k, sorted=True)
            probs = torch.exp(vals - lse[j])
            keep = probs > 0
            results[i].dist_ids = ids[keep].to(torch.int32).cpu().numpy().tobytes()
            results[i].dist_probs = probs[keep].to(torch.float32).cpu().numpy().tobytes()
    for i, s in enumerate(specs):
        if s.raw_logits:
            results[i].logits = masked[i].to(torch.float32).cpu().numpy().tobytes()
    return results
