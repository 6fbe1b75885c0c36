"""`sample_rows` end to end: torch and Triton paths, float64 reference, statistics, probes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pie.ipc.messages import SamplerSpec
from pie.kernels.sampling import (
    RowParams,
    SamplingState,
    bool_to_bitmask,
    brle_to_bitmask,
    brle_to_bool,
    pack_bitmask,
    registered_stages,
    sample_rows,
    unpack_bitmask,
)
from pie.kernels.sampling.philox import (
    _philox_numpy,
    _philox_torch,
    philox_uniform,
    philox_uniform_triton,
)
from pie.kernels.sampling.pipeline import _to_device
from pie.kernels.sampling.probes import row_stats_reference
from pie.kernels.sampling.select import select_reference


def ids(*xs: int) -> bytes:
    return np.array(xs, dtype=np.int32).tobytes()


def mixed_specs(n: int) -> list[SamplerSpec]:
    """Rows that differ in every parameter, as in a real batch."""
    out = []
    for i in range(n):
        out.append(
            SamplerSpec(
                temperature=[0.0, 0.7, 1.0, 1.3][i % 4],
                top_k=[0, 50, 0, 5000, 3][i % 5],
                top_p=[1.0, 0.9, 0.8, 1.0][(i // 2) % 4],
                min_p=[0.0, 0.0, 0.05, 0.02][(i // 3) % 4],
                seed=1000 + i,
                repetition_penalty=[1.0, 1.2][i % 2],
                presence_penalty=[0.0, 0.3][(i // 2) % 2],
                frequency_penalty=[0.0, 0.1][(i // 4) % 2],
                history=ids(1, 2, 2, i, 7 + i),
                extra={"typical_p": 0.9} if i % 7 == 5 else {},
            )
        )
    return out


def batch(n: int, vocab: int, seed: int = 0, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, vocab, generator=g) * 3
    allowed = torch.rand(n, vocab, generator=g) < 0.8
    return logits.to(device), allowed.to(device)


def reference_tokens(logits, specs, allowed) -> np.ndarray:
    """Every stage's float64 reference in order, then the float64 selection."""
    rows = RowParams(specs)
    state = SamplingState(logits.cpu(), "torch", None if allowed is None else allowed.cpu())
    z = logits.double().cpu()
    for stage in registered_stages():
        values = stage.read(rows, state)
        if values is not None:
            z = stage.reference(z, _to_device(values, torch.device("cpu")), state)
    temperature = torch.tensor([s.temperature for s in specs])
    seeds = torch.tensor([s.seed for s in specs])
    return select_reference(z, temperature, seeds).numpy()


@pytest.mark.parametrize("vocab", [1000, 2500])
def test_torch_triton_and_reference_pick_the_same_tokens(vocab, device):
    logits, allowed = batch(12, vocab, seed=vocab, device=device)
    specs = mixed_specs(12)
    tok_torch, rows = sample_rows(logits.cpu(), specs, allowed.cpu(), backend="torch")
    tok_triton, _ = sample_rows(logits, specs, allowed, backend="triton")
    assert rows is None
    assert tok_torch.dtype == np.int32 and tok_torch.shape == (12,)
    np.testing.assert_array_equal(tok_torch, tok_triton)
    np.testing.assert_array_equal(tok_torch, reference_tokens(logits, specs, allowed))
    assert allowed.cpu()[torch.arange(12), torch.from_numpy(tok_torch).long()].all()


@pytest.mark.parametrize(
    "spec",
    [
        SamplerSpec(temperature=0.8, seed=5),
        SamplerSpec(temperature=0.8, top_k=40, top_p=0.9, seed=5),
        SamplerSpec(temperature=1.1, top_p=0.95, seed=5),
        SamplerSpec(temperature=0.6, min_p=0.1, seed=5),
    ],
    ids=["temperature", "topk-topp", "topp", "minp"],
)
def test_uniform_batches_match_reference(spec):
    """The common case (every row alike) goes through the candidate fast paths."""
    logits, _ = batch(16, 3000, seed=3)
    specs = [msgspec_replace(spec, seed=spec.seed + i) for i in range(16)]
    tokens, _ = sample_rows(logits, specs)
    np.testing.assert_array_equal(tokens, reference_tokens(logits, specs, None))


def msgspec_replace(spec: SamplerSpec, **kw) -> SamplerSpec:
    import msgspec

    return msgspec.structs.replace(spec, **kw)


def test_greedy_is_the_argmax_after_mask_and_penalties():
    logits = torch.tensor([[1.0, 5.0, 5.0, 2.0, 4.5], [3.0, 1.0, 2.0, 0.0, 2.9]])
    allowed = torch.tensor([[True, False, True, True, True], [True] * 5])
    specs = [SamplerSpec(), SamplerSpec(repetition_penalty=2.0, history=ids(0))]
    tokens, _ = sample_rows(logits, specs, allowed)
    # row 0: token 1 masked, 2 ties nothing; row 1: token 0 penalised 3.0 -> 1.5
    assert tokens.tolist() == [2, 4]
    ties = torch.tensor([[0.0, 7.0, 7.0, 7.0]])
    assert sample_rows(ties, [SamplerSpec()])[0].tolist() == [1]  # ties: lowest id


