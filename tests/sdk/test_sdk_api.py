"""The inferlet SDK surface against the fake engine: snapshots, probes, masks, decoders,
constraints, runtime facts, child launches."""

import asyncio
import json
import math

import numpy as np

from pie.processes import ProcessManager
from pie.sandbox.sandbox import Sandbox
from pie.sandbox.testing import (
    EOT,
    IM_END,
    FakeEngine,
    fake_logits,
    make_program,
    reference_greedy,
    run_inferlet,
)


def _run(src, inp=None, **kw):
    kind, value, _ = asyncio.run(run_inferlet(src, inp, **kw))
    assert kind == "return", value
    return json.loads(value) if value[:1] in "[{" else value


def test_runtime_facts_and_model_shape():
    out = _run("""
import inferlet
async def main(input):
    m = inferlet.Model.load()
    return {"models": inferlet.models(), "user": inferlet.runtime.username(),
            "id": len(inferlet.runtime.instance_id()), "version": inferlet.runtime.version(),
            "name": m.name, "vocab": m.vocab_size, "page": m.page_size,
            "stop": m.stop_tokens(), "roundtrip": m.tokenizer().decode(m.tokenizer().encode("héllo"))}
""")
    assert out == {"models": ["fake"], "user": "tester", "id": 32, "version": "0.1.0",
                   "name": "fake", "vocab": 260, "page": 16, "stop": [IM_END, EOT],
                   "roundtrip": "héllo"}


def test_snapshots_save_open_take_delete():
    out = _run("""
import inferlet
async def main(input):
    m = inferlet.Model.load()
    ctx = inferlet.Context(m)
    ctx.append(list(range(1, 40)))
    await ctx.save("prefix")
    a = inferlet.Context.open(m, "prefix")
    a.append([7])
    ta = await a.generate_tokens(inferlet.Sampler.argmax(), max_tokens=4, ignore_eos=True)
    b = inferlet.Context.take(m, "prefix")
    b.append([7])
    tb = await b.generate_tokens(inferlet.Sampler.argmax(), max_tokens=4, ignore_eos=True)
    try:
        inferlet.Context.open(m, "prefix")
        gone = False
    except inferlet.PieError:
        gone = True
    return {"a": ta, "b": tb, "gone": gone}
""")
    expected = reference_greedy(list(range(1, 40)) + [7], 4, set())
    assert out == {"a": expected, "b": expected, "gone": True}


