"""`runtime_quant = "int8"`: Int8Linear against float, batch invariance, accuracy on the default model.

The int8 path quantizes weights per output channel and activations per row, multiplies the codes
exactly in int32 and rescales. Checked here: the layer against F.linear on random data (relative
error bound), that a sequence's logits do not depend on what else is in its batch (bit for bit),
the load-time errors, that weights shrink, and the agreement with float32 on the default model
(top-1 over teacher-forced greedy continuations, and the France answer still says Paris).
"""

from __future__ import annotations

import copy
import random

import pytest
import torch
import torch.nn.functional as F
from fixtures.model_helpers import build_plan

from pie.model import DEFAULT_MODEL, ModelLoadError, load_model
from pie.model.generator import Generator, PagePool, _Sequence
from pie.model.llama import Int8Linear, check_quant, quantize_rows

# --- the layer on random data -----------------------------------------------------------------


@pytest.mark.parametrize(("m", "k", "n"), [(1, 576, 960), (7, 64, 48), (33, 1536, 576)])
@pytest.mark.parametrize("bias", [False, True])
def test_int8_linear_matches_float_linear(m, k, n, bias):
    g = torch.Generator().manual_seed(m * 31 + n)
    w = torch.randn(n, k, generator=g) * 0.05
    b = torch.randn(n, generator=g) if bias else None
    x = torch.randn(m, k, generator=g)
    x[:, 3] *= 20  # an outlier channel, as activations have
    lin = Int8Linear(w, b)
    got = lin(x)
    ref = F.linear(x, w, b)
    assert got.dtype == torch.float32 and got.shape == (m, n)
    assert lin.weight_q.dtype == torch.int8 and lin.weight_q.shape == (n, k)
    # per-row int8 activations and per-channel int8 weights: a few percent at worst
    rel = ((got - ref).norm() / ref.norm()).item()
    assert rel < 0.05, rel
    # leading dimensions are kept
    assert torch.equal(lin(x.view(1, m, k)), got.view(1, m, n))


def test_int8_linear_rows_are_independent():
    g = torch.Generator().manual_seed(3)
    lin = Int8Linear(torch.randn(96, 128, generator=g), torch.randn(96, generator=g))
    x = torch.randn(40, 128, generator=g)
    full = lin(x)
    for lo, hi in [(0, 1), (5, 6), (3, 17), (39, 40)]:
        assert torch.equal(lin(x[lo:hi]), full[lo:hi])
    # scaling a row by a power of two scales its result and leaves the others untouched
    y = x.clone()
    y[4] *= 1024
    out = lin(y)
    assert torch.equal(torch.cat([out[:4], out[5:]]), torch.cat([full[:4], full[5:]]))


def test_quantize_rows_is_symmetric_per_row():
    x = torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [3.0, 1.5, -0.75]])
    q, s = quantize_rows(x)
    assert q.dtype == torch.int8 and s.shape == (3, 1)
    assert q[0].tolist() == [64, -127, 32] and q[2].tolist() == [127, 64, -32]
    assert q[1].tolist() == [0, 0, 0]  # an all-zero row stays zero (no division by zero)
    assert torch.allclose(q.float() * s, x, atol=0.02)
    # large inputs take another reduction; the codes and scales of a row stay the same
    big = torch.randn(300, 576, generator=torch.Generator().manual_seed(5))
    qb, sb = quantize_rows(big)
    for r in (0, 7, 299):
        qr, sr = quantize_rows(big[r : r + 1])
        assert torch.equal(qr, qb[r : r + 1]) and torch.equal(sr, sb[r : r + 1])


# --- the model --------------------------------------------------------------------------------


def test_quantize_errors_name_the_setting(tiny_checkpoints):
    path = str(next(iter(tiny_checkpoints.values())))
    with pytest.raises(ModelLoadError, match='activation_dtype = "float32"'):
        load_model(path, dtype="bfloat16", quant="int8")
    with pytest.raises(ModelLoadError, match="runtime_quant"):
        load_model(path, quant="int4")
    lm = load_model(path)
    with pytest.raises(ModelLoadError, match='runtime_quant = ""'):
        check_quant("int8", torch.device("cuda", 0), torch.float32)
    lm.model.quantize("")  # no-op
    assert lm.model.quant == "" and lm.model.head_q is None


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_int8_model_is_close_and_smaller(arch, tiny_checkpoints):
    if arch not in tiny_checkpoints:
        pytest.skip(f"no tiny {arch} checkpoint")
    lm = load_model(str(tiny_checkpoints[arch]))
    q8 = copy.deepcopy(lm.model)
    before = q8.weight_bytes()
    q8.quantize("int8")
    assert q8.quant == "int8"
    assert all(layer.qkv_weight.numel() == 0 for layer in q8.layers)  # float copies freed
    assert q8.weight_bytes() < before / 2
    rng = random.Random(1)
    seqs = [[rng.randrange(3, 400) for _ in range(n)] for n in (9, 4, 13)]
    a, b = (_prefill_logits(m, seqs) for m in (lm.model, q8))
    assert b.dtype == torch.float32
    assert ((a - b).norm() / a.norm()).item() < 0.1


