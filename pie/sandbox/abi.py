"""Canonical-ABI plumbing: pre-bound value converters, host-function registration, and
driving guest calls from asyncio through wasmtime's C async API (a small ctypes layer).

wasmtime-py's generic component trampoline re-reads the function type and converts every
value through generic Python on each call (12-30 us). Here every import is declared once with
its WIT signature (`Ty` objects mirroring `sdk/wit/`), and the callback converts arguments and
results with closures chosen at declaration time: scalars in place at their address, short
lists with `struct`, long numeric lists through numpy views of the C value array.

`add_func` registers an import either way:

* sync (the default): one raw C callback per import; the host function returns the value.
* `is_async=True`: wasmtime's fiber-async callback; the host function may return an
  awaitable, the guest stays parked on its fiber until it resolves, and the driver
  (`instantiate_async`, `call_run_async`) awaits it on the event loop. This is how a guest
  waiting on a forward pass lets the others run, so all of them can join one batch.
  `runnable_guests()` counts the guests that are not parked, for batchers.

Errors: a host function raises `GuestError` to return `err(message)` to the guest when the
import's result is `result<_, string>`; any other exception traps that guest only.

Wasmtime pitfall handled here: `wasmtime_context_epoch_deadline_async_yield_and_update` is
declared by wasmtime-py with a return value it does not have (calling it as bound crashes).

Called by `pie/sandbox/sandbox.py` (registration, driving) with the table of
`pie/sandbox/host.py`.
"""
from __future__ import annotations

import asyncio
import ctypes
import functools
import itertools
import struct
import threading
from collections.abc import Callable
from ctypes import POINTER, byref
from typing import Any

import numpy as np
from wasmtime import WasmtimeError
from wasmtime import _ffi as ffi
from wasmtime import _value as _wv

VAL_SIZE = ctypes.sizeof(ffi.wasmtime_component_val_t)
_K = {name: getattr(ffi, f"WASMTIME_COMPONENT_{name}").value for name in (
    "BOOL", "S32", "U8", "U32", "S64", "U64", "F32", "F64", "STRING", "LIST", "RECORD",
    "TUPLE", "OPTION", "RESULT")}

# `wasmtime_context_epoch_deadline_async_yield_and_update` returns nothing in this build;
# wasmtime-py declares an error pointer, and reading it crashes the process.
_yield_and_update = ffi.dll.wasmtime_context_epoch_deadline_async_yield_and_update
_yield_and_update.restype = None
_yield_and_update.argtypes = [POINTER(ffi.wasmtime_context_t), ctypes.c_uint64]


def epoch_yield_every(store: Any, ticks: int) -> None:
    """Make the store's guest yield to the event loop every `ticks` epoch increments."""
    store.set_epoch_deadline(ticks)
    _yield_and_update(store._context(), ticks)


class GuestError(Exception):
    """A refusal returned to the guest as `err(message)`; the message is for the author."""


_VAL = ffi.wasmtime_component_val_t


class Ty:
    """A WIT value type with its converters bound once.

    `lift`/`lower` work on a `wasmtime_component_val_t` struct; `lift_at`/`lower_at` on its
    address (scalars read and write the 32-byte value directly, everything else goes through
    a struct view).
    """

    __slots__ = ("lift", "lift_at", "lower", "lower_at", "name")

    def __init__(self, name: str, lift: Callable, lower: Callable,
                 lift_at: Callable | None = None, lower_at: Callable | None = None) -> None:
        self.name = name
        self.lift = lift  # C value -> Python (takes ownership of nested allocations)
        self.lower = lower  # (Python, val struct) -> None
        self.lift_at = lift_at or (lambda a: lift(_VAL.from_address(a)))
        self.lower_at = lower_at or (lambda v, a: lower(v, _VAL.from_address(a)))

    def __repr__(self) -> str:
        return self.name


_FMT = {"U32": "<I", "S32": "<i", "U64": "<Q", "S64": "<q", "F32": "<f", "F64": "<d",
        "BOOL": "<?"}