def test_probes_match_the_model():
    out = _run("""
import inferlet
async def main(input):
    ctx = inferlet.Context(inferlet.Model.load())
    ctx.append([3, 4, 5])
    f = ctx.forward()
    f.sample(2, inferlet.Sampler.argmax())
    f.probe(2, inferlet.Probe.distribution(k=3))
    f.probe(2, inferlet.Probe.logprobs([1, 2]))
    f.probe(2, inferlet.Probe.entropy())
    f.probe(1, inferlet.Probe.logits())
    out = await f.execute()
    return {"token": out.tokens, "dist": out.distribution(1), "lp": out.logprobs(2),
            "ent": out.entropy(3), "logits": out.logits(4)[:5]}
""")
    kv = [(3, 0), (4, 1), (5, 2)]
    logits = fake_logits(kv).astype(np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    assert out["token"] == [int(np.argmax(logits))]
    assert out["dist"][0] == list(np.argsort(-p)[:3])
    assert np.allclose(out["dist"][1], p[np.argsort(-p)[:3]], rtol=1e-4)
    assert np.allclose(out["lp"], np.log(p[[1, 2]]), rtol=1e-4)
    assert math.isclose(out["ent"], float(-(p * np.log(p)).sum()), rel_tol=1e-4)
    assert np.allclose(out["logits"], fake_logits(kv[:2])[:5], rtol=1e-5)


def test_logit_mask_restricts_sampling():
    out = _run("""
import inferlet
async def main(input):
    ctx = inferlet.Context(inferlet.Model.load())
    ctx.append([9, 9])
    mask = [97, 26, 260 - 123]   # only lowercase ascii letters allowed
    toks = await ctx.generate_tokens(inferlet.Sampler.argmax(), max_tokens=12,
                                     logit_mask=mask, ignore_eos=True)
    return toks
""")
    assert len(out) == 12 and all(97 <= t < 123 for t in out)


def test_chat_and_reasoning_decoders():
    out = _run("""
import inferlet
from inferlet import chat, reasoning
async def main(input):
    m = inferlet.Model.load()
    tok = m.tokenizer()
    d = chat.Decoder(m)
    evs = [d.feed(tok.encode(x)) for x in ["Hel", "lo"]] + [d.feed(list("é".encode())[:1])]
    evs.append(d.feed(list("é".encode())[1:]))
    evs.append(d.feed(m.stop_tokens()[:1]))
    r = reasoning.Decoder(m)
    revs = [r.feed(tok.encode(x)) for x in ["<think>", "plan ", "more", "</think>", "answer"]]
    return [type(e).__name__ + ":" + str(getattr(e, "text", "")) for e in evs + revs]
""")
    assert out[:5] == ["Delta:Hel", "Delta:lo", "Idle:", "Delta:é", "Done:Helloé"]
    assert out[5] == "Start:" and out[8] == "End:plan more"
    assert out[6:8] == ["Delta:plan ", "Delta:more"]


def test_regex_and_json_schema_constraints():
    out = _run("""
import json, inferlet
async def main(input):
    m = inferlet.Model.load()
    a = inferlet.Context(m)
    a.append([1, 2])
    num = await a.generate_text(inferlet.Sampler.argmax(), max_tokens=8,
                                constrain=inferlet.Regex(r"[0-9]{3}-[0-9]{2}"))
    b = inferlet.Context(m)
    b.append([3, 4])
    schema = json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"},
                                                          "n": {"type": "integer"}}})
    obj = await b.generate_text(inferlet.Sampler.argmax(), max_tokens=40,
                                constrain=inferlet.JsonSchema(schema))
    return {"num": num, "obj": obj}
""")
    import re

    assert re.fullmatch(r"[0-9]{3}-[0-9]{2}", out["num"]), out
    obj = json.loads(out["obj"])
    assert set(obj) == {"ok", "n"} and isinstance(obj["ok"], bool) and isinstance(obj["n"], int)


def test_subscription_iteration_and_set_return():
    out = _run("""
import inferlet
async def main(input):
    sub = inferlet.messaging.subscribe("t")
    for i in range(3):
        inferlet.messaging.broadcast("t", {"i": i})
    got = []
    async for msg in sub:
        got.append(msg)
        if len(got) == 3:
            break
    sub.unsubscribe()
    inferlet.set_return({"got": got})
""")
    assert out == {"got": ['{"i": 0}', '{"i": 1}', '{"i": 2}']}


def test_child_launch():
    child = "async def main(input):\n    return {'double': input['x'] * 2}\n"
    parent = """
import json, inferlet
async def main(input):
    return json.loads(await inferlet.runtime.launch("child@0.1.0", {"x": 21}))
"""

    async def go():
        eng = FakeEngine()
        pm = ProcessManager({"fake": eng}, None, sandbox=Sandbox())
        pm.resolve_program = lambda ref: make_program(child, name="child")
        pid = await pm.launch(make_program(parent), "{}", "u", lambda *a: None)
        out = await pm.wait(pid)
        await pm.shutdown()
        return out

    kind, value = asyncio.run(go())
    assert (kind, json.loads(value)) == ("return", {"double": 42})


def test_page_accounting_commits_full_pages():
    out = _run("""
import inferlet
async def main(input):
    ctx = inferlet.Context(inferlet.Model.load())
    ctx.append(list(range(50)))
    await ctx.flush(keep_last=False)
    return [ctx.committed_pages, ctx.working_pages, ctx.working_tokens, ctx.seq_len]
""")
    assert out == [3, 1, 2, 50]


def test_pass_results_are_released_on_the_host():
    src = """
import inferlet
async def main(input):
    ctx = inferlet.Context(inferlet.Model.load())
    ctx.append([1, 2])
    await ctx.generate_tokens(inferlet.Sampler.argmax(), max_tokens=50, ignore_eos=True)
    f = ctx.forward()
    f.probe(0, inferlet.Probe.entropy())
    out = await f.execute()
    return out.entropy(0) > 0
"""
    from pie.sandbox import host

    seen = []
    patched = {}
    # the ways a guest frees a pass's results
    for name in ("release", "take-tokens", "wait-tokens"):
        idx = next(i for i, imp in enumerate(host.IMPORTS) if imp[1] == name)
        real = host.IMPORTS[idx][2]

        def spy(st, h, real=real):
            seen.append(len(st.futures))
            return real(st, h)

        patched[idx] = host.IMPORTS[idx]
        host.IMPORTS[idx] = (*patched[idx][:2], spy, *patched[idx][3:])
    try:
        out = _run(src)
    finally:
        for idx, old in patched.items():
            host.IMPORTS[idx] = old
    assert out == "true" or out is True
    # never more than the pass being read, the one queued ahead and the probe's pass
    assert len(seen) >= 50 and max(seen) <= 3


def test_multi_turn_chat_keeps_the_template_exact():
    src = """
import inferlet
async def main(input):
    m = inferlet.Model.load()
    tok = m.tokenizer()
    out = {}
    # cut: stopped by max_tokens; stop: the model ends its turn (only <|im_end|> allowed)
    for case, kw in (("cut", {"max_tokens": 3}), ("stop", {"logit_mask": [257, 1, 2]})):
        ctx = inferlet.Context(m)
        ctx.user("first")
        ctx.cue()
        reply = await ctx.generate_tokens(inferlet.Sampler.argmax(), **kw)
        ctx.user("second")
        ctx.cue()
        out[case] = [reply, tok.decode(ctx.buffer())]
    return out
"""
    from pie.sandbox.testing import FakeTokenizer

    tok = FakeTokenizer()
    out = _run(src)
    for case, (reply, pending) in out.items():
        stop = reply[-1] if case == "stop" else None
        assert (stop == IM_END) == (case == "stop") and (len(reply) == 3) == (case == "cut")
        text = tok.decode([t for t in reply if t != stop])
        convo = [{"role": "user", "content": "first"}, {"role": "assistant", "content": text},
                 {"role": "user", "content": "second"}]
        # the KV holds the first turn, the cue and every sampled token but the last one
        in_kv = tok.render_chat(convo[:1], True) + tok.decode(reply[:-1])
        assert in_kv + pending == tok.render_chat(convo, True), (case, pending)


def _with_render(render, src):
    """Run `src` with the host's chat template replaced by `render(messages, gen)` (counted)."""
    from pie.sandbox import host

    calls = []
    idx = next(i for i, imp in enumerate(host.IMPORTS) if imp[1] == "render-chat")
    old = host.IMPORTS[idx]

    def spy(st, m, messages, gen):
        calls.append(len(messages))
        return render(messages, gen)

    host.IMPORTS[idx] = (*old[:2], spy, *old[3:])
    try:
        return _run(src), calls
    finally:
        host.IMPORTS[idx] = old


CHAT_TURNS = """
import inferlet
async def main(input):
    m = inferlet.Model.load()
    tok = m.tokenizer()
    ctx = inferlet.Context(m)
    ctx.system("S").user("U").cue()
    first = tok.decode(ctx.buffer())
    reply = await ctx.generate_tokens(inferlet.Sampler.argmax(), max_tokens=2, ignore_eos=True)
    ctx.user("V").cue()
    pending = ctx.buffer()  # the last sampled token (not yet in the KV), then the new text
    ctx.release()
    return [first, pending[0] == reply[-1], tok.decode(pending[1:])]
"""


def test_chat_steps_are_rendered_once_when_their_text_is_needed():
    def render(messages, gen):
        return "".join(f"<{r}>{c}" for r, c in messages) + ("<assistant>" if gen else "")

    (first, last_fed, second), calls = _with_render(render, CHAT_TURNS)
    # system + user + cue: one render of the whole prompt; the reply's turn, the next user
    # message and cue: one more, when the second prompt is read
    assert calls == [2, 4]
    assert first == "<system>S<user>U<assistant>"
    assert last_fed and second == "<user>V<assistant>"  # the reply's turn needs no close


def test_a_template_that_rewrites_earlier_turns_is_applied_step_by_step():
    # each render starts with the message count: a later render never continues an earlier
    def render(messages, gen):
        return f"#{len(messages)}" + "".join(f"<{r}>{c}" for r, c in messages) + (
            "<assistant>" if gen else "")

    (first, last_fed, second), calls = _with_render(render, CHAT_TURNS)
    assert first == "#2<system>S<user>U<assistant>"  # nothing in the KV yet: the whole render
    # the second turn cannot continue the first: the reply's turn adds nothing, the user
    # message is rendered on its own, the cue adds what the whole render puts after it
    assert last_fed and second == "#1<user>V<assistant>"
    assert calls == [2, 4, 3, 4, 1, 4]


def test_a_failing_chat_template_fails_the_pass_and_keeps_the_steps_queued():
    from pie.sandbox.abi import GuestError

    def render(messages, gen):
        if any(c == "bad" for _, c in messages):
            raise GuestError("chat template failed: no 'bad' here")
        return "".join(f"<{r}>{c}" for r, c in messages) + ("<assistant>" if gen else "")

    src = """
import inferlet
async def main(input):
    m = inferlet.Model.load()
    tok = m.tokenizer()
    ctx = inferlet.Context(m)
    ctx.system("S")
    first = tok.decode(ctx.buffer())
    ctx.user("bad").cue()
    errors = []
    for _ in range(2):  # still queued: the same error again, the context unchanged
        try:
            ctx.buffer()
        except inferlet.PieError as e:
            errors.append(str(e))
    return [first, errors, tok.decode(ctx._buffer)]
"""
    (first, errors, kept), calls = _with_render(render, src)
    assert first == "<system>S"
    assert errors == ["chat template failed: no 'bad' here"] * 2
    assert kept == "<system>S"
    assert calls == [1, 2, 2]  # one render of the whole conversation per attempt


def test_registered_samplers_and_wait_tokens_at_the_wit_level():
    src = """
import asyncio
from componentize_py_types import Err
from wit_world.imports import context as cx, inference as inf, model as md, poll
from wit_world.imports.inference import Sampler as Rec

def err(fn, *args):
    try:
        fn(*args)
    except Err as e:
        return e.value
    return None

async def main(input):
    m = md.load("")
    c = cx.create(m)
    cx.reserve_pages(c, 2)
    argmax = Rec(0, 0.0, 0, 1.0, 0.0, 0, True, -1, False, [], False)
    out = {}
    out["bad_range"] = err(inf.register_samplers, [Rec(0, -1.0, 0, 1.0, 0.0, 0, True, -1,
                                                        False, [], False)])
    past = inf.register_samplers([Rec(1, 0.0, 0, 1.0, 0.0, 0, True, -1, False, [], False)])
    big_lp = inf.register_samplers([Rec(0, 1.0, 0, 1.0, 0.0, 0, False, 0, False, [9999],
                                        False)])
    s = inf.register_samplers([argmax])
    last = Rec(2, 0.0, 0, 1.0, 0.0, 0, True, -1, False, [], False)
    f1 = inf.forward(c, [1, 2, 3], [0, 1, 2], [last], [], [])
    out["unknown"] = err(inf.forward_next, c, f1, 3, 12345, [])
    out["past"] = err(inf.forward_next, c, f1, 3, past, [])
    out["big_lp"] = err(inf.forward_next, c, f1, 3, big_lp, [])
    out["not_forward"] = err(inf.forward_next, c, 777, 3, s, [])
    f2 = inf.forward_next(c, f1, 3, s, [])
    f3 = inf.forward_after(c, f2, [], [4], [argmax], [], [])
    t1 = inf.wait_tokens(f1)
    t2 = inf.wait_tokens(f2)
    out["taken_again"] = err(inf.wait_tokens, f1)
    poll.wait([f3], -1)
    out["tokens"] = [t1, t2, inf.take_tokens(f3)]
    inf.release_samplers(s)
    f4 = inf.forward(c, [7], [4], [argmax], [], [])
    out["released"] = err(inf.forward_next, c, f4, 5, s, [])
    return out
"""
    out = _run(src)
    out = json.loads(out) if isinstance(out, str) else out
    assert out["bad_range"] == "sampler needs temperature >= 0, 0 < top_p <= 1, 0 <= min_p <= 1"
    assert out["unknown"].startswith("unknown samplers handle 12345")
    assert out["past"] == "sampler index 1 is past the 1 input tokens"
    assert out["big_lp"] == "log-prob id 9999 is out of range (vocabulary size 260)"
    assert out["not_forward"].startswith("unknown future handle 777")
    assert out["taken_again"].startswith("unknown future handle")
    assert out["released"].startswith("unknown samplers handle")
    prompt = [1, 2, 3]
    assert [t for ts in out["tokens"] for t in ts] == reference_greedy(prompt, 3, set())
