"""The default model (SmolLM2-135M-Instruct, bundled GGUF) against transformers loading the same file.

Both sides dequantize the same GGUF to float32; logits must agree within 1e-4 and greedy
continuations of 32 tokens must be identical on three prompts (two chat, one plain).
"""

from __future__ import annotations

import pytest
import torch
from fixtures.model_helpers import build_plan

from pie.model import DEFAULT_MODEL, load_model
from pie.model.generator import Generator, PagePool

N_NEW = 32


@pytest.fixture(scope="module")
def models(default_gguf):
    from transformers import AutoModelForCausalLM

    ours = load_model(DEFAULT_MODEL)
    assert ours.source.origin in ("bundled", "hf-cache")
    hf = AutoModelForCausalLM.from_pretrained(
        str(default_gguf.parent), gguf_file=default_gguf.name, dtype=torch.float32
    ).eval()
    return ours, hf


def _prompts(tok) -> list[list[int]]:
    texts = [
        tok.render_chat([{"role": "user", "content": "What is the capital of France?"}]),
        tok.render_chat(
            [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Write a short poem about the sea."},
            ]
        ),
        "The history of the Roman Empire begins with",
    ]
    return [tok.encode(t) for t in texts]


def test_default_model_logits_match_transformers(models):
    lm, hf = models
    assert (
        lm.config.arch == "llama" and lm.config.num_layers == 30 and lm.config.tie_word_embeddings
    )
    seqs = _prompts(lm.tokenizer)
    # one ragged prefill of all three prompts over scrambled pages, logits at every row
    pool = PagePool(64, shuffle_seed=5)
    lens = [len(s) for s in seqs]
    plan = build_plan(lens, lens, [pool.allocate(-(-n // 16)) for n in lens], 16)
    ids = torch.tensor([t for s in seqs for t in s])
    pos = torch.tensor([p for n in lens for p in range(n)])
    kv = lm.model.allocate_kv(64, 16)
    ours = lm.model.forward_batch(ids, pos, plan, kv, torch.arange(len(ids)))
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([s])).logits[0].float() for s in seqs])
    err = (ours - ref).abs().max().item()
    assert err < 1e-4, f"max |logit diff| {err:.2e}"


def test_default_model_greedy_matches_transformers(models):
    lm, hf = models
    prompts = _prompts(lm.tokenizer)
    gen = Generator(lm.model, page_size=16, num_pages=64, shuffle_pages_seed=9)
    ours = gen.generate(prompts, max_new_tokens=N_NEW)
    for prompt, got in zip(prompts, ours):
        x = torch.tensor([prompt])
        with torch.no_grad():
            ref = hf.generate(
                x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=N_NEW,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=2,
            )[0, len(prompt) :].tolist()
        assert got == ref, (
            f"greedy differs:\n ours {lm.tokenizer.decode(got)!r}\n hf   {lm.tokenizer.decode(ref)!r}"
        )
    assert "Paris" in lm.tokenizer.decode(ours[0])
