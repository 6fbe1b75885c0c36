"""Generation in bursts (`ctx.generate(..., burst=B)`): B passes chained per step, one wake per
B tokens. Every case is compared with the same program run one token per step without
lookahead: the tokens, the context's final state and what a following turn sees must not
change; only how many tokens a step returns does.
"""

import asyncio
import json

import pytest

from pie.sandbox.testing import EOT, CountingEngine, FakeEngine, reference_greedy, run_inferlet

PROGRAM = """
import inferlet

async def gen_tokens(ctx, n, **kw):
    toks = []
    async for step in ctx.generate(inferlet.Sampler.argmax(), max_tokens=n, **kw):
        toks.extend((await step.execute()).tokens)
    return toks

async def main(input):
    b, k = input["burst"], input["k"]
    kw = {"burst": b} if b > 1 else {"lookahead": False}
    m = inferlet.Model.load()
    ctx = inferlet.Context(m)
    ctx.append(list(range(1, 30)))
    out = {}
    # ignore EOS, stopped by max_tokens (not a multiple of the burst)
    out["cut"] = await gen_tokens(ctx, 21, ignore_eos=True, **kw)
    out["after_cut"] = [ctx.seq_len, ctx.buffer()]
    # a stop token the model produces inside a burst
    ctx.append([7, 8])
    toks, sizes = [], []
    async for step in ctx.generate(inferlet.Sampler.argmax(), max_tokens=40,
                                   stop=[%(stop)d], **kw):
        got = (await step.execute()).tokens
        toks.extend(got)
        sizes.append(len(got))
    out["stop"] = toks
    out["after_stop"] = [ctx.seq_len, ctx.buffer()]
    # input appended between steps goes in after the last token read
    toks = []
    async for step in ctx.generate(inferlet.Sampler.argmax(), max_tokens=9, ignore_eos=True,
                                   **kw):
        before = len(toks)
        toks.extend((await step.execute()).tokens)
        if before < k <= len(toks):
            ctx.append([99, 98])
    out["appended"] = toks
    # leaving the loop early, then using the context again
    toks = []
    async for step in ctx.generate(inferlet.Sampler.argmax(), max_tokens=10, ignore_eos=True,
                                   **kw):
        toks.extend((await step.execute()).tokens)
        if len(toks) >= k:
            break
    out["break"] = toks
    ctx.append([5])
    out["after_break"] = await gen_tokens(ctx, 3, ignore_eos=True, **kw)
    out["final"] = [ctx.seq_len, ctx.committed_pages, ctx.working_pages, ctx.working_tokens]
    out["sizes"] = sizes
    return out
"""


def _run(burst: int, k: int, stop: int, engine: FakeEngine | None = None) -> dict:
    src = PROGRAM % {"stop": stop}
    kind, value, _ = asyncio.run(run_inferlet(src, {"burst": burst, "k": k}, engine=engine))
    assert kind == "return", value
    return json.loads(value)


@pytest.mark.parametrize("burst", [2, 3, 4])
def test_bursts_change_nothing_but_the_grouping(burst):
    probe = _run(1, burst + 1, stop=-1 % 260)
    stop = probe["stop"][5]  # the sixth token of the second generation stops it
    plain = _run(1, burst + 1, stop=stop)
    grouped = _run(burst, burst + 1, stop=stop)  # k: where both have read whole steps
    assert plain["cut"] == reference_greedy(list(range(1, 30)), 21, set())
    assert plain["stop"][-1] == stop and len(plain["stop"]) == 6
    assert plain["after_stop"][1] == [stop]  # the stop token is pending, not written
    sizes = grouped.pop("sizes")
    plain.pop("sizes")
    assert grouped == plain
    # the first token alone, then whole bursts until the stop token cuts the last one short
    assert sizes[0] == 1
    assert sizes[1:-1] == [burst] * (len(sizes) - 2) and 1 <= sizes[-1] <= burst
    assert sum(sizes) == 6


def test_a_burst_keeps_one_pass_queued_past_it():
    eng = CountingEngine()
    _run(4, 4, stop=EOT, engine=eng)
    assert eng.peak == 5 and eng.chained > 20  # a burst of 4 and the pass after it


def test_bad_bursts_are_refused_with_a_reason():
    src = """
import inferlet
async def main(input):
    ctx = inferlet.Context(inferlet.Model.load())
    ctx.append([1, 2, 3])
    errs = []
    for kw in ({"burst": 0}, {"burst": 65}, {"burst": 2, "lookahead": False},
               {"burst": 2, "probes": [inferlet.Probe.entropy()]}):
        try:
            ctx.generate(inferlet.Sampler.argmax(), max_tokens=4, **kw)
        except ValueError as e:
            errs.append(str(e))
    return errs
"""
    kind, value, _ = asyncio.run(run_inferlet(src, {}))
    assert kind == "return", value
    errs = json.loads(value)
    assert len(errs) == 4
    assert "from 1 to 64" in errs[0] and "from 1 to 64" in errs[1]
    assert "lookahead" in errs[2] and "probes" in errs[3]


def test_the_raw_chain_calls_check_their_arguments():
    src = """
import inferlet
from inferlet.forward import register_samplers
from wit_world.imports import inference as inf
from componentize_py_types import Err

async def main(input):
    ctx = inferlet.Context(inferlet.Model.load())
    ctx.append([1, 2, 3])
    first = ctx._submit([1, 2, 3], [0, 1, 2], [(2, inferlet.Sampler.argmax())], [], [])
    ss = register_samplers([(0, inferlet.Sampler.argmax())])
    errs = []
    for count in (0, 65):
        try:
            inf.forward_chain(ctx._h, first, 3, count, ss, [])
        except Err as e:
            errs.append(e.value)
    try:
        inf.wait_chain([])
    except Err as e:
        errs.append(e.value)
    hs = ctx._submit_chain(first, 3, 4, ss, [])
    toks = await ctx._wait_chain([first, *hs], 7)
    return {"errs": errs, "toks": toks}
"""
    kind, value, _ = asyncio.run(run_inferlet(src, {}))
    assert kind == "return", value
    out = json.loads(value)
    assert ["1 to 64" in e for e in out["errs"][:2]] == [True, True]
    assert "at least one" in out["errs"][2]
    # the first pass's token, then each chained pass fed by the one before it
    assert out["toks"] == reference_greedy([1, 2, 3], 5, set())
