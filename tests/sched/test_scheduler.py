"""Scheduler behaviour against a fake worker that keeps real (simulated) KV pages.

Every output token is checked against the reference function of the context's history, so a
wrong page table, chunk, copy or dedupe shows up as a wrong token.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from sched_fakes import FakeTokenizer, FakeWorker, expected_token, model_info

from pie.ipc.messages import SamplerSpec
from pie.sched import EngineError, ForwardRequest, Scheduler, SchedulerSettings

PS = 4


def make(worker: FakeWorker | None = None, max_procs: int | None = None, **cfg) -> Scheduler:
    worker = worker or FakeWorker(page_size=PS)
    settings = SchedulerSettings(**{"batch_policy": "eager", "default_endowment_pages": 8, **cfg})
    return Scheduler(
        model_info(worker.info.page_size),
        FakeTokenizer(),
        worker,
        settings,
        max_concurrent_processes=max_procs,
    )


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


class Ctx:
    """An inferlet-side view of one context: its history, for computing expected outputs."""

    def __init__(self, s: Scheduler, pid: str, cid: int, tokens=(), positions=()) -> None:
        self.s, self.pid, self.id = s, pid, cid
        self.tokens, self.positions = list(tokens), list(positions)

    async def ensure(self, n: int) -> None:
        info = self.s.context_info(self.pid, self.id)
        cap = (info.committed_pages + info.working_pages) * PS
        used = info.committed_pages * PS + info.working_tokens
        need = -(-(used + n - cap) // PS)
        if need > 0:
            await self.s.reserve_pages(self.pid, self.id, need)

    async def fill(self, tokens: list[int], outputs: list[int] | None = None) -> list[int]:
        """Forward `tokens`; check and return the tokens produced at `outputs` indices."""
        await self.ensure(len(tokens))
        start = self.positions[-1] + 1 if self.positions else 0
        pos = list(range(start, start + len(tokens)))
        outputs = [len(tokens) - 1] if outputs is None else outputs
        res = await self.s.forward(
            self.pid,
            ForwardRequest(
                ctx=self.id,
                tokens=tokens,
                positions=pos,
                outputs=[(i, SamplerSpec()) for i in outputs],
            ),
        )
        base = len(self.tokens)
        self.tokens += tokens
        self.positions += pos
        got = [r.token for r in res]
        want = [expected_token(self.tokens, self.positions, base + i + 1) for i in outputs]
        assert got == want
        return got

    async def decode(self, steps: int, first: int) -> list[int]:
        out, tok = [], first
        for _ in range(steps):
            (tok,) = await self.fill([tok])
            out.append(tok)
        return out


async def new_ctx(s: Scheduler, pid: str) -> Ctx:
    return Ctx(s, pid, s.create_context(pid))


PROMPT = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]


def test_prefill_then_decode_matches_reference():
    async def body():
        async with make() as s:
            await s.register_process("p", "alice")
            c = await new_ctx(s, "p")
            await c.fill(PROMPT, outputs=[0, 5, len(PROMPT) - 1])
            await c.decode(6, 3)
            info = s.context_info("p", c.id)
            assert info.committed_pages == 0 and info.working_tokens == len(PROMPT) + 6
            st = s.stats()
            assert st["requests"] == 7 and st["tokens"] == len(PROMPT) + 6
            assert st["pages_used"] == -(-(len(PROMPT) + 6) // PS)

    run(body())


def test_writing_past_reserved_pages_is_a_clear_error():
    async def body():
        async with make() as s:
            await s.register_process("p", "alice")
            cid = s.create_context("p")
            await s.reserve_pages("p", cid, 2)
            with pytest.raises(EngineError, match=r"slots 0\.\.8 .* 8 slots .* reserve 1 more"):
                await s.forward(
                    "p", ForwardRequest(ctx=cid, tokens=[1] * 9, positions=list(range(9)))
                )
            # nothing was claimed by the refused pass
            assert s.context_info("p", cid).working_tokens == 0
            with pytest.raises(EngineError, match="belongs to another process"):
                s.context_info("q", cid)

    run(body())


@pytest.mark.parametrize("max_tokens", [3, 5, 8])
def test_chunked_prefill_equals_unchunked(max_tokens):
    prompt = list(range(100, 131))
    outs = [0, 2, 7, 16, 30]

    async def once(limit: int) -> tuple[list[int], int]:
        w = FakeWorker(page_size=PS, max_batch_tokens=limit)
        async with make(w) as s:
            await s.register_process("p", "alice")
            c = await new_ctx(s, "p")
            got = await c.fill(prompt, outputs=outs)
            got += await c.decode(3, 7)
            return got, len(w.batches)

    whole, nb = run(once(256))
    chunked, nc = run(once(max_tokens))
    assert whole == chunked
    assert nb == 4 and nc == -(-len(prompt) // max_tokens) + 3


def test_chunking_refuses_a_mask_that_sees_later_tokens():
    async def body():
        async with make(FakeWorker(page_size=PS, max_batch_tokens=4)) as s:
            await s.register_process("p", "alice")
            cid = s.create_context("p")
            await s.reserve_pages("p", cid, 2)
            full = [[0, 6]] * 6  # every token sees all six slots: bidirectional
            with pytest.raises(EngineError, match="must fit in one batch"):
                await s.forward(
                    "p",
                    ForwardRequest(
                        ctx=cid, tokens=[1] * 6, positions=list(range(6)), attention_mask=full
                    ),
                )
            causal = [[0, i + 1] for i in range(6)]
            res = await s.forward(
                "p",
                ForwardRequest(
                    ctx=cid,
                    tokens=[1, 2, 3, 4, 5, 6],
                    positions=list(range(6)),
                    outputs=[(5, SamplerSpec())],
                    attention_mask=causal,
                ),
            )
            assert res[0].token == expected_token([1, 2, 3, 4, 5, 6], list(range(6)), 6)

    run(body())


def test_requests_of_many_processes_share_one_batch():
    async def body():
        w = FakeWorker(page_size=PS)
        async with make(w) as s:
            ctxs = []
            for i in range(6):
                await s.register_process(f"p{i}", "alice")
                ctxs.append(await new_ctx(s, f"p{i}"))
            await asyncio.gather(*(c.fill([i + 1, i + 2]) for i, c in enumerate(ctxs)))
            assert len(w.batches) == 1
            assert len(np.frombuffer(w.batches[0].qo_indptr, np.int32)) == 7

    run(body())


def test_fork_shares_committed_and_copies_working_pages():
    async def body():
        w = FakeWorker(page_size=PS)
        async with make(w) as s:
            await s.register_process("p", "alice")
            a = await new_ctx(s, "p")
            await a.fill(PROMPT)  # 11 tokens: 2 full pages + 3
            s.commit_pages("p", a.id, 2)
            used = s.stats()["pages_used"]
            bid = await s.fork_context("p", a.id)
            b = Ctx(s, "p", bid, a.tokens, a.positions)
            assert s.stats()["pages_used"] == used + 1  # only the working page is new
            assert len(w.copies) == 1
            ta, tb = await asyncio.gather(a.decode(5, 1), b.decode(5, 2))
            assert ta != tb  # diverged; each was checked against its own history

    run(body())


def test_identical_prefixes_are_shared_engine_wide():
    async def body():
        async with make() as s:
            ctxs = []
            for i in range(3):
                await s.register_process(f"p{i}", "alice")
                c = await new_ctx(s, f"p{i}")
                await c.fill(PROMPT[:8])
                ctxs.append(c)
            assert s.stats()["pages_used"] == 6
            for c in ctxs:
                s.commit_pages(c.pid, c.id, 2)
            st = s.stats()
            assert st["pages_used"] == 2 and st["pages_committed"] == 2 and st["pages_shared"] == 2
            # a different history at the same positions is not shared
            d = await new_ctx(s, "p0")
            await d.fill(PROMPT[1:9])
            s.commit_pages("p0", d.id, 2)
            assert s.stats()["pages_used"] == 4
            for c in ctxs:
                await c.decode(3, 5)
            s.unregister_process("p1")
            # shared 2 + d's 2 + the decode pages of p0 and p2 (p1's went with it)
            assert s.stats()["pages_used"] == 2 + 2 + 2

    run(body())


def test_snapshots_outlive_the_process_and_are_namespaced_by_user():
    async def body():
        async with make() as s:
            await s.register_process("p1", "alice")
            c = await new_ctx(s, "p1")
            await c.fill(PROMPT)
            s.commit_pages("p1", c.id, 1)
            await s.save_snapshot("p1", c.id, "sys")
            history = (list(c.tokens), list(c.positions))
            s.unregister_process("p1")
            assert s.stats()["pages_used"] > 0 and s.stats()["snapshots"] == 1

            await s.register_process("p2", "alice")
            await s.register_process("p3", "bob")
            with pytest.raises(EngineError, match="no snapshot named 'sys' for user 'bob'"):
                await s.open_snapshot("p3", "sys")
            o = Ctx(s, "p2", await s.open_snapshot("p2", "sys"), *history)
            await o.decode(3, 9)
            t = Ctx(s, "p2", s.take_snapshot("p2", "sys"), *history)
            await t.decode(2, 4)
            with pytest.raises(EngineError):
                s.delete_snapshot("p2", "sys")  # taken: gone
            s.unregister_process("p2")
            s.unregister_process("p3")
            assert s.stats()["pages_used"] == 0

    run(body())


def test_exit_releases_everything_but_snapshots():
    async def body():
        async with make() as s:
            await s.register_process("p", "alice")
            for i in range(3):
                c = await new_ctx(s, "p")
                await c.fill(PROMPT[: 4 + i])
            assert s.stats()["pages_used"] == 1 + 2 + 2
            await s.save_snapshot("p", c.id, "keep")  # copies the last context's 2 pages
            assert s.stats()["pages_used"] == 7
            s.unregister_process("p")
            assert s.stats()["contexts"] == 0 and s.stats()["processes"] == 0
            assert s.stats()["pages_used"] == 2
            await s.register_process("q", "alice")
            s.delete_snapshot("q", "keep")
            assert s.stats()["pages_used"] == 0

    run(body())


def test_queued_request_times_out():
    async def body():
        w = FakeWorker(page_size=PS, latency=0.15)
        async with make(w, request_timeout_secs=0.05) as s:
            await s.register_process("p", "alice")
            a, b = await new_ctx(s, "p"), await new_ctx(s, "p")
            await a.ensure(1)
            await b.ensure(1)
            first = asyncio.ensure_future(a.fill([1]))
            await asyncio.sleep(0.01)  # the first batch is now in flight
            with pytest.raises(EngineError, match="request_timeout_secs=0.05"):
                await b.fill([2])
            await first
            assert s.stats()["timeouts"] == 1
            assert s.context_info("p", b.id).working_tokens == 0  # rolled back
            await b.fill([2])

    run(body())


def test_token_limit_is_enforced():
    async def body():
        async with make(default_token_limit=10) as s:
            await s.register_process("p", "alice")
            await s.register_process("q", "alice", token_limit=100)
            c = await new_ctx(s, "p")
            await c.fill([1] * 6)
            with pytest.raises(EngineError, match="6 of 10 tokens used, this pass needs 5"):
                await c.fill([1] * 5)
            await c.fill([1] * 4)
            d = await new_ctx(s, "q")
            await d.fill([1] * 20)

    run(body())


def test_admission_waits_for_room_and_rejects_what_never_fits():
    async def body():
        w = FakeWorker(total_pages=64, page_size=PS)
        async with make(w, default_endowment_pages=64, admission_oversubscription_factor=2.0) as s:
            await s.register_process("a", "u")
            await s.register_process("b", "u")
            third = asyncio.ensure_future(s.register_process("c", "u"))
            await asyncio.sleep(0.02)
            assert not third.done() and s.stats()["processes_waiting"] == 1
            s.unregister_process("a")
            await asyncio.wait_for(third, 1)
        async with make(w, default_endowment_pages=200, admission_oversubscription_factor=2.0) as s:
            with pytest.raises(EngineError, match="at most 128"):
                await s.register_process("x", "u")

    run(body())


def test_max_concurrent_processes_gates_registration():
    async def body():
        async with make(max_procs=1) as s:
            await s.register_process("a", "u")
            second = asyncio.ensure_future(s.register_process("b", "u"))
            await asyncio.sleep(0.02)
            assert not second.done()
            s.unregister_process("a")
            await asyncio.wait_for(second, 1)
            assert s.stats()["processes"] == 1

    run(body())


def test_worker_errors_fail_the_batch_and_roll_back():
    async def body():
        w = FakeWorker(page_size=PS)
        async with make(w) as s:
            await s.register_process("p", "alice")
            c = await new_ctx(s, "p")
            await c.fill([1, 2, 3])
            w.error = "descriptor names page 9999"
            with pytest.raises(EngineError, match="rejected a batch: descriptor names page 9999"):
                await c.fill([4])
            assert s.context_info("p", c.id).working_tokens == 3
            w.error = ""
            await c.fill([4])
            w.dead = True
            with pytest.raises(EngineError, match="worker .* failed"):
                await c.fill([5])
            with pytest.raises(EngineError, match="worker .* failed"):
                await c.fill([5])

    run(body())


def test_commit_needs_full_computed_pages_and_truncate_rolls_back():
    async def body():
        async with make() as s:
            await s.register_process("p", "alice")
            c = await new_ctx(s, "p")
            await c.fill([1, 2, 3, 4, 5, 6])
            with pytest.raises(EngineError, match="only 1 working pages are full"):
                s.commit_pages("p", c.id, 2)
            s.truncate_tokens("p", c.id, 3)
            del c.tokens[3:], c.positions[3:]
            await c.fill([7, 8])
            s.release_pages("p", c.id, 1)
            assert s.context_info("p", c.id).working_tokens == 4

    run(body())


def test_stats_report_histogram_and_percentiles():
    async def body():
        async with make() as s:
            await s.register_process("p", "alice")
            ctxs = [await new_ctx(s, "p") for _ in range(4)]
            await asyncio.gather(*(c.fill([1, 2]) for c in ctxs))
            await ctxs[0].fill([3])
            st = s.stats()
            assert st["batches"] == 2
            assert st["batch_size_histogram"]["1"] == 1 and st["batch_size_histogram"]["4-7"] == 1
            assert st["batch_latency_ms"]["p50"] >= 0 and st["queue_wait_ms"]["max"] >= 0
            assert st["pages_total"] == 64 and 0 < st["utilization"] < 1
            assert st["latency_s"] > 0 and s.balance("p") == 8.0

    run(body())


def test_scheduler_implements_the_engine_service_protocol():
    import inspect

    from pie.sched import EngineService

    for name, proto in vars(EngineService).items():
        if name.startswith("_") or not callable(proto):
            continue
        impl = getattr(Scheduler, name)
        assert inspect.iscoroutinefunction(impl) == inspect.iscoroutinefunction(proto), name
        want = list(inspect.signature(proto).parameters)
        assert list(inspect.signature(impl).parameters) == want, name
    s = make()
    assert s.info.page_size == PS and s.tokenizer is not None
