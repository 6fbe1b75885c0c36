"""The wasmtime sandbox: one engine, one linker, one guest instance per inferlet process.

* Engine: epoch interruption on; a ticker thread advances the epoch every `tick_s`, and every
  guest yields to the event loop each `yield_ticks` epochs (fair sharing of the one thread); a
  wall-time limit, when set, cancels a guest that runs too long.
* Limits from [runtime]: `wasm_max_memory_mb` caps each guest's linear memory,
  `wasm_max_instances` caps live guests, `allow_fs` gives a per-process `/scratch` under
  `fs_scratch_dir`, `allow_network` lets WASI sockets out (deny by default otherwise).
* Guests run as coroutines of the controller's loop (`mode="fiber"`): an import that waits
  on the engine parks the guest's wasmtime fiber, so every guest waiting on a forward pass can
  join one batch; they start one at a time (`LaunchGate`). `mode="thread"` is the fallback:
  one OS thread per guest, each host call hops to the loop and blocks its thread (same
  imports, same results, worse batching).
  `PIE_SANDBOX_MODE=thread` selects it when the sandbox is built with no explicit mode.

Called by `pie/processes.py` (`Sandbox.start`, `Sandbox.run`, `Sandbox.close`).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
import shutil
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wasmtime import Config, Engine, Store, WasiConfig, WasmtimeError
from wasmtime import _ffi as ffi
from wasmtime.component import Component, Linker

from pie.sandbox import abi, runner
from pie.sandbox.host import IFACE, IMPORTS, PARKING, GuestState

log = logging.getLogger(__name__)


# The engine configuration below (epoch interruption on, defaults otherwise); compiled
# artifacts are cached per key, so change it whenever the configuration changes.
ENGINE_KEY = "epoch1"


class SandboxError(RuntimeError):
    """An inferlet could not be started or was stopped by a limit; the message says which."""


@dataclass
class RuntimePolicy:
    """The [runtime] keys the sandbox uses (any object with these attributes works)."""

    wasm_max_instances: int = 1000
    wasm_max_memory_mb: int = 4096
    allow_fs: bool = False
    fs_scratch_dir: str = ""
    allow_network: bool = True
    network_allowed_hosts: tuple[str, ...] = ("*",)
    wasm_warm_slots: int = 100

    @classmethod
    def of(cls, cfg: Any) -> RuntimePolicy:
        if cfg is None:
            return cls()
        if isinstance(cfg, dict):
            get = cfg.get
        else:
            def get(k, d=None):
                return getattr(cfg, k, d)
        d = cls()
        return cls(
            wasm_max_instances=int(get("wasm_max_instances", d.wasm_max_instances)),
            wasm_max_memory_mb=int(get("wasm_max_memory_mb", d.wasm_max_memory_mb)),
            allow_fs=bool(get("allow_fs", d.allow_fs)),
            fs_scratch_dir=str(get("fs_scratch_dir", "") or ""),
            allow_network=bool(get("allow_network", d.allow_network)),
            network_allowed_hosts=tuple(get("network_allowed_hosts", d.network_allowed_hosts)),
            wasm_warm_slots=int(get("wasm_warm_slots", d.wasm_warm_slots)),
        )


@dataclass(slots=True)
class _Warm:
    """An idle guest instance kept for the next launch of the same program by the same user."""

    store: Store
    run: Any  # the instance's exported `run`
    output: tuple  # its stdout/stderr writers (`_Lines`), re-pointed at each process
    next_handle: int  # handle numbers continue, so a stale one never names a new object
    idle_since: float


class WarmPool:
    """Idle instances by (component, program, user), at most `slots` in all (oldest go first).

    A launch takes an idle instance of its own program and user when there is one; the
    instance then skips instantiation and the page faults of a fresh copy of the runner's
    memory. Only instances whose `run` returned are kept (not one that trapped, was stopped or
    timed out), never for more than `ttl_s` idle, and each run starts with a fresh loop,
    fresh program modules and fresh host-side state.
    """

    def __init__(self, slots: int, ttl_s: float = 300.0) -> None:
        self.slots = slots
        self.ttl_s = ttl_s
        self._idle: dict[tuple, list[_Warm]] = {}
        self.count = 0
        self.hits = 0
        self.misses = 0

    def take(self, key: tuple, now: float) -> _Warm | None:
        self._expire(now)
        ents = self._idle.get(key)
        if not ents:
            self.misses += 1
            return None
        warm = ents.pop()
        if not ents:
            del self._idle[key]
        self.count -= 1
        self.hits += 1
        return warm

    def put(self, key: tuple, warm: _Warm) -> None:
        if self.slots <= 0:
            return
        self._idle.setdefault(key, []).append(warm)  # each list is oldest first
        self.count += 1
        while self.count > self.slots:  # drop the longest idle one
            self._drop_oldest(min(self._idle, key=lambda k: self._idle[k][0].idle_since))

    def _expire(self, now: float) -> None:
        for key in list(self._idle):
            while key in self._idle and now - self._idle[key][0].idle_since > self.ttl_s:
                self._drop_oldest(key)

    def _drop_oldest(self, key: tuple) -> None:
        ents = self._idle[key]
        ents.pop(0)
        if not ents:
            del self._idle[key]
        self.count -= 1

    def clear(self) -> None:
        self._idle.clear()
        self.count = 0


def python_program(payload: bytes, entry: str = "main", call: str = "input",
                   ) -> tuple[list[tuple[str, bytes]], tuple[str, str]]:
    """(files, (module:function, call style)) for a `.py` source or a zip of modules."""
    if call not in ("input", "kwargs"):
        raise SandboxError(f'[runtime] call must be "input" or "kwargs", not {call!r}')
    if payload[:4] != b"PK\x03\x04":
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            raise SandboxError("a Python inferlet must be UTF-8 source or a zip") from None
        module, _, fn = entry.rpartition(":")
        return [("main.py", payload)], (f"{module or 'main'}:{fn or 'main'}", call)
    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as z:
            files = [(n, z.read(n)) for n in z.namelist()
                     if n.endswith(".py") and not n.startswith(("/", "..")) and ".." not in n]
    except zipfile.BadZipFile:
        raise SandboxError("the inferlet archive is not a valid zip file") from None
    tops = {n.split("/")[0] for n, _ in files}
    if len(tops) == 1 and all("/" in n for n, _ in files):  # zipped from the directory
        prefix = next(iter(tops)) + "/"
        if not any(n == prefix + "__init__.py" for n, _ in files):
            files = [(n[len(prefix):], d) for n, d in files]
    names = {n for n, _ in files}
    module, _, fn = entry.rpartition(":")
    if not module:
        if "main.py" in names:
            module = "main"
        else:
            top = [n[:-3] for n in names if "/" not in n]
            if len(top) != 1:
                raise SandboxError('cannot tell which module holds the entry; set [runtime] '
                                   'entry = "module:function" in Pie.toml')
            module = top[0]
    return files, (f"{module}:{fn or 'main'}", call)


_at_gates = [0]  # guests of every sandbox on this loop waiting at their launch gate


def pending_guests() -> int:
    """Guests that may submit a forward pass any moment: running, ready to run, or waiting
    at a launch gate to start (a burst of launches starts one guest at a time, so most of it
    waits there). The schedulers' `pending_clients` probe (see `Scheduler._complete_cohort`).
    """
    return abi.runnable_guests() + _at_gates[0]


class LaunchGate:
    """Lets `slots` guests start at a time; a start ends at the guest's first park or end.

    Guests share one event-loop thread and yield to each other every epoch tick, so a burst of
    launches started together would advance in turns and reach their first forward pass all
    at about the same time, the end of the burst, leaving the worker idle until then. Through
    the gate the first guest reaches its first pass after one launch and the worker starts on
    it while the next guests start. Guests already running still get their turns at every
    tick. A start that has not parked after `budget_s` (a guest computing before its first
    pass) lets the next one in anyway.
    """

    def __init__(self, slots: int = 1, budget_s: float = 0.1) -> None:
        self.slots = slots
        self.budget_s = budget_s
        self.waiting = 0  # guests waiting for a slot
        self._sem: asyncio.Semaphore | None = None

    async def enter(self) -> Callable[[], None]:
        """Wait for a slot; returns the idempotent `leave` (also called after `budget_s`)."""
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.slots)
        self.waiting += 1
        _at_gates[0] += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
            _at_gates[0] -= 1
        sem, left = self._sem, False

        def leave() -> None:
            nonlocal left
            if not left:
                left = True
                timer.cancel()
                sem.release()

        timer = asyncio.get_running_loop().call_later(self.budget_s, leave)
        return leave


class Sandbox:
    def __init__(self, runtime_cfg: Any = None, *, python_snapshot: bool = True,
                 mode: str | None = None, tick_s: float = 0.01, yield_ticks: int = 1,
                 wall_time_limit_s: float | None = None,
                 generic_imports: frozenset[str] = frozenset()) -> None:
        """`generic_imports` registers those imports through wasmtime-py's generic trampoline
        instead of the pre-bound converters (only to measure the difference)."""
        mode = mode or os.environ.get("PIE_SANDBOX_MODE", "fiber")
        if mode not in ("fiber", "thread"):
            raise ValueError('the sandbox mode (PIE_SANDBOX_MODE) must be "fiber" or "thread"')
        self.policy = RuntimePolicy.of(runtime_cfg)
        self.python_snapshot = python_snapshot
        self.mode = mode
        self.tick_s = tick_s
        self.yield_ticks = yield_ticks
        self.wall_time_limit_s = wall_time_limit_s
        self.generic_imports = generic_imports
        self.active = 0
        self._engine: Engine | None = None
        self._linker: Linker | None = None
        self._runner: Component | None = None
        self._components: dict[str, Component] = {}
        self._prepared: dict[tuple, tuple] = {}  # program sources, split once per payload
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._sdk_files = runner.sdk_sources() if not python_snapshot else []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.launch_gate = LaunchGate()
        # a reused instance would keep the first process's /scratch preopen
        self.warm = WarmPool(0 if self.policy.allow_fs or mode != "fiber"
                             else self.policy.wasm_warm_slots)

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def engine_key(self) -> str:
        """Names the engine configuration compiled artifacts are valid for."""
        return ENGINE_KEY

    async def start(self, progress: Callable[[str], None] = log.info) -> None:
        if self._engine is not None:
            return
        self._loop = asyncio.get_running_loop()
        cfg = Config()
        cfg.epoch_interruption = True
        self._engine = Engine(cfg)
        self._runner = await asyncio.to_thread(runner.load, self._engine, self.engine_key, progress)
        self._linker = self._make_linker()
        self._ticker = threading.Thread(target=self._tick, name="pie-epoch", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        engine = self._engine
        while not self._stop.wait(self.tick_s):
            engine.increment_epoch()

    def close(self) -> None:
        self.warm.clear()
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=1)
            self._ticker = None

    def __enter__(self) -> Sandbox:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _make_linker(self) -> Linker:
        linker = Linker(self._engine)
        linker.add_wasip2()
        by_iface: dict[str, list] = {}
        for iface, name, fn, params, result, waits in IMPORTS:
            by_iface.setdefault(iface, []).append((name, fn, params, result, waits))
        with linker.root() as root:
            for iface, funcs in by_iface.items():
                with root.add_instance(IFACE.format(iface)) as inst:
                    for name, fn, params, result, waits in funcs:
                        if name in self.generic_imports and not waits:
                            inst.add_func(name, _generic(fn))
                        elif self.mode == "fiber":
                            abi.add_func(inst, name, fn, params, result, is_async=waits,
                                         parks=name in PARKING)
                        else:
                            abi.add_func(inst, name, _hop(fn), params, result)
        return linker

    # --- components ------------------------------------------------------------------------

    async def load_component(self, kind: str, payload: bytes, digest: str = "") -> Component:
        """Like `component_for`, compiling a new component off the event loop."""
        if kind == "python" or (digest or hashlib.sha256(payload).hexdigest()) in self._components:
            return self.component_for(kind, payload, digest)
        return await asyncio.to_thread(self.component_for, kind, payload, digest)

    def component_for(self, kind: str, payload: bytes, digest: str = "") -> Component:
        if kind == "python":
            return self._runner
        key = digest or hashlib.sha256(payload).hexdigest()
        comp = self._components.get(key)
        if comp is None:
            from pie.paths import cache_dir

            path = cache_dir() / "components" / f"{key[:32]}-{self.engine_key}.cwasm"
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                comp = Component.deserialize_file(self._engine, str(path))
            else:
                try:
                    comp = Component(self._engine, payload)
                except WasmtimeError as e:
                    raise SandboxError(f"the program is not a valid component: "
                                       f"{str(e).splitlines()[0]}") from None
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(comp.serialize())
                os.replace(tmp, path)
            self._components[key] = comp
        return comp

    # --- running ---------------------------------------------------------------------------

    def _wasi(self, state: GuestState) -> tuple[WasiConfig, Path | None]:
        w = WasiConfig()
        out, err = _Lines(state, "stdout"), _Lines(state, "stderr")
        state.output = (out, err)
        w.stdout_custom = out.write
        w.stderr_custom = err.write
        scratch = None
        if self.policy.allow_fs:
            root = Path(self.policy.fs_scratch_dir or os.path.join(
                os.environ.get("TMPDIR", "/tmp"), "pie"))
            scratch = root / state.pid
            scratch.mkdir(parents=True, exist_ok=True)
            w.preopen_dir(str(scratch), "/scratch")
        if self.policy.allow_network and "*" in self.policy.network_allowed_hosts:
            # WASI sockets have no per-connection hook here: only the unrestricted
            # allow-list can be honoured, any narrower list keeps the network closed.
            ffi.wasi_config_inherit_network(w.ptr())
            ffi.wasi_config_allow_ip_name_lookup(w.ptr(), True)
        return w, scratch

    def prepare_python(self, state: GuestState, payload: bytes, entry: str, call: str) -> None:
        key = (hashlib.sha256(payload).digest(), entry, call)
        prepared = self._prepared.get(key)
        if prepared is None:
            prepared = python_program(payload, entry, call)
            if len(self._prepared) >= 256:
                self._prepared.pop(next(iter(self._prepared)))
            self._prepared[key] = prepared
        state.files, state.entry = prepared
        state.sdk_files = self._sdk_files
        state.program_key = key

    async def run(self, state: GuestState, component: Component, input: str) -> tuple[bool, str]:
        """Instantiate and run a guest to the end: (ok, return text or error message)."""
        if self._engine is None:
            raise SandboxError("the sandbox is not started")
        if self.active >= self.policy.wasm_max_instances:
            raise SandboxError(f"too many inferlets are running (wasm_max_instances = "
                               f"{self.policy.wasm_max_instances}); wait or raise the limit")
        self.active += 1
        leave = None
        key = (id(component), state.program_key, state.user)
        warm = self.warm.take(key, time.monotonic()) if self.warm.slots > 0 else None
        scratch = None
        if warm is None:
            wasi, scratch = self._wasi(state)
            store = Store(self._engine, data=state)
        else:
            store = warm.store
            abi.rebind(store, state)
            for lines in warm.output:
                lines.state = state
            state.output = warm.output
            state.skip_handles(warm.next_handle)
        try:
            if warm is None:
                store.set_wasi(wasi)
                store.set_limits(memory_size=self.policy.wasm_max_memory_mb << 20)
            if self.mode == "fiber":
                if warm is None:
                    abi.epoch_yield_every(store, self.yield_ticks)
                # waiting at the gate is not running: it does not count against the limit
                leave = state.on_park = await self.launch_gate.enter()
                coro = self._run_fiber(store, component, input, key, warm)
            else:
                state.loop = asyncio.get_running_loop()
                # a thread cannot be cancelled: the wall-time limit becomes an epoch trap
                limit = self.wall_time_limit_s
                store.set_epoch_deadline(max(1, int(limit / self.tick_s)) if limit else 1 << 62)
                coro = asyncio.to_thread(self._run_thread, store, component, input)
            if self.wall_time_limit_s is not None:
                try:
                    return await asyncio.wait_for(coro, self.wall_time_limit_s)
                except TimeoutError:
                    return False, (f"the inferlet ran longer than its wall-time limit "
                                   f"({self.wall_time_limit_s:g} s) and was stopped")
            return await coro
        except WasmtimeError as e:
            return False, self._trap_message(e)
        finally:
            if leave is not None:  # a guest that never parked still holds its slot
                leave()
            self.active -= 1
            for lines in getattr(state, "output", ()):
                if lines.state is state:  # not yet handed to the next process
                    lines.flush()
            state.close()
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)

    async def _run_fiber(self, store: Store, component: Component, input: str, key: tuple,
                         warm: _Warm | None):
        if warm is None:
            inst = await abi.instantiate_async(self._linker, store, component)
            run = inst.get_func(store, "run")
            if run is None:
                raise SandboxError(
                    "the component does not export run(input) -> result<string, string>")
        else:
            run = warm.run
        result = await abi.call_run_async(store, run, input)
        # `run` returned (with a value or the guest's own error): the instance is whole
        state = store.data()
        if self.warm.slots > 0 and not state.closed:
            for lines in state.output:  # what this process printed is its own
                lines.flush()
            self.warm.put(key, _Warm(store, run, state.output, state.next_handle_number(),
                                     time.monotonic()))
        return result

    def _run_thread(self, store: Store, component: Component, input: str):
        abi.current.state = store.data()
        try:
            inst = self._linker.instantiate(store, component)
            run = inst.get_func(store, "run")
            res = run(store, input)
            return res.tag == "ok", str(res.payload)
        finally:
            abi.current.state = None

    def _trap_message(self, e: WasmtimeError) -> str:
        text = str(e)
        first = text.strip().splitlines()[0] if text.strip() else "trap"
        if "minimum size" in text and "exceeds memory limits" in text:
            return (f"wasm_max_memory_mb = {self.policy.wasm_max_memory_mb} is below what the "
                    f"inferlet needs to start (the Python runner needs about 16 MiB); raise it")
        if "memory" in text and ("limit" in text or "grow" in text or "unreachable" in text):
            return (f"the inferlet ran out of memory (wasm_max_memory_mb = "
                    f"{self.policy.wasm_max_memory_mb}): {first}")
        if "unreachable" in text:
            return (f"the inferlet crashed (likely out of memory; wasm_max_memory_mb = "
                    f"{self.policy.wasm_max_memory_mb}): {first}")
        return f"the inferlet trapped: {first}"


class _Lines:
    """Guest stdout/stderr as events of whole lines (the rest when the guest ends)."""

    def __init__(self, state: GuestState, kind: str) -> None:
        self.state, self.kind = state, kind
        self.buf = bytearray()

    def write(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.rfind(b"\n")
        if end >= 0:
            chunk, self.buf = bytes(self.buf[: end + 1]), self.buf[end + 1:]
            self.state.emit(self.kind, chunk.decode("utf-8", "replace"))

    def flush(self) -> None:
        if self.buf:
            chunk, self.buf = bytes(self.buf), bytearray()
            self.state.emit(self.kind, chunk.decode("utf-8", "replace"))


def _generic(fn: Callable) -> Callable:
    def call(ctx: Any, *args: Any) -> Any:
        return fn(abi.state_of(ctx._context()), *args)

    return call


def _hop(fn: Callable) -> Callable:
    """Thread mode: run a host function on the event loop and block the guest's thread."""

    def call(state: GuestState, *args: Any) -> Any:
        if state.closed:  # terminated: trap the guest at its next host call
            raise SandboxError("the inferlet was stopped")

        async def on_loop():
            r = fn(state, *args)
            if asyncio.isfuture(r) or asyncio.iscoroutine(r):
                r = await r
            return r

        return asyncio.run_coroutine_threadsafe(on_loop(), state.loop).result()

    return call
