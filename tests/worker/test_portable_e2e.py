"""The portable driver end to end on the default model: through the rings, against the model
called directly, and with tensor parallelism over two CPU processes (gloo)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from descriptor_factory import Req, batch

from pie.ipc.channel import as_array, to_bytes
from pie.ipc.client import WorkerClient
from pie.ipc.messages import CopyPages, SamplerSpec
from pie.ipc.spec import WorkerSpec

pytestmark = pytest.mark.e2e

PAGE = 16
PROMPT_A = [1, 9690, 198, 2683, 359, 253, 5356, 2, 198, 1, 520, 9531, 198, 57, 5248, 1535, 30, 2]
PROMPT_B = [1, 4093, 198, 504, 3458, 314, 260, 3497, 282, 4649, 47, 2, 198, 1, 520, 9531, 198]
STEPS = 6


TINY_A = [1, 45, 300, 7, 99, 12, 250, 3, 77, 18, 5, 160, 2, 41, 8, 333, 19, 64, 21]
TINY_B = [1, 9, 120, 44, 87, 3, 390, 6, 11, 58, 200, 2, 17, 30, 4, 71, 5]


def _spec(model: str, tp: int, name: str) -> WorkerSpec:
    return WorkerSpec(
        model=model,
        driver="portable",
        devices=("cpu",) * tp,
        dtype="float32",
        name=name,
        # float32 weights: compared token for token against the float32 model below
        options={
            "total_pages": 32,
            "num_threads": 1,
            "ring_slot_bytes": 1 << 20,
            "runtime_quant": "",
        },
    )


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def workers(loop, tmp_path_factory):
    """The default model at TP=1, a tiny random Qwen2 (4 heads, 2 KV heads) at TP=2, and the
    tiny checkpoint's path."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fixtures.checkpoints import build_checkpoint

    tiny = str(build_checkpoint("qwen2", tmp_path_factory.mktemp("tiny") / "qwen2"))

    async def start():
        return await asyncio.gather(
            WorkerClient.start(_spec("", 1, "smollm")),
            WorkerClient.start(_spec(tiny, 2, "tiny-tp2")),
            return_exceptions=True,
        )

    clients = loop.run_until_complete(start())
    started = [c for c in clients if isinstance(c, WorkerClient)]
    try:
        for c in clients:
            if isinstance(c, BaseException):
                raise c
        yield [*clients, tiny]
    finally:
        for c in started:
            loop.run_until_complete(c.close())


@pytest.fixture(scope="module")
def reference_model():
    from pie.model import DEFAULT_MODEL, load_model

    torch.set_num_threads(1)
    return load_model(DEFAULT_MODEL, device="cpu", dtype=torch.float32).model


def greedy_direct(model, prompt: list[int], steps: int) -> list[int]:
    """Greedy tokens by recomputing the whole sequence each step in a fresh KV (no paging reuse)."""
    from pie.kernels.attention import AttentionPlan

    seq = list(prompt)
    out = []
    for _ in range(steps):
        n = len(seq)
        pages = (n + PAGE - 1) // PAGE
        kv = model.allocate_kv(pages, PAGE)
        plan = AttentionPlan.build(
            np.array([0, n]),
            np.arange(pages),
            np.array([0, pages]),
            np.array([n - (pages - 1) * PAGE]),
            PAGE,
        )
        logits = model.forward_batch(
            torch.tensor(seq), torch.arange(n), plan, kv, torch.tensor([n - 1])
        )
        tok = int(torch.argmax(logits[0]))
        out.append(tok)
        seq.append(tok)
    return out


