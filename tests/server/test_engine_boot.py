"""Boot the controller with a real dummy-driver worker and scheduler (processes faked)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import msgspec
import pytest
from fake_processes import FakeProcessManager
from front import run

from pie.client import PieClient
from pie.config import default_config
from pie.controller import Engine
from pie.programs import ProgramStore


def _shm() -> set[str]:
    """Shared-memory segments this test process created (other jobs may share the machine)."""
    d = Path("/dev/shm")
    mine = f"pie_{os.getpid()}_"
    return {p.name for p in d.iterdir() if p.name.startswith(mine)} if d.is_dir() else set()


@pytest.mark.e2e
def test_dummy_worker_boot_status_and_clean_stop(tmp_path, monkeypatch):
    monkeypatch.setenv("PIE_HOME", str(tmp_path / "home"))
    cfg = default_config(cuda=False)
    model = cfg.models[0]
    driver = msgspec.structs.replace(model.driver, type="dummy", options={"total_pages": 32})
    cfg = msgspec.structs.replace(cfg, models=[msgspec.structs.replace(model, driver=driver)])
    before = _shm()

    async def body():
        engine = Engine(
            cfg,
            port=0,
            auth_enabled=False,
            process_manager_factory=lambda engines: FakeProcessManager(),
            programs=ProgramStore(tmp_path / "programs"),
        )
        steps = []
        tid = threading.get_native_id()
        nice_before = os.getpriority(os.PRIO_PROCESS, tid)
        await engine.start(steps.append)
        try:
            assert any("ready" in s for s in steps), steps
            # a CPU model: the controller's thread yields to the worker (controller_nice 10),
            # the worker keeps the priority it was spawned with
            assert os.getpriority(os.PRIO_PROCESS, tid) == min(19, nice_before + 10)
            worker_pid = engine.workers[0]._procs[0].pid
            assert os.getpriority(os.PRIO_PROCESS, worker_pid) == nice_before
            sched = engine.engines["default"]
            assert sched.info.page_size == 16 and sched.info.eos_token_ids
            assert sched.tokenizer.decode(sched.tokenizer.encode("hello")) == "hello"
            pids = [w._procs[0].pid for w in engine.workers]
            assert _shm() - before  # the worker's rings exist while it runs
            async with PieClient(engine.url) as c:
                status = await c.model_status()
            assert status["default.pages_total"] == 32
            assert status["default.pages_used"] == 0
        finally:
            await engine.stop()
        if os.geteuid() == 0:  # raising a priority again needs the privilege
            assert os.getpriority(os.PRIO_PROCESS, tid) == nice_before
        for pid in pids:  # the worker processes are gone
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)

    run(body(), timeout=120)
    assert _shm() - before == set()  # every ring was unlinked