def _scalar(kind: str, field: str, check: Callable[[Any], Any]) -> Ty:
    k = _K[kind]
    fmt = _FMT[kind]
    size = struct.calcsize(fmt)
    head = struct.Struct("<B7x" + fmt[1:])
    unpack = struct.Struct(fmt).unpack
    string_at, memmove = ctypes.string_at, ctypes.memmove

    def lift(c):
        return getattr(c.of, field)

    def lower(v, c):
        c.kind = k
        setattr(c.of, field, check(v))

    def lift_at(addr):
        return unpack(string_at(addr + 8, size))[0]

    def lower_at(v, addr):
        data = head.pack(k, check(v))
        memmove(addr, data, len(data))

    return Ty(kind.lower(), lift, lower, lift_at, lower_at)


def _u32(v: Any) -> int:
    v = int(v)
    if not 0 <= v < 1 << 32:
        raise OverflowError(f"{v} does not fit in u32")
    return v


U32 = _scalar("U32", "u32", _u32)
S32 = _scalar("S32", "s32", int)
U64 = _scalar("U64", "u64", int)
S64 = _scalar("S64", "s64", int)
F32 = _scalar("F32", "f32", lambda v: ctypes.c_float(v).value)  # out of range -> inf
F64 = _scalar("F64", "f64", float)
BOOL = _scalar("BOOL", "boolean", bool)


def _lift_str(c):
    s = ffi.to_str(c.of.string)
    ffi.wasm_byte_vec_delete(byref(c.of.string))
    return s


def _lower_str(v, p):
    c = p
    c.kind = _K["STRING"]
    c.of.string = ffi.str_to_capi(v)


STRING = Ty("string", _lift_str, _lower_str)


def _dense(elem_kind: str, dtype: str) -> Ty:
    """list<u8|u32|f32>: bulk copies through a numpy view of the value array."""
    k_elem = _K[elem_kind]
    dt = np.dtype(dtype)
    stride = VAL_SIZE // dt.itemsize
    offset = 8 // dt.itemsize  # the payload sits 8 bytes into each 32-byte value
    as_bytes = dtype == "u1"

    small_unpack = struct.Struct("<8x" + dt.str[1:].replace("u1", "B").replace("u4", "I")
                                 .replace("f4", "f") + f"{VAL_SIZE - 8 - dt.itemsize}x")
    small_pack = struct.Struct("<B7x" + small_unpack.format[3:])
    string_at, memmove = ctypes.string_at, ctypes.memmove

    def lift(c):
        lst = c.of.list
        n = lst.size
        if n == 0:
            out = b"" if as_bytes else []
        elif n <= 64 and not as_bytes:  # small lists: struct beats numpy's set-up cost
            addr = ctypes.addressof(lst.data.contents)
            out = [v for (v,) in small_unpack.iter_unpack(string_at(addr, n * VAL_SIZE))]
        else:
            buf = (ctypes.c_uint8 * (n * VAL_SIZE)).from_address(ctypes.addressof(lst.data.contents))
            arr = np.frombuffer(buf, dt)[offset::stride]
            out = arr.tobytes() if as_bytes else arr.tolist()
        ffi.wasmtime_component_vallist_delete(byref(lst))
        c.kind = _K["BOOL"]  # ownership taken
        return out

    def lower(v, p):
        if not as_bytes and len(v) <= 64:
            n = len(v)
            raw = ffi.wasmtime_component_vallist_t()
            ffi.wasmtime_component_vallist_new_uninit(raw, n)
            if n:
                data = b"".join([small_pack.pack(k_elem, x) for x in v])
                memmove(ctypes.addressof(raw.data.contents), data, len(data))
            p.kind = _K["LIST"]
            p.of.list = raw
            return
        if as_bytes:
            arr = np.frombuffer(bytes(v), np.uint8)
        else:
            arr = np.asarray(v, dtype=dt)
        n = len(arr)
        raw = ffi.wasmtime_component_vallist_t()
        ffi.wasmtime_component_vallist_new_uninit(raw, n)
        if n:
            buf = (ctypes.c_uint8 * (n * VAL_SIZE)).from_address(ctypes.addressof(raw.data.contents))
            view = np.frombuffer(buf, np.uint8).reshape(n, VAL_SIZE)
            view[:, 0] = k_elem
            view[:, 8:8 + dt.itemsize] = arr.astype(dt, copy=False).view(np.uint8).reshape(n, -1)
        c = p
        c.kind = _K["LIST"]
        c.of.list = raw

    return Ty(f"list<{elem_kind.lower()}>", lift, lower)


