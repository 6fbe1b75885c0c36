"""Races between forward passes in flight and context / process operations."""

from __future__ import annotations

import asyncio

import pytest
from sched_fakes import FakeWorker
from test_scheduler import PS, Ctx, make, new_ctx, run

from pie.ipc.messages import SamplerSpec
from pie.sched import EngineError, ForwardRequest
from pie.sched.context import ContextState


def test_fork_waits_for_the_pass_in_flight():
    async def body():
        async with make(FakeWorker(page_size=PS, latency=0.05)) as s:
            await s.register_process("p", "alice")
            a = await new_ctx(s, "p")
            await a.fill([1, 2, 3])
            pending = asyncio.ensure_future(a.fill([4, 5]))
            await asyncio.sleep(0.01)
            with pytest.raises(EngineError, match="in flight"):
                s.commit_pages("p", a.id, 1)
            with pytest.raises(EngineError, match="in flight"):
                s.truncate_tokens("p", a.id, 1)
            fid = await s.fork_context("p", a.id)  # must see tokens 4, 5 written
            await pending
            b = Ctx(s, "p", fid, a.tokens, a.positions)
            await b.decode(3, 6)
            s.commit_pages("p", a.id, 1)

    run(body())


def test_cancelled_pass_is_rolled_back_and_refunded():
    async def body():
        w = FakeWorker(page_size=PS, latency=0.05)
        async with make(w, default_token_limit=8) as s:
            await s.register_process("p", "alice")
            a, b = await new_ctx(s, "p"), await new_ctx(s, "p")
            await a.ensure(1)
            await b.ensure(6)
            busy = asyncio.ensure_future(a.fill([1]))
            await asyncio.sleep(0.01)
            doomed = asyncio.ensure_future(
                s.forward("p", ForwardRequest(b.id, [1] * 6, list(range(6))))
            )
            await asyncio.sleep(0.005)
            doomed.cancel()
            await busy
            await asyncio.sleep(0.01)
            assert s.context_info("p", b.id).working_tokens == 0
            await b.fill([9] * 6)  # the 6 tokens were refunded: 1 + 6 <= 8

    run(body())


def test_exit_with_passes_queued_and_in_flight():
    async def body():
        w = FakeWorker(page_size=PS, latency=0.05)
        async with make(w) as s:
            await s.register_process("p", "alice")
            await s.register_process("q", "bob")
            a, b = await new_ctx(s, "p"), await new_ctx(s, "p")
            q = await new_ctx(s, "q")
            for c in (a, b, q):
                await c.ensure(4)
            first = asyncio.ensure_future(a.fill([1]))
            await asyncio.sleep(0.01)  # a's pass is in flight
            second = asyncio.ensure_future(b.fill([2]))
            third = asyncio.ensure_future(q.fill([3]))
            await asyncio.sleep(0.005)
            s.unregister_process("p")
            with pytest.raises(EngineError, match="process p exited"):
                await second
            await third  # other processes are unaffected
            await asyncio.gather(first, return_exceptions=True)
            with pytest.raises(EngineError, match="not registered"):
                s.create_context("p")
            s.unregister_process("q")
            assert s.stats()["pages_used"] == 0 and s.stats()["queued"] == 0

    run(body())


def test_close_fails_queued_passes_and_later_calls():
    async def body():
        s = make(FakeWorker(page_size=PS, latency=0.05))
        s.start()
        await s.register_process("p", "alice")
        a, b = await new_ctx(s, "p"), await new_ctx(s, "p")
        await a.ensure(1)
        await b.ensure(1)
        first = asyncio.ensure_future(a.fill([1]))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(b.fill([1]))
        await asyncio.sleep(0)
        await s.close()
        await s.close()  # idempotent
        for fut in (first, second):
            with pytest.raises(EngineError, match="shutting down"):
                await fut
        with pytest.raises(EngineError, match="shutting down"):
            await s.forward("p", ForwardRequest(a.id, [1], [5], [(0, SamplerSpec())]))

    run(body())


def test_cancelled_registration_leaves_no_claim():
    async def body():
        async with make(max_procs=1) as s:
            await s.register_process("a", "u")
            waiting = asyncio.ensure_future(s.register_process("b", "u"))
            await asyncio.sleep(0.01)
            waiting.cancel()
            await asyncio.sleep(0)
            s.unregister_process("a")
            await asyncio.wait_for(s.register_process("c", "u"), 1)
            assert s.stats()["processes"] == 1 and s.stats()["processes_waiting"] == 0

    run(body())


def test_loop_idles_while_only_suspended_contexts_wait():
    async def body():
        w = FakeWorker(page_size=PS)
        async with make(w) as s:
            await s.register_process("p", "alice")
            a = await new_ctx(s, "p")
            await a.ensure(1)
            ctx = s.kv.get("p", a.id)
            ctx.state = ContextState.SUSPENDED
            builds = 0
            next_batch = s._next_batch

            def counting():
                nonlocal builds
                builds += 1
                return next_batch()

            s._next_batch = counting
            pending = asyncio.ensure_future(a.fill([1]))
            await asyncio.sleep(0.05)
            assert builds <= 2  # the loop waits instead of spinning over the queue
            assert not pending.done() and not w.batches
            ctx.state = ContextState.ACTIVE
            s.wake()
            await asyncio.wait_for(pending, 1)

    run(body())


def test_a_failed_pass_fails_the_passes_built_on_it():
    async def body():
        w = FakeWorker(page_size=PS, latency=0.01)
        async with make(w) as s:
            await s.register_process("p", "alice")
            c = await new_ctx(s, "p")
            await c.fill([1, 2, 3])
            await c.ensure(6)
            w.fail_next = 1
            sampler = [(0, SamplerSpec())]
            first = asyncio.ensure_future(s.forward("p", ForwardRequest(c.id, [4, 5], [3, 4])))
            second = asyncio.ensure_future(s.forward("p", ForwardRequest(c.id, [6], [5], sampler)))
            with pytest.raises(EngineError, match="injected failure"):
                await first
            with pytest.raises(EngineError, match="an earlier forward pass of this context failed"):
                await second
            assert s.context_info("p", c.id).working_tokens == 3
            assert len(w.batches) == 2  # the prefill and the failed one: the dependent never ran
            await c.fill([4, 5, 6])  # outputs still match the (rolled back) history

    run(body())


def test_close_fails_processes_waiting_for_admission():
    async def body():
        s = make(max_procs=1)
        s.start()
        await s.register_process("a", "u")
        waiting = asyncio.ensure_future(s.register_process("b", "u"))
        await asyncio.sleep(0.01)
        await s.close()
        with pytest.raises(EngineError, match="shutting down"):
            await waiting

    run(body())
