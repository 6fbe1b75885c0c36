"""The WebSocket server end to end over real sockets, with a fake process manager."""

from __future__ import annotations

import asyncio
import json

import msgpack
import pytest
import websockets
from front import run, running_server

from pie import protocol as P
from pie.client import PieClient, PieError, ProcessFailed
from pie.programs import python_manifest

HELLO = """
async def main(name="world", times=1):
    for i in range(times):
        print(f"line {i}")
    session.send(f"hi {name}")
    return f"hello {name}"
"""

ECHO_INPUT = """
async def main(input):
    return input
"""

WAITER = """
async def main():
    session.send("ready")
    got = await session.receive()
    return "got " + got
"""

FAILS = """
async def main():
    raise ValueError("bad things")
"""

FILES = """
async def main(size):
    name, data = await session.receive_file()
    session.send_file("out.bin", bytes(reversed(data)) + b"x" * size)
    return str(len(data))
"""


def manifest(name: str, source: str, version: str = "0.1.0") -> str:
    return python_manifest(name, source, version=version)


async def install(client: PieClient, name: str, source: str, version: str = "0.1.0") -> str:
    return await client.install_program(manifest(name, source, version), source.encode())


def test_ping_on_both_paths_and_404_elsewhere(tmp_path):
    async def body():
        async with running_server(tmp_path) as (_, uri, _pm):
            for path in ("", "/", "/v1/ws"):
                async with PieClient(uri + path) as c:
                    assert await c.ping() == "Pong"
            with pytest.raises(ConnectionError, match="404|pie serve"):
                async with PieClient(uri + "/nope") as c:
                    await c.ping()

    run(body())


def test_install_launch_stream_and_return(tmp_path):
    async def body():
        async with running_server(tmp_path) as (_, uri, pm), PieClient(uri) as c:
            assert not await c.check_program("hello")
            ref = await install(c, "hello", HELLO)
            assert ref == "hello@0.1.0"
            assert await c.check_program("hello")
            assert await c.check_program("hello@0.1.0")
            assert not await c.check_program("hello@9.9.9")
            p = await c.launch_process("hello", {"name": "pie", "times": 2})
            events = [(e.kind, e.value) async for e in p]
            assert events == [
                ("stdout", "line 0\n"),
                ("stdout", "line 1\n"),
                ("message", "hi pie"),
                ("return", "hello pie"),
            ]
            assert p.result == "hello pie"
            assert pm.launched[0].user == "anonymous"

    run(body())


def test_latest_version_wins_and_input_call_style(tmp_path):
    async def body():
        async with running_server(tmp_path) as (_, uri, _pm), PieClient(uri) as c:
            await install(c, "echo", ECHO_INPUT, "0.9.0")
            await install(c, "echo", ECHO_INPUT.replace("return input", "return 'v10'"), "0.10.0")
            await install(c, "echo", ECHO_INPUT.replace("return input", "return 'v2'"), "0.2.0")
            p = await c.launch_process("echo", {"k": [1, 2]})
            assert await p.wait() == "v10"  # 0.10.0 > 0.9.0 > 0.2.0
            p = await c.launch_process("echo@0.9.0", {"k": [1, 2]})
            assert json.loads(await p.wait()) == {"k": [1, 2]}

    run(body())


def test_errors_are_answered_and_connection_survives(tmp_path):
    async def body():
        async with running_server(tmp_path) as (_, uri, _pm):
            async with websockets.connect(uri) as ws:
                await ws.send(b"\xc1\xc1 not msgpack")
                r = msgpack.unpackb(await ws.recv())
                assert r["type"] == "response" and r["ok"] is False
                assert "MessagePack" in r["result"]
                await ws.send(msgpack.packb({"type": "launch_process", "corr_id": 7}))
                r = msgpack.unpackb(await ws.recv())
                assert (r["corr_id"], r["ok"]) == (7, False)
                assert "inferlet" in r["result"]
                await ws.send(msgpack.packb({"type": "no_such_type", "corr_id": 8}))
                r = msgpack.unpackb(await ws.recv())
                assert (r["corr_id"], r["ok"]) == (8, False)
                await ws.send(msgpack.packb({"type": "ping", "corr_id": 9}))
                r = msgpack.unpackb(await ws.recv())
                assert r == {"type": "response", "corr_id": 9, "ok": True, "result": "Pong"}
            async with PieClient(uri) as c:
                with pytest.raises(PieError, match="not installed"):
                    await c.launch_process("ghost")
                await install(c, "fails", FAILS)
                p = await c.launch_process("fails")
                with pytest.raises(ProcessFailed, match="bad things"):
                    await p.wait()
                with pytest.raises(PieError, match="not JSON"):
                    await c.launch_process("fails", "{not json")
                assert await c.ping() == "Pong"

    run(body())