BYTES = _dense("U8", "u1")
LIST_U32 = _dense("U32", "<u4")
LIST_F32 = _dense("F32", "<f4")


def LIST(elem: Ty) -> Ty:
    if elem is U32:
        return LIST_U32
    if elem is F32:
        return LIST_F32
    el_lift, el_lower = elem.lift, elem.lower
    k_bool = _K["BOOL"]

    def lift(c):
        lst = c.of.list
        out = []
        try:
            for i in range(lst.size):
                e = lst.data[i]
                out.append(el_lift(e))
                e.kind = k_bool
        finally:
            ffi.wasmtime_component_vallist_delete(byref(lst))
            c.kind = k_bool
        return out

    def lower(v, p):
        v = list(v)
        raw = ffi.wasmtime_component_vallist_t()
        ffi.wasmtime_component_vallist_new_uninit(raw, len(v))
        for i, e in enumerate(v):
            el_lower(e, raw.data[i])
        c = p
        c.kind = _K["LIST"]
        c.of.list = raw

    return Ty(f"list<{elem.name}>", lift, lower)


def TUPLE(*elems: Ty) -> Ty:
    lifts = [e.lift for e in elems]
    lowers = [e.lower for e in elems]
    k_bool = _K["BOOL"]

    def lift(c):
        tup = c.of.tuple
        out = []
        try:
            for i, f in enumerate(lifts):
                e = tup.data[i]
                out.append(f(e))
                e.kind = k_bool
        finally:
            ffi.wasmtime_component_valtuple_delete(byref(tup))
            c.kind = k_bool
        return tuple(out)

    def lower(v, p):
        if len(v) != len(lowers):
            raise TypeError(f"expected a {len(lowers)}-tuple")
        raw = ffi.wasmtime_component_valtuple_t()
        ffi.wasmtime_component_valtuple_new_uninit(raw, len(lowers))
        for i, (f, e) in enumerate(zip(lowers, v)):
            f(e, raw.data[i])
        c = p
        c.kind = _K["TUPLE"]
        c.of.tuple = raw

    return Ty("tuple<" + ", ".join(e.name for e in elems) + ">", lift, lower)


def RECORD(*fields: tuple[str, Ty]) -> Ty:
    """Records cross as tuples of their fields, in declaration order."""
    lifts = [t.lift for _, t in fields]
    k_bool = _K["BOOL"]

    def lift(c):
        rec = c.of.record
        out = []
        try:
            for i, f in enumerate(lifts):
                e = rec.data[i].val
                out.append(f(e))
                e.kind = k_bool
        finally:
            ffi.wasmtime_component_valrecord_delete(byref(rec))
            c.kind = k_bool
        return tuple(out)

    def lower(v, p):
        raise NotImplementedError("records are only passed from guest to host")

    return Ty("record{" + ", ".join(n for n, _ in fields) + "}", lift, lower)


def OPTION(inner: Ty) -> Ty:
    k_bool = _K["BOOL"]

    def lift(c):
        ptr = c.of.option
        if not ptr:
            return None
        v = inner.lift(ptr.contents)
        ptr.contents.kind = k_bool
        ffi.wasmtime_component_val_delete(ptr)
        c.of.option = None
        return v

    def lower(v, p):
        c = p
        c.kind = _K["OPTION"]
        if v is None:
            c.of.option = None
        else:
            raw = ffi.wasmtime_component_val_t()
            inner.lower(v, raw)
            c.of.option = ffi.wasmtime_component_val_new(byref(raw))

    return Ty(f"option<{inner.name}>", lift, lower)


