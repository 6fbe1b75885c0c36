"""Sandbox guards. Each test fails if its guard is removed."""

import asyncio
import json
from types import SimpleNamespace

from pie.processes import ProcessManager
from pie.sandbox import sandbox as sandbox_mod
from pie.sandbox.sandbox import Sandbox
from pie.sandbox.testing import FakeEngine, make_program, run_inferlet

READ_HOST = """
async def main(input):
    try:
        return "read:" + open(input["path"]).read()[:20]
    except Exception as e:
        return "blocked:" + type(e).__name__
"""


def _cfg(**kw):
    base = {"wasm_max_instances": 1000, "wasm_max_memory_mb": 4096, "allow_fs": False,
            "fs_scratch_dir": "", "allow_network": False, "network_allowed_hosts": ["*"]}
    base.update(kw)
    return SimpleNamespace(**base)


def test_no_filesystem_without_allow_fs(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    for path in (str(secret), "/etc/hostname", "/scratch/x"):
        kind, value, _ = asyncio.run(run_inferlet(READ_HOST, {"path": path}, runtime_cfg=_cfg()))
        assert kind == "return" and value.startswith("blocked:"), (path, value)


def test_allow_fs_gives_only_a_private_scratch(tmp_path):
    src = """
import os
async def main(input):
    with open("/scratch/note.txt", "w") as f:
        f.write("mine")
    out = {"own": open("/scratch/note.txt").read(), "listing": os.listdir("/scratch")}
    for p in (input["host"], "/scratch/../" + input["name"], "/etc/hostname"):
        try:
            open(p).read()
            out[p] = "read"
        except Exception as e:
            out[p] = type(e).__name__
    return out
"""
    host_file = tmp_path / "host.txt"
    host_file.write_text("host data")
    root = tmp_path / "scratch"
    cfg = _cfg(allow_fs=True, fs_scratch_dir=str(root))
    kind, value, _ = asyncio.run(run_inferlet(src, {"host": str(host_file), "name": "host.txt"},
                                              runtime_cfg=cfg))
    assert kind == "return", value
    out = json.loads(value)
    assert out["own"] == "mine" and out["listing"] == ["note.txt"]
    assert all(v != "read" for k, v in out.items() if k not in ("own", "listing")), out
    assert not any(root.iterdir())  # the per-process scratch is removed afterwards


def test_network_is_closed_without_allow_network(monkeypatch):
    calls = []
    real = sandbox_mod.ffi.wasi_config_inherit_network
    monkeypatch.setattr(sandbox_mod.ffi, "wasi_config_inherit_network",
                        lambda ptr: (calls.append(1), real(ptr)))
    src = """
async def main(input):
    try:
        import socket
        socket.create_connection(("127.0.0.1", 9), timeout=1)
        return "connected"
    except Exception as e:
        return "blocked:" + type(e).__name__
"""
    kind, value, _ = asyncio.run(run_inferlet(src, runtime_cfg=_cfg(allow_network=False)))
    assert kind == "return" and value.startswith("blocked:")
    assert calls == []
    asyncio.run(run_inferlet(src, runtime_cfg=_cfg(allow_network=True)))
    assert calls == [1]
    calls.clear()  # a narrower allow-list cannot be enforced per socket: network stays closed
    asyncio.run(run_inferlet(src, runtime_cfg=_cfg(allow_network=True,
                                                   network_allowed_hosts=["10.0.0.0/8"])))
    assert calls == []


BOMB = """
async def main(input):
    blocks = []
    for _ in range(400):
        blocks.append(bytearray(1 << 20))
    return "survived %d MiB" % len(blocks)
"""
OK = "async def main(input):\n    return 'fine'\n"


def test_memory_bomb_hits_the_limit_and_only_that_inferlet_dies():
    async def go():
        eng = FakeEngine()
        pm = ProcessManager({"fake": eng}, None,
                            sandbox=Sandbox(_cfg(wasm_max_memory_mb=64)))
        bomb = await pm.launch(make_program(BOMB), "{}", "u", lambda *a: None)
        ok = await pm.launch(make_program(OK), "{}", "u", lambda *a: None)
        out = (await pm.wait(bomb), await pm.wait(ok))
        await pm.shutdown()
        return out

    (bk, bv), (ok_kind, ok_value) = asyncio.run(go())
    assert bk == "error" and ("MemoryError" in bv or "memory" in bv), bv
    assert (ok_kind, ok_value) == ("return", "fine")


SPIN = "async def main(input):\n    while True:\n        pass\n"


def test_infinite_loop_never_blocks_others_and_can_be_stopped():
    async def go():
        eng = FakeEngine()
        pm = ProcessManager({"fake": eng}, None, sandbox=Sandbox())
        spin = await pm.launch(make_program(SPIN), "{}", "u", lambda *a: None)
        await asyncio.sleep(0.05)
        ok = await pm.launch(make_program(OK), "{}", "u", lambda *a: None)
        ok_out = await asyncio.wait_for(pm.wait(ok), 20)
        await pm.terminate(spin, "stopped")
        spin_out = await pm.wait(spin)
        await pm.shutdown()
        return ok_out, spin_out, eng

    ok_out, spin_out, eng = asyncio.run(go())
    assert ok_out == ("return", "fine")
    assert spin_out == ("error", "stopped")
    assert len(eng.unregistered) == 2


def test_wall_time_limit_interrupts_a_spinning_guest():
    kind, value, _ = asyncio.run(run_inferlet(SPIN, wall_time_limit_s=0.3))
    assert kind == "error" and "wall-time limit" in value


def test_guests_cannot_reach_each_others_contexts_or_snapshots():
    owner = """
import inferlet
async def main(input):
    m = inferlet.Model.load()
    ctx = inferlet.Context(m)
    ctx.append([1, 2, 3])
    await ctx.save("private")
    inferlet.messaging.push("handle", str(ctx._h))
    await inferlet.session.receive()
    return "owner done"
"""
    intruder = """
import inferlet
from wit_world.imports import context as raw
from componentize_py_types import Err
async def main(input):
    m = inferlet.Model.load()
    h = int(await inferlet.messaging.pull("handle"))
    out = {}
    for name, fn in [("pages", lambda: raw.pages(h)), ("destroy", lambda: raw.destroy(h)),
                     ("fork", lambda: raw.fork(h)), ("open", lambda: raw.open(m._h, "private")),
                     ("take", lambda: raw.take(m._h, "private"))]:
        try:
            fn()
            out[name] = "reached"
        except Err as e:
            out[name] = "refused: " + str(e.value)
    return out
"""

    async def go():
        eng = FakeEngine()
        pm = ProcessManager({"fake": eng}, None, sandbox=Sandbox())
        a = await pm.launch(make_program(owner), "{}", "alice", lambda *x: None)
        b = await pm.launch(make_program(intruder), "{}", "bob", lambda *x: None)
        b_out = await pm.wait(b)
        c = await pm.launch(make_program(intruder.replace('"handle"', '"handle2"')), "{}",
                            "alice", lambda *x: None)
        pm.hub.push("handle2", "999")
        c_out = await pm.wait(c)
        pm.signal(a, "go")
        a_out = await pm.wait(a)
        await pm.shutdown()
        return a_out, b_out, c_out

    a_out, (bk, bv), (_, cv) = asyncio.run(go())
    assert a_out == ("return", "owner done")
    assert bk == "return", bv
    assert all(v.startswith("refused") for v in json.loads(bv).values()), bv
    # the same user may open her own snapshot (the namespace is the user)
    assert json.loads(cv)["open"] == "reached", cv


def test_malformed_host_calls_return_errors_and_the_host_survives():
    src = """
import inferlet
from wit_world.imports import inference as inf, context as cx, model as md, poll
from wit_world.imports.inference import Sampler as S
from componentize_py_types import Err
async def main(input):
    m = inferlet.Model.load()
    ctx = inferlet.Context(m)
    h = ctx._h
    cx.reserve_pages(h, 1)
    good = S(0, 0.0, 0, 1.0, 0.0, 0, True, -1, False, [], False)
    cases = {
        "bad ctx": lambda: inf.forward(12345, [1], [0], [], [], []),
        "token range": lambda: inf.forward(h, [10**6], [0], [], [], []),
        "positions": lambda: inf.forward(h, [1, 2], [0], [], [], []),
        "empty": lambda: inf.forward(h, [], [], [], [], []),
        "sampler index": lambda: inf.forward(h, [1], [0], [S(5, 0.0, 0, 1.0, 0.0, 0, True, -1, False, [], False)], [], []),
        "bad top_p": lambda: inf.forward(h, [1], [0], [S(0, 0.0, 0, 0.0, 0.0, 0, True, -1, False, [], False)], [], []),
        "mask rows": lambda: inf.forward(h, [1], [0], [good], [[0, 1], [0, 1]], []),
        "logit mask": lambda: inf.forward(h, [1], [0], [good], [], [100000]),
        "bad model": lambda: md.encode(77, "x"),
        "decode range": lambda: md.decode(m._h, [10**6]),
        "bad future": lambda: inf.tokens(4242),
        "take missing": lambda: poll.take_string(4242),
        "commit too many": lambda: cx.commit_pages(h, 9),
        "bad snapshot name": lambda: cx.delete(m._h, ""),
    }
    out = {}
    for name, fn in cases.items():
        try:
            fn()
            out[name] = "accepted"
        except Err as e:
            out[name] = "error"
    # still healthy afterwards
    ctx.append([1, 2, 3])
    toks = await ctx.generate_tokens(inferlet.Sampler.argmax(), max_tokens=3, ignore_eos=True)
    out["after"] = len(toks)
    return out
"""
    kind, value, _ = asyncio.run(run_inferlet(src))
    assert kind == "return", value
    out = json.loads(value)
    assert out.pop("after") == 3
    assert set(out.values()) == {"error"}, out


def test_wasm_max_instances_caps_live_guests():
    wait = "import inferlet\nasync def main(input):\n    return await inferlet.session.receive()\n"

    async def go():
        eng = FakeEngine()
        pm = ProcessManager({"fake": eng}, None, sandbox=Sandbox(_cfg(wasm_max_instances=1)))
        a = await pm.launch(make_program(wait), "{}", "u", lambda *x: None)
        while pm.sandbox.active == 0:  # until the first guest holds the only instance
            await asyncio.sleep(0.005)
        b = await pm.launch(make_program(OK), "{}", "u", lambda *x: None)
        b_out = await pm.wait(b)
        pm.signal(a, "done")
        a_out = await pm.wait(a)
        c = await pm.launch(make_program(OK), "{}", "u", lambda *x: None)
        c_out = await pm.wait(c)
        await pm.shutdown()
        return a_out, b_out, c_out, eng

    a_out, (bk, bv), c_out, eng = asyncio.run(go())
    assert a_out == ("return", "done") and c_out == ("return", "fine")
    assert bk == "error" and "wasm_max_instances" in bv
    assert len(eng.unregistered) == 3


def test_too_small_memory_limit_says_what_to_raise():
    kind, value, _ = asyncio.run(run_inferlet(OK, runtime_cfg=_cfg(wasm_max_memory_mb=4)))
    assert kind == "error" and "raise it" in value and "wasm_max_memory_mb = 4" in value
