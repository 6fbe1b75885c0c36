"""The controller: boots a whole engine from a `PieConfig` and shuts it down in order.

    engine = Engine(cfg)
    await engine.start(progress=print)   # workers, tokenizers, schedulers, processes, server
    engine.port, engine.url, engine.internal_token
    await engine.stop()                  # idempotent

Boot order (each step undone in reverse on failure or stop):

1. the program store and, with auth on, the keystore;
2. per `[[model]]`: one worker process group per data-parallel device group
   (`pie.ipc.client.WorkerClient`), the tokenizer (loaded here: the controller needs text <-> ids
   but never the weights), and one `pie.sched.Scheduler` per worker; several replicas of a
   model are joined by `ReplicaRouter`, which pins each process to one replica;
3. the process manager (`pie.processes.ProcessManager`, which owns the inferlet sandbox);
4. the WebSocket server (`pie.server.Server`).

`run_forever` is `pie serve`: it runs an engine on a uvloop loop until SIGINT or SIGTERM, then
stops workers (their shared memory is unlinked by the worker clients) and returns 0.
Called by `pie_cli.serve`, `pie_cli.run` and the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any, Self

import msgspec

from pie.auth import Keystore, new_internal_token
from pie.config import ModelConfig, PieConfig, controller_nice
from pie.programs import ProgramStore
from pie.server import Server, ServerOptions

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


def _worker_specs(model: ModelConfig) -> list[Any]:
    """One `WorkerSpec` per data-parallel device group of `model`."""
    from pie.ipc import spec as spec_module

    if hasattr(spec_module, "worker_specs"):
        return list(spec_module.worker_specs(model))
    drv = model.driver
    groups = spec_module.device_groups(list(drv.device), drv.tensor_parallel_size)
    return [
        spec_module.WorkerSpec(
            model=model.hf_repo,
            driver=drv.type,
            devices=tuple(group),
            dtype=drv.activation_dtype,
            options=dict(drv.options),
            seed=drv.random_seed,
            name=model.name,
        )
        for group in groups
    ]


class _ProgressHandler(logging.Handler):
    def __init__(self, say: Progress):
        super().__init__(logging.INFO)
        self.say = say

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.say(record.getMessage())


@contextlib.contextmanager
def _forward_logs(names: tuple[str, ...], say: Progress):
    """Show the INFO lines of some loggers as boot progress (e.g. the runner build)."""
    handler = _ProgressHandler(say)
    loggers = [logging.getLogger(n) for n in names]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        if lg.getEffectiveLevel() > logging.INFO:  # shown as progress only, not logged twice
            lg.setLevel(logging.INFO)
            lg.propagate = False
    try:
        yield
    finally:
        for lg, (level, propagate) in zip(loggers, saved, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate


class ReplicaRouter:
    """One model served by several data-parallel schedulers, as one `EngineService`.

    A process is pinned to the replica with the fewest processes when it registers; every call
    naming that pid goes there (contexts and snapshots live on that replica).
    """

    def __init__(self, replicas: list[Any]):
        assert replicas
        self.replicas = replicas
        self.info = replicas[0].info
        self.tokenizer = replicas[0].tokenizer
        self._pinned: dict[str, Any] = {}
        self._rr = itertools.count()

    async def register_process(self, pid: str, user: str, token_limit: int | None = None) -> None:
        load = {id(r): 0 for r in self.replicas}
        for r in self._pinned.values():
            load[id(r)] += 1
        start = next(self._rr) % len(self.replicas)
        order = self.replicas[start:] + self.replicas[:start]
        replica = min(order, key=lambda r: load[id(r)])
        self._pinned[pid] = replica
        try:
            await replica.register_process(pid, user, token_limit)
        except BaseException:
            self._pinned.pop(pid, None)
            raise

    def unregister_process(self, pid: str) -> None:
        replica = self._pinned.pop(pid, None)
        if replica is not None:
            replica.unregister_process(pid)

    def stats(self) -> dict:
        per = [r.stats() for r in self.replicas]
        return {"replicas": len(per), **{f"replica{i}": s for i, s in enumerate(per)}}

    def __getattr__(self, name: str) -> Any:
        # every other EngineService method takes the pid first
        def call(pid: str, *args: Any, **kwargs: Any) -> Any:
            replica = self._pinned.get(pid)
            if replica is None:
                from pie.sched.api import EngineError

                raise EngineError(f"process {pid} is not registered with model {self.info.name!r}")
            return getattr(replica, name)(pid, *args, **kwargs)

        return call


class Engine:
    """A running Pie engine: every part of the controller process, started and stopped."""

    def __init__(
        self,
        cfg: PieConfig,
        *,
        host: str | None = None,
        port: int | None = None,
        auth_enabled: bool | None = None,
        engines: dict[str, Any] | None = None,
        process_manager_factory: Callable[[dict[str, Any]], Any] | None = None,
        programs: ProgramStore | None = None,
        keystore: Keystore | None = None,
    ):
        self.cfg = cfg
        self.host = host if host is not None else cfg.server.host
        self._port = port if port is not None else cfg.server.port
        self.auth_enabled = cfg.auth.enabled if auth_enabled is None else auth_enabled
        self.internal_token = new_internal_token()
        self.engines: dict[str, Any] = dict(engines) if engines is not None else {}
        self._build_engines = engines is None
        self._pm_factory = process_manager_factory
        self.programs = programs
        self.keystore = keystore
        self.workers: list[Any] = []
        self.schedulers: list[Any] = []
        self.processes: Any = None
        self.server: Server | None = None
        self._started = False
        self._niced: tuple[int, int] | None = None  # (thread id, niceness before start)

    # -- properties ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self.server.port if self.server is not None else self._port

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"ws://{host}:{self.port}"

    def stats(self) -> dict[str, dict]:
        out = {}
        for name, eng in self.engines.items():
            try:
                out[name] = eng.stats()
            except Exception as e:  # noqa: BLE001 - a dead worker must not break the status query
                out[name] = {"error": str(e)}
        return out

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, progress: Progress | None = None) -> None:
        """Boot every part; on failure, stop what was started and re-raise."""
        say = progress or (lambda msg: log.info("%s", msg))
        try:
            self.programs = self.programs or ProgramStore()
            if self.auth_enabled and self.keystore is None:
                self.keystore = Keystore.load()
            if self._build_engines:
                for model in self.cfg.models:
                    self.engines[model.name] = await self._start_model(model, say)
                # after the workers are spawned (they keep the priority they started with)
                self._lower_priority(controller_nice(self.cfg))
            say("starting the inferlet runtime")
            self.processes = self._make_process_manager()
            if hasattr(self.processes, "resolve_program"):  # inferlets launching inferlets
                self.processes.resolve_program = self.programs.get
            with _forward_logs(("pie.processes", "pie.sandbox"), say):
                await self.processes.start()  # may build and compile the Python runner once
            opts = ServerOptions(
                host=self.host,
                port=self._port,
                auth_enabled=self.auth_enabled,
                internal_token=self.internal_token,
                max_upload_mb=self.cfg.runtime.max_upload_mb,
            )
            self.server = Server(
                self.processes, self.programs, opts, keystore=self.keystore, stats=self.stats
            )
            await self.server.start()
        except BaseException:
            await self.stop()
            raise
        self._started = True
        _freeze_heap()
        say(f"serving on {self.url}")

    def _lower_priority(self, nice: int) -> None:
        """Add `nice` to this thread's niceness (`runtime.controller_nice`); undone by `stop`
        where the system allows raising a priority again."""
        if nice <= 0 or not hasattr(os, "setpriority"):
            return
        tid = threading.get_native_id()  # Linux: the priority of this thread only
        try:
            before = os.getpriority(os.PRIO_PROCESS, tid)
            os.setpriority(os.PRIO_PROCESS, tid, min(19, before + nice))
        except OSError as e:
            log.warning("could not lower the controller's priority (runtime.controller_nice = "
                        "%d): %s", nice, e)
            return
        self._niced = (tid, before)

    def _restore_priority(self) -> None:
        niced, self._niced = self._niced, None
        if niced is not None and niced[0] == threading.get_native_id():
            with contextlib.suppress(OSError):  # raising it again needs privileges
                os.setpriority(os.PRIO_PROCESS, niced[0], niced[1])

    def _make_process_manager(self) -> Any:
        if self._pm_factory is not None:
            return self._pm_factory(self.engines)
        from pie.processes import ProcessManager

        return ProcessManager(
            self.engines,
            self.cfg.runtime,
            python_snapshot=self.cfg.server.python_snapshot,
            max_concurrent_processes=self.cfg.server.max_concurrent_processes,
        )

    async def _start_model(self, model: ModelConfig, say: Progress) -> Any:
        from pie.ipc.client import WorkerClient
        from pie.model import load_tokenizer
        from pie.sandbox.sandbox import pending_guests
        from pie.sched.api import ModelInfo
        from pie.sched.scheduler import Scheduler

        drv = model.driver
        try:
            specs = _worker_specs(model)
        except ValueError as e:
            msg = str(e)
            raise ValueError(msg if model.name in msg else f"model {model.name!r}: {msg}") from None
        say(f"model {model.name}: loading the tokenizer of {model.hf_repo}")
        tokenizer_task = asyncio.create_task(asyncio.to_thread(load_tokenizer, model.hf_repo))
        replicas = []
        try:
            for i, spec in enumerate(specs):
                where = ", ".join(spec.devices)
                label = f"model {model.name}" + (f" replica {i}" if len(specs) > 1 else "")
                say(f"{label}: starting the {drv.type} worker on {where}")
                worker = await WorkerClient.start(
                    spec, on_progress=lambda msg, label=label: say(f"{label}: {msg}")
                )
                self.workers.append(worker)
                tokenizer = await tokenizer_task
                winfo = worker.info
                info = ModelInfo(
                    name=model.name,
                    arch=winfo.arch,
                    vocab_size=winfo.vocab_size,
                    page_size=winfo.page_size,
                    max_model_len=winfo.max_model_len,
                    eos_token_ids=tuple(tokenizer.eos_token_ids),
                    stop_token_ids=tuple(
                        getattr(tokenizer, "stop_token_ids", ()) or tokenizer.eos_token_ids
                    ),
                    bos_token_id=tokenizer.bos_token_id,
                )
                sched = Scheduler(
                    info,
                    tokenizer,
                    worker,
                    model.scheduler,
                    max_concurrent_processes=self.cfg.server.max_concurrent_processes,
                    pending_clients=pending_guests,
                )
                sched.start()
                self.schedulers.append(sched)
                replicas.append(sched)
                say(
                    f"{label}: ready ({winfo.arch}, {winfo.total_pages} KV pages of "
                    f"{winfo.page_size} tokens, {winfo.dtype} on {winfo.device})"
                )
        finally:
            if not tokenizer_task.done():
                tokenizer_task.cancel()
                with contextlib.suppress(BaseException):
                    await tokenizer_task
        return replicas[0] if len(replicas) == 1 else ReplicaRouter(replicas)

    async def stop(self) -> None:
        """Stop the server, the processes, the schedulers and the workers; idempotent."""
        steps: list[tuple[str, Callable[[], Any]]] = []
        if self.server is not None:
            steps.append(("server", self.server.close))
        if self.processes is not None:
            steps.append(("processes", self.processes.shutdown))
        for sched in reversed(self.schedulers):
            steps.append(("scheduler", sched.close))
        for worker in reversed(self.workers):
            steps.append(("worker", worker.close))
        self.server, self.processes = None, None
        self.schedulers, self.workers = [], []
        for what, step in steps:
            try:
                await step()
            except Exception:
                log.exception("error while stopping the %s", what)
        self._restore_priority()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


_frozen = False


def _freeze_heap() -> None:
    """Once per process, after the first boot: move what start-up built (imports, tokenizers,
    the runner) out of the cyclic collector's reach; a full collection would otherwise walk
    it again every time, stalling the event loop."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()


async def serve_until_signal(
    engine: Engine, progress: Progress | None = None, ready: Callable[[Engine], None] | None = None
) -> int:
    """Start `engine`, wait for SIGINT/SIGTERM, stop it; returns the exit code (0)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    try:
        start = asyncio.create_task(engine.start(progress))
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({start, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if start in done:
            start.result()  # raise a boot failure
            if ready is not None:
                ready(engine)
            await stopper
        else:  # interrupted while booting
            start.cancel()
            with contextlib.suppress(BaseException):
                await start
        if progress is not None:
            progress("shutting down")
        await engine.stop()
        return 0
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def run_forever(
    engine: Engine, progress: Progress | None = None, ready: Callable[[Engine], None] | None = None
) -> int:
    """`pie serve`: run `engine` on a uvloop loop until SIGINT/SIGTERM; returns 0."""
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    return runner(serve_until_signal(engine, progress, ready))


def with_overrides(cfg: PieConfig, **server: Any) -> PieConfig:
    """A copy of `cfg` with some `[server]` keys replaced (None values are ignored)."""
    changes = {k: v for k, v in server.items() if v is not None}
    if not changes:
        return cfg
    return msgspec.structs.replace(cfg, server=msgspec.structs.replace(cfg.server, **changes))