def test_original_client_wire_format(tmp_path):
    """Plain msgpack maps, as the original clients send them, including a chunked upload."""
    import blake3

    async def body():
        async with (
            running_server(tmp_path) as (_, uri, _pm),
            websockets.connect(uri + "/v1/ws", additional_headers={"x-pie-identity": "t/u"}) as ws,
        ):

            async def call(msg):
                await ws.send(msgpack.packb(msg, use_bin_type=True))
                while True:
                    r = msgpack.unpackb(await ws.recv(), raw=False)
                    if r["type"] == "response" and r["corr_id"] == msg["corr_id"]:
                        return r

            r = await call({"type": "auth_identify", "corr_id": 1, "username": "bob"})
            assert r["ok"] and r["result"] == "Authenticated (Engine disabled authentication)"
            payload = HELLO.encode()
            halves = [payload[:40], payload[40:]]
            h = blake3.blake3(payload).hexdigest()
            for i, part in enumerate(halves):
                await ws.send(
                    msgpack.packb(
                        {
                            "type": "add_program",
                            "corr_id": 2,
                            "program_hash": h,
                            "manifest": manifest("hello", HELLO),
                            "force_overwrite": False,
                            "chunk_index": i,
                            "total_chunks": 2,
                            "chunk_data": part,
                        },
                        use_bin_type=True,
                    )
                )
            r = msgpack.unpackb(await ws.recv(), raw=False)
            assert r == {
                "type": "response",
                "corr_id": 2,
                "ok": True,
                "result": "Program installed successfully",
            }
            r = await call(
                {
                    "type": "check_program",
                    "corr_id": 3,
                    "name": "hello",
                    "version": "0.1.0",
                    "wasm_hash": h,
                    "manifest_hash": None,
                }
            )
            assert r["result"] == "true"
            await ws.send(
                msgpack.packb(
                    {
                        "type": "launch_process",
                        "corr_id": 4,
                        "inferlet": "hello@0.1.0",
                        "input": json.dumps({"name": "x"}),
                        "capture_outputs": True,
                        "token_budget": None,
                    }
                )
            )
            pid, events = None, []
            while not events or events[-1]["event"] not in ("return", "error"):
                m = msgpack.unpackb(await ws.recv(), raw=False)
                if m["type"] == "response":
                    assert m["corr_id"] == 4 and m["ok"]
                    pid = m["result"]
                else:
                    assert m["type"] == "process_event"
                    events.append(m)
            assert {e["process_id"] for e in events} == {pid}
            assert events[-1] == {
                "type": "process_event",
                "process_id": pid,
                "event": "return",
                "value": "hello x",
            }
            r = await call({"type": "list_processes", "corr_id": 5})
            assert json.loads(r["result"]) == []

    run(body())


def test_json_text_frames(tmp_path):
    async def body():
        async with running_server(tmp_path) as (_, uri, _pm), websockets.connect(uri) as ws:
            await ws.send(json.dumps({"type": "ping", "corr_id": 3}))
            reply = await ws.recv()
            assert isinstance(reply, str)
            assert json.loads(reply) == {
                "type": "response",
                "corr_id": 3,
                "ok": True,
                "result": "Pong",
            }

    run(body())


def test_disconnect_detaches_and_attach_replays(tmp_path):
    async def body():
        async with running_server(tmp_path) as (server, uri, pm):
            async with PieClient(uri, identity="carol") as c:
                await install(c, "waiter", WAITER)
                p = await c.launch_process("waiter")
                assert (await p.recv()).value == "ready"
                pid = p.id
            # the first client is gone; the process still runs and is detached
            await asyncio.sleep(0.05)
            assert pm.procs[pid].on_event is None and pid not in server.attached
            async with PieClient(uri, identity="mallory") as other:
                with pytest.raises(PieError, match="No process"):
                    await other.attach_process(pid)
                with pytest.raises(PieError, match="No process"):
                    await other.terminate_process(pid)
                assert await other.list_processes() == []
            async with PieClient(uri, identity="carol") as c2:
                listed = await c2.list_processes()
                assert [x["id"] for x in listed] == [pid]
                assert listed[0]["program"] == "waiter@0.1.0"
                p2 = await c2.attach_process(pid)
                async with PieClient(uri, identity="carol") as c3:
                    with pytest.raises(PieError, match="another client"):
                        await c3.attach_process(pid)
                await p2.signal("pong")
                assert await p2.wait() == "got pong"

    run(body())


