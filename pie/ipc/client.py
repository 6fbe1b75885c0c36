"""`WorkerClient`: the controller's async handle on one worker (one data-parallel device group).

    client = await WorkerClient.start(spec, on_progress=print)   # spawn, wait for WorkerInfo
    client.info                                                  # pie.ipc.messages.WorkerInfo
    result = await client.submit(descriptor)                     # -> BatchResult
    await client.close()                                         # or: async with client: ...

What lives where:

* The client creates both rings (so it owns and unlinks them): the request ring with one
  reader per tensor-parallel rank, the response ring written by rank 0. It spawns the ranks
  (`spawn` start method) with `pie.worker.main.worker_main` and a pipe for start-up progress.
* `submit` writes on the event-loop thread; the ring never blocks there, because it first
  waits (asynchronously) for a free slot: that is the back-pressure.
* Results need no thread: after writing a result, rank 0 rings a doorbell (one byte on a pipe
  the event loop watches with `add_reader`); the loop then drains every result in the ring.
  The data never goes through the pipe, and the loop never blocks.
* Every rank's process sentinel is watched by the loop: when a rank dies, every pending
  request fails at once with `WorkerDied`, the other ranks are stopped and the rings unlinked.

No torch here: the controller never imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing as mp
import multiprocessing.connection
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from typing import Any, Self

import msgspec

from pie.ipc.channel import Channel
from pie.ipc.messages import BatchResult, Request, Response, Shutdown, WorkerInfo
from pie.ipc.ring import Ring
from pie.ipc.spec import WorkerSpec

_POLL_FULL_S = 0.0001  # first re-check of a full request ring; doubles up to the max
_POLL_FULL_MAX_S = 0.005
_SHUTDOWN_BATCH_ID = -(2**62)


@contextlib.contextmanager
def _main_module_hidden():
    """Keep `spawn` from re-running the parent's __main__ in the worker.

    The worker needs nothing from it (its entry is `pie.worker.main.worker_main`), and
    re-running it breaks for scripts without an `if __name__ == "__main__"` guard (they would
    start workers recursively) and for code read from stdin.
    """
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    try:
        main.__dict__.pop("__file__", None)
        main.__dict__["__spec__"] = None
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


class WorkerDied(RuntimeError):
    """The worker process exited (or was killed) while requests were pending or being sent."""


class WorkerStartError(RuntimeError):
    """The worker could not start (bad model path, not enough memory, ...); says why.

    `detail` holds the worker's traceback when the cause was not a plain user error.
    """

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.detail = detail


class WorkerClient:
    def __init__(self) -> None:
        # use WorkerClient.start
        self.info: WorkerInfo | None = None
        self.spec: WorkerSpec | None = None
        self._procs: list[Any] = []
        self._conns: list[Any] = []
        self._req: Channel | None = None
        self._resp_ring: Ring | None = None
        self._resp: Channel | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._order: list[int] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._doorbell: Any = None
        self._write_lock = asyncio.Lock()
        self._dead: str | None = None
        self._closed = False
        self._stopping = False  # Shutdown sent: a rank exiting now is expected
        self._teardown_task: asyncio.Task | None = None
        self._dist_dir: str | None = None
        self._watched: list[int] = []

    # --- start ------------------------------------------------------------------------------

    @classmethod
    async def start(
        cls,
        spec: WorkerSpec,
        on_progress: Callable[[str], None] | None = None,
        *,
        startup_timeout: float = 900.0,
    ) -> WorkerClient:
        """Spawn the worker rank(s) of `spec` and wait until they report ready."""
        self = cls()
        self._loop = asyncio.get_running_loop()
        slots = int(spec.option("ring_slots"))
        slot_bytes = int(spec.option("ring_slot_bytes"))
        spin = float(spec.option("spin_us"))
        req_ring = Ring.create(slots, slot_bytes, num_readers=spec.tp_size, tag="req", spin_us=spin)
        self._req = Channel(req_ring, Request)
        resp_owner = Ring.create(slots, slot_bytes, num_readers=1, tag="resp", spin_us=spin)
        self._resp_ring = resp_owner
        self._resp = Channel(Ring.attach(resp_owner.name, reader_index=0, spin_us=0), Response)
        dist_init = ""
        if spec.tp_size > 1:
            self._dist_dir = tempfile.mkdtemp(prefix="pie-tp-")
            dist_init = "file://" + os.path.join(self._dist_dir, "rendezvous")
        base = dataclasses.replace(
            spec, request_ring=req_ring.name, response_ring=resp_owner.name, dist_init=dist_init
        )
        self.spec = base
        ctx = mp.get_context("spawn")
        from pie.worker.main import worker_main  # no torch at import time

        try:
            bell_recv, bell_send = ctx.Pipe(duplex=False)
            self._doorbell = bell_recv
            for rank in range(spec.tp_size):
                recv, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(
                    target=worker_main,
                    args=(
                        dataclasses.replace(base, tp_rank=rank),
                        send,
                        bell_send if rank == 0 else None,
                    ),
                    name=f"pie-worker-{spec.name}-{rank}",
                    daemon=True,
                )
                with _main_module_hidden():
                    proc.start()
                send.close()
                if rank == 0:
                    bell_send.close()
                self._procs.append(proc)
                self._conns.append(recv)
            self.info = await asyncio.wait_for(self._await_ready(on_progress), startup_timeout)
        except BaseException as exc:
            await self._start_teardown(kill=True)
            if isinstance(exc, asyncio.TimeoutError):
                raise WorkerStartError(
                    f"worker for model {spec.name!r} did not become ready within "
                    f"{startup_timeout:.0f} s"
                ) from None
            raise
        for proc in self._procs:
            fd = proc.sentinel
            self._loop.add_reader(fd, self._on_exit, proc)
            self._watched.append(fd)
        os.set_blocking(self._doorbell.fileno(), False)
        self._loop.add_reader(self._doorbell.fileno(), self._drain)
        self._watched.append(self._doorbell.fileno())
        self._drain()  # anything that arrived before the reader was installed
        return self

    async def _await_ready(self, on_progress: Callable[[str], None] | None) -> WorkerInfo:
        loop = asyncio.get_running_loop()
        ready: list[WorkerInfo | None] = [None] * len(self._procs)
        while not all(ready):
            waitables = [c for c, r in zip(self._conns, ready) if r is None]
            waitables += [p.sentinel for p in self._procs]
            got = await loop.run_in_executor(None, mp.connection.wait, waitables, 1.0)
            for rank, conn in enumerate(self._conns):
                if ready[rank] is not None or conn not in got:
                    continue
                try:
                    msg = conn.recv()
                except EOFError:
                    continue  # the process is exiting; its sentinel tells
                if msg[0] == "progress":
                    if on_progress is not None:
                        on_progress(msg[1])
                elif msg[0] == "ready":
                    ready[rank] = msgspec.msgpack.decode(msg[1], type=WorkerInfo)
                elif msg[0] == "error":
                    raise self._start_error(rank, msg)
            for rank, proc in enumerate(self._procs):
                if ready[rank] is None and proc.sentinel in got and not proc.is_alive():
                    # drain a last error message if the process sent one before exiting
                    conn = self._conns[rank]
                    if conn.poll():
                        try:
                            msg = conn.recv()
                            if msg[0] == "error":
                                raise self._start_error(rank, msg)
                        except EOFError:
                            pass
                    raise WorkerStartError(
                        f"worker rank {rank} of model {self.spec.name!r} exited during start-up "
                        f"with code {proc.exitcode}"
                    )
        return ready[0]

    def _start_error(self, rank: int, msg: tuple) -> WorkerStartError:
        return WorkerStartError(
            f"model {self.spec.name!r} could not start (worker rank {rank}): {msg[1]}",
            msg[2] if len(msg) > 2 else "",
        )

    # --- submit -----------------------------------------------------------------------------

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def alive(self) -> bool:
        return self._dead is None and not self._closed

    async def submit(self, msg: Request) -> BatchResult:
        """Send one descriptor or control op and wait for its result.

        Waits (without blocking the loop) while the request ring is full. Raises WorkerDied if
        the worker is or becomes dead, MessageTooLarge if the message exceeds a ring slot.
        """
        if self._dead is not None:
            raise WorkerDied(self._dead)
        if self._closed:
            raise RuntimeError("this WorkerClient is closed; start a new one")
        if msg.batch_id in self._pending:
            raise ValueError(f"batch id {msg.batch_id} is already in flight; use unique ids")
        fut = self._loop.create_future()
        async with self._write_lock:
            ring = self._req.ring
            pause = _POLL_FULL_S
            while not ring.writable():
                if self._dead is not None:
                    raise WorkerDied(self._dead)
                await asyncio.sleep(pause)
                pause = min(pause * 2, _POLL_FULL_MAX_S)  # a long forward pass: look less often
            if self._dead is not None:
                raise WorkerDied(self._dead)
            self._pending[msg.batch_id] = fut
            self._order.append(msg.batch_id)
            try:
                self._req.send(msg, timeout=0)
            except BaseException:
                self._pending.pop(msg.batch_id, None)
                self._order.remove(msg.batch_id)
                raise
        return await fut

    # --- results ----------------------------------------------------------------------------

    def _drain(self) -> None:
        """Doorbell rang: deliver every result waiting in the response ring."""
        try:
            while os.read(self._doorbell.fileno(), 4096):
                pass
        except BlockingIOError:
            pass
        except OSError:
            pass  # the worker end is gone; its sentinel reports the exit
        resp = self._resp
        while resp.ring.poll():
            try:
                result = resp.recv(timeout=0)
            except Exception as exc:  # noqa: BLE001 - undecodable result
                result = BatchResult(batch_id=-1, error=f"undecodable worker result: {exc}")
            self._deliver(result)

    def _deliver(self, result: BatchResult) -> None:
        bid = result.batch_id
        if bid == -1 and bid not in self._pending and self._order:
            bid = self._order[0]  # the worker could not even read the id: fail the oldest
        fut = self._pending.pop(bid, None)
        if fut is None:
            return
        try:
            self._order.remove(bid)
        except ValueError:
            pass
        if not fut.done():
            fut.set_result(result)

    # --- failure ----------------------------------------------------------------------------

    def _on_exit(self, proc: Any) -> None:
        if self._resp is not None and not self._closed:
            self._drain()  # results written before the exit are still good
        self._unwatch()
        if self._stopping or self._closed or self._dead is not None:
            return
        proc.join(0.5)  # the pipe closes a moment before the exit status is ready
        rank = self._procs.index(proc)
        self._dead = (
            f"worker rank {rank} of model {self.spec.name!r} (pid {proc.pid}) exited with code "
            f"{proc.exitcode} while {len(self._pending)} request(s) were pending; its output "
            f"above says why"
        )
        err = WorkerDied(self._dead)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()
        self._order.clear()
        self._start_teardown(kill=True)

    def _unwatch(self) -> None:
        for fd in self._watched:
            try:
                self._loop.remove_reader(fd)
            except Exception:  # noqa: BLE001, S110 - best-effort cleanup
                pass
        self._watched.clear()

    # --- shutdown ---------------------------------------------------------------------------

    async def close(self, timeout: float = 10.0) -> None:
        """Orderly stop: send Shutdown, wait for the ranks to exit, unlink the rings.

        Idempotent; requests still pending fail with WorkerDied.
        """
        if self._teardown_task is None and self._dead is None and self._req is not None:
            self._stopping = True
            try:
                await asyncio.wait_for(self.submit(Shutdown(batch_id=_SHUTDOWN_BATCH_ID)), timeout)
                graceful = True
            except Exception:  # noqa: BLE001 - best-effort cleanup
                graceful = False
            self._start_teardown(kill=not graceful, grace=timeout)
        if self._teardown_task is not None:
            await asyncio.shield(self._teardown_task)

    def _start_teardown(self, kill: bool, grace: float = 5.0) -> asyncio.Task:
        if self._teardown_task is None:
            self._closed = True
            self._teardown_task = asyncio.ensure_future(self._teardown(kill, grace))
        return self._teardown_task

    async def _teardown(self, kill: bool, grace: float) -> None:
        self._unwatch()
        loop = asyncio.get_running_loop()
        procs = list(self._procs)

        def reap() -> None:
            for p in procs:
                if kill and p.is_alive():
                    p.kill()
                p.join(grace)
                if p.is_alive():
                    p.kill()
                    p.join(1.0)

        await loop.run_in_executor(None, reap)
        err = WorkerDied(self._dead or "the worker was shut down")
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()
        self._order.clear()
        for ch in (self._req, self._resp):
            if ch is not None:
                ch.close()
        if self._resp_ring is not None:
            self._resp_ring.close()
        for c in self._conns:
            c.close()
        if self._doorbell is not None:
            self._doorbell.close()
            self._doorbell = None
        self._conns.clear()
        if self._dist_dir is not None:
            shutil.rmtree(self._dist_dir, ignore_errors=True)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def ring_names(self) -> tuple[str, str]:
        """The shared-memory segment names (request ring, response ring)."""
        return (self.spec.request_ring, self.spec.response_ring)


__all__ = ["WorkerClient", "WorkerDied", "WorkerSpec", "WorkerStartError"]
