"""The C++ CPU kernels: paged attention against the float64 reference, int8 linear against torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_attention import TOL, make_batch  # same directory (rootdir-relative import)

from pie.kernels import attention as attn
from pie.kernels import cpu_kernels
from pie.kernels.attention import AttentionPlan, paged_attention, paged_attention_reference

pytestmark = pytest.mark.skipif(
    not cpu_kernels.available(), reason="the C++ CPU kernels could not be built here"
)

SHAPES = [
    # n_q per request, kv_len per request, page, Hkv, group, D
    ([1] * 9, [1, 2, 3, 4, 5, 15, 16, 17, 70], 16, 3, 3, 64),  # decode, every tail length
    ([1, 2, 3], [40, 41, 42], 8, 2, 4, 128),  # short multi-row blocks (drafts), D=128
    ([1, 16, 4], [33, 60, 4], 16, 1, 1, 64),  # MHA, a 16-row block over 60 keys
    ([1, 40], [5, 40], 16, 3, 3, 64),  # a whole 40-token prefill (820 pairs)
    ([2, 1], [9, 30], 4, 2, 2, 80),  # D=80: the run-time chunk count
    ([0, 1, 0, 3], [5, 7, 0, 3], 16, 3, 3, 64),  # requests without query rows
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_kernel_matches_reference(shape, dtype):
    n_q, kv_len, page, hkv, group, d = shape
    q, kv, csr, _ = make_batch(n_q, kv_len, page, hkv, group, d, dtype)
    plan = AttentionPlan.build(*csr, page)
    out = cpu_kernels.paged_attention_cpu(
        q, kv, plan.qo_indptr, plan.page_table, plan.kv_lens, d**-0.5
    )
    ref = paged_attention_reference(q, kv, *csr)
    assert out.dtype == dtype and out.shape == q.shape
    err = (out.double() - ref).abs().max().item()
    assert err <= TOL[dtype] * max(1.0, ref.abs().max().item()), err


@pytest.mark.parametrize("seed", range(6))
def test_mixed_batches_split_between_kernel_and_sdpa(seed, monkeypatch):
    """Requests with many (query row, key) pairs go to SDPA, the rest to the kernel, in one
    call."""
    rng = np.random.default_rng(seed)
    r = int(rng.integers(2, 7))
    n_q = [int(x) for x in rng.integers(1, 40, r)]
    n_q[0] = 1  # at least one short and one long request
    n_q[-1] = 60  # 60 x 61 / 2 pairs at least: over KERNEL_MAX_PAIRS
    kv_len = [n + int(rng.integers(0, 40)) for n in n_q]
    q, kv, csr, _ = make_batch(n_q, kv_len, 16, 3, 3, 64, torch.float32, seed=seed)
    plan = AttentionPlan.build(*csr, 16)
    sdpa_requests: list[int] = []
    torch_path = attn._paged_attention_torch

    def spy(q, kv_layer, plan, scale, out=None):
        sdpa_requests.append(plan.query_rows.shape[0])
        return torch_path(q, kv_layer, plan, scale, out)

    monkeypatch.setattr(attn, "_paged_attention_torch", spy)
    out = paged_attention(q, kv, plan)
    ref = paged_attention_reference(q, kv, *csr)
    assert (out.double() - ref).abs().max().item() <= 1e-5
    takes = cpu_kernels.kernel_takes(np.array(n_q), np.array(kv_len))
    assert sdpa_requests == [int((~takes).sum())]
    assert takes[0] and not takes[-1]


def test_decode_batches_never_touch_the_gather_path(monkeypatch):
    q, kv, csr, _ = make_batch([1] * 5, [3, 17, 30, 1, 64], 16, 3, 3, 64, torch.float32)
    plan = AttentionPlan.build(*csr, 16)

    def boom(*_a, **_k):
        raise AssertionError("the gather + SDPA path ran for a decode batch")

    monkeypatch.setattr(attn, "_paged_attention_torch", boom)
    ref = paged_attention_reference(q, kv, *csr)
    assert (paged_attention(q, kv, plan).double() - ref).abs().max().item() <= 1e-5


def test_rows_do_not_depend_on_the_rest_of_the_batch():
    """A request's rows are bit-identical alone and inside a bigger batch."""
    n_q, kv_len = [1, 2, 1, 1], [20, 9, 45, 3]
    q, kv, csr, _ = make_batch(n_q, kv_len, 16, 3, 3, 64, torch.float32, seed=4)
    plan = AttentionPlan.build(*csr, 16)
    full = paged_attention(q, kv, plan)
    qo, pages, indptr, last = csr
    for r in range(len(n_q)):
        sub = (
            np.array([0, n_q[r]], np.int32),
            pages[indptr[r] : indptr[r + 1]],
            np.array([0, indptr[r + 1] - indptr[r]], np.int32),
            last[r : r + 1],
        )
        alone = paged_attention(q[qo[r] : qo[r + 1]], kv, AttentionPlan.build(*sub, 16))
        assert torch.equal(alone, full[qo[r] : qo[r + 1]])


