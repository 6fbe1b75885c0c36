"""An in-process stand-in for `pie.processes.ProcessManager`, for front-end tests.

It runs a Python program's source directly on the event loop (no sandbox, no model): the
source sees a `session` object (`send`, `receive`, `send_file`, `receive_file`) and a `print`
that becomes stdout events. Events of a detached process are buffered and replayed on attach,
like the real manager. Same method names and signatures as the real one.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from pie.programs import Program


class _Session:
    def __init__(self, proc: _Proc):
        self._proc = proc

    def send(self, message: str) -> None:
        self._proc.emit("message", message)

    async def receive(self) -> str:
        return await self._proc.inbox.get()

    def send_file(self, name: str, data: bytes) -> None:
        self._proc.emit("file", (name, data))

    async def receive_file(self) -> tuple[str, bytes]:
        return await self._proc.files.get()


class _Proc:
    def __init__(self, pid: str, program: Program, input: str, user: str, on_event):
        self.pid, self.program, self.input, self.user = pid, program, input, user
        self.on_event: Callable | None = on_event
        self.buffer: list[tuple[str, Any]] = []
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.files: asyncio.Queue = asyncio.Queue()
        self.started = time.time()
        self.task: asyncio.Task | None = None
        self.finished = False

    def emit(self, kind: str, value: Any) -> None:
        if self.finished:
            return
        if kind in ("return", "error"):
            self.finished = True
        if self.on_event is None:
            self.buffer.append((kind, value))
        else:
            self.on_event(self.pid, kind, value)


class FakeProcessManager:
    def __init__(self, max_concurrent_processes: int | None = None):
        self.procs: dict[str, _Proc] = {}
        self.launched: list[_Proc] = []
        self._sem = (
            asyncio.Semaphore(max_concurrent_processes) if max_concurrent_processes else None
        )
        self.shut_down = False

    async def start(self) -> None:
        pass

    async def launch(
        self,
        program: Program,
        input: str,
        user: str,
        on_event: Callable[[str, str, Any], None],
        token_limit: int | None = None,
    ) -> str:
        pid = str(uuid.uuid4())
        proc = _Proc(pid, program, input, user, on_event)
        self.procs[pid] = proc
        self.launched.append(proc)
        proc.token_limit = token_limit
        proc.task = asyncio.create_task(self._run(proc))
        return pid

    async def _run(self, proc: _Proc) -> None:
        if self._sem is not None:
            await self._sem.acquire()
        try:
            ns: dict[str, Any] = {
                "session": _Session(proc),
                "print": lambda *a, **k: proc.emit("stdout", " ".join(map(str, a)) + "\n"),
            }
            code = compile(proc.program.payload.decode(), proc.program.name, "exec")
            exec(code, ns)  # noqa: S102 - the fake runs test programs in-process
            fn = ns[proc.program.entry]
            args = json.loads(proc.input or "{}")
            result = await (fn(**args) if proc.program.call == "kwargs" else fn(args))
            proc.emit("return", result if isinstance(result, str) else json.dumps(result))
        except asyncio.CancelledError:
            pass
        except Exception as e:  # noqa: BLE001 - the inferlet's own failure
            proc.emit("error", f"{type(e).__name__}: {e}")
        finally:
            if self._sem is not None:
                self._sem.release()

    def attach(self, pid: str, on_event) -> None:
        proc = self.procs[pid]
        proc.on_event = on_event
        buffered, proc.buffer = proc.buffer, []
        for kind, value in buffered:
            on_event(pid, kind, value)
        if proc.finished and not buffered:
            pass

    def detach(self, pid: str) -> None:
        proc = self.procs.get(pid)
        if proc is not None:
            proc.on_event = None

    async def terminate(self, pid: str, reason: str) -> None:
        proc = self.procs[pid]
        if proc.task is not None and not proc.task.done():
            proc.task.cancel()
            try:
                await proc.task
            except asyncio.CancelledError:
                pass
        proc.emit("error", reason)

    def signal(self, pid: str, message: str) -> None:
        self.procs[pid].inbox.put_nowait(message)

    def send_file(self, pid: str, name: str, data: bytes) -> None:
        self.procs[pid].files.put_nowait((name, data))

    def list(self, user: str | None = None) -> list[dict]:
        return [
            {
                "pid": p.pid,
                "program": p.program.ref,
                "user": p.user,
                "state": "running",
                "started_at": p.started,
            }
            for p in self.procs.values()
            if (user is None or p.user == user) and not p.finished
        ]

    async def shutdown(self) -> None:
        self.shut_down = True
        for p in self.procs.values():
            if p.task is not None:
                p.task.cancel()
