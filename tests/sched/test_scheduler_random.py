"""Random interleavings of forward passes (left in flight) with context and process operations,
through the real scheduler loop and a fake worker with simulated KV pages.

Every output is checked against the reference function of its context's history, and at the
end every page must be back in the pool.
"""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sched_fakes import FakeTokenizer, FakeWorker, expected_token, model_info

from pie.ipc.messages import SamplerSpec
from pie.sched import EngineError, ForwardRequest, Scheduler, SchedulerSettings

PS = 4
PIDS = ("p0", "p1", "p2")
USER = {"p0": "alice", "p1": "alice", "p2": "bob"}

_ARGS = {
    "new": st.tuples(st.just("new"), st.sampled_from(PIDS)),
    "fill": st.tuples(st.just("fill"), st.integers(0, 7), st.integers(1, 9), st.booleans()),
    "fork": st.tuples(st.just("fork"), st.integers(0, 7)),
    "commit": st.tuples(st.just("commit"), st.integers(0, 7)),
    "truncate": st.tuples(st.just("truncate"), st.integers(0, 7), st.integers(1, 3)),
    "save": st.tuples(st.just("save"), st.integers(0, 7), st.sampled_from(["a", "b"])),
    "open": st.tuples(st.just("open"), st.sampled_from(PIDS), st.sampled_from(["a", "b"])),
    "destroy": st.tuples(st.just("destroy"), st.integers(0, 7)),
    "exit": st.tuples(st.just("exit"), st.sampled_from(PIDS)),
    "drain": st.tuples(st.just("drain")),
}
# forward passes are what everything else races with: draw them most often
_KINDS = ["fill"] * 8 + ["fork", "commit"] * 2 + [k for k in _ARGS if k not in ("fill",)]
op = st.sampled_from(_KINDS).flatmap(_ARGS.__getitem__)


class Ref:
    """The test's model of one context: who owns it and what it holds."""

    def __init__(self, pid: str, cid: int, tokens=(), positions=()) -> None:
        self.pid, self.id = pid, cid
        self.tokens, self.positions = list(tokens), list(positions)
        self.task: asyncio.Future | None = None
        self.dead = False

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()