class Err:
    """A host result value standing for `err(message)`."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def RESULT(ok: Ty | None) -> Ty:
    """result<ok, string> (or result<_, string> when ok is None); lowering only."""

    def lower(v, p):
        c = p
        c.kind = _K["RESULT"]
        raw = ffi.wasmtime_component_val_t()
        if isinstance(v, Err):
            c.of.result.is_ok = False
            STRING.lower(v.message, raw)
            c.of.result.val = ffi.wasmtime_component_val_new(byref(raw))
        else:
            c.of.result.is_ok = True
            if ok is None:
                c.of.result.val = None
            else:
                ok.lower(v, raw)
                c.of.result.val = ffi.wasmtime_component_val_new(byref(raw))

    def lift(c):
        raise NotImplementedError("results are only passed from host to guest")

    k_result = _K["RESULT"]
    head = struct.Struct("<B7x?7xQ")  # kind, then the union's valresult {is_ok, val*}
    ok_lower_at = ok.lower_at if ok is not None else None
    memmove, addressof = ctypes.memmove, ctypes.addressof

    def lower_at(v, addr):
        # ok(value) written in place: the value lowered into a scratch slot, moved to the heap
        if isinstance(v, Err):
            lower(v, _VAL.from_address(addr))
            return
        ptr = 0
        if ok_lower_at is not None:
            scratch = _VAL()
            ok_lower_at(v, addressof(scratch))
            ptr = _val_new(addressof(scratch))
        memmove(addr, head.pack(k_result, True, ptr), head.size)

    ty = Ty(f"result<{ok.name if ok else '_'}, string>", lift, lower, lower_at=lower_at)
    return ty


# `wasmtime_component_val_new` taking and returning raw addresses
_val_new = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)(
    ctypes.cast(ffi.dll.wasmtime_component_val_new, ctypes.c_void_p).value)


# --- registration -------------------------------------------------------------------------

_FUNCS: dict[int, tuple] = {}
_PARKS: dict[int, bool] = {}
_CALLBACKS: list = []
_PENDING: dict[int, list] = {}
_ids = itertools.count(1)


def rebind(store: Any, state: Any) -> None:
    """Make `state` the Store's data (a reused instance serving a new process)."""
    ctx = store._context()
    old = ffi.wasmtime_context_get_data(ctx)
    ffi.wasmtime_context_set_data(ctx, _wv._intern(state))
    if old:
        _wv.SLAB.deallocate(old - 1)  # wasmtime-py's interned ids are off by one


def state_of(context) -> Any:
    """The Python object stored as the Store's data."""
    return _wv._unintern(ffi.wasmtime_context_get_data(context))


def _error_ptr(message: str):
    return ctypes.cast(WasmtimeError(message)._consume(), ctypes.c_void_p).value


class _Current(threading.local):
    """The guest whose host calls are being served on this thread.

    A guest only runs inside `_drive` (fiber mode, one guest at a time per thread) or inside
    its own thread (thread mode), so the driver sets this before resuming the guest and host
    callbacks read it instead of asking wasmtime for the store's data on every call.
    """

    state: Any = None


current = _Current()


_RAW_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                 ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                 ctypes.c_void_p, ctypes.c_size_t)


def _make_sync(fn: Callable, params: list[Ty], result: Ty | None, is_result: bool):
    """One C callback per import, its converters bound in the closure.

    The callback takes raw addresses (ctypes builds no pointer objects per call); scalar
    arguments and results are read and written in place.
    """
    n = len(params)
    lifts = [p.lift_at for p in params]
    lower = result.lower_at if result is not None else None
    lift0 = lifts[0] if n >= 1 else None
    lift1 = lifts[1] if n >= 2 else None
    lift2 = lifts[2] if n >= 3 else None
    lift3 = lifts[3] if n >= 4 else None
    lift4 = lifts[4] if n >= 5 else None
    v1, v2, v3, v4 = VAL_SIZE, 2 * VAL_SIZE, 3 * VAL_SIZE, 4 * VAL_SIZE
    get_data = ffi.wasmtime_context_get_data
    ctx_ptr = POINTER(ffi.wasmtime_context_t)

    def impl(idx, context, ty_raw, args, nargs, results, nresults):
        try:
            st = current.state
            if st is None:
                st = _wv._unintern(get_data(ctypes.cast(context, ctx_ptr)))
            try:
                if n == 0:
                    r = fn(st)
                elif n == 1:
                    r = fn(st, lift0(args))
                elif n == 2:
                    r = fn(st, lift0(args), lift1(args + v1))
                elif n == 3:
                    r = fn(st, lift0(args), lift1(args + v1), lift2(args + v2))
                elif n == 4:
                    r = fn(st, lift0(args), lift1(args + v1), lift2(args + v2), lift3(args + v3))
                elif n == 5:
                    r = fn(st, lift0(args), lift1(args + v1), lift2(args + v2), lift3(args + v3),
                           lift4(args + v4))
                else:
                    r = fn(st, *[lift(args + i * VAL_SIZE) for i, lift in enumerate(lifts)])
            except GuestError as e:
                if not is_result:
                    raise
                r = Err(str(e))
            if lower is not None:
                lower(r, results)
            return None
        except BaseException as e:  # noqa: BLE001 - becomes a guest trap, never a host crash
            return _error_ptr(f"host call failed: {type(e).__name__}: {e}")

    return _RAW_CALLBACK(impl)


