"""The last step of the pipeline: pick one token per row, argmax or seeded categorical.

Rows with temperature <= 0 take the argmax of their working logits (ties: the lowest token id).
Other rows draw from softmax(z) over the tokens that survived every stage, reproducibly from
the row's seed, in two Gumbel-max steps over blocks of `SAMPLE_BLOCK` tokens:

1. block b (tokens [b*B, (b+1)*B)) scores logsumexp(z[block b]) + G(seed, -1 - b);
   the best-scoring block wins (ties: the lowest block);
2. inside the winning block, token i scores z_i + G(seed, i); the best wins.

G(seed, offset) = -log(-log(u)) with u = `tl.rand(seed, offset)` clamped to [2^-24, 1 - 2^-24]
(Philox4x32-10; `philox.py` reproduces it in torch). Step 1 picks a block with probability
equal to its mass and step 2 a token with its probability inside the block, so the draw is
exactly softmax(z); yet only V/B + B noise values are needed per row instead of V, which is what
keeps the CPU path fast. The same seed and logits give the same token on the torch and Triton
paths (up to float rounding exactly at a tie of two scores).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pie.kernels.sampling.philox import gumbel_noise, gumbel_noise_pairs, gumbel_noise_tl
from pie.kernels.sampling.state import NEG_INF, SamplingState, scratch

SAMPLE_BLOCK = 1024


@triton.jit
def _select_kernel(Z, Temp, Seeds, Out, V, stride_z, NUM_BLOCKS, BLOCK: tl.constexpr):
    # one program per row: one pass over V fp32 (+ one block re-read when sampling)
    row = tl.program_id(0)
    t = tl.load(Temp + row)
    seed = tl.load(Seeds + row)
    offs = tl.arange(0, BLOCK)
    best = tl.full([], float("-inf"), tl.float32)
    best_at = tl.zeros([], tl.int32)
    if t <= 0.0:
        for b in range(NUM_BLOCKS):
            idx = b * BLOCK + offs
            z = tl.load(Z + row * stride_z + idx, mask=idx < V, other=float("-inf"))
            mb = tl.max(z, 0)
            better = mb > best  # strict: the earliest maximum wins
            best_at = tl.where(better, b * BLOCK + tl.argmax(z, 0), best_at)
            best = tl.where(better, mb, best)
        tl.store(Out + row, best_at)
    else:
        for b in range(NUM_BLOCKS):
            idx = b * BLOCK + offs
            z = tl.load(Z + row * stride_z + idx, mask=idx < V, other=float("-inf"))
            mb = tl.max(z, 0)
            shift = tl.where(mb == float("-inf"), 0.0, mb)
            mass = tl.sum(tl.exp(z - shift), 0)
            lse = tl.where(
                mass > 0.0, shift + tl.log(tl.where(mass > 0.0, mass, 1.0)), float("-inf")
            )
            score = lse + tl.max(gumbel_noise_tl(seed, tl.full([1], -1, tl.int32) - b), 0)
            better = score > best
            best_at = tl.where(better, b, best_at)
            best = tl.where(better, score, best)
        idx = best_at * BLOCK + offs
        z = tl.load(Z + row * stride_z + idx, mask=idx < V, other=float("-inf"))
        score = tl.where(idx < V, z + gumbel_noise_tl(seed, idx), float("-inf"))
        tl.store(Out + row, best_at * BLOCK + tl.argmax(score, 0))


def select_triton(
    state: SamplingState, temperature: torch.Tensor, seeds: torch.Tensor
) -> torch.Tensor:
    """Tokens [O] int64 from the dense working logits (Triton)."""
    z = state.writable()
    out = torch.empty(z.shape[0], dtype=torch.int64, device=z.device)
    _select_kernel[(z.shape[0],)](
        z,
        temperature,
        seeds,
        out,
        z.shape[1],
        z.stride(0),
        triton.cdiv(z.shape[1], SAMPLE_BLOCK),
        BLOCK=SAMPLE_BLOCK,
    )
    return out


def _block_choice(lse: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """Step 1: the winning block of each row from its blocks' logsumexp [n, nb]."""
    block_offsets = -1 - torch.arange(lse.shape[1], device=lse.device)
    return (lse + gumbel_noise(seeds, block_offsets)).argmax(-1)