async def scenario(ops, policy: str) -> None:
    w = FakeWorker(total_pages=48, page_size=PS, max_batch_tokens=8, latency=0.0005)
    cfg = SchedulerSettings(batch_policy=policy, default_endowment_pages=1)
    s = Scheduler(model_info(PS), FakeTokenizer(), w, cfg)
    s.start()
    refs: list[Ref] = []
    saved: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
    live = set()

    async def ensure_process(pid: str) -> None:
        if pid not in live:
            await s.register_process(pid, USER[pid])
            live.add(pid)

    def pick(i: int) -> Ref | None:
        alive = [r for r in refs if not r.dead]
        return alive[i % len(alive)] if alive else None

    async def fill(r: Ref, n: int) -> None:
        start = r.positions[-1] + 1 if r.positions else 0
        toks = [(start * 7 + k) % 97 + 1 for k in range(n)]
        pos = list(range(start, start + n))
        info = s.context_info(r.pid, r.id)
        need = -(-(info.committed_pages * PS + info.working_tokens + n) // PS) - (
            info.committed_pages + info.working_pages
        )
        if need > 0:
            await s.reserve_pages(r.pid, r.id, need)
        base = len(r.tokens)
        # the history is claimed with the KV slots, before the pass runs
        r.tokens += toks
        r.positions += pos
        expect = [expected_token(r.tokens, r.positions, base + i + 1) for i in (0, n - 1)]
        res = await s.forward(
            r.pid,
            ForwardRequest(r.id, toks, pos, outputs=[(0, SamplerSpec()), (n - 1, SamplerSpec())]),
        )
        assert [x.token for x in res] == expect

    async def guarded(coro) -> None:
        try:
            await coro
        except EngineError as e:
            # the only refusals this scenario can meet
            allowed = ("out of KV pages", "exited", "destroyed", "does not exist")
            assert any(a in str(e) for a in allowed), e

    for pid in PIDS:  # every run starts with one context per process
        await ensure_process(pid)
        refs.append(Ref(pid, s.create_context(pid)))
    for o in ops:
        kind = o[0]
        if kind == "new":
            await ensure_process(o[1])
            refs.append(Ref(o[1], s.create_context(o[1])))
        elif kind == "fill":
            r = pick(o[1])
            if r is None or r.busy:
                continue
            r.task = asyncio.ensure_future(guarded(fill(r, o[2])))
            if o[3]:
                await r.task
        elif kind == "fork":
            r = pick(o[1])
            if r is None:
                continue
            # what the fork must hold: everything claimed so far (passes still in flight
            # included, the fork waits for them), nothing claimed while it copies
            history = (list(r.tokens), list(r.positions))
            try:
                cid = await s.fork_context(r.pid, r.id)
            except EngineError as e:
                assert "out of KV pages" in str(e), e
                continue
            refs.append(Ref(r.pid, cid, *history))
        elif kind == "commit":
            r = pick(o[1])
            if r is None:
                continue
            info = s.context_info(r.pid, r.id)
            try:
                s.commit_pages(r.pid, r.id, info.working_tokens // PS)
            except EngineError as e:
                assert r.busy and "in flight" in str(e), e
        elif kind == "truncate":
            r = pick(o[1])
            if r is None:
                continue
            info = s.context_info(r.pid, r.id)
            n = min(o[2], info.working_tokens)
            try:
                s.truncate_tokens(r.pid, r.id, n)
            except EngineError as e:
                assert r.busy and "in flight" in str(e), e
                continue
            if n:
                del r.tokens[-n:], r.positions[-n:]
        elif kind == "save":
            r = pick(o[1])
            if r is None:
                continue
            history = (list(r.tokens), list(r.positions))
            try:
                await s.save_snapshot(r.pid, r.id, o[2])
            except EngineError as e:
                assert "out of KV pages" in str(e), e
                continue
            saved[(USER[r.pid], o[2])] = history
        elif kind == "open":
            await ensure_process(o[1])
            key = (USER[o[1]], o[2])
            try:
                cid = await s.open_snapshot(o[1], o[2])
            except EngineError as e:
                assert key not in saved or "out of KV pages" in str(e), e
                continue
            assert key in saved
            refs.append(Ref(o[1], cid, *saved[key]))
        elif kind == "destroy":
            r = pick(o[1])
            if r is None:
                continue
            s.destroy_context(r.pid, r.id)
            r.dead = True
        elif kind == "exit":
            if o[1] in live:
                s.unregister_process(o[1])
                live.discard(o[1])
                for r in refs:
                    if r.pid == o[1]:
                        r.dead = True
        elif kind == "drain":
            await asyncio.gather(*(r.task for r in refs if r.task is not None))
            for r in refs:
                if not r.dead:
                    info = s.context_info(r.pid, r.id)
                    assert info.committed_pages * PS + info.working_tokens == len(r.tokens)
    await asyncio.gather(*(r.task for r in refs if r.task is not None))
    for pid in list(live):
        s.unregister_process(pid)
    await s.register_process("cleanup-a", "alice")
    await s.register_process("cleanup-b", "bob")
    for user, name in saved:
        s.delete_snapshot("cleanup-a" if user == "alice" else "cleanup-b", name)
    st_ = s.stats()
    assert st_["pages_used"] == 0 and st_["contexts"] == 0 and st_["queued"] == 0
    await s.close()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(ops=st.lists(op, min_size=5, max_size=40), policy=st.sampled_from(["eager", "adaptive"]))
def test_random_interleavings_keep_outputs_and_pages_right(ops, policy):
    asyncio.run(asyncio.wait_for(scenario(ops, policy), 30))
