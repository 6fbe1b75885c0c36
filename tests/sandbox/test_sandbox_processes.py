"""ProcessManager lifecycle: events, attach/detach, signals, files, terminate, cleanup."""

import asyncio
import json

from pie.processes import ProcessManager
from pie.sandbox.sandbox import Sandbox
from pie.sandbox.testing import FakeEngine, make_program

ECHO_SESSION = """
import inferlet
async def main(input):
    inferlet.session.send("ready")
    msg = await inferlet.session.receive()
    name, data = await inferlet.session.receive_file()
    inferlet.session.send_file("back.bin", data[::-1])
    inferlet.session.send({"got": msg})
    return msg + ":" + name
"""


async def _until_running(pm, pid, timeout=20.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not any(p["pid"] == pid and p["state"] == "running" for p in pm.list()):
        assert loop.time() < end, "the process never started"
        await asyncio.sleep(0.005)


def _pm(eng=None, **kw):
    eng = eng or FakeEngine()
    return eng, ProcessManager({"fake": eng}, None, sandbox=Sandbox(), **kw)


def test_session_messages_files_and_cleanup():
    async def go():
        eng, pm = _pm()
        events = []
        pid = await pm.launch(make_program(ECHO_SESSION), "{}", "u",
                              lambda p, k, v: events.append((k, v)))
        while ("message", "ready") not in events:
            await asyncio.sleep(0.005)
        assert [p["pid"] for p in pm.list()] == [pid]
        pm.signal(pid, "ping")
        pm.send_file(pid, "f.bin", b"abc")
        result = await pm.wait(pid)
        await pm.shutdown()
        return eng, pid, result, events

    eng, pid, result, events = asyncio.run(go())
    assert result == ("return", "ping:f.bin")
    assert ("file", ("back.bin", b"cba")) in events
    assert ("message", json.dumps({"got": "ping"})) in events
    assert [k for k, _ in events].count("return") == 1 and events[-1][0] == "return"
    assert eng.unregistered == [pid]


def test_detach_buffers_and_attach_replays():
    src = "import inferlet\nasync def main(input):\n    inferlet.session.send('one')\n    return 'done'\n"

    async def go():
        _, pm = _pm()
        pid = await pm.launch(make_program(src), "{}", "u", lambda *a: None)
        pm.detach(pid)
        await pm.wait(pid)
        got = []
        pm.attach(pid, lambda p, k, v: got.append((k, v)))
        await pm.shutdown()
        return got

    got = asyncio.run(go())
    assert got == [("message", "one"), ("return", "done")]


def test_terminate_emits_error_and_unregisters():
    src = "import inferlet\nasync def main(input):\n    await inferlet.session.receive()\n"

    async def go():
        eng, pm = _pm()
        events = []
        pid = await pm.launch(make_program(src), "{}", "u", lambda p, k, v: events.append((k, v)))
        await asyncio.sleep(0.05)
        await pm.terminate(pid, "stop now")
        await pm.shutdown()
        return eng, pid, events

    eng, pid, events = asyncio.run(go())
    assert events == [("error", "stop now")]
    assert pid in eng.unregistered


def test_unregister_on_guest_error_and_contexts_freed():
    src = """
import inferlet
async def main(input):
    ctx = inferlet.Context(inferlet.Model.load())
    ctx.append(list(range(40)))
    await ctx.flush()
    raise RuntimeError("boom")
"""

    async def go():
        eng, pm = _pm()
        pid = await pm.launch(make_program(src), "{}", "u", lambda *a: None)
        out = await pm.wait(pid)
        await pm.shutdown()
        return eng, pid, out

    eng, pid, (kind, value) = asyncio.run(go())
    assert kind == "error" and "boom" in value
    assert eng.unregistered == [pid] and eng.used_pages == 0


def test_max_concurrent_processes_queues_launches():
    src = "import inferlet\nasync def main(input):\n    return await inferlet.session.receive()\n"

    async def go():
        _, pm = _pm(max_concurrent_processes=1)
        a = await pm.launch(make_program(src), "{}", "u", lambda *x: None)
        b = await pm.launch(make_program(src), "{}", "u", lambda *x: None)
        await _until_running(pm, a)
        await asyncio.sleep(0.05)
        states = {p["pid"]: p["state"] for p in pm.list()}
        pm.signal(a, "A")
        pm.signal(b, "B")
        out = [await pm.wait(a), await pm.wait(b)]
        await pm.shutdown()
        return states, a, b, out

    states, a, b, out = asyncio.run(go())
    assert states[a] == "running" and states[b] == "pending"
    assert out == [("return", "A"), ("return", "B")]


def test_messaging_between_inferlets():
    producer = """
import inferlet
async def main(input):
    sub = inferlet.messaging.subscribe("news")
    inferlet.messaging.push("jobs", "job-1")
    inferlet.messaging.push("jobs", "job-2")
    return await sub.next()
"""
    consumer = """
import inferlet
async def main(input):
    a = await inferlet.messaging.pull("jobs")
    b = await inferlet.messaging.pull("jobs")
    inferlet.messaging.broadcast("news", a + "+" + b)
    return "ok"
"""

    async def go():
        _, pm = _pm()
        p = await pm.launch(make_program(producer), "{}", "u", lambda *x: None)
        await asyncio.sleep(0.05)
        c = await pm.launch(make_program(consumer), "{}", "u", lambda *x: None)
        out = [await pm.wait(p), await pm.wait(c)]
        await pm.shutdown()
        return out

    assert asyncio.run(go()) == [("return", "job-1+job-2"), ("return", "ok")]
