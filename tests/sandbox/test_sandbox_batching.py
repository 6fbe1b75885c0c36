"""Guest scheduling: N guests waiting on forward passes land in one batch (fiber mode);
the thread-per-guest fallback gives the same results."""

import asyncio
import json

from pie.processes import ProcessManager
from pie.sandbox.sandbox import LaunchGate, Sandbox
from pie.sandbox.testing import FakeEngine, make_program, reference_greedy

LOOP = """
import inferlet
async def main(input):
    ctx = inferlet.Context(inferlet.Model.load())
    ctx.append([1 + input["i"], 2, 3])
    return await ctx.generate_tokens(inferlet.Sampler.argmax(), max_tokens=input["n"],
                                     ignore_eos=True)
"""


async def _many(n_guests: int, steps: int, mode: str = "fiber"):
    eng = FakeEngine()
    # long time slices: an epoch yield on a loaded machine would split a batch
    pm = ProcessManager({"fake": eng}, None, sandbox=Sandbox(mode=mode, yield_ticks=100))
    await pm.start()
    prog = make_program(LOOP)
    pids = [await pm.launch(prog, json.dumps({"i": i, "n": steps}), "u", lambda *a: None)
            for i in range(n_guests)]
    results = [await pm.wait(p) for p in pids]
    await pm.shutdown()
    return eng, results


def test_guests_share_batches():
    eng, results = asyncio.run(_many(8, 12))
    for i, (kind, value) in enumerate(results):
        assert kind == "return", value
        assert json.loads(value) == reference_greedy([1 + i, 2, 3], 12, set())
    # guests start one at a time, each once the one before has queued its first pass (the
    # fake engine answers at once, so each start adds one guest to the batches); from then on
    # every batch holds one pass of every live guest
    assert eng.batches == list(range(1, 8)) + [8] * 5 + list(range(7, 0, -1)), eng.batches


def test_thread_mode_gives_the_same_tokens():
    eng, results = asyncio.run(_many(3, 6, mode="thread"))
    for i, (kind, value) in enumerate(results):
        assert kind == "return", value
        assert json.loads(value) == reference_greedy([1 + i, 2, 3], 6, set())
    assert sum(eng.batches) == 3 * 6


def test_forks_in_one_inferlet_share_batches():
    src = """
import asyncio, inferlet
async def main(input):
    ctx = inferlet.Context(inferlet.Model.load())
    ctx.append([5, 6, 7, 8])
    await ctx.flush()
    forks = [await ctx.fork() for _ in range(4)]
    for i, f in enumerate(forks):
        f.append([10 + i])
    outs = await asyncio.gather(*(f.generate_tokens(inferlet.Sampler.argmax(), max_tokens=5,
                                                    ignore_eos=True) for f in forks))
    return outs
"""
    eng = FakeEngine()

    async def go():
        pm = ProcessManager({"fake": eng}, None, sandbox=Sandbox(yield_ticks=100))
        pid = await pm.launch(make_program(src), "{}", "u", lambda *a: None)
        out = await pm.wait(pid)
        await pm.shutdown()
        return out

    kind, value = asyncio.run(go())
    assert kind == "return", value
    outs = json.loads(value)
    for i, toks in enumerate(outs):
        assert toks == reference_greedy([5, 6, 7, 8, 10 + i], 5, set())
    assert eng.batches == [1] + [4] * 5, eng.batches


STAMPED = """
import inferlet
async def main(input):
    inferlet.session.send("start")
    x = 0
    for i in range(input["spin"]):  # computing before the first pass
        x += i
    ctx = inferlet.Context(inferlet.Model.load())
    ctx.append([1, 2, 3])
    return await ctx.generate_tokens(inferlet.Sampler.argmax(), max_tokens=1, ignore_eos=True)
"""


async def _starts(sandbox: Sandbox, spins: list[int]) -> list[int]:
    """Launch one guest per entry at once; how many guests had submitted their (only) pass
    when each guest's first message arrived."""
    eng = FakeEngine()
    pm = ProcessManager({"fake": eng}, None, sandbox=sandbox)
    await pm.start()
    prog = make_program(STAMPED)
    seen: list[int] = []

    def on_event(pid, kind, value):
        if kind == "message":
            seen.append(eng.forward_calls)

    pids = [await pm.launch(prog, json.dumps({"spin": n}), "u", on_event) for n in spins]
    for p in pids:
        kind, value = await pm.wait(p)
        assert kind == "return", value
    await pm.shutdown()
    return seen


def test_a_burst_of_launches_reaches_the_engine_one_guest_after_another():
    # a 1 ms epoch: unrestricted, the guests would take turns and start together. The gate's
    # time budget is lifted here (a slow first instantiation on a busy machine could use up
    # the 0.1 s default); the budget has its own test below.
    gated = Sandbox(tick_s=0.001)
    gated.launch_gate = LaunchGate(slots=1, budget_s=30.0)
    seen = asyncio.run(_starts(gated, [0] * 6))
    assert seen == [0, 1, 2, 3, 4, 5], seen
    ungated = Sandbox(tick_s=0.001)
    ungated.launch_gate = LaunchGate(slots=100)
    assert asyncio.run(_starts(ungated, [0] * 6))[-1] < 5  # what the gate prevents


def test_a_guest_computing_before_its_first_pass_lets_the_next_one_start():
    sb = Sandbox(tick_s=0.001)
    sb.launch_gate = LaunchGate(slots=1, budget_s=0.02)
    # the first guest spins for far longer than the budget before its first pass
    seen = asyncio.run(_starts(sb, [1_000_000, 0]))
    assert seen == [0, 0], seen  # the second started (and sent) before the first submitted


def test_guests_waiting_at_the_gate_count_as_pending_for_the_scheduler():
    # the schedulers' probe: a burst of launches mostly waits at the gate, and its passes are
    # about to arrive just as those of running guests are
    from pie.sandbox.sandbox import pending_guests

    async def go():
        gate = LaunchGate(slots=1, budget_s=30.0)
        base = pending_guests()
        leave = await gate.enter()  # started: not waiting any more
        waiters = [asyncio.ensure_future(gate.enter()) for _ in range(3)]
        await asyncio.sleep(0)
        counts = [pending_guests() - base, gate.waiting]
        leave()
        leave2 = await waiters[0]  # the next one starts
        counts += [pending_guests() - base, gate.waiting]
        leave2()
        for w in waiters[1:]:
            (await w)()
        counts += [pending_guests() - base, gate.waiting]
        return counts

    assert asyncio.run(go()) == [3, 3, 2, 2, 0, 0]