def _call_host(fn, params, is_result, state, args):
    try:
        return fn(state, *[lift(args[i]) for i, lift in enumerate(params)])
    except GuestError as e:
        if is_result:
            return Err(str(e))
        raise


@ffi.wasmtime_func_async_continuation_callback_t
def _cont_poll(key):
    ent = _PENDING[key]
    fut = ent[0]
    if not fut.done():
        return False
    if fut.cancelled() or fut.exception() is not None:
        return False  # the driver sees the failure and abandons the call
    if ent[1] is not None:
        try:
            ent[1].lower_at(fut.result(), ent[2])
        except BaseException as e:  # noqa: BLE001 - a result that cannot cross: fail the guest
            ent[3].fault = e
            return False
    return True


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _cont_finalize(key):
    _PENDING.pop(key, None)


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _noop_finalize(idx):
    return None


async def _as_result(aw):
    try:
        return await aw
    except GuestError as e:
        return Err(str(e))


@ffi.wasmtime_component_func_async_callback_t
def _async_impl(idx, context, ty_raw, args, nargs, results, nresults, error_ret, cont):
    fn, params, result, is_result = _FUNCS[idx]
    loop = asyncio.get_running_loop()
    st = current.state
    try:
        if st is None:
            st = state_of(context)
        r = _call_host(fn, params, is_result, st, args)
        if isinstance(r, asyncio.Future):
            fut = r
        elif asyncio.iscoroutine(r) or isinstance(r, asyncio.Task):
            fut = asyncio.ensure_future(_as_result(r) if is_result else r)
        else:
            fut = loop.create_future()
            fut.set_result(r)
        st.pending = fut
        st.parked = _PARKS[idx]
    except BaseException as e:  # noqa: BLE001
        error_ret[0] = ctypes.cast(WasmtimeError(f"host call failed: {type(e).__name__}: {e}")
                                   ._consume(), POINTER(ffi.wasmtime_error_t))
        fut = loop.create_future()
        fut.set_result(None)
        result = None
    key = next(_ids)
    _PENDING[key] = [fut, result, ctypes.cast(results, ctypes.c_void_p).value, st]
    cont[0].callback = _cont_poll
    cont[0].env = key
    cont[0].finalizer = _cont_finalize


_add_func_raw = ffi.dll.wasmtime_component_linker_instance_add_func
_add_func_raw = ctypes.CFUNCTYPE(  # the same symbol, declared to take our raw callback type
    POINTER(ffi.wasmtime_error_t), POINTER(ffi.wasmtime_component_linker_instance_t),
    ctypes.c_char_p, ctypes.c_size_t, _RAW_CALLBACK, ctypes.c_void_p,
    ctypes.CFUNCTYPE(None, ctypes.c_void_p))(ctypes.cast(_add_func_raw, ctypes.c_void_p).value)


def add_func(linker_instance: Any, name: str, fn: Callable, params: list[Ty], result: Ty | None,
             *, is_async: bool = False, parks: bool = False) -> None:
    """Register `fn(state, *args)` as import `name` with pre-bound converters.

    `parks` marks an async import where a guest may wait indefinitely (for a batch, a client
    message): a guest parked there no longer counts as runnable. A guest in any other async
    import (a fork, a page reservation) is about to continue and still counts.
    """
    idx = next(_ids)
    is_result = result is not None and result.name.startswith("result<")
    lifts = [p.lift for p in params]
    _FUNCS[idx] = (fn, lifts, result, is_result)
    _PARKS[idx] = parks
    b = name.encode()
    if is_async:
        err = ffi.wasmtime_component_linker_instance_add_func_async(
            linker_instance.ptr(), ctypes.create_string_buffer(b), len(b), _async_impl, idx,
            _noop_finalize)
    else:
        cb = _make_sync(fn, list(params), result, is_result)
        _CALLBACKS.append(cb)  # the C side holds a raw pointer: keep the thunk alive
        err = _add_func_raw(linker_instance.ptr(), ctypes.create_string_buffer(b), len(b), cb,
                            idx, _noop_finalize)
    if err:
        raise WasmtimeError._from_ptr(err)