def _prefill_logits(model, seqs: list[list[int]], page: int = 4) -> torch.Tensor:
    """Logits at every position: one ragged prefill of `seqs` over scrambled pages."""
    pool = PagePool(256, shuffle_seed=len(seqs))
    lens = [len(s) for s in seqs]
    plan = build_plan(lens, lens, [pool.allocate(-(-n // page)) for n in lens], page)
    kv = model.allocate_kv(256, page)
    ids = torch.tensor([t for s in seqs for t in s])
    pos = torch.tensor([p for n in lens for p in range(n)])
    return model.forward_batch(ids, pos, plan, kv, torch.arange(len(ids)))


def _decode_logits(model, seqs: list[list[int]], steps: int, page: int = 4) -> list[torch.Tensor]:
    """Prefill `seqs` together, then `steps` greedy decode steps together; last-row logits."""
    gen = Generator(model, page_size=page, num_pages=256, shuffle_pages_seed=len(seqs))
    out: list[torch.Tensor] = []
    live = [_Sequence(tokens=list(s), pending=len(s)) for s in seqs]
    for _ in range(steps):
        logits = gen.step(live)
        out.append(logits)
        for s, t in zip(live, logits.argmax(-1).tolist()):
            s.tokens.append(t)
            s.pending = 1
    return out


@pytest.fixture(scope="module")
def default_pair(default_gguf):
    lm = load_model(DEFAULT_MODEL)
    q8 = copy.deepcopy(lm.model)
    q8.quantize("int8")
    return lm, q8


def test_int8_batch_invariance(default_pair):
    """A sequence alone and inside a batch of others: identical logits, prefill and decode."""
    lm, q8 = default_pair
    tok = lm.tokenizer
    target = tok.encode(tok.render_chat([{"role": "user", "content": "Name a red fruit."}]))
    others = [
        tok.encode("The quick brown fox jumps over the lazy dog. " * 3),
        tok.encode(tok.render_chat([{"role": "user", "content": "Count to five."}])),
        tok.encode("def f(x):\n    return x * 2\n"),
    ]
    alone = _decode_logits(q8, [target], steps=3)
    mixed = _decode_logits(q8, [others[0], target, *others[1:]], steps=3)
    for a, m in zip(alone, mixed):
        assert torch.equal(a[0], m[1])


ACCURACY_PROMPTS = [
    "What is the capital of France? Answer in one sentence.",
    "Write a short poem about the sea.",
    "Explain what a hash table is to a beginner.",
    "Give me three tips for sleeping better.",
]


def test_int8_agrees_with_float32_on_the_default_model(default_pair):
    """Top-1 agreement on float32's own greedy continuations, and the France answer."""
    lm, q8 = default_pair
    tok = lm.tokenizer
    prompts = [
        tok.encode(tok.render_chat([{"role": "user", "content": p}])) for p in ACCURACY_PROMPTS
    ]
    steps = 16
    cont = Generator(lm.model, 16, 128).generate(prompts, max_new_tokens=steps)
    seqs = [p + c for p, c in zip(prompts, cont)]
    rows, off = [], 0
    for p, s in zip(prompts, seqs):
        rows.extend(range(off + len(p) - 1, off + len(s) - 1))
        off += len(s)
    ref, got = (_prefill_logits(m, seqs, 16)[rows] for m in (lm.model, q8))
    agree = (ref.argmax(-1) == got.argmax(-1)).float().mean().item()
    diff = (ref - got).abs()
    # measured here: 0.92, mean diff 0.61; over 8 prompts x 32 steps (bench/int8.py --accuracy)
    # 0.88 and 0.65, where bfloat16 gives 0.96 and 0.11
    assert agree >= 0.8, agree
    assert diff.mean().item() < 1.0, diff.mean().item()
    france = Generator(q8, 16, 16).generate(
        prompts[:1], max_new_tokens=24, stop_token_ids=tuple(tok.stop_token_ids)
    )[0]
    assert "Paris" in tok.decode(france)
