"""int8 against float32 projections at the default model's shapes: which layout and op is fastest.

    python bench/int8.py                    # M = 1, 32, 64, 2240; 2 threads
    python bench/int8.py --m 1,64 --threads 1 --repeats 50

For each projection of SmolLM2-135M (hidden 576, intermediate 1536, 9 + 2 x 3 heads of 64,
vocab 49152) and each row count M it times, on the same random data:

* `f32`      F.linear(x, W) with W [N, K] (the float path);
* `f32 KN`   torch.mm(x, W^T) from a [K, N] contiguous copy (the batch-1 LM-head trick);
* `dyn`      torch.ops.quantized.linear_dynamic (fbgemm, one activation scale per call);
* `mm NK`    torch._int_mm(x_q, W_q.t()) on a transposed view of [N, K] int8 (GEMM alone);
* `mm KN`    torch._int_mm(x_q, W_q) on a [K, N] contiguous int8 copy (GEMM alone);
* `q+mm NK`, `q+mm KN`  the whole int8 linear: per-row quantize, GEMM, rescale
  (`pie.model.llama.quantize_rows` and `int8_linear`, or the same steps for the KN layout).

Medians over interleaved repeats, in microseconds, plus GF/s (2*M*K*N / time) of the best
whole int8 path and its speed-up over `f32`.

    python bench/int8.py --accuracy [--prompts 8] [--steps 32]

Accuracy of `runtime_quant = "int8"` on the default model against float32, same weights:
greedy float32 continuations of chat prompts are replayed through both models in one
teacher-forced batch; reported are top-1 agreement over the generated positions, max and mean
|logit difference| there and how many free-running greedy continuations are identical, for
int8, for int8 weights with float activations (the weight error alone) and for bfloat16 (for
scale); then the float32 and int8 answers to the France question.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pie.model.llama import Int8Linear, quantize_rows

SHAPES = {  # name: (K, N) of the default model's projections
    "qkv": (576, 960),
    "o": (576, 576),
    "gate_up": (576, 3072),
    "down": (1536, 576),
    "lm_head": (576, 49152),
}


def median_us(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Interleave the candidates so load spikes hit all of them alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e6)
    return {k: statistics.median(v) for k, v in times.items()}


def candidates(m: int, k: int, n: int) -> dict[str, Callable[[], object]]:
    g = torch.Generator().manual_seed(m * 7 + n)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g) * 0.05
    w_kn = w.t().contiguous()
    lin = Int8Linear(w, None)
    w_q_kn = lin.weight_q.t().contiguous()
    x_q, _ = quantize_rows(x)
    scale = lin.scale
    w_q = w.clone()
    s = (w_q.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
    with warnings.catch_warnings():  # the quantized-tensor API is deprecated; a baseline only
        warnings.simplefilter("ignore")
        zero = torch.zeros(n, dtype=torch.long)
        qw = torch.quantize_per_channel(w_q, s.double(), zero, 0, torch.qint8)
    packed = torch.ops.quantized.linear_prepack(qw, None)

    def kn_path() -> torch.Tensor:
        xq, sx = quantize_rows(x)
        return torch._int_mm(xq, w_q_kn).float().mul_(sx).mul_(scale)  # as Int8Linear

    return {
        "f32": lambda: F.linear(x, w),
        "f32 KN": lambda: torch.mm(x, w_kn),
        "dyn": lambda: torch.ops.quantized.linear_dynamic(x, packed, False),
        "mm NK": lambda: torch._int_mm(x_q, lin.weight_q.t()),
        "mm KN": lambda: torch._int_mm(x_q, w_q_kn),
        "q+mm NK": lambda: lin(x),
        "q+mm KN": kn_path,
    }


ACCURACY_PROMPTS = [
    "What is the capital of France? Answer in one sentence.",
    "Write a short poem about the sea.",
    "Explain what a hash table is to a beginner.",
    "Give me three tips for sleeping better.",
    "What is 17 times 23? Show your steps.",
    "Translate 'good morning, how are you?' into Spanish.",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "Write a Python function that reverses a string.",
    "Why is the sky blue?",
    "List the planets of the solar system in order.",
]


def teacher_forced_logits(model, seqs: list[list[int]]) -> torch.Tensor:
    """Logits at every position of every sequence, one ragged prefill over fresh pages."""
    import numpy as np

    from pie.kernels.attention import AttentionPlan

    page = 16
    n_pages = [-(-len(s) // page) for s in seqs]
    qo = np.cumsum([0] + [len(s) for s in seqs])
    indptr = np.cumsum([0] + n_pages)
    last = [len(s) - (n - 1) * page for s, n in zip(seqs, n_pages)]
    plan = AttentionPlan.build(qo, np.arange(sum(n_pages)), indptr, np.array(last), page)
    kv = model.allocate_kv(sum(n_pages), page)
    ids = torch.tensor([t for s in seqs for t in s])
    pos = torch.tensor([p for s in seqs for p in range(len(s))])
    return model.forward_batch(ids, pos, plan, kv, torch.arange(len(ids)))


def weights_only_int8(model):
    """A float model whose projection and head weights are replaced by their int8 values
    (codes x scales): the int8 weight error alone, with float activations."""
    import copy

    m = copy.deepcopy(model)

    def dequant(p) -> None:
        q = Int8Linear(p, None)
        p.data = q.weight_q.float() * q.scale[:, None]

    for layer in m.layers:
        for p in (layer.qkv_weight, layer.o_weight, layer.gate_up_weight, layer.down_weight):
            dequant(p)
    head = m.lm_head.detach().clone() if m.lm_head is m.embed else m.lm_head
    m.lm_head = torch.nn.Parameter(head, requires_grad=False)
    dequant(m.lm_head)
    m.lm_head_t = None
    return m


def accuracy(n_prompts: int, steps: int) -> None:
    import copy

    from pie.model import DEFAULT_MODEL, load_model
    from pie.model.generator import Generator

    lm = load_model(DEFAULT_MODEL)
    f32 = lm.model
    q8 = copy.deepcopy(f32)
    q8.quantize("int8")
    others = {
        "int8": q8,
        "int8 weights only": weights_only_int8(f32),
        "bfloat16": load_model(DEFAULT_MODEL, dtype="bfloat16").model,  # for scale
    }
    tok = lm.tokenizer
    prompts = [
        tok.encode(tok.render_chat([{"role": "user", "content": p}]))
        for p in ACCURACY_PROMPTS[:n_prompts]
    ]

    def greedy(model) -> list[list[int]]:
        gen = Generator(model, page_size=16, num_pages=64 * len(prompts))
        return gen.generate(prompts, max_new_tokens=steps)  # greedy, no stop

    ref_new = greedy(f32)
    seqs = [p + n for p, n in zip(prompts, ref_new)]
    rows, off = [], 0
    for p, s in zip(prompts, seqs):  # the positions that predicted the continuation
        rows.extend(range(off + len(p) - 1, off + len(s) - 1))
        off += len(s)
    ref = teacher_forced_logits(f32, seqs)[rows]
    print(
        f"model {DEFAULT_MODEL} | {len(prompts)} chat prompts x {steps} greedy steps | "
        f"{len(rows)} positions | float32 logit std {ref.std().item():.2f}"
    )
    print("| weights | top-1 agreement | max abs diff | mean abs diff | greedy identical |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, model in others.items():
        got = teacher_forced_logits(model, seqs)[rows]
        agree = (ref.argmax(-1) == got.argmax(-1)).float().mean().item()
        diff = (ref - got).abs()
        same = sum(a == b for a, b in zip(ref_new, greedy(model)))
        print(
            f"| {name} | {agree:.4f} ({round(agree * len(rows))}/{len(rows)}) | "
            f"{diff.max().item():.3f} | {diff.mean().item():.4f} | {same}/{len(prompts)} |"
        )
    stops = tuple(tok.stop_token_ids)
    for name, model in (("float32", f32), ("int8", q8)):
        answer = Generator(model, 16, 64).generate(prompts[:1], 48, stop_token_ids=stops)[0]
        print(f"{name}: {tok.decode(answer)!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--m", default="1,32,64,2240", help="row counts (tokens in the batch)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--accuracy", action="store_true", help="int8 vs float32 on the default model")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--steps", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.accuracy:
        accuracy(args.prompts, args.steps)
        return
    ms = [int(v) for v in args.m.split(",")]
    names = args.shapes.split(",")
    cols = list(candidates(1, 8, 8))
    print(f"threads {args.threads} | median of {args.repeats} | microseconds per call")
    print("| shape | M | " + " | ".join(cols) + " | best int8 GF/s | f32 / best int8 |")
    print("| --- | ---: |" + " ---: |" * len(cols) + " ---: | ---: |")
    for name in names:
        k, n = SHAPES[name]
        for m in ms:
            reps = max(5, args.repeats // (4 if m * n > 20_000_000 else 1))
            t = median_us(candidates(m, k, n), reps)
            best = min(t["q+mm NK"], t["q+mm KN"])
            gf = 2 * m * k * n / best / 1e3
            cells = " | ".join(f"{t[c]:.0f}" for c in cols)
            print(f"| {name} {k}x{n} | {m} | {cells} | {gf:.0f} | {t['f32'] / best:.2f}x |")


if __name__ == "__main__":
    main()
