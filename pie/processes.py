"""Inferlet processes: launch, events, attach/detach, signals, terminate, list, cleanup.

`ProcessManager` is what the server calls. One process = one sandboxed guest (a fresh
runner instance for Python source, or a compiled component) running as a task on the
controller's event loop. Its life:

    launch -> [admission: max_concurrent_processes] -> register with every engine
           -> sandbox.run(input) -> "return" | "error" -> unregister from every engine

Events go to the attached client through `on_event(pid, kind, value)` with kind in
"stdout", "stderr", "message", "file" ((name, bytes)), "return" (str), "error" (str);
exactly one of "return"/"error" ends a process. While no client is attached, events are
buffered (bounded; the oldest output is dropped first) and replayed on `attach`.
Cleanup (`unregister_process` on every engine, scratch removal) runs whatever happens.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pie.messaging import MessageHub
from pie.programs import Program
from pie.sandbox.host import GuestState
from pie.sandbox.sandbox import Sandbox, SandboxError
from pie.sched.api import EngineService

log = logging.getLogger(__name__)

OnEvent = Callable[[str, str, object], None]
MAX_BUFFERED_EVENTS = 4096
FINISHED_RETENTION_S = 600.0


@dataclass
class Process:
    pid: str
    program: Program
    user: str
    started_at: float
    on_event: OnEvent | None
    state: str = "pending"  # pending -> running -> finished | failed
    buffer: deque = field(default_factory=lambda: deque(maxlen=MAX_BUFFERED_EVENTS))
    guest: GuestState | None = None
    task: asyncio.Task | None = None
    terminal_sent: bool = False
    result: tuple[str, str] | None = None
    waiters: list[asyncio.Future] = field(default_factory=list)
    cancel_reason: str = "terminated"


class ProcessManager:
    def __init__(self, engines: dict[str, EngineService], runtime_cfg: Any, *,
                 python_snapshot: bool = True, max_concurrent_processes: int | None = None,
                 sandbox: Sandbox | None = None) -> None:
        self.engines = engines
        self.runtime_cfg = runtime_cfg
        self.sandbox = sandbox or Sandbox(runtime_cfg, python_snapshot=python_snapshot)
        self.hub = MessageHub()
        self.max_concurrent = max_concurrent_processes
        self._admission = (asyncio.Semaphore(max_concurrent_processes)
                           if max_concurrent_processes else None)
        self._procs: dict[str, Process] = {}
        self.resolve_program: Callable[[str], Program] | None = None  # for child launches
        self._started = False

    async def start(self) -> None:
        """Build or load the cached runner and start the wasm engine."""
        if not self._started:
            await self.sandbox.start(progress=log.info)
            self._started = True

    # --- launching -------------------------------------------------------------------------

    async def launch(self, program: Program, input: str, user: str, on_event: OnEvent,
                     token_limit: int | None = None) -> str:
        if not self._started:
            await self.start()
        pid = uuid.uuid4().hex
        proc = Process(pid, program, user, time.time(), on_event)
        self._procs[pid] = proc
        proc.task = asyncio.get_running_loop().create_task(
            self._run(proc, input or "{}", token_limit), name=f"inferlet-{pid[:8]}")
        return pid

    async def _run(self, proc: Process, input: str, token_limit: int | None) -> None:
        registered: list[EngineService] = []
        try:
            if self._admission is not None:
                await self._admission.acquire()
            try:
                for eng in self.engines.values():
                    await eng.register_process(proc.pid, proc.user, token_limit)
                    registered.append(eng)
                guest = self._guest_of(proc)
                component = await self._component(proc.program, guest)
                proc.state = "running"
                ok, payload = await self.sandbox.run(guest, component, input)
            finally:
                if self._admission is not None:
                    self._admission.release()
            if ok:
                value = payload if payload or guest.return_value is None else guest.return_value
                self._finish(proc, "return", value)
            else:
                self._finish(proc, "error", payload)
        except asyncio.CancelledError:
            self._finish(proc, "error", proc.cancel_reason)
        except (SandboxError, Exception) as e:
            msg = str(e) if isinstance(e, SandboxError) else f"{type(e).__name__}: {e}"
            if not isinstance(e, SandboxError):
                log.exception("inferlet %s failed in the host", proc.pid)
            self._finish(proc, "error", msg)
        finally:
            for eng in self.engines.values():
                try:
                    eng.unregister_process(proc.pid)
                except Exception:
                    log.exception("unregister_process(%s) failed", proc.pid)
            if proc.guest is not None:
                proc.guest.close()

    def _guest(self, proc: Process) -> GuestState:
        guest = GuestState(
            pid=proc.pid, user=proc.user, engines=self.engines,
            emit=lambda kind, value: self._emit(proc, kind, value), hub=self.hub,
            launcher=lambda ref, inp: self._launch_child(proc, ref, inp))
        proc.guest = guest
        return guest

    async def _component(self, program: Program, guest: GuestState) -> Any:
        if program.kind == "python":
            self.sandbox.prepare_python(guest, program.payload, program.entry, program.call)
        return await self.sandbox.load_component(program.kind, program.payload, program.digest)

    def _launch_child(self, parent: Process, ref: str, input: str) -> asyncio.Future:
        if self.resolve_program is None:
            from pie.sandbox.abi import GuestError

            raise GuestError("launching other inferlets is not available in this engine")
        try:
            program = self.resolve_program(ref)
        except Exception as e:  # noqa: BLE001 - the guest named a program that does not exist
            from pie.sandbox.abi import GuestError

            raise GuestError(f"cannot launch {ref!r}: {e}") from None
        fut = asyncio.get_running_loop().create_future()

        def on_child(pid: str, kind: str, value: object) -> None:
            if kind == "return" and not fut.done():
                fut.set_result(str(value))
            elif kind == "error" and not fut.done():
                fut.set_exception(RuntimeError(f"child inferlet failed: {value}"))

        asyncio.ensure_future(self.launch(program, input, parent.user, on_child))
        return fut

    # --- events ----------------------------------------------------------------------------

    def _emit(self, proc: Process, kind: str, value: object) -> None:
        if proc.terminal_sent:
            return
        if kind in ("return", "error"):
            proc.terminal_sent = True
            proc.result = (kind, str(value))
        if proc.on_event is not None:
            try:
                proc.on_event(proc.pid, kind, value)
            except Exception:
                log.exception("event callback failed for %s", proc.pid)
        else:
            proc.buffer.append((kind, value))

    def _finish(self, proc: Process, kind: str, value: str) -> None:
        proc.state = "finished" if kind == "return" else "failed"
        self._emit(proc, kind, value)
        for w in proc.waiters:
            if not w.done():
                w.set_result(proc.result)
        # keep the record a while so a late attach still gets the buffered result
        asyncio.get_running_loop().call_later(FINISHED_RETENTION_S, self.forget, proc.pid)

    def attach(self, pid: str, on_event: OnEvent) -> None:
        proc = self._procs[pid]
        proc.on_event = on_event
        while proc.buffer:
            kind, value = proc.buffer.popleft()
            try:
                on_event(pid, kind, value)
            except Exception:
                log.exception("event callback failed for %s", pid)

    def detach(self, pid: str) -> None:
        self._procs[pid].on_event = None

    async def wait(self, pid: str) -> tuple[str, str]:
        """Wait for a process to end: ("return" | "error", value)."""
        proc = self._procs[pid]
        if proc.result is not None and proc.task is not None and proc.task.done():
            return proc.result
        fut = asyncio.get_running_loop().create_future()
        proc.waiters.append(fut)
        if proc.task is not None:
            await asyncio.wait([proc.task])
        return proc.result if proc.result is not None else await fut

    # --- control -----------------------------------------------------------------------------

    async def terminate(self, pid: str, reason: str = "terminated by client") -> None:
        proc = self._procs[pid]
        if proc.task is None or proc.task.done():
            return
        proc.cancel_reason = reason
        proc.task.cancel()
        await asyncio.wait([proc.task])

    def signal(self, pid: str, message: str) -> None:
        self._guest_of(self._procs[pid]).deliver_message(message)

    def send_file(self, pid: str, name: str, data: bytes) -> None:
        self._guest_of(self._procs[pid]).deliver_file(name, data)

    def _guest_of(self, proc: Process) -> GuestState:
        if proc.guest is None:  # not started yet: create the state now so nothing is lost
            self._guest(proc)
        return proc.guest

    def list(self, user: str | None = None) -> list[dict]:
        return [
            {"pid": p.pid, "program": f"{p.program.name}@{p.program.version}", "user": p.user,
             "state": p.state, "started_at": p.started_at}
            for p in self._procs.values()
            if (user is None or p.user == user) and p.state in ("pending", "running")
        ]

    def forget(self, pid: str) -> None:
        """Drop a finished process's record."""
        proc = self._procs.get(pid)
        if proc is not None and proc.task is not None and proc.task.done():
            del self._procs[pid]

    async def shutdown(self) -> None:
        tasks = []
        for proc in list(self._procs.values()):
            if proc.task is not None and not proc.task.done():
                proc.cancel_reason = "the server is shutting down"
                proc.task.cancel()
                tasks.append(proc.task)
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        self.sandbox.close()