def test_custom_masks_stay_on_the_torch_path(monkeypatch):
    q, kv, csr, (runs, mptr) = make_batch([1, 1], [10, 20], 16, 2, 2, 64, torch.float32, masks=True)
    plan = AttentionPlan.build(*csr, 16, runs, mptr)
    assert plan.has_custom_mask

    def boom(*_a, **_k):
        raise AssertionError("the C++ kernel ran for a batch with custom masks")

    monkeypatch.setattr(cpu_kernels, "paged_attention_cpu", boom)
    ref = paged_attention_reference(q, kv, *csr, runs, mptr)
    assert (paged_attention(q, kv, plan).double() - ref).abs().max().item() <= 1e-5


def test_module_name_follows_source_and_cpu(monkeypatch):
    name = cpu_kernels.module_name()
    monkeypatch.setattr(cpu_kernels, "_cpu_flags", lambda: "flags : something else")
    assert cpu_kernels.module_name() != name


@pytest.mark.parametrize(
    ("m", "k", "n", "bias"),
    [(1, 576, 960, False), (64, 576, 3072, True), (300, 1536, 576, False), (0, 64, 48, True)],
)
def test_fused_int8_linear_equals_the_torch_path(m, k, n, bias, monkeypatch):
    """`Int8Linear` through the C++ kernel and through torch ops: bit for bit the same."""
    from pie.model import llama

    g = torch.Generator().manual_seed(m + n)
    lin = llama.Int8Linear(
        torch.randn(n, k, generator=g) * 0.05, torch.randn(n, generator=g) if bias else None
    )
    x = torch.randn(m, k, generator=g)
    x[:, 3] *= 20
    fused = lin(x)
    monkeypatch.setattr(llama, "_cpu_ops", lambda: None)
    assert torch.equal(fused, lin(x))
    q, s = cpu_kernels.load().quantize_rows(x)
    q_ref, s_ref = llama.quantize_rows(x)
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref)


def test_fused_block_layers_match_torch():
    """rms_norm, add_rms_norm_, silu_mul and rope_ against the torch ops they replace."""
    import torch.nn.functional as F

    from pie.model.rope import RotaryEmbedding, apply_rotary

    ops = cpu_kernels.load()
    g = torch.Generator().manual_seed(7)
    x = torch.randn(37, 576, generator=g) * 3
    w = torch.randn(576, generator=g)
    ref = F.rms_norm(x, (576,), w, 1e-5)
    assert torch.allclose(ops.rms_norm(x, w, 1e-5), ref, rtol=1e-5, atol=1e-5)
    delta = torch.randn(37, 576, generator=g)
    res = x.clone()
    y = ops.add_rms_norm_(res, delta, torch.empty(0), w, 1e-5)
    assert torch.equal(res, x + delta)  # the residual stream, updated in place
    assert torch.allclose(y, F.rms_norm(x + delta, (576,), w, 1e-5), rtol=1e-5, atol=1e-5)
    gu = torch.randn(5, 2 * 96, generator=g)
    assert torch.allclose(ops.silu_mul(gu, torch.empty(0)), F.silu(gu[:, :96]) * gu[:, 96:], rtol=1e-6, atol=1e-6)
    hq, hkv, d = 9, 3, 64
    qkv = torch.randn(6, (hq + 2 * hkv) * d, generator=g)
    cos, sin = RotaryEmbedding(d, 10000.0)(torch.tensor([0, 1, 5, 9, 100, 4000]), torch.float32)
    want = qkv.clone()
    q = want[:, : hq * d].view(6, hq, d)
    k = want[:, hq * d : (hq + hkv) * d].view(6, hkv, d)
    q.copy_(apply_rotary(q, cos, sin))
    k.copy_(apply_rotary(k, cos, sin))
    ops.rope_(qkv, cos.view(6, d), sin.view(6, d), hq + hkv, d)
    assert torch.equal(qkv, want)  # the same products and sums: bit for bit; v untouched


