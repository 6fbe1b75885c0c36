"""Prefill and decode throughput of the model layer against transformers `generate`, same weights.

Both sides run the default model (SmolLM2-135M-Instruct, the bundled GGUF dequantized once to
float32): ours through `pie.model.generator.Generator` (paged KV, one ragged batch per step),
transformers through `LlamaForCausalLM.generate` with the very same tensors loaded into it.
For each batch size B, every sequence gets the same P-token prompt; greedy decoding; EOS off.

    prefill tok/s = B*P / (time from the call to the first token)
    decode  tok/s = B / (median time between consecutive tokens)

Token times are stamped inside each loop (our `on_token` callback, a transformers logits
processor), so one slow step under background load does not skew the figure. Prefill is the
median over --repeats runs, decode the median over all steps of all runs; the systems
alternate within a repeat. Prints one table with ratios (ours / transformers).

`--quant` lists runtime quantizations of ours to run side by side (`none` = the dtype's own
weights, `int8` = `runtime_quant = "int8"`, `bf16` likewise): with more than one, the table gets one column
pair per mode and ratios to the first mode; `--no-hf` leaves transformers out.

    python bench/forward.py [--batches 1,8,32,64] [--prompt-len 64] [--new-tokens 16]
                            [--repeats 3] [--threads 2] [--dtype float32]
                            [--quant none,int8] [--no-hf]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from pie.model import DEFAULT_MODEL, load_model
from pie.model.generator import Generator
from pie.model.loader import open_checkpoint

PAGE_SIZE = 16


def transformers_model(spec: str, dtype: torch.dtype):
    """A transformers LlamaForCausalLM holding exactly the tensors our loader reads."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _, ckpt = open_checkpoint(spec)
    c = ckpt.config
    cfg = LlamaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads,
        num_key_value_heads=c.num_kv_heads,
        head_dim=c.head_dim,
        max_position_embeddings=c.max_position,
        rms_norm_eps=c.rms_norm_eps,
        rope_theta=c.rope_theta,
        tie_word_embeddings=c.tie_word_embeddings,
        bos_token_id=c.bos_token_id,
        eos_token_id=list(c.eos_token_ids),
    )
    model = LlamaForCausalLM(cfg).to(dtype).eval()
    names = [n for n in model.state_dict() if ckpt.has(n)]
    model.load_state_dict({n: ckpt.get(n).to(dtype) for n in names}, strict=False)
    if c.tie_word_embeddings:
        model.tie_weights()
    return model


def time_ours(
    gen: Generator, prompt: list[int], batch: int, new_tokens: int
) -> tuple[float, list[float]]:
    """(prefill seconds, per-decode-step seconds) of one greedy generation."""
    stamps: list[float] = []

    def on_token(seq: int, _token: int) -> None:
        if seq == 0:
            stamps.append(time.perf_counter())

    t = time.perf_counter()
    gen.generate([prompt] * batch, max_new_tokens=new_tokens, on_token=on_token)
    return stamps[0] - t, [b - a for a, b in itertools.pairwise(stamps)]


@torch.inference_mode()
def time_hf(model, prompt: list[int], batch: int, new_tokens: int) -> tuple[float, list[float]]:
    """The same for transformers generate: a logits processor stamps every step."""
    from transformers import LogitsProcessor, LogitsProcessorList

    stamps: list[float] = []

    class Stamp(LogitsProcessor):
        def __call__(self, input_ids, scores):
            stamps.append(time.perf_counter())
            return scores

    ids = torch.tensor([prompt] * batch)
    t = time.perf_counter()
    model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        logits_processor=LogitsProcessorList([Stamp()]),
    )
    return stamps[0] - t, [b - a for a, b in itertools.pairwise(stamps)]


def _quant(name: str) -> str:
    return "" if name in ("", "none", "float", "float32") else name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--quant", default="none", help="runtime quantizations of ours: none, int8, bf16")
    ap.add_argument("--no-hf", action="store_true", help="leave transformers out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    quants = [_quant(q.strip()) for q in args.quant.split(",")]

    lm = load_model(args.model, dtype=args.dtype)
    text = "The history of the Roman Empire begins with the founding of the city of Rome. " * 20
    prompt = lm.tokenizer.encode(text)[: args.prompt_len]
    pages_per_seq = -(-(len(prompt) + args.new_tokens + 1) // PAGE_SIZE)
    systems: list[tuple[str, object, object]] = []  # (label, timer, model)
    for q in quants:
        model = lm.model
        if q:
            model = copy.deepcopy(lm.model)  # same float weights, quantized
            model.quantize(q)
        gen = Generator(model, page_size=PAGE_SIZE, num_pages=pages_per_seq * max(batches))
        systems.append((q or str(lm.model.dtype).removeprefix("torch."), time_ours, gen))
    if not args.no_hf:
        systems.append(("hf", time_hf, transformers_model(args.model, lm.model.dtype)))

    for _, fn, model in systems:  # warm-up (allocator, oneDNN primitive caches)
        fn(model, prompt, 1, 3)

    rows = []
    for b in batches:
        prefill: dict[str, list[float]] = {name: [] for name, _, _ in systems}
        steps: dict[str, list[float]] = {name: [] for name, _, _ in systems}
        for rep in range(args.repeats):  # alternate so background load hits all alike
            order = systems if rep % 2 == 0 else systems[::-1]
            for name, fn, model in order:
                p, st = fn(model, prompt, b, args.new_tokens + 1)
                prefill[name].append(p)
                steps[name].extend(st)
        med = {
            name: (
                b * len(prompt) / statistics.median(prefill[name]),
                b / statistics.median(steps[name]),
            )
            for name, _, _ in systems
        }
        rows.append((b, med))

    print(
        f"model {args.model} | {args.dtype} | threads {args.threads} | prompt {len(prompt)} tokens | "
        f"decode {args.new_tokens} tokens | median of {args.repeats}"
    )
    names = [name for name, _, _ in systems]
    if len(quants) == 1 and not args.no_hf:
        print(
            "| batch | prefill ours tok/s | prefill HF tok/s | ratio | decode ours tok/s | decode HF tok/s | ratio |"
        )
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for b, m in rows:
            (op, od), (hp, hd) = m[names[0]], m["hf"]
            print(
                f"| {b} | {op:.0f} | {hp:.0f} | {op / hp:.2f}x | {od:.1f} | {hd:.1f} | {od / hd:.2f}x |"
            )
        return
    first = names[0]
    head = ["batch"] + [f"prefill {n} tok/s" for n in names] + [f"decode {n} tok/s" for n in names]
    head += [f"{n} / {first} prefill" for n in names[1:]] + [
        f"{n} / {first} decode" for n in names[1:]
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + " ---: |" * len(head))
    for b, m in rows:
        cells = [str(b)] + [f"{m[n][0]:.0f}" for n in names] + [f"{m[n][1]:.1f}" for n in names]
        cells += [f"{m[n][0] / m[first][0]:.2f}x" for n in names[1:]]
        cells += [f"{m[n][1] / m[first][1]:.2f}x" for n in names[1:]]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