def test_events_while_detached_are_buffered(tmp_path):
    async def body():
        async with running_server(tmp_path) as (_, uri, pm):
            async with PieClient(uri, identity="dan") as c:
                await install(c, "waiter", WAITER)
                p = await c.launch_process("waiter")
                await p.recv()
            await asyncio.sleep(0.05)  # let the server notice the disconnect
            pm.signal(p.id, "late")  # finishes while nobody is attached
            await asyncio.sleep(0.05)
            async with PieClient(uri, identity="dan") as c2:
                p2 = await c2.attach_process(p.id)
                assert await p2.wait() == "got late"

    run(body())


def test_terminate_and_signal(tmp_path):
    async def body():
        async with running_server(tmp_path) as (_, uri, _pm), PieClient(uri) as c:
            await install(c, "waiter", WAITER)
            p = await c.launch_process("waiter")
            assert (await p.recv()).kind == "message"
            await p.terminate()
            e = await p.recv()
            assert (e.kind, e.value) == ("error", "Signal")
            assert await c.list_processes() == []

    run(body())


def test_upload_limits_and_chunk_order(tmp_path):
    async def body():
        async with running_server(tmp_path, max_upload_mb=1) as (_, uri, _pm):  # noqa: SIM117
            async with PieClient(uri) as c:
                big = ("x = 1\n" * 200_000 + HELLO).encode()  # ~1.2 MB
                with pytest.raises(PieError, match="max_upload_mb = 1"):
                    await c.install_program(manifest("big", HELLO), big)
                # the connection and the store are fine afterwards
                assert await install(c, "hello", HELLO) == "hello@0.1.0"
                with pytest.raises(PieError, match="corrupt"):
                    await c._request(
                        P.AddProgram,
                        program_hash="00" * 32,
                        manifest=manifest("h2", HELLO),
                        chunk_index=0,
                        total_chunks=1,
                        chunk_data=HELLO.encode(),
                    )
                with pytest.raises(PieError, match="first chunk"):
                    await c._request(
                        P.AddProgram,
                        program_hash="ab",
                        manifest="",
                        chunk_index=3,
                        total_chunks=4,
                        chunk_data=b"",
                    )
                assert await c.ping() == "Pong"

    run(body())


def test_bad_programs_are_rejected_with_reasons(tmp_path):
    async def body():
        async with running_server(tmp_path) as (_, uri, _pm), PieClient(uri) as c:
            with pytest.raises(PieError, match="syntax error at line 1"):
                await c.install_program(manifest("bad", ""), b"async def main(:\n  pass\n")
            with pytest.raises(PieError, match="not a WebAssembly component"):
                await c.install_program('[package]\nname = "w"\nversion = "1.0.0"\n', b"garbage")
            await install(c, "hello", HELLO)
            with pytest.raises(PieError, match="already installed with different"):
                await install(c, "hello", HELLO + "\n# changed\n")
            await c.install_program(
                manifest("hello", HELLO), (HELLO + "#c\n").encode(), force_overwrite=True
            )
            assert await install(c, "hello", HELLO + "#c\n") == "hello@0.1.0"

    run(body())


def test_files_both_ways(tmp_path):
    async def body():
        async with running_server(tmp_path) as (_, uri, _pm), PieClient(uri) as c:
            await install(c, "files", FILES)
            p = await c.launch_process("files", {"size": 300_000})
            data = bytes(range(256)) * 1200  # > one chunk
            await p.transfer_file(data)
            events = [e async for e in p]
            assert [e.kind for e in events] == ["file", "return"]
            assert events[0].value == bytes(reversed(data)) + b"x" * 300_000
            assert p.result == str(len(data))

    run(body())


