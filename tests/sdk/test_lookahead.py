"""Generation with lookahead (`ctx.generate(..., lookahead=True)`, the default): the next step's
pass is queued, chained to the current one, before the inferlet reads the current step.

Every case is compared with the same program run without lookahead: tokens, the context's
final state and what a following turn sees must not change.
"""

import asyncio
import json

from pie.sandbox.testing import (
    EOT,
    IM_END,
    CountingEngine,
    FakeEngine,
    reference_greedy,
    run_inferlet,
)

PROGRAM = """
import inferlet
async def main(input):
    la = input["lookahead"]
    m = inferlet.Model.load()
    ctx = inferlet.Context(m)
    ctx.append(list(range(1, 30)))
    out = {}
    # ignore EOS, stopped by max_tokens
    out["cut"] = await ctx.generate_tokens(inferlet.Sampler.argmax(), max_tokens=21,
                                           ignore_eos=True, lookahead=la)
    out["after_cut"] = [ctx.seq_len, ctx.buffer()]
    # only the stop token allowed after 3 steps of free choice: stops on a stop token
    ctx.append([7, 8])
    gen = ctx.generate(inferlet.Sampler.argmax(), max_tokens=40, lookahead=la,
                       stop=[%(stop)d])
    toks = []
    async for step in gen:
        toks.append((await step.execute()).token)
    out["stop"] = toks
    out["after_stop"] = [ctx.seq_len, ctx.buffer()]
    # input appended between steps goes in after the sampled token
    gen = ctx.generate(inferlet.Sampler.argmax(), max_tokens=6, ignore_eos=True, lookahead=la)
    toks = []
    async for step in gen:
        toks.append((await step.execute()).token)
        if len(toks) == 2:
            ctx.append([99, 98])
    out["appended"] = toks
    # breaking out of the loop early, then using the context again
    gen = ctx.generate(inferlet.Sampler.argmax(), max_tokens=10, ignore_eos=True, lookahead=la)
    async for step in gen:
        (await step.execute())
        break
    ctx.append([5])
    out["after_break"] = await ctx.generate_tokens(inferlet.Sampler.argmax(), max_tokens=3,
                                                   ignore_eos=True, lookahead=la)
    out["final"] = [ctx.seq_len, ctx.committed_pages, ctx.working_pages, ctx.working_tokens]
    return out
"""


def _run(lookahead: bool, stop: int, engine: FakeEngine | None = None):
    src = PROGRAM % {"stop": stop}
    kind, value, _ = asyncio.run(run_inferlet(src, {"lookahead": lookahead}, engine=engine))
    assert kind == "return", value
    return json.loads(value)


def test_lookahead_changes_nothing_the_inferlet_sees():
    # a stop token the fake model actually produces in the second generation
    probe = _run(False, stop=-1 % 260)
    stop = probe["stop"][3]
    plain = _run(False, stop=stop)
    ahead = _run(True, stop=stop)
    assert plain["stop"][-1] == stop and len(plain["stop"]) == 4
    assert plain["cut"] == reference_greedy(list(range(1, 30)), 21, set())
    assert plain["after_stop"][1] == [stop]  # the stop token is pending, not written
    assert ahead == plain


def test_lookahead_keeps_one_pass_in_flight():
    eng = CountingEngine()
    _run(True, stop=EOT, engine=eng)
    assert eng.peak == 2 and eng.chained > 20
    eng = CountingEngine()
    _run(False, stop=IM_END, engine=eng)
    assert eng.peak == 1 and eng.chained == 0