@pytest.mark.parametrize("k", [5, 8, 13, 576, 1541])
def test_row_quantizers_equal_torch_at_every_width(k):
    """The vector loops and their scalar tails give torch's codes and scales exactly."""
    from pie.model import llama

    ops = cpu_kernels.load()
    g = torch.Generator().manual_seed(k)
    x = torch.randn(9, k, generator=g) * torch.logspace(-3, 3, 9)[:, None]
    x[0] = 0.0  # an all-zero row keeps the tiny scale
    x[1, -1] = 40.0  # the row's max in the tail
    x[2, : k // 2] = torch.arange(k // 2) - 0.5 * (k // 2)  # exact ties round to even
    q_ref, s_ref = llama.quantize_rows(x)
    q, s = ops.quantize_rows(x)
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref)
    q8, s8 = ops.quantize_rows_u8(x)
    assert torch.equal(q8.to(torch.int16) - 128, q_ref.to(torch.int16)) and torch.equal(s8, s)


@pytest.mark.parametrize("n", [3, 8, 21, 1536])
def test_silu_mul_matches_torch_at_every_width_and_range(n):
    """silu(gate) * up through the vector exp: torch's values to float32 rounding, for the
    vector lanes and the tail alike, across the whole float range of a gate."""
    import torch.nn.functional as F

    ops = cpu_kernels.load()
    g = torch.Generator().manual_seed(n)
    gate = torch.randn(6, n, generator=g) * torch.tensor([0.01, 1, 4, 20, 90, 1000])[:, None]
    up = torch.randn(6, n, generator=g)
    got = ops.silu_mul(torch.cat([gate, up], dim=1), torch.empty(0))
    assert torch.allclose(got, F.silu(gate) * up, rtol=2e-6, atol=1e-30)
    rows = ops.silu_mul(torch.cat([gate, up], dim=1)[2:3], torch.empty(0))
    assert torch.equal(rows, got[2:3])  # a row's result does not depend on its batch


@pytest.mark.parametrize("m", [1, 31, 33, 300])
def test_int8_linear_paths_give_the_same_bits(m, monkeypatch):
    """oneDNN's prepacked product and `_int_mm`, each with C++ or torch quantize/rescale."""
    from pie.model import llama

    g = torch.Generator().manual_seed(m)
    lin = llama.Int8Linear(torch.randn(960, 576, generator=g) * 0.05, torch.randn(960, generator=g))
    if lin.packed is None:
        pytest.skip("oneDNN's int8 linear does not run with this torch build")
    x = torch.randn(m, 576, generator=g)
    x[:, 7] *= 30
    packed = lin.packed
    outs = []
    for use_onednn in (True, False):
        for fused in (True, False):
            lin.packed = packed if use_onednn else None
            monkeypatch.setattr(llama, "ONEDNN_MIN_ROWS", 0)  # oneDNN for every row count
            if not fused:
                monkeypatch.setattr(llama, "_cpu_ops", lambda: None)
            outs.append(lin(x))
            monkeypatch.undo()
    assert all(torch.equal(outs[0], o) for o in outs[1:])
