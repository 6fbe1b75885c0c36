"""Paged attention: the torch path and the Triton kernel against the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pie.kernels.attention import (
    AttentionPlan,
    brle_decode,
    paged_attention,
    paged_attention_reference,
    paged_attention_triton,
    write_kv,
    write_kv_triton,
)

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 5e-3}


def make_batch(
    n_q: list[int],
    kv_len: list[int],
    page_size: int,
    hkv: int,
    group: int,
    head_dim: int,
    dtype: torch.dtype,
    device: str = "cpu",
    seed: int = 0,
    masks: bool = False,
):
    """A ragged batch with scattered pages; returns (q, kv, csr arrays, mask arrays)."""
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    n_pages = [-(-length // page_size) for length in kv_len]
    total = sum(n_pages) + 3
    pages = rng.permutation(total)[: sum(n_pages)]
    qo = np.concatenate([[0], np.cumsum(n_q)]).astype(np.int32)
    indptr = np.concatenate([[0], np.cumsum(n_pages)]).astype(np.int32)
    last = np.array([length - (n - 1) * page_size for length, n in zip(kv_len, n_pages)], np.int32)
    # small values keep bf16 outputs well inside the 5e-3 budget
    kv = (torch.randn(total, 2, page_size, hkv, head_dim, generator=g) * 0.5).to(dtype).to(device)
    q = (torch.randn(int(qo[-1]), hkv * group, head_dim, generator=g) * 0.5).to(dtype).to(device)
    runs, mptr = None, None
    if masks:
        runs_l: list[int] = []
        mptr_l = [0]
        for r, (n, length) in enumerate(zip(n_q, kv_len)):
            for j in range(n):
                if (r + j) % 3 == 0:  # every third row: random BRLE (sometimes all masked)
                    cuts = np.sort(rng.integers(0, length + 1, 4))
                    row = np.diff(np.concatenate([[0], cuts])).tolist()
                    runs_l += row
                mptr_l.append(len(runs_l))
        runs, mptr = np.array(runs_l, np.uint32), np.array(mptr_l, np.int32)
    return q, kv, (qo, pages.astype(np.int32), indptr, last), (runs, mptr)


SHAPES = [
    # n_q per request, kv_len per request, page, Hkv, group, D
    ([1, 1, 1], [1, 17, 40], 16, 2, 1, 64),  # decode, MHA
    ([5, 1, 12], [5, 33, 30], 8, 2, 3, 80),  # mixed prefill/decode, GQA 3, D=80, page 8
    ([20], [52], 32, 1, 4, 128),  # prefill with a prefix, GQA 4, D=128, page 32
    ([1, 3], [16, 32], 16, 3, 2, 64),  # full pages
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("masks", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_torch_path_matches_reference(shape, masks, dtype):
    n_q, kv_len, page, hkv, group, d = shape
    q, kv, csr, (runs, mptr) = make_batch(n_q, kv_len, page, hkv, group, d, dtype, masks=masks)
    plan = AttentionPlan.build(*csr, page, runs, mptr)
    out = paged_attention(q, kv, plan)
    ref = paged_attention_reference(q, kv, *csr, runs, mptr)
    assert out.dtype == dtype and out.shape == q.shape
    err = (out.double() - ref).abs().max().item()
    assert err <= TOL[dtype] * max(1.0, ref.abs().max().item()), err


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("masks", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_kernel_matches_reference(shape, masks, dtype, device):
    n_q, kv_len, page, hkv, group, d = shape
    q, kv, csr, (runs, mptr) = make_batch(
        n_q, kv_len, page, hkv, group, d, dtype, device=device, masks=masks
    )
    plan = AttentionPlan.build(*csr, page, runs, mptr, device=device)
    out = paged_attention_triton(q, kv, plan)
    ref = paged_attention_reference(q.cpu(), kv.cpu(), *csr, runs, mptr)
    err = (out.double().cpu() - ref).abs().max().item()
    assert err <= TOL[dtype] * max(1.0, ref.abs().max().item()), err


@pytest.mark.full_size
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_kernel_serving_size(dtype, device):
    n_q = [1] * 48 + [300, 64]
    kv_len = list(range(200, 200 + 48 * 17, 17)) + [300, 900]
    q, kv, csr, _ = make_batch(n_q, kv_len, 16, 8, 4, 128, dtype, device=device)
    plan = AttentionPlan.build(*csr, 16, device=device)
    out = paged_attention_triton(q, kv, plan)
    ref = paged_attention_reference(q.cpu(), kv.cpu(), *csr)
    assert (out.double().cpu() - ref).abs().max().item() <= TOL[dtype]


@pytest.mark.gpu
def test_dispatch_uses_triton_on_cuda():
    q, kv, csr, _ = make_batch([1, 4], [9, 20], 16, 2, 2, 64, torch.float16, device="cuda")
    plan = AttentionPlan.build(*csr, 16, device="cuda")
    torch.testing.assert_close(paged_attention(q, kv, plan), paged_attention_triton(q, kv, plan))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_write_kv_paths_agree_and_land_in_the_right_slots(dtype, device):
    n_q, kv_len, page = [3, 1, 7], [3, 18, 40], 8
    _, kv, csr, _ = make_batch(n_q, kv_len, page, 2, 1, 64, dtype, device=device)
    plan = AttentionPlan.build(*csr, page, device=device)
    k = torch.randn(sum(n_q), 2, 64).to(dtype).to(device)
    v = torch.randn(sum(n_q), 2, 64).to(dtype).to(device)
    a, b = kv.clone(), kv.clone()
    write_kv(a, k, v, plan)
    write_kv_triton(b, k, v, plan)
    assert torch.equal(a, b)
    qo, pages, indptr, _ = csr
    for r in range(len(n_q)):  # token j of request r sits at slot kv_len - n_q + j
        for j in range(n_q[r]):
            pos = kv_len[r] - n_q[r] + j
            page_id = pages[indptr[r] + pos // page]
            assert torch.equal(a[page_id, 0, pos % page], k[qo[r] + j])
            assert torch.equal(a[page_id, 1, pos % page], v[qo[r] + j])


def test_plan_is_causal_by_slot_and_pads_queries():
    plan = AttentionPlan.build([0, 2, 3], [4, 1, 2], [0, 2, 3], [3, 4], page_size=4)
    # request 0: 7 slots, 2 new tokens at slots 5 and 6; request 1: 4 slots, 1 new token
    assert plan.mask.shape == (2, 1, 2, 7)
    assert plan.mask[0, 0, 0].tolist() == [True] * 6 + [False]
    assert plan.mask[0, 0, 1].tolist() == [True] * 7
    assert plan.mask[1, 0, 0].tolist() == [True] * 4 + [False] * 3
    assert plan.query_valid.tolist() == [[True, True], [True, False]]
    assert plan.write_slots.tolist() == [1 * 8 + 1, 1 * 8 + 2, 2 * 8 + 3]


def test_brle_decode():
    assert brle_decode(np.array([2, 3, 1]), 8).tolist() == [False] * 2 + [True] * 3 + [False] * 3
    assert brle_decode(np.array([0, 4]), 4).tolist() == [True] * 4
    assert not brle_decode(np.array([], np.int64), 3).any()
    with pytest.raises(ValueError, match="covers 9 positions"):
        brle_decode(np.array([4, 5]), 8)


def test_bad_inputs_fail_before_any_kernel():
    q, kv, csr, _ = make_batch([2], [5], 16, 2, 2, 64, torch.float32)
    plan = AttentionPlan.build(*csr, 16)
    with pytest.raises(ValueError, match="multiple of KV heads"):
        paged_attention(q[:, :3], kv, plan)
    with pytest.raises(ValueError, match="head_dim"):
        paged_attention(q[..., :32], kv, plan)
    with pytest.raises(ValueError, match="rows but the plan"):
        paged_attention(q[:1], kv, plan)
    with pytest.raises(ValueError, match="kv_layer must be"):
        paged_attention_triton(q, kv[:, 0], plan)
    with pytest.raises(ValueError, match="fp32/fp16/bf16"):
        paged_attention(q.double(), kv, plan)
    with pytest.raises(ValueError, match="k and v must be"):
        write_kv(kv, torch.zeros(2, 2, 32), torch.zeros(2, 2, 32), plan)
    with pytest.raises(ValueError, match="pages hold only"):
        AttentionPlan.build([0, 6], [0], [0, 1], [5], 16)
    with pytest.raises(ValueError, match="last page"):
        AttentionPlan.build([0, 1], [0], [0, 1], [17], 16)
    with pytest.raises(ValueError, match="attention mask of token 0"):
        AttentionPlan.build([0, 1], [0], [0, 1], [5], 16, np.array([3, 4]), np.array([0, 2]))


@pytest.mark.parametrize("seed", range(12))
def test_random_ragged_batches_torch_path(seed):
    """Random mixes of prefill and decode, page sizes, GQA groups and masks."""
    rng = np.random.default_rng(100 + seed)
    num_req = int(rng.integers(1, 6))
    n_q = rng.integers(1, 9, num_req).tolist()
    kv_len = [n + int(rng.integers(0, 40)) for n in n_q]
    page = int(rng.choice([8, 16, 32]))
    group = int(rng.choice([1, 2, 3, 5]))
    q, kv, csr, (runs, mptr) = make_batch(
        n_q,
        kv_len,
        page,
        int(rng.integers(1, 4)),
        group,
        64,
        torch.float32,
        seed=seed,
        masks=bool(seed % 2),
    )
    plan = AttentionPlan.build(*csr, page, runs, mptr)
    ref = paged_attention_reference(q, kv, *csr, runs, mptr)
    assert (paged_attention(q, kv, plan).double() - ref).abs().max().item() <= 1e-5
    if seed < 3:  # the interpreted kernel on a few of them
        assert (paged_attention_triton(q, kv, plan).double() - ref).abs().max().item() <= 1e-5


def test_lazily_built_mask_equals_the_eager_one():
    """On CUDA the causal mask is only built when asked for; it must be the same mask."""
    *_, csr, _ = make_batch([3, 1, 6], [3, 20, 30], 8, 2, 2, 64, torch.float32)
    plan = AttentionPlan.build(*csr, 8)
    eager = plan.mask.clone()
    plan._mask = None
    assert torch.equal(plan.mask, eager)