def test_degenerate_filters_reduce_to_argmax_or_to_nothing(device):
    logits, _ = batch(6, 700, seed=9, device=device)
    argmax = logits.argmax(-1).cpu().numpy()
    for backend in ("torch", "triton"):
        for kw in ({"top_k": 1}, {"top_p": 0.0}, {"min_p": 1.0}):
            specs = [SamplerSpec(temperature=1.5, seed=i + 1, **kw) for i in range(6)]
            tokens, _ = sample_rows(
                logits if backend == "triton" else logits.cpu(), specs, backend=backend
            )
            np.testing.assert_array_equal(tokens, argmax, err_msg=f"{backend} {kw}")
    # k >= V and p = 1 switch their stage off: same tokens as without them
    plain = [SamplerSpec(temperature=1.0, seed=i + 1) for i in range(6)]
    wide = [SamplerSpec(temperature=1.0, seed=i + 1, top_k=10_000, top_p=1.0) for i in range(6)]
    np.testing.assert_array_equal(
        sample_rows(logits.cpu(), plain)[0], sample_rows(logits.cpu(), wide)[0]
    )


def test_seeds_are_reproducible_and_seed_zero_is_fresh():
    logits = torch.zeros(1, 5000)
    a = [int(sample_rows(logits, [SamplerSpec(temperature=1.0, seed=77)])[0][0]) for _ in range(3)]
    assert len(set(a)) == 1
    b = {int(sample_rows(logits, [SamplerSpec(temperature=1.0)])[0][0]) for _ in range(8)}
    assert len(b) > 1
    c = {
        int(sample_rows(logits, [SamplerSpec(temperature=1.0, seed=s)])[0][0]) for s in range(1, 9)
    }
    assert len(c) > 1


def _chi2(tokens: np.ndarray, support: list[int], probs: np.ndarray) -> float:
    counts = np.array([(tokens == t).sum() for t in support], dtype=np.float64)
    assert counts.sum() == len(tokens), "sampled a token outside the support"
    expected = probs * len(tokens)
    return float(((counts - expected) ** 2 / expected).sum())


def test_categorical_sampler_follows_softmax_across_blocks():
    """Many seeds, one distribution spread over three 1024-token blocks: chi-square, 5 dof."""
    vocab, n = 3000, 4000
    support = [3, 700, 1030, 1500, 2100, 2999]
    row = torch.full((vocab,), float("-inf"))
    row[support] = torch.tensor([1.0, 0.2, 0.9, -0.5, 0.0, 0.6])
    specs = [SamplerSpec(temperature=0.7, seed=i + 1) for i in range(n)]
    tokens, _ = sample_rows(row.expand(n, vocab).contiguous(), specs)
    probs = torch.softmax(row[support].double() / 0.7, 0).numpy()
    assert _chi2(tokens, support, probs) < 20.5  # p = 0.001


def test_triton_categorical_sampler_statistics(device):
    vocab, n = 2048, 120
    support = [10, 500, 1100, 2047]
    row = torch.full((vocab,), float("-inf"))
    row[support] = torch.tensor([0.5, 0.0, 1.0, -0.3])
    specs = [SamplerSpec(temperature=1.0, seed=i + 1) for i in range(n)]
    logits = row.expand(n, vocab).contiguous()
    tokens, _ = sample_rows(logits.to(device), specs, backend="triton")
    np.testing.assert_array_equal(tokens, sample_rows(logits, specs, backend="torch")[0])
    probs = torch.softmax(row[support].double(), 0).numpy()
    assert _chi2(tokens, support, probs) < 16.3  # p = 0.001, 3 dof


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_probes_match_float64(backend, device):
    logits, allowed = batch(4, 600, seed=4, device=device)
    specs = [
        SamplerSpec(entropy=True, logprob_ids=ids(0, 5, 599)),
        SamplerSpec(temperature=0.5, dist_k=5, sample=False),
        SamplerSpec(raw_logits=True, dist_k=0),
        SamplerSpec(dist_k=10_000, entropy=True),
    ]
    if backend == "torch":
        logits, allowed = logits.cpu(), allowed.cpu()
    tokens, rows = sample_rows(logits, specs, allowed, backend=backend)
    assert rows is not None and len(rows) == 4
    assert tokens[1] == -1 and rows[1].token == -1 and rows[0].token == tokens[0] >= 0
    masked = logits.cpu().double().masked_fill(~allowed.cpu(), float("-inf"))
    lse, ent = row_stats_reference(masked, torch.ones(4))
    assert rows[0].entropy == pytest.approx(float(ent[0]), rel=1e-5)
    assert rows[3].entropy == pytest.approx(float(ent[3]), rel=1e-5)
    lp = np.frombuffer(rows[0].logprobs, np.float32)
    want = (masked[0, [0, 5, 599]] - lse[0]).numpy()
    np.testing.assert_allclose(lp, want, rtol=1e-5)  # -inf where masked
    q = torch.softmax(masked[1] / 0.5, 0)
    d_ids = np.frombuffer(rows[1].dist_ids, np.int32)
    d_probs = np.frombuffer(rows[1].dist_probs, np.float32)
    np.testing.assert_array_equal(d_ids, torch.topk(q, 5).indices.numpy())
    np.testing.assert_allclose(d_probs, q[d_ids.astype(np.int64)].numpy(), rtol=1e-5)
    n_allowed = int(allowed[2].sum())
    assert len(np.frombuffer(rows[2].dist_ids, np.int32)) == n_allowed  # k=0: all allowed tokens
    assert len(np.frombuffer(rows[3].dist_ids, np.int32)) == int(allowed[3].sum())  # k > V
    np.testing.assert_array_equal(
        np.frombuffer(rows[2].logits, np.float32), masked[2].float().numpy()
    )


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_packed_bitmask_equals_bool_mask(backend, device):
    logits, allowed = batch(6, 1000, seed=6, device=device)
    if backend == "torch":
        logits, allowed = logits.cpu(), allowed.cpu()
    specs = mixed_specs(6)
    words = pack_bitmask(allowed)
    a, _ = sample_rows(logits, specs, allowed, backend=backend)
    b, _ = sample_rows(logits, specs, words, backend=backend)
    np.testing.assert_array_equal(a, b)
    none = torch.zeros_like(words)
    none[:, -1] = -(2**31)  # only a bit past the vocabulary (1000 = 31*32 + 8): allows nothing
    with pytest.raises(ValueError, match="allows no token"):
        sample_rows(logits, specs, none, backend=backend)


