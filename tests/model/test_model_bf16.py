"""`runtime_quant = "bf16"`: Bf16Linear against float, load-time errors, accuracy on the default model.

The bf16 path rounds weights and activations to bfloat16, multiplies through oneDNN with float32
accumulation (AMX tiles where the CPU has them) and widens the result to float32. Checked here:
the layer against F.linear on random data, that the float weights are freed and memory halves,
and the agreement with float32 on the default model (top-1 over teacher-forced greedy
continuations, and the France answer).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from test_model_int8 import ACCURACY_PROMPTS, _prefill_logits  # same directory

from pie.model import DEFAULT_MODEL, ModelLoadError, load_model
from pie.model.generator import Generator
from pie.model.llama import Bf16Linear, check_quant


@pytest.mark.parametrize(("m", "k", "n"), [(1, 576, 960), (7, 64, 48), (300, 1536, 576)])
@pytest.mark.parametrize("bias", [False, True])
def test_bf16_linear_matches_float_linear(m, k, n, bias):
    g = torch.Generator().manual_seed(m * 7 + n)
    w = torch.randn(n, k, generator=g) * 0.05
    b = torch.randn(n, generator=g) if bias else None
    x = torch.randn(m, k, generator=g)
    lin = Bf16Linear(w, b)
    got = lin(x)
    ref = F.linear(x, w, b)
    assert got.dtype == torch.float32 and got.shape == (m, n)
    rel = ((got - ref).norm() / ref.norm()).item()
    assert rel < 0.01, rel  # bfloat16 keeps 8 bits of mantissa
    assert torch.equal(lin(x.view(1, m, k)), got.view(1, m, n))
    assert lin.nbytes() == n * k * 2 + (n * 4 if bias else 0)


def test_bf16_errors_name_the_setting(tiny_checkpoints):
    path = str(next(iter(tiny_checkpoints.values())))
    with pytest.raises(ModelLoadError, match='runtime_quant = "bf16" needs float32'):
        load_model(path, dtype="bfloat16", quant="bf16")
    with pytest.raises(ModelLoadError, match='runtime_quant = ""'):
        check_quant("bf16", torch.device("cuda", 0), torch.float32)


def test_bf16_model_is_close_and_smaller(tiny_checkpoints):
    lm = load_model(str(next(iter(tiny_checkpoints.values()))))
    b16 = copy.deepcopy(lm.model)
    before = b16.weight_bytes()
    b16.quantize("bf16")
    assert b16.quant == "bf16"
    assert all(layer.qkv_weight.numel() == 0 for layer in b16.layers)
    assert b16.weight_bytes() < before * 0.75
    seqs = [[5, 9, 33, 2, 17, 80, 41], [7, 7, 12, 300]]
    a, b = (_prefill_logits(m, seqs) for m in (lm.model, b16))
    assert ((a - b).norm() / a.norm()).item() < 0.05
    with pytest.raises(ModelLoadError, match="already quantized"):
        b16.quantize("int8")


def test_bf16_agrees_with_float32_on_the_default_model(default_gguf):
    lm = load_model(DEFAULT_MODEL)
    b16 = copy.deepcopy(lm.model)
    b16.quantize("bf16")
    tok = lm.tokenizer
    prompts = [
        tok.encode(tok.render_chat([{"role": "user", "content": p}])) for p in ACCURACY_PROMPTS
    ]
    cont = Generator(lm.model, 16, 128).generate(prompts, max_new_tokens=16)
    seqs = [p + c for p, c in zip(prompts, cont)]
    rows, off = [], 0
    for p, s in zip(prompts, seqs):
        rows.extend(range(off + len(p) - 1, off + len(s) - 1))
        off += len(s)
    ref, got = (_prefill_logits(m, seqs, 16)[rows] for m in (lm.model, b16))
    agree = (ref.argmax(-1) == got.argmax(-1)).float().mean().item()
    # closer to float32 than int8 (which must reach 0.8 in test_model_int8)
    assert agree >= 0.9, agree
    france = Generator(b16, 16, 16).generate(
        prompts[:1], max_new_tokens=24, stop_token_ids=tuple(tok.stop_token_ids)
    )[0]
    assert "Paris" in tok.decode(france)