async def run_schedule(
    c: WorkerClient, prompt_a: list[int] = PROMPT_A, prompt_b: list[int] = PROMPT_B
) -> tuple[list[int], list[int]]:
    """A mixed prefill/decode schedule: A prefills; A decodes while B prefills in two chunks;
    then both decode together. Pages are scattered on purpose."""
    pages_a, pages_b = [7, 3, 12], [20, 5, 9]
    toks_a, toks_b = [], []

    async def step(bid, reqs):
        r = await c.submit(batch(bid, reqs))
        assert r.error == "", r.error
        return as_array(r.tokens, "int32").tolist()

    (t,) = await step(0, [Req(prompt_a, 0, pages_a)])
    toks_a.append(t)
    half = len(prompt_b) // 2
    # B's first chunk produces no output row (sampler None); A decodes alongside it
    (t,) = await step(
        1,
        [Req([toks_a[-1]], len(prompt_a), pages_a), Req(prompt_b[:half], 0, pages_b, sampler=None)],
    )
    toks_a.append(t)
    ta, tb = await step(
        2, [Req([toks_a[-1]], len(prompt_a) + 1, pages_a), Req(prompt_b[half:], half, pages_b)]
    )
    toks_a.append(ta)
    toks_b.append(tb)
    bid = 3
    while len(toks_a) < STEPS or len(toks_b) < STEPS:
        reqs, which = [], []
        if len(toks_a) < STEPS:
            reqs.append(Req([toks_a[-1]], len(prompt_a) + len(toks_a) - 1, pages_a))
            which.append(toks_a)
        if len(toks_b) < STEPS:
            reqs.append(Req([toks_b[-1]], len(prompt_b) + len(toks_b) - 1, pages_b))
            which.append(toks_b)
        for lst, t in zip(which, await step(bid, reqs)):
            lst.append(t)
        bid += 1
    return toks_a, toks_b


def test_worker_matches_the_model_called_directly(loop, workers, reference_model):
    tp1 = workers[0]
    assert tp1.info.vocab_size == 49152 and tp1.info.arch == "llama"
    a, b = loop.run_until_complete(run_schedule(tp1))
    assert a == greedy_direct(reference_model, PROMPT_A, STEPS)
    assert b == greedy_direct(reference_model, PROMPT_B, STEPS)


def test_tensor_parallel_two_ranks_equal_one(loop, workers):
    """Two worker processes joined by gloo give the tokens of the unsharded model."""
    from pie.model import load_model

    _, tp2, tiny = workers
    assert tp2.info.total_pages == 32
    assert len(tp2.pids) == 2
    two = loop.run_until_complete(run_schedule(tp2, TINY_A, TINY_B))
    one_rank = load_model(tiny, device="cpu", dtype=torch.float32).model
    assert two == (greedy_direct(one_rank, TINY_A, STEPS), greedy_direct(one_rank, TINY_B, STEPS))
    assert len(set(two[0] + two[1])) > 1  # not a degenerate constant output


def test_copied_pages_continue_like_the_original(loop, workers):
    """A fork: copy A's pages, then decoding from the copy gives A's next token."""
    tp1 = workers[0]

    async def main():
        n = len(PROMPT_A)
        r = await tp1.submit(batch(100, [Req(PROMPT_A, 0, [1, 2])]))
        first = as_array(r.tokens, "int32")[0]
        ok = await tp1.submit(
            CopyPages(101, to_bytes([1, 2], "int32"), to_bytes([10, 11], "int32"))
        )
        assert ok.error == ""
        orig, fork = await asyncio.gather(
            tp1.submit(batch(102, [Req([int(first)], n, [1, 2])])),
            tp1.submit(batch(103, [Req([int(first)], n, [10, 11])])),
        )
        assert orig.tokens == fork.tokens

    loop.run_until_complete(main())


def test_bad_batch_on_the_real_model_leaves_it_serving(loop, workers):
    tp1, tp2, _ = workers

    async def main():
        bad = batch(200, [Req([5, 6], 0, [40])])  # page 40 is outside the 32-page pool
        r = await tp1.submit(bad)
        assert "kv_page_indices[0] = 40 is outside the KV pool of 32 pages" in r.error
        good = await tp1.submit(batch(201, [Req([5, 6], 0, [4], sampler=SamplerSpec())]))
        assert good.error == "" and len(good.tokens) == 4
        # with tensor parallelism every rank refuses the same batch and both keep serving
        r = await tp2.submit(bad)
        assert "outside the KV pool of 32 pages" in r.error
        good = await tp2.submit(batch(202, [Req([5, 6], 0, [4])]))
        assert good.error == "" and len(good.tokens) == 4

    loop.run_until_complete(main())


