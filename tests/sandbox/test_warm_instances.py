"""Warm instances (`runtime.wasm_warm_slots`): a later launch of the same program by the same
user runs on an idle instance of an earlier one, with nothing of the earlier run showing.

Checked: the program's globals start fresh, output goes to the process that printed it, host
handles never repeat, other users and other programs get fresh instances, an instance that was
stopped is never reused, the pool keeps at most `wasm_warm_slots` instances, and 0 turns it off.
"""

import asyncio
import io
import json
import zipfile

from pie.processes import ProcessManager
from pie.sandbox.sandbox import Sandbox
from pie.sandbox.testing import FakeEngine, make_program

PROGRAM = """
import inferlet
SEEN = []

async def main(input):
    SEEN.append(input["i"])
    print("run", input["i"])
    ctx = inferlet.Context(inferlet.Model.load())
    ctx.append([1, 2, 3])
    toks = await ctx.generate_tokens(inferlet.Sampler.argmax(), max_tokens=3, ignore_eos=True)
    if input.get("fail"):
        raise ValueError("asked to fail")
    return {"seen": SEEN, "toks": toks, "handle": ctx._h}
"""


async def _launch_all(pm, runs):
    """runs: [(program, input, user)], all at once; [(kind, value, events)] in order."""
    events = [[] for _ in runs]
    pids = [
        await pm.launch(prog, json.dumps(inp), user,
                        lambda p, k, v, ev=ev: ev.append((k, v)))
        for (prog, inp, user), ev in zip(runs, events)
    ]
    out = []
    for pid, ev in zip(pids, events):
        kind, value = await pm.wait(pid)
        out.append((kind, value, ev))
    return out


def _with_pm(body, runtime_cfg=None):
    async def go():
        eng = FakeEngine()
        sandbox = Sandbox(runtime_cfg)
        pm = ProcessManager({eng.info.name: eng}, runtime_cfg, sandbox=sandbox)
        await pm.start()
        try:
            return await body(pm, sandbox)
        finally:
            await pm.shutdown()

    return asyncio.run(go())


def test_a_later_launch_reuses_the_instance_and_sees_nothing_of_the_earlier_run():
    prog = make_program(PROGRAM)

    async def body(pm, sandbox):
        first = await _launch_all(pm, [(prog, {"i": 1}, "alice")])
        second = await _launch_all(pm, [(prog, {"i": 2}, "alice")])
        failed = await _launch_all(pm, [(prog, {"i": 3, "fail": True}, "alice")])
        third = await _launch_all(pm, [(prog, {"i": 4}, "alice")])
        return first + second + failed + third, (sandbox.warm.hits, sandbox.warm.misses)

    runs, (hits, misses) = _with_pm(body)
    (k1, v1, e1), (k2, v2, e2), (k3, v3, e3), (k4, v4, e4) = runs
    assert (k1, k2, k3, k4) == ("return", "return", "error", "return")
    a, b, d = json.loads(v1), json.loads(v2), json.loads(v4)
    assert a["seen"] == [1] and b["seen"] == [2] and d["seen"] == [4]  # fresh globals
    assert a["toks"] == b["toks"] == d["toks"]
    assert b["handle"] > a["handle"]  # handle numbers go on, an old one never names a new thing
    # each process got its own output, and only its own
    assert [v for k, v in e1 if k == "stdout"] == ["run 1\n"]
    assert [v for k, v in e2 if k == "stdout"] == ["run 2\n"]
    assert [v for k, v in e3 if k == "stdout"] == ["run 3\n"]
    assert [v for k, v in e4 if k == "stdout"] == ["run 4\n"]
    assert "asked to fail" in v3  # an error the guest returned leaves the instance whole
    assert (hits, misses) == (3, 1)


def test_other_users_and_other_programs_get_fresh_instances():
    prog, other = make_program(PROGRAM), make_program(PROGRAM + "\n# another program\n")

    async def body(pm, sandbox):
        await _launch_all(pm, [(prog, {"i": 1}, "alice")])
        out = await _launch_all(pm, [(prog, {"i": 2}, "bob")])
        out += await _launch_all(pm, [(other, {"i": 3}, "alice")])
        return out, (sandbox.warm.hits, sandbox.warm.misses, sandbox.warm.count)

    out, (hits, misses, idle) = _with_pm(body)
    assert all(k == "return" for k, _, _ in out)
    assert (hits, misses, idle) == (0, 3, 3)


def test_a_stopped_instance_is_never_reused():
    waits = make_program("""
import inferlet
async def main(input):
    return inferlet.session.receive()
""")

    async def body(pm, sandbox):
        pid = await pm.launch(waits, "{}", "alice", lambda p, k, v: None)
        await asyncio.sleep(0.3)
        await pm.terminate(pid)
        kind, _ = await pm.wait(pid)
        return kind, sandbox.warm.count

    kind, idle = _with_pm(body)
    assert kind == "error" and idle == 0


def test_the_pool_keeps_at_most_wasm_warm_slots_and_zero_turns_it_off():
    prog = make_program(PROGRAM)

    async def body(pm, sandbox):
        await _launch_all(pm, [(prog, {"i": i}, "alice") for i in range(3)])
        first = sandbox.warm.count
        out = await _launch_all(pm, [(prog, {"i": 9}, "alice")])
        return first, sandbox.warm.hits, out[0][0]

    assert _with_pm(body, {"wasm_warm_slots": 1}) == (1, 1, "return")
    assert _with_pm(body, {"wasm_warm_slots": 0}) == (0, 0, "return")
    # a reused instance would keep the first process's /scratch: with allow_fs, none is kept
    assert _with_pm(body, {"allow_fs": True})[:2] == (0, 0)


def test_a_multi_file_program_runs_its_modules_afresh():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("app/__init__.py", "")
        z.writestr("app/state.py", "CALLS = []\n")
        z.writestr("app/main.py", (
            "from app import state\n"
            "async def main(input):\n"
            "    state.CALLS.append(input['i'])\n"
            "    return state.CALLS\n"))
    prog = make_program(buf.getvalue(), entry="app.main:main")

    async def body(pm, sandbox):
        out = await _launch_all(pm, [(prog, {"i": 1}, "alice")])
        out += await _launch_all(pm, [(prog, {"i": 2}, "alice")])
        return out, sandbox.warm.hits

    out, hits = _with_pm(body)
    assert [json.loads(v) for _, v, _ in out] == [[1], [2]] and hits == 1
