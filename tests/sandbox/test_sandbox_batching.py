"""Guest scheduling: N guests waiting on forward passes land in one batch (fiber mode);
the thread-per-guest fallback gives the same results."""

import asyncio
import json

from pie.processes import ProcessManager
from pie.sandbox.sandbox import Sandbox
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
    # every step of all 8 guests ran as one batch
    assert eng.batches == [8] * 12, eng.batches


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