def test_seeded_sampling_and_probes_on_the_real_model(loop, workers):
    tp1 = workers[0]

    async def main():
        s = SamplerSpec(temperature=0.8, top_p=0.9, seed=7, dist_k=5)
        one = await tp1.submit(batch(300, [Req(PROMPT_A, 0, [1, 2], sampler=s)]))
        two = await tp1.submit(batch(301, [Req(PROMPT_A, 0, [3, 4], sampler=s)]))
        assert one.error == "" and one.tokens == two.tokens
        ids = as_array(one.rows[0].dist_ids, "int32")
        assert len(ids) == 5 and len(set(ids.tolist())) == 5

    loop.run_until_complete(main())


def test_swap_out_and_in_restores_the_kv(loop, workers):
    """Suspend: pages to host slots; clobber them on the device; restore; decoding continues."""
    from pie.ipc.messages import SwapIn, SwapOut

    tp1 = workers[0]
    i32 = lambda v: to_bytes(v, "int32")

    async def main():
        n = len(PROMPT_A)
        r = await tp1.submit(batch(400, [Req(PROMPT_A, 0, [6, 8])]))
        first = int(as_array(r.tokens, "int32")[0])
        expected = await tp1.submit(batch(401, [Req([first], n, [6, 8])]))
        assert (await tp1.submit(SwapOut(402, i32([6, 8]), i32([0, 3])))).error == ""
        await tp1.submit(batch(403, [Req(PROMPT_B, 0, [6, 8])]))  # overwrite the device pages
        clobbered = await tp1.submit(batch(404, [Req([first], n, [6, 8])]))
        assert (await tp1.submit(SwapIn(405, i32([0, 3]), i32([6, 8])))).error == ""
        restored = await tp1.submit(batch(406, [Req([first], n, [6, 8])]))
        assert restored.tokens == expected.tokens
        assert clobbered.error == ""  # (its token may or may not differ; the restore must not)

    loop.run_until_complete(main())


def test_attention_and_logit_masks_on_the_real_model(loop, workers):
    """An explicit causal mask gives the default result, a mask that hides the prompt changes
    it, and a logit mask confines the token."""
    from descriptor_factory import replace

    tp1 = workers[0]
    n = len(PROMPT_A)

    async def main():
        plain = await tp1.submit(batch(500, [Req(PROMPT_A, 0, [1, 2])]))
        causal = await tp1.submit(
            replace(batch(501, [Req(PROMPT_A, 0, [1, 2])]), **_causal_mask_fields(n))
        )
        assert causal.error == "" and causal.tokens == plain.tokens
        # every token sees only itself: a different context, so (almost surely) another token
        runs = []
        for j in range(n):
            runs += [j, 1]
        blind = replace(
            batch(502, [Req(PROMPT_A, 0, [1, 2])]),
            mask_runs=to_bytes(runs, "uint32"),
            mask_indptr=to_bytes(list(range(0, 2 * n + 1, 2)), "int32"),
        )
        r = await tp1.submit(blind)
        assert r.error == "" and r.tokens != plain.tokens
        top = int(as_array(plain.tokens, "int32")[0])
        allowed = [top + 1, top + 3] if top + 3 < 49152 else [top - 3, top - 1]
        lo = allowed[0]
        masked = await tp1.submit(batch(503, [Req(PROMPT_A, 0, [1, 2], logit_mask=[lo, 1, 1, 1])]))
        assert masked.error == ""
        assert int(as_array(masked.tokens, "int32")[0]) in allowed

    loop.run_until_complete(main())


def _causal_mask_fields(n: int) -> dict:
    runs, indptr = [], [0]
    for j in range(n):
        runs += [0, j + 1]  # nothing masked, then j+1 visible slots
        indptr.append(len(runs))
    return {"mask_runs": to_bytes(runs, "uint32"), "mask_indptr": to_bytes(indptr, "int32")}
