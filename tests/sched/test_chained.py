"""Chained forward passes (`ForwardRequest.after`): a decode loop one pass ahead of its caller.

The fake worker answers each row with a hash of everything the row sees, so a chained pass fed
the wrong token (or the placeholder) gives a wrong answer, and the committed page's hash would
not match an identical prefix written without chaining.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from sched_fakes import FakeTokenizer, FakeWorker, expected_token, model_info

from pie.ipc.messages import SamplerSpec
from pie.sched import EngineError, ForwardRequest, Scheduler, SchedulerSettings

PS = 4


def make(worker: FakeWorker | None = None, probe=None, policy: str = "eager") -> Scheduler:
    worker = worker or FakeWorker(page_size=PS)
    return Scheduler(
        model_info(worker.info.page_size),
        FakeTokenizer(),
        worker,
        SchedulerSettings(batch_policy=policy, default_endowment_pages=8),
        pending_clients=probe,
    )


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def req(ctx: int, tokens: list[int], start: int, after: ForwardRequest | None = None):
    return ForwardRequest(
        ctx=ctx,
        tokens=tokens,
        positions=list(range(start, start + len(tokens))),
        outputs=[(len(tokens) - 1, SamplerSpec())],
        after=after,
    )


async def chained_decode(s: Scheduler, pid: str, ctx: int, prompt: list[int], steps: int):
    """Greedy decode keeping one chained pass queued ahead; returns the sampled tokens."""
    await s.reserve_pages(pid, ctx, -(-(len(prompt) + steps) // PS))
    first = req(ctx, prompt, 0)
    cur = asyncio.ensure_future(s.forward(pid, first))
    cur_req = first
    out = []
    for k in range(steps):
        nxt = None
        if k + 1 < steps:
            nreq = req(ctx, [0], len(prompt) + k, after=cur_req)
            nxt = asyncio.ensure_future(s.forward(pid, nreq))
        rows = await cur
        out.append(rows[0].token)
        if nxt is None:
            break
        cur, cur_req = nxt, nreq
    return out


def reference(prompt: list[int], steps: int) -> list[int]:
    toks, out = list(prompt), []
    for _ in range(steps):
        t = expected_token(toks, list(range(len(toks))), len(toks))
        out.append(t)
        toks.append(t)
    return out


def test_chained_passes_are_fed_the_sampled_token():
    async def body():
        async with make() as s:
            await s.register_process("p", "u")
            ctx = s.create_context("p")
            prompt = [5, 6, 7]
            got = await chained_decode(s, "p", ctx, prompt, 9)
            assert got == reference(prompt, 9)
            # the engine's record of the context holds the real tokens, not the placeholders
            c = s.kv.get("p", ctx)
            assert c.tokens[: len(prompt) + 8] == prompt + got[:8]

    run(body())


def test_chained_pages_hash_like_unchained_ones():
    async def body():
        async with make() as s:
            await s.register_process("p", "u")
            a = s.create_context("p")
            prompt = [9, 8, 7, 6, 5]
            got = await chained_decode(s, "p", a, prompt, 4)  # 8 tokens written: 2 pages
            s.commit_pages("p", a, 2)
            # the same 8 tokens written plainly in another context dedupe onto a's pages
            b = s.create_context("p")
            await s.reserve_pages("p", b, 2)
            await s.forward("p", req(b, prompt + got[:3], 0))
            s.commit_pages("p", b, 2)
            assert s.kv.get("p", a).committed == s.kv.get("p", b).committed

    run(body())


def test_a_failed_pass_fails_the_pass_chained_to_it():
    async def body():
        w = FakeWorker(page_size=PS)
        async with make(w) as s:
            await s.register_process("p", "u")
            ctx = s.create_context("p")
            await s.reserve_pages("p", ctx, 2)
            w.fail_next = 1
            first = req(ctx, [1, 2, 3], 0)
            f1 = asyncio.ensure_future(s.forward("p", first))
            f2 = asyncio.ensure_future(s.forward("p", req(ctx, [0], 3, after=first)))
            with pytest.raises(EngineError, match="injected failure"):
                await f1
            with pytest.raises(EngineError):
                await f2
            # both rolled back: the context can be written again from slot 0
            assert s.context_info("p", ctx).working_tokens == 0
            rows = await s.forward("p", req(ctx, [1, 2, 3], 0))
            assert rows[0].token == expected_token([1, 2, 3], [0, 1, 2], 3)

    run(body())


def test_chaining_needs_a_sampling_pass_of_the_same_process():
    async def body():
        async with make() as s:
            await s.register_process("p", "u")
            await s.register_process("q", "u")
            ctx = s.create_context("p")
            other = s.create_context("q")
            await s.reserve_pages("p", ctx, 2)
            await s.reserve_pages("q", other, 2)
            first = req(ctx, [1, 2], 0)
            fut = asyncio.ensure_future(s.forward("p", first))
            await asyncio.sleep(0)
            with pytest.raises(EngineError, match="this process"):
                await s.forward("q", req(other, [0], 0, after=first))
            probe_only = ForwardRequest(ctx=ctx, tokens=[3], positions=[2])
            pf = asyncio.ensure_future(s.forward("p", probe_only))
            await asyncio.sleep(0)
            with pytest.raises(EngineError, match="samples a token"):
                await s.forward("p", req(ctx, [0], 3, after=probe_only))
            await fut
            await pf

    run(body())


def test_a_chained_cohort_fires_without_waiting_for_its_callers():
    """Callers compute on their results while their next passes are already queued, and
    another client is always computing (the probe never reads 0): the batch goes out as soon
    as the previous one ends, instead of waiting up to half a batch latency for clients."""

    async def body():
        w = FakeWorker(page_size=PS, latency=0.02)
        busy = [1]  # a client that never queues anything
        async with make(w, probe=lambda: busy[0], policy="adaptive") as s:
            n, steps = 6, 8

            async def client(i: int) -> None:
                pid = f"p{i}"
                await s.register_process(pid, "u")
                ctx = s.create_context(pid)
                await s.reserve_pages(pid, ctx, 4)
                first = req(ctx, [i + 1, 2], 0)
                cur, cur_req = asyncio.ensure_future(s.forward(pid, first)), first
                for k in range(steps):
                    nreq = req(ctx, [0], 2 + k, after=cur_req)
                    nxt = asyncio.ensure_future(s.forward(pid, nreq))
                    await cur
                    busy[0] += 1  # the caller "computes" on its result, yielding now and then
                    for _ in range(2):
                        time.sleep(0.0015)  # noqa: ASYNC251 - caller work blocks the loop
                        await asyncio.sleep(0)
                    busy[0] -= 1
                    cur, cur_req = nxt, nreq
                await cur

            await asyncio.gather(*(client(i) for i in range(n)))
            sizes = [k for _, _, k in w.spans]
            assert sum(sizes) == n * (steps + 1)
            steady = sizes[2:]
            assert sum(1 for k in steady if k == n) >= 0.8 * len(steady), sizes
            # batches follow each other with no wait for callers (which compute 6 x 3 ms per
            # step, during the 20 ms batch): waiting for them would cost up to 10 ms a batch
            gaps = [b[0] - a[1] for a, b in zip(w.spans[2:], w.spans[3:])]
            assert sorted(gaps)[len(gaps) // 2] < 0.006, gaps  # median: robust to a busy CPU

    run(body())