# --- driving guest calls from asyncio -----------------------------------------------------


_runnable = [0]


def runnable_guests() -> int:
    """Guests on this loop that are running or ready to run (not parked on a host future).

    A batcher that waits until this is zero collects every guest that is about to submit
    work: the cohort of a batch is complete when nobody can still join it.
    """
    return _runnable[0]


def _wake(waiter: asyncio.Future, _: Any) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _drive(call_future, state) -> None:
    _runnable[0] += 1
    try:
        await _drive_runnable(call_future, state)
    finally:
        _runnable[0] -= 1


async def _drive_runnable(call_future, state) -> None:
    """Poll a wasmtime call future; park on the host future the guest is waiting for."""
    poll = ffi.wasmtime_call_future_poll
    while True:
        current.state = state
        try:
            done = poll(call_future)
        finally:
            current.state = None
        if done:
            return
        fault = getattr(state, "fault", None)
        if fault is not None:
            state.fault = None
            raise RuntimeError(f"a host result could not be passed to the guest: {fault}")
        p = state.pending
        if p is not None:
            state.pending = None
            if not p.done():
                parked = getattr(state, "parked", True)
                if parked and getattr(state, "on_park", None) is not None:
                    state.on_park, on_park = None, state.on_park
                    on_park()
                _runnable[0] -= parked
                # wait without taking `p` along if this task is cancelled (what asyncio.wait
                # does, minus its bookkeeping)
                waiter = p.get_loop().create_future()
                p.add_done_callback(functools.partial(_wake, waiter))
                try:
                    await waiter
                finally:
                    _runnable[0] += parked
            if p.cancelled():
                raise asyncio.CancelledError
            exc = p.exception()
            if exc is not None:
                raise exc
        else:
            await asyncio.sleep(0)  # an epoch yield: let other guests run


async def instantiate_async(linker: Any, store: Any, component: Any) -> Any:
    from wasmtime.component import Instance

    inst = ffi.wasmtime_component_instance_t()
    err = POINTER(ffi.wasmtime_error_t)()
    fut = ffi.wasmtime_component_linker_instantiate_async(
        linker.ptr(), store._context(), component.ptr(), byref(inst), byref(err))
    try:
        await _drive(fut, store.data())
    finally:
        ffi.wasmtime_call_future_delete(fut)
    if err:
        raise WasmtimeError._from_ptr(err)
    return Instance._from_raw(inst)


async def call_run_async(store: Any, func: Any, arg: str) -> tuple[bool, str]:
    """Call the guest's `run(input: string) -> result<string, string>`; (ok, payload)."""
    params = (ffi.wasmtime_component_val_t * 1)()
    STRING.lower(arg, params[0])
    result = ffi.wasmtime_component_val_t()
    err = POINTER(ffi.wasmtime_error_t)()
    fut = ffi.wasmtime_component_func_call_async(
        byref(func._func), store._context(), params, 1, byref(result), 1, byref(err))
    try:
        await _drive(fut, store.data())
    finally:
        ffi.wasmtime_call_future_delete(fut)
        ffi.wasmtime_component_val_delete(byref(params[0]))
    if err:
        raise WasmtimeError._from_ptr(err)
    return _lift_run_result(result)


def _lift_run_result(result) -> tuple[bool, str]:
    assert result.kind == _K["RESULT"]
    ok = bool(result.of.result.is_ok)
    ptr = result.of.result.val
    payload = ""
    if ptr:
        payload = STRING.lift(ptr.contents)
        ptr.contents.kind = _K["BOOL"]
        ffi.wasmtime_component_val_delete(ptr)
        result.of.result.val = None
    return ok, payload
