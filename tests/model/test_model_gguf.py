"""The GGUF path of every architecture: tiny checkpoints exported as llama.cpp lays them out.

Loading the GGUF must give transformers' logits on the original safetensors (so the q/k
un-permutation, `rope_freqs`, QK-norm, biases and tied heads are right) and the same tokens and
chat rendering as the directory's tokenizer.
"""

from __future__ import annotations

import pytest
import torch
from fixtures.gguf_export import export_gguf
from fixtures.model_helpers import build_plan
from test_model_tokenizer import CONVERSATIONS, CORPUS

from pie.model import load_model, load_tokenizer


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_gguf_export_matches_transformers(arch, tiny_checkpoints, tmp_path):
    from transformers import AutoModelForCausalLM

    src = tiny_checkpoints[arch]
    path = export_gguf(src, tmp_path / f"{arch}.gguf")
    lm = load_model(str(path))
    assert lm.source.kind == "gguf" and lm.config.arch == arch
    hf = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
    ids = [3, 77, 150, 8, 299, 42, 41, 40, 120, 121, 7, 300, 64, 65, 9, 10, 11, 200, 201, 1]
    n = len(ids)
    plan = build_plan([n], [n], [[4, 0, 2, 6, 1]], 4)
    ours = lm.model.forward_batch(
        torch.tensor(ids), torch.arange(n), plan, lm.model.allocate_kv(8, 4), torch.arange(n)
    )
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    assert (ours - ref).abs().max().item() < 1e-4

    tok, ref_tok = lm.tokenizer, load_tokenizer(str(src))
    for text in CORPUS:
        assert tok.encode(text) == ref_tok.encode(text), repr(text)
    for conv in CONVERSATIONS:
        assert tok.render_chat(conv) == ref_tok.render_chat(conv)
    assert tok.stop_token_ids[0] == ref_tok.stop_token_ids[0] == 2