def _sample_dense(z: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    n, v = z.shape
    nb = -(-v // SAMPLE_BLOCK)
    m = z.amax(-1, keepdim=True)  # the row maximum is finite: a kept token always exists
    e = torch.sub(z, m, out=scratch("exp", z.shape, z.device)).exp_()
    if nb * SAMPLE_BLOCK != v:
        e = torch.nn.functional.pad(e, (0, nb * SAMPLE_BLOCK - v))
    # relative to the row maximum rather than each block's: a block this loses to underflow
    # (mass < 1e-38 of the top token) could never beat the noise bound anyway
    lse = torch.log(e.view(n, nb, SAMPLE_BLOCK).sum(-1)) + m  # [n, nb]
    chosen = _block_choice(lse, seeds)
    start = chosen * SAMPLE_BLOCK
    ids = (start[:, None] + torch.arange(SAMPLE_BLOCK, device=z.device)).clamp_(max=v - 1)
    inside = z.gather(1, ids)  # [n, B]; ids past the vocabulary repeat the last one
    score = inside + gumbel_noise(seeds, ids)
    score.masked_fill_(ids != start[:, None] + torch.arange(SAMPLE_BLOCK, device=z.device), NEG_INF)
    return start + score.argmax(-1)


def _sample_candidates(
    values: torch.Tensor, ids: torch.Tensor, seeds: torch.Tensor, v: int
) -> torch.Tensor:
    n = values.shape[0]
    nb = -(-v // SAMPLE_BLOCK)
    m = values[:, :1]  # the row maximum: candidates are sorted descending
    block = ids // SAMPLE_BLOCK
    mass = torch.zeros(n, nb, dtype=values.dtype, device=values.device)
    mass.scatter_add_(1, block, torch.exp(values - m))
    chosen = _block_choice(torch.log(mass) + m, seeds)
    # noise only for the kept candidates of the winning block (at most B per row)
    r, j = ((block == chosen[:, None]) & (values > NEG_INF)).nonzero(as_tuple=True)
    score = torch.full_like(values, NEG_INF)
    score[r, j] = values[r, j] + gumbel_noise_pairs(seeds[r], ids[r, j])
    return ids.gather(1, score.argmax(-1, keepdim=True))[:, 0]


def select_torch(
    state: SamplingState, temperature: torch.Tensor, seeds: torch.Tensor
) -> torch.Tensor:
    """Tokens [O] int64 (torch): on the candidate list when it holds every kept token."""
    greedy = temperature <= 0
    tokens = torch.empty(state.num_rows, dtype=torch.int64, device=state.z.device)
    if bool(greedy.any()):
        # greedy rows carry no pending scale and pending thresholds never remove the maximum,
        # so their argmax needs no dense update
        if bool(greedy.all()):
            return state.z.argmax(-1)
        tokens[greedy] = state.z[greedy].argmax(-1)
    sampled = ~greedy
    if bool(sampled.any()):
        c = state.candidates
        every = bool(sampled.all())
        rows = sampled.nonzero()[:, 0]
        if c is not None and bool(c.complete[rows].all()):
            if every:
                return _sample_candidates(c.values, c.ids, seeds, state.vocab_size)
            tokens[rows] = _sample_candidates(
                c.values[rows], c.ids[rows], seeds[rows], state.vocab_size
            )
        elif every:
            return _sample_dense(state.dense(), seeds)
        else:
            tokens[rows] = _sample_dense(state.dense()[rows], seeds[rows])
    return tokens


def select_reference(
    z: torch.Tensor, temperature: torch.Tensor, seeds: torch.Tensor
) -> torch.Tensor:
    """float64, one row at a time, straight from the definition in the module docstring."""
    out = []
    for r in range(z.shape[0]):
        row = z[r].double().cpu()
        if float(temperature[r]) <= 0:
            out.append(int(torch.argmax(row)))
            continue
        nb = -(-row.shape[0] // SAMPLE_BLOCK)
        best, best_b = NEG_INF, 0
        for b in range(nb):
            blk = row[b * SAMPLE_BLOCK : (b + 1) * SAMPLE_BLOCK]
            g = float(gumbel_noise(seeds[r : r + 1].cpu(), torch.tensor([-1 - b]))[0, 0])
            score = float(torch.logsumexp(blk, 0)) + g
            if score > best:
                best, best_b = score, b
        ids = torch.arange(best_b * SAMPLE_BLOCK, min((best_b + 1) * SAMPLE_BLOCK, row.shape[0]))
        g = gumbel_noise(seeds[r : r + 1].cpu(), ids)[0].double()
        out.append(int(ids[torch.argmax(row[ids] + g)]))
    return torch.tensor(out)