def test_brle_helpers():
    assert brle_to_bool(np.array([2, 3], np.uint32).tobytes(), 6).tolist() == [
        False,
        False,
        True,
        True,
        True,
        False,
    ]
    assert brle_to_bool(b"", 3).all()
    runs = np.tile([3, 2], 20_000)  # 40k runs: decoded without a loop per run
    row = brle_to_bool(runs, 100_000)
    assert row.sum() == 40_000 and not row[:3].any() and row[3:5].all()
    words = brle_to_bitmask(runs, 100_000)
    assert words.dtype == np.int32 and words.shape == (3125,)
    assert torch.equal(
        unpack_bitmask(torch.from_numpy(words)[None], 100_000)[0], torch.from_numpy(row)
    )
    rnd = torch.rand(3, 77) < 0.5
    assert torch.equal(unpack_bitmask(pack_bitmask(rnd), 77), rnd)
    assert np.array_equal(pack_bitmask(rnd).numpy(), bool_to_bitmask(rnd.numpy()))
    with pytest.raises(ValueError, match="covers 7 positions"):
        brle_to_bool([3, 4], 6)


def test_philox_in_torch_is_tl_rand(device):
    seeds = torch.tensor([42, 12345678901234, 1, 2**62 + 5])
    offsets = torch.randint(-(2**31), 2**31 - 1, (4, 300))
    assert torch.equal(
        philox_uniform(seeds, offsets),
        philox_uniform_triton(seeds.to(device), offsets.to(device)).cpu(),
    )
    # the numpy rounds (CPU) and the torch rounds (other devices) are the same function
    np.testing.assert_array_equal(
        _philox_numpy(seeds[:, None].numpy(), offsets.numpy()),
        _philox_torch(seeds[:, None], offsets).numpy(),
    )
    first = philox_uniform(torch.tensor([42]), torch.arange(3))[0].tolist()
    assert first == pytest.approx([0.774080, 0.024563, 0.348266], abs=1e-6)


def test_bad_requests_fail_with_a_clear_error():
    logits = torch.zeros(2, 10)
    with pytest.raises(ValueError, match="one per row"):
        sample_rows(logits, [SamplerSpec()])
    with pytest.raises(ValueError, match=r"rows, vocab"):
        sample_rows(logits[0], [SamplerSpec()])
    with pytest.raises(ValueError, match="packed int32 words"):
        sample_rows(logits, [SamplerSpec()] * 2, torch.ones(2, 10))
    empty = torch.ones(2, 10, dtype=torch.bool)
    empty[1] = False
    with pytest.raises(ValueError, match="row 1 allows no token"):
        sample_rows(logits, [SamplerSpec()] * 2, empty)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        sample_rows(logits, [SamplerSpec(repetition_penalty=1.3, history=ids(3, 10))] * 2)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        sample_rows(logits, [SamplerSpec(logprob_ids=ids(11))] * 2)


@pytest.mark.full_size
def test_serving_size_triton_equals_torch(device):
    logits, allowed = batch(64, 151_936, seed=1, device=device)
    specs = mixed_specs(64)
    a, _ = sample_rows(logits, specs, allowed, backend="triton")
    b, _ = sample_rows(logits.cpu(), specs, allowed.cpu(), backend="torch")
    np.testing.assert_array_equal(a, b)