def test_model_status_and_unknown_query(tmp_path):
    stats = {
        "default": {
            "kv_pages_used": 3,
            "kv_pages_total": 64,
            "latency": {"p50": 1.5},
            "batch_size_hist": {1: 4, 2: 1},
        }
    }

    async def body():
        async with running_server(tmp_path, stats=lambda: stats) as (_, uri, _pm):  # noqa: SIM117
            async with PieClient(uri) as c:
                status = await c.model_status()
                assert status["default.kv_pages_used"] == 3
                assert status["default.latency.p50"] == 1.5
                assert status["default.batch_size_hist"] == {"1": 4, "2": 1}
                with pytest.raises(PieError, match="model_status"):
                    await c.query("weather")

    run(body())


def test_launch_many_and_run_many(tmp_path):
    async def body():
        async with running_server(tmp_path) as (_, uri, _pm), PieClient(uri) as c:
            await install(c, "hello", HELLO)
            outs = await c.run_processes("hello", [{"name": "a"}, {"name": "b"}])
            assert outs == ["hello a", "hello b"]
            procs = await c.launch_processes("hello", [{"name": "c"}, {"name": "d"}])
            assert [await p.wait() for p in procs] == ["hello c", "hello d"]

    run(body())


def test_launch_waiting_for_admission_does_not_block_the_connection(tmp_path):
    async def body():
        async with running_server(tmp_path, max_concurrent=1) as (_, uri, _pm):  # noqa: SIM117
            async with PieClient(uri) as c:
                await install(c, "waiter", WAITER)
                first = await c.launch_process("waiter")
                await first.recv()
                second = await c.launch_process("waiter")
                assert await c.ping() == "Pong"
                await first.signal("1")
                assert await first.wait() == "got 1"
                assert (await second.recv()).value == "ready"
                await second.signal("2")
                assert await second.wait() == "got 2"

    run(body())


def test_events_racing_a_disconnect_are_kept_for_the_next_attach(tmp_path):
    """An event delivered to a session whose connection just dropped is not lost."""

    async def body():
        async with running_server(tmp_path) as (server, uri, pm):
            real_detach = pm.detach

            def racing_detach(pid):
                pm.procs[pid].emit("message", "in flight")  # still routed to the old session
                real_detach(pid)

            pm.detach = racing_detach
            async with PieClient(uri, identity="erin") as c:
                await install(c, "waiter", WAITER)
                p = await c.launch_process("waiter")
                await p.recv()
            for _ in range(100):
                if not server.sessions:
                    break
                await asyncio.sleep(0.01)
            assert p.id in server.orphans
            pm.signal(p.id, "x")
            await asyncio.sleep(0.02)
            async with PieClient(uri, identity="mallory") as other:
                with pytest.raises(PieError, match="No process"):
                    await other.attach_process(p.id)
            async with PieClient(uri, identity="erin") as c2:
                p2 = await c2.attach_process(p.id)
                events = [(e.kind, e.value) async for e in p2]
                assert events == [("message", "in flight"), ("return", "got x")]
            assert p.id not in server.orphans
            # a process whose end was stashed can be attached once, then it is gone
            pm.detach = real_detach

    run(body())


def test_processes_the_manager_forgot_give_clear_answers(tmp_path):
    async def body():
        async with running_server(tmp_path) as (_, uri, pm):
            async with PieClient(uri, identity="fay") as c:
                await install(c, "waiter", WAITER)
                p = await c.launch_process("waiter")
                await p.recv()
            await asyncio.sleep(0.05)
            del pm.procs[p.id]  # as after the manager's retention period
            async with PieClient(uri, identity="fay") as c2:
                with pytest.raises(PieError, match="ended and its output expired"):
                    await c2.attach_process(p.id)
                with pytest.raises(PieError, match="No process"):
                    await c2.terminate_process(p.id)
                await c2.signal_process(p.id, "nobody home")  # dropped quietly
                assert await c2.ping() == "Pong"

    run(body())


def test_a_client_that_stops_reading_is_dropped(tmp_path, monkeypatch):
    import pie.server as server_module
    from pie.server import Server, ServerOptions, Session

    monkeypatch.setattr(server_module, "MAX_OUTBOX", 10)

    class StuckSocket:
        def __init__(self):
            self.closed_with = None

        async def close(self, code, reason):
            self.closed_with = (code, reason)

    async def body():
        server = Server(None, None, ServerOptions(auth_enabled=False))
        ws = StuckSocket()
        session = Session(server, ws, "slow")
        for i in range(12):
            session.on_event("pid", "stdout", f"line {i}")
        await asyncio.sleep(0)
        assert ws.closed_with is not None and ws.closed_with[0] == 1008
        assert "too slow" in ws.closed_with[1]

    run(body())
