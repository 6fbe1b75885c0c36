"""Inferlets against the real scheduler (`pie.sched.Scheduler`) with the scheduler tests'
paged fake worker: the SDK's page accounting, forks and snapshots hold up end to end, and
concurrent guests share batches."""

import asyncio
import json
import sys
from pathlib import Path

from pie.processes import ProcessManager
from pie.sandbox.sandbox import Sandbox
from pie.sandbox.testing import make_program
from pie.sched.scheduler import Scheduler, SchedulerSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sched"))
from sched_fakes import FakeTokenizer, FakeWorker, expected_token, model_info

GEN = """
import asyncio, inferlet
async def main(input):
    m = inferlet.Model.load()
    ctx = inferlet.Context(m)
    ctx.append(input["prompt"])
    await ctx.flush()
    forks = [await ctx.fork() for _ in range(2)]
    for i, f in enumerate(forks):
        f.append([100 + i])
    outs = await asyncio.gather(*(f.generate_tokens(inferlet.Sampler.argmax(),
                                                    max_tokens=input["n"], ignore_eos=True)
                                  for f in forks))
    await forks[0].save("after")
    again = inferlet.Context.open(m, "after")
    again.append([7])
    more = await again.generate_tokens(inferlet.Sampler.argmax(), max_tokens=3, ignore_eos=True)
    return {"forks": outs, "more": more}
"""


def _greedy(history: list[int], n: int) -> list[int]:
    toks = list(history)
    out = []
    for _ in range(n):
        t = expected_token(toks, list(range(len(toks))), len(toks))
        out.append(t)
        toks.append(t)
    return out


def test_generation_forks_and_snapshots_on_the_real_scheduler():
    prompt = list(range(1, 23))  # spans several 4-token pages

    async def go():
        worker = FakeWorker(total_pages=512, page_size=4)
        sched = Scheduler(model_info(4), FakeTokenizer(), worker,
                          SchedulerSettings(batch_policy="eager"))
        sched.start()
        pm = ProcessManager({"fake": sched}, None, sandbox=Sandbox(yield_ticks=100))
        pids = [await pm.launch(make_program(GEN), json.dumps({"prompt": prompt, "n": 6}),
                                f"user{i}", lambda *a: None) for i in range(3)]
        outs = [await pm.wait(p) for p in pids]
        await pm.shutdown()
        stats = sched.stats()
        await sched.close()
        return outs, stats

    outs, stats = asyncio.run(go())
    for kind, value in outs:
        assert kind == "return", value
        out = json.loads(value)
        for i, toks in enumerate(out["forks"]):
            assert toks == _greedy(prompt + [100 + i], 6)
        fork0 = prompt + [100] + out["forks"][0]
        # the snapshot holds everything fork 0 wrote (its last token was flushed by save)
        assert out["more"] == _greedy(fork0 + [7], 3)
    assert stats["contexts"] == 0 and stats["snapshots"] == 3  # process contexts freed
    assert stats["requests"] > stats["batches"]  # passes of different guests shared batches


def test_attention_masks_reach_the_worker():
    import numpy as np
    from sched_fakes import row_token

    src = """
import inferlet
async def main(input):
    ctx = inferlet.Context(inferlet.Model.load())
    ctx.append(list(range(1, 11)))
    await ctx.flush(keep_last=False)
    f = ctx.forward()
    f.input([11, 12])
    f.attention_mask([[0, 5, 5, 1], [0, 12]])  # row 0 sees slots 0-4 and itself
    f.sample([0, 1], inferlet.Sampler.argmax())
    return (await f.execute()).tokens
"""

    async def go():
        sched = Scheduler(model_info(4), FakeTokenizer(), FakeWorker(total_pages=64, page_size=4),
                          SchedulerSettings(batch_policy="eager"))
        sched.start()
        pm = ProcessManager({"fake": sched}, None, sandbox=Sandbox())
        pid = await pm.launch(make_program(src), "{}", "u", lambda *a: None)
        out = await pm.wait(pid)
        await pm.shutdown()
        await sched.close()
        return out

    kind, value = asyncio.run(go())
    assert kind == "return", value
    toks = list(range(1, 13))
    row0 = row_token(np.array(toks[:5] + [11]), np.array([0, 1, 2, 3, 4, 10]))
    row1 = row_token(np.array(toks), np.arange(12))
    assert json.loads(value) == [row0, row1]
