"""The controller's boot and shutdown with the models and process manager faked."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from fake_processes import FakeProcessManager
from front import run

from pie.client import PieClient, PieError
from pie.config import default_config
from pie.controller import Engine, ReplicaRouter, serve_until_signal, with_overrides
from pie.programs import ProgramStore

HELLO = "async def main(name='x'):\n    return 'hi ' + name\n"


class FakeEngineService:
    def __init__(self, name):
        self.info = type("Info", (), {"name": name})()
        self.tokenizer = None
        self.registered: dict[str, str] = {}

    async def register_process(self, pid, user, token_limit=None):
        self.registered[pid] = user

    def unregister_process(self, pid):
        self.registered.pop(pid)

    def create_context(self, pid):
        return len(self.registered[pid])

    def stats(self):
        return {"kv_pages_used": len(self.registered), "kv_pages_total": 8}


def make_engine(tmp_path: Path, **kw) -> Engine:
    cfg = default_config(cuda=False)
    return Engine(
        cfg,
        port=0,
        engines={"default": FakeEngineService("default")},
        process_manager_factory=lambda engines: FakeProcessManager(),
        programs=ProgramStore(tmp_path / "programs"),
        **kw,
    )


def test_engine_boots_serves_and_stops(tmp_path):
    async def body():
        engine = make_engine(tmp_path, auth_enabled=True)
        messages = []
        await engine.start(messages.append)
        assert engine.port > 0 and engine.url.endswith(str(engine.port))
        assert messages[-1] == f"serving on {engine.url}"
        pm = engine.processes
        async with PieClient(engine.url) as c:
            with pytest.raises(PieError, match="Not authenticated"):
                await c.ping()
            await c.auth_by_token(engine.internal_token)
            await c.install_program(
                '[package]\nname = "h"\nversion = "1.0.0"\n[runtime]\nlanguage = "python"\n'
                'call = "kwargs"\n',
                HELLO.encode(),
            )
            p = await c.launch_process("h", {"name": "pie"})
            assert await p.wait() == "hi pie"
            status = await c.model_status()
            assert status == {"default.kv_pages_used": 0, "default.kv_pages_total": 8}
        await engine.stop()
        await engine.stop()  # idempotent
        assert pm.shut_down
        with pytest.raises(OSError):
            async with PieClient(engine.url) as c:
                await c.ping()

    run(body())


def test_failed_boot_cleans_up_and_port_in_use_is_reported(tmp_path):
    from pie_cli.serve import boot_error

    async def body():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            busy = s.getsockname()[1]
            cfg = default_config(cuda=False)
            pms = []

            def factory(engines):
                pms.append(FakeProcessManager())
                return pms[-1]

            engine = Engine(
                cfg,
                port=busy,
                engines={},
                process_manager_factory=factory,
                programs=ProgramStore(tmp_path / "p"),
                auth_enabled=False,
            )
            with pytest.raises(OSError) as info:
                await engine.start()
            assert pms[0].shut_down  # what had started was stopped
            err = boot_error(info.value, "127.0.0.1", busy)
            assert err is not None and "in use" in str(err) and "--port" in str(err)

    run(body())


def test_replica_router_pins_processes():
    class Rep(FakeEngineService):
        pass

    a, b = Rep("m"), Rep("m")
    router = ReplicaRouter([a, b])

    async def body():
        for pid in ("p1", "p2", "p3", "p4"):
            await router.register_process(pid, "u")
        assert len(a.registered) == 2 and len(b.registered) == 2
        owner = a if "p1" in a.registered else b
        assert router.create_context("p1") == len(owner.registered["p1"])
        router.unregister_process("p1")
        assert "p1" not in owner.registered
        from pie.sched.api import EngineError

        with pytest.raises(EngineError, match="not registered"):
            router.create_context("p1")
        assert router.stats()["replicas"] == 2

    run(body())


def test_with_overrides_copies():
    cfg = default_config(cuda=False)
    new = with_overrides(cfg, python_snapshot=False, port=None)
    assert new.server.python_snapshot is False and cfg.server.python_snapshot is True
    assert new.server.port == cfg.server.port


SERVE_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from fake_processes import FakeProcessManager
    from pie.config import default_config
    from pie.controller import Engine, run_forever
    from pie.programs import ProgramStore

    engine = Engine(default_config(cuda=False), port=0, engines={{}}, auth_enabled=False,
                    process_manager_factory=lambda e: FakeProcessManager(),
                    programs=ProgramStore({store!r}))
    code = run_forever(engine, ready=lambda e: print("READY", e.port, flush=True))
    print("EXIT", code, flush=True)
    sys.exit(code)
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_exits_cleanly_on_signal(tmp_path, sig):
    script = SERVE_SCRIPT.format(tests=str(Path(__file__).parent), store=str(tmp_path / "p"))
    env = dict(os.environ, PIE_HOME=str(tmp_path / "home"))
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY"), proc.stderr.read()
        port = int(line.split()[1])

        async def ping():
            async with PieClient(f"ws://127.0.0.1:{port}") as c:
                return await c.ping()

        assert run(ping()) == "Pong"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert "EXIT 0" in out
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_until_signal_interrupted_while_booting(tmp_path):
    """A signal during boot stops what started and returns 0."""
    import asyncio

    class SlowPM(FakeProcessManager):
        async def start(self):
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(5)

    pms = []

    def factory(engines):
        pms.append(SlowPM())
        return pms[-1]

    engine = Engine(
        default_config(cuda=False),
        port=0,
        engines={},
        auth_enabled=False,
        process_manager_factory=factory,
        programs=ProgramStore(tmp_path / "p"),
    )
    t0 = time.monotonic()
    assert run(serve_until_signal(engine)) == 0
    assert time.monotonic() - t0 < 4
    assert pms[0].shut_down


def test_runtime_start_messages_are_shown_as_progress(tmp_path):
    import logging

    class ChattyPM(FakeProcessManager):
        async def start(self):
            logging.getLogger("pie.processes").info("building the runner")
            logging.getLogger("pie.processes").debug("not progress")

    async def body():
        engine = Engine(
            default_config(cuda=False),
            port=0,
            engines={},
            auth_enabled=False,
            process_manager_factory=lambda e: ChattyPM(),
            programs=ProgramStore(tmp_path / "p"),
        )
        seen = []
        await engine.start(seen.append)
        await engine.stop()
        assert "building the runner" in seen and "not progress" not in seen
        assert logging.getLogger("pie.processes").propagate

    run(body())
