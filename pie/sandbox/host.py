"""The host side of the `pie:inferlet` WIT world (`sdk/wit/inferlet.wit`).

`GuestState` is one inferlet process as the host sees it: its handle tables (models,
contexts, futures, grammars, matchers, subscriptions), its session inbox and its event sink.
`IMPORTS` declares every import with its WIT signature; `pie/sandbox/sandbox.py` registers
them on the linker through `abi.add_func` (pre-bound converters), fiber-async for the ones
that may wait on the engine.

The host reaches a model only through `pie.sched.api.EngineService` (one per model name).
Every handle is checked on every call: a bad handle, an out-of-range token or a malformed
mask returns `err(...)` to the guest and never disturbs the host or another process.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pie.ipc.messages import RowResult, SamplerSpec
from pie.messaging import MessageHub, Subscription
from pie.sandbox import grammar as _grammar
from pie.sandbox.abi import (
    BOOL,
    BYTES,
    F32,
    F64,
    LIST,
    LIST_F32,
    LIST_U32,
    OPTION,
    RECORD,
    RESULT,
    S32,
    S64,
    STRING,
    TUPLE,
    U32,
    U64,
    Err,
    GuestError,
    Ty,
)
from pie.sched.api import EngineError, EngineService, ForwardRequest

VERSION = "0.1.0"
EventSink = Callable[[str, object], None]

_MAX_HANDLES = 1 << 16  # per table; a guest leaking handles gets an error, not host memory
MAX_INBOX = 10_000  # unread client messages (and files) per process
MAX_CHAIN = 64  # passes one forward-chain call may queue


@dataclass
class GuestState:
    """One running inferlet, as seen from its host calls."""

    pid: str
    user: str
    engines: dict[str, EngineService]
    emit: EventSink
    hub: MessageHub
    files: list[tuple[str, bytes]] = field(default_factory=list)  # program sources
    entry: tuple[str, str] = ("main:main", "input")
    sdk_files: list[tuple[str, bytes]] = field(default_factory=list)
    launcher: Callable[[str, str], asyncio.Future[str]] | None = None
    pending: Any = None  # the host future the guest's fiber is parked on (abi driver)
    parked: bool = True  # whether that future may take indefinitely (see abi.add_func)
    on_park: Callable[[], None] | None = None  # called once, at the guest's first park
    fault: BaseException | None = None  # a result that could not be passed to the guest
    loop: asyncio.AbstractEventLoop | None = None  # thread mode: the loop host calls run on
    output: tuple = ()  # stdout/stderr line buffers (the sandbox flushes them at the end)
    return_value: str | None = None
    started: float = field(default_factory=time.monotonic)
    closed: bool = False
    program_key: tuple = ()  # names the program (the sandbox reuses instances per program)

    def __post_init__(self) -> None:
        self.models: dict[int, str] = {}
        self.contexts: dict[int, tuple[str, int]] = {}
        self.futures: dict[int, tuple[str, asyncio.Future, Any]] = {}
        self.grammars: dict[int, Any] = {}
        self.matchers: dict[int, Any] = {}
        self.subs: dict[int, Subscription] = {}
        self.sampler_sets: dict[int, SamplerSet] = {}
        self._next = 1
        self._inbox: list[str] = []
        self._inbox_waiters: list[asyncio.Future] = []
        self._file_inbox: list[tuple[str, bytes]] = []
        self._file_waiters: list[asyncio.Future] = []

    # --- handles -------------------------------------------------------------------------

    def next_handle_number(self) -> int:
        return self._next

    def skip_handles(self, n: int) -> None:
        """Number handles from `n` on (a reused instance never sees an old number again)."""
        self._next = max(self._next, n)

    def new_handle(self, table: dict, value: Any) -> int:
        if len(table) >= _MAX_HANDLES:
            raise GuestError(f"too many live handles ({_MAX_HANDLES}); release some first")
        h = self._next
        self._next += 1
        table[h] = value
        return h

    def model(self, h: int) -> tuple[str, EngineService]:
        name = self.models.get(h)
        if name is None:
            raise GuestError(f"unknown model handle {h}; get one from Model.load")
        return name, self.engines[name]

    def context(self, h: int) -> tuple[EngineService, int]:
        ent = self.contexts.get(h)
        if ent is None:
            raise GuestError(f"unknown context handle {h} (released, or not this process's)")
        return self.engines[ent[0]], ent[1]

    def future(self, h: int) -> tuple[str, asyncio.Future, Any]:
        ent = self.futures.get(h)
        if ent is None:
            raise GuestError(f"unknown future handle {h} (already taken or released)")
        return ent

    def add_future(self, kind: str, fut: asyncio.Future, meta: Any = None) -> int:
        return self.new_handle(self.futures, (kind, fut, meta))

    # --- session inbox (fed by the process manager) ----------------------------------------

    def deliver_message(self, message: str) -> None:
        if len(self._inbox) >= MAX_INBOX:
            raise OverflowError(f"the inferlet has {MAX_INBOX} unread messages; it is not "
                                f"calling session.receive()")
        while self._inbox_waiters:
            w = self._inbox_waiters.pop(0)
            if not w.done():
                w.set_result(message)
                return
        self._inbox.append(message)

    def deliver_file(self, name: str, data: bytes) -> None:
        if len(self._file_inbox) >= MAX_INBOX:
            raise OverflowError(f"the inferlet has {MAX_INBOX} unread files; it is not "
                                f"calling session.receive_file()")
        while self._file_waiters:
            w = self._file_waiters.pop(0)
            if not w.done():
                w.set_result((name, data))
                return
        self._file_inbox.append((name, data))

    def close(self) -> None:
        """Cancel everything still pending; called once the guest has ended."""
        self.closed = True
        for _, fut, _ in self.futures.values():
            if not fut.done():
                fut.cancel()
        for sub in self.subs.values():
            sub.close()
        for w in self._inbox_waiters + self._file_waiters:
            w.cancel()
        self.futures.clear()
        self.contexts.clear()


def _engine_call(fn: Callable, *args: Any) -> Any:
    try:
        return fn(*args)
    except EngineError as e:
        raise GuestError(str(e)) from None


async def _engine_await(aw: Any) -> Any:
    try:
        return await aw
    except EngineError as e:
        raise GuestError(str(e)) from None


def _done(loop_value: Any) -> asyncio.Future:
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(loop_value)
    return fut


# --- runtime ------------------------------------------------------------------------------

def rt_version(st: GuestState) -> str:
    return VERSION


def rt_instance_id(st: GuestState) -> str:
    return st.pid


def rt_username(st: GuestState) -> str:
    return st.user


def rt_models(st: GuestState) -> list[str]:
    return list(st.engines)


def rt_launch(st: GuestState, program: str, input: str) -> int:
    if st.launcher is None:
        raise GuestError("launching other inferlets is not available in this engine")
    try:
        json.loads(input or "{}")
    except ValueError:
        raise GuestError("launch input must be JSON text") from None
    return st.add_future("string", st.launcher(program, input or "{}"))


def rt_set_return(st: GuestState, value: str) -> None:
    st.return_value = value


def rt_elapsed_us(st: GuestState) -> int:
    return int((time.monotonic() - st.started) * 1e6)


# --- runner -------------------------------------------------------------------------------

def rn_program_files(st: GuestState) -> list[tuple[str, bytes]]:
    return st.files


def rn_program_entry(st: GuestState) -> tuple[str, str]:
    return st.entry


def rn_sdk_files(st: GuestState) -> list[tuple[str, bytes]]:
    return st.sdk_files


# --- model --------------------------------------------------------------------------------

def md_load(st: GuestState, name: str) -> int:
    if not st.engines:
        raise GuestError("no model is being served")
    name = name or next(iter(st.engines))
    if name not in st.engines:
        raise GuestError(f"no model named {name!r}; served models: {', '.join(st.engines)}")
    for h, n in st.models.items():
        if n == name:
            return h
    return st.new_handle(st.models, name)


def md_describe(st: GuestState, m: int) -> tuple[str, str]:
    name, eng = st.model(m)
    return name, eng.info.arch


def md_shape(st: GuestState, m: int) -> tuple[int, int, int]:
    _, eng = st.model(m)
    i = eng.info
    return i.vocab_size, i.page_size, i.max_model_len


def md_stop_tokens(st: GuestState, m: int) -> list[int]:
    return list(st.model(m)[1].info.stop_token_ids)


def md_eos_tokens(st: GuestState, m: int) -> list[int]:
    return list(st.model(m)[1].info.eos_token_ids)


def md_encode(st: GuestState, m: int, text: str) -> list[int]:
    return list(st.model(m)[1].tokenizer.encode(text))


def md_decode(st: GuestState, m: int, tokens: list[int]) -> str:
    eng = st.model(m)[1]
    vocab = eng.info.vocab_size
    bad = [t for t in tokens if t >= vocab]
    if bad:
        raise GuestError(f"token {bad[0]} is out of range (vocabulary size {vocab})")
    return eng.tokenizer.decode(tokens)


def md_vocabs(st: GuestState, m: int) -> tuple[list[int], list[bytes]]:
    ids, toks = st.model(m)[1].tokenizer.vocab()
    return list(ids), list(toks)


def md_special_tokens(st: GuestState, m: int) -> tuple[list[int], list[bytes]]:
    ids, toks = st.model(m)[1].tokenizer.special_tokens()
    return list(ids), list(toks)


def md_render_chat(st: GuestState, m: int, messages: list[tuple[str, str]], gen: bool) -> str:
    eng = st.model(m)[1]
    try:
        return eng.tokenizer.render_chat([{"role": r, "content": c} for r, c in messages], gen)
    except Exception as e:  # noqa: BLE001 - a template error is the guest's input problem
        raise GuestError(f"chat template failed: {e}") from None


# --- context ------------------------------------------------------------------------------

def cx_create(st: GuestState, m: int) -> int:
    name, eng = st.model(m)
    return st.new_handle(st.contexts, (name, _engine_call(eng.create_context, st.pid)))


async def cx_fork(st: GuestState, c: int) -> int:
    eng, cid = st.context(c)
    name = st.contexts[c][0]
    new = await _engine_await(eng.fork_context(st.pid, cid))
    return st.new_handle(st.contexts, (name, new))


def cx_destroy(st: GuestState, c: int) -> None:
    eng, cid = st.context(c)
    del st.contexts[c]
    _engine_call(eng.destroy_context, st.pid, cid)


def _snapshot_name(name: str) -> str:
    if not name or len(name) > 256:
        raise GuestError("snapshot names must be 1-256 characters")
    return name


async def cx_save(st: GuestState, c: int, name: str) -> None:
    eng, cid = st.context(c)
    await _engine_await(eng.save_snapshot(st.pid, cid, _snapshot_name(name)))


async def cx_open(st: GuestState, m: int, name: str) -> int:
    mname, eng = st.model(m)
    cid = await _engine_await(eng.open_snapshot(st.pid, _snapshot_name(name)))
    return st.new_handle(st.contexts, (mname, cid))


def cx_take(st: GuestState, m: int, name: str) -> int:
    mname, eng = st.model(m)
    cid = _engine_call(eng.take_snapshot, st.pid, _snapshot_name(name))
    return st.new_handle(st.contexts, (mname, cid))


def cx_delete(st: GuestState, m: int, name: str) -> None:
    _, eng = st.model(m)
    _engine_call(eng.delete_snapshot, st.pid, _snapshot_name(name))


def cx_pages(st: GuestState, c: int) -> tuple[int, int, int, int]:
    eng, cid = st.context(c)
    i = _engine_call(eng.context_info, st.pid, cid)
    return i.page_size, i.committed_pages, i.working_pages, i.working_tokens


async def cx_reserve_pages(st: GuestState, c: int, n: int) -> None:
    eng, cid = st.context(c)
    await _engine_await(eng.reserve_pages(st.pid, cid, n))


def cx_release_pages(st: GuestState, c: int, n: int) -> None:
    eng, cid = st.context(c)
    _engine_call(eng.release_pages, st.pid, cid, n)


def cx_commit_pages(st: GuestState, c: int, n: int) -> None:
    eng, cid = st.context(c)
    _engine_call(eng.commit_pages, st.pid, cid, n)


def cx_truncate_tokens(st: GuestState, c: int, n: int) -> None:
    eng, cid = st.context(c)
    _engine_call(eng.truncate_tokens, st.pid, cid, n)


def cx_suspend(st: GuestState, c: int) -> None:
    eng, cid = st.context(c)
    fn = getattr(eng, "suspend_context", None)
    if fn is None:
        raise GuestError("this engine does not support voluntary suspension")
    _engine_call(fn, st.pid, cid)


def cx_set_bid(st: GuestState, c: int, value: float) -> None:
    eng, cid = st.context(c)
    if not value >= 0.0:
        raise GuestError("a bid must be a non-negative number")
    _engine_call(eng.set_bid, st.pid, cid, value)


# --- inference ----------------------------------------------------------------------------

SAMPLER = RECORD(("index", U32), ("temperature", F32), ("top-k", U32), ("top-p", F32),
                 ("min-p", F32), ("seed", U32), ("sample", BOOL), ("dist-k", S32),
                 ("raw-logits", BOOL), ("logprob-ids", LIST_U32), ("entropy", BOOL))


def _check_brle(runs: list[int], total: int | None, what: str) -> None:
    if total is not None and sum(runs) > total:
        raise GuestError(f"{what} covers {sum(runs)} positions but only {total} exist")


def inf_forward(st: GuestState, c: int, tokens: list[int], positions: list[int],
                samplers: list[tuple], attn: list[list[int]], mask: list[int],
                after: ForwardRequest | None = None) -> int:
    eng, cid = st.context(c)
    n = len(tokens)
    if n == 0:
        raise GuestError("a forward pass needs at least one input token")
    if len(positions) != n:
        raise GuestError(f"{n} tokens but {len(positions)} positions; give one position per token")
    vocab = eng.info.vocab_size
    if max(tokens) >= vocab:
        raise GuestError(f"token {max(tokens)} is out of range (vocabulary size {vocab})")
    if attn and len(attn) != n:
        raise GuestError(f"the attention mask has {len(attn)} rows for {n} input tokens")
    _check_brle(mask, vocab, "the logit mask")
    outputs = []
    for rec in samplers:
        if rec[0] >= n:
            raise GuestError(f"sampler index {rec[0]} is past the {n} input tokens")
        idx, spec, lp_max = _sampler_spec(rec)
        if lp_max >= vocab:
            raise GuestError(f"log-prob id {lp_max} is out of range (vocabulary size {vocab})")
        outputs.append((idx, spec))
    req = ForwardRequest(ctx=cid, tokens=tokens, positions=positions, outputs=outputs,
                         attention_mask=attn or None, logit_mask=mask or None, after=after)
    return _submit(st, eng, req, [s for _, s in outputs])


def _submit(st: GuestState, eng: EngineService, req: ForwardRequest,
            specs: list[SamplerSpec]) -> int:
    try:
        fut = eng.submit_forward(st.pid, req)
    except EngineError as e:
        raise GuestError(str(e)) from None
    return st.add_future("forward", fut, (specs, req, eng))


def _sampler_spec(rec: tuple) -> tuple[int, SamplerSpec, int]:
    """(index, spec, largest log-prob id or -1) of one `sampler` record, its ranges checked."""
    idx, temp, top_k, top_p, min_p, seed, sample, dist_k, raw, lp_ids, ent = rec
    if not (temp >= 0.0 and 0.0 < top_p <= 1.0 and 0.0 <= min_p <= 1.0):
        raise GuestError("sampler needs temperature >= 0, 0 < top_p <= 1, 0 <= min_p <= 1")
    spec = SamplerSpec(
        temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed, sample=sample,
        dist_k=dist_k, raw_logits=raw,
        logprob_ids=np.asarray(lp_ids, np.int32).tobytes() if lp_ids else b"",
        entropy=ent)
    return idx, spec, max(lp_ids) if lp_ids else -1


@dataclass(slots=True)
class SamplerSet:
    """Output slots registered once (`inference.register-samplers`) for many passes."""

    outputs: list[tuple[int, SamplerSpec]]
    specs: list[SamplerSpec]
    max_index: int
    lp_max: int


def inf_register_samplers(st: GuestState, samplers: list[tuple]) -> int:
    outputs, lp_max = [], -1
    for rec in samplers:
        idx, spec, lp = _sampler_spec(rec)
        outputs.append((idx, spec))
        lp_max = max(lp_max, lp)
    return st.new_handle(st.sampler_sets, SamplerSet(
        outputs, [s for _, s in outputs], max((i for i, _ in outputs), default=-1), lp_max))


def inf_release_samplers(st: GuestState, h: int) -> None:
    st.sampler_sets.pop(h, None)


def inf_forward_after(st: GuestState, c: int, after: int, tokens: list[int],
                      positions: list[int], samplers: list[tuple], attn: list[list[int]],
                      mask: list[int]) -> int:
    prev, _ = _chained_from(st, c, after)
    # the engine checks the rest (the pass samples a token and has not failed); index 0 is
    # a placeholder the engine replaces by the token `after` samples
    return inf_forward(st, c, [0, *tokens], positions, samplers, attn, mask, after=prev)


def _chained_from(st: GuestState, c: int, after: int) -> tuple[ForwardRequest, EngineService]:
    """The request of forward pass `after` and the model of context `c`, which must be the
    model that pass runs on (a chained pass takes its input token from it)."""
    kind, _, meta = st.future(after)
    if kind != "forward":
        raise GuestError(f"future {after} is not a forward pass")
    _, prev, prev_eng = meta
    eng = st.context(c)[0]
    if prev_eng is not eng:
        raise GuestError("a chained forward pass must run on the model of the pass it follows")
    return prev, eng


def _next_checked(st: GuestState, c: int, after: int, samplers: int, mask: list[int],
                  ) -> tuple[ForwardRequest, EngineService, int, SamplerSet]:
    """What a one-token chained pass needs, checked: (the pass it follows, its model, the
    context id, the registered samplers)."""
    prev, eng = _chained_from(st, c, after)
    cid = st.context(c)[1]
    ss = st.sampler_sets.get(samplers)
    if ss is None:
        raise GuestError(f"unknown samplers handle {samplers}; register them first")
    vocab = eng.info.vocab_size
    _check_brle(mask, vocab, "the logit mask")
    if ss.max_index >= 1:
        raise GuestError(f"sampler index {ss.max_index} is past the 1 input tokens")
    if ss.lp_max >= vocab:
        raise GuestError(f"log-prob id {ss.lp_max} is out of range (vocabulary size {vocab})")
    return prev, eng, cid, ss


def inf_forward_next(st: GuestState, c: int, after: int, position: int, samplers: int,
                     mask: list[int]) -> int:
    """`forward-after` of no further tokens, one position and registered samplers."""
    prev, eng, cid, ss = _next_checked(st, c, after, samplers, mask)
    req = ForwardRequest(ctx=cid, tokens=[0], positions=[position], outputs=list(ss.outputs),
                         logit_mask=mask or None, after=prev)
    return _submit(st, eng, req, ss.specs)


def inf_forward_chain(st: GuestState, c: int, after: int, position: int, count: int,
                      samplers: int, mask: list[int]) -> list[int]:
    """`forward-next` `count` times, each pass fed by the one before (the first by `after`),
    at positions `position`, `position + 1`, ...: one call queues several decode steps."""
    if not 1 <= count <= MAX_CHAIN:
        raise GuestError(f"a chain has 1 to {MAX_CHAIN} passes, not {count}")
    prev, eng, cid, ss = _next_checked(st, c, after, samplers, mask)
    handles: list[int] = []
    try:
        for pos in range(position, position + count):
            req = ForwardRequest(ctx=cid, tokens=[0], positions=[pos], outputs=list(ss.outputs),
                                 logit_mask=mask or None, after=prev)
            handles.append(_submit(st, eng, req, ss.specs))
            prev = req
    except GuestError:
        # the passes queued so far have not run (nothing ran in between): withdraw them
        for h in reversed(handles):
            ent = st.futures.pop(h, None)
            if ent is not None:
                ent[1].cancel()
        raise
    return handles


def _first_token(st: GuestState, h: int) -> int:
    rows, specs = _output(st, h)
    for r, s in zip(rows, specs):
        if s.sample:
            return r.token
    raise GuestError(f"forward pass {h} samples no token")


def inf_take_chain(st: GuestState, hs: list[int]) -> list[int]:
    """The first sampled token of each pass, in order; every pass is released."""
    try:
        return [_first_token(st, h) for h in hs]
    finally:
        for h in hs:
            st.futures.pop(h, None)


def inf_wait_chain(st: GuestState, hs: list[int]) -> Any:
    """`take-chain` once every pass in `hs` has finished (the guest waits in this call)."""
    if not hs:
        raise GuestError("wait-chain needs at least one forward pass")
    futs = []
    for h in hs:
        kind, fut, _ = st.future(h)
        if kind != "forward":
            raise GuestError(f"future {h} is not a forward pass")
        if not fut.done():
            futs.append(fut)
    if not futs:
        return inf_take_chain(st, hs)
    result = asyncio.get_running_loop().create_future()
    left = [len(futs)]

    def finish(_: asyncio.Future) -> None:
        left[0] -= 1
        if left[0] or result.done():
            return
        try:
            result.set_result(inf_take_chain(st, hs))
        except GuestError as e:
            result.set_result(Err(str(e)))

    for fut in futs:
        fut.add_done_callback(finish)
    return result


def _output(st: GuestState, h: int) -> tuple[list[RowResult], list[SamplerSpec]]:
    kind, fut, meta = st.future(h)
    if kind != "forward":
        raise GuestError(f"future {h} is not a forward pass")
    specs = meta[0]
    if not fut.done():
        raise GuestError(f"forward pass {h} has not finished; wait on it first")
    if fut.cancelled():
        raise GuestError(f"forward pass {h} was cancelled")
    exc = fut.exception()
    if exc is not None:
        raise GuestError(f"forward pass failed: {exc}")
    return fut.result(), specs


def _row(st: GuestState, h: int, slot: int) -> tuple[RowResult, SamplerSpec]:
    rows, specs = _output(st, h)
    if slot >= len(rows):
        raise GuestError(f"output slot {slot} does not exist (the pass has {len(rows)})")
    return rows[slot], specs[slot]


def inf_tokens(st: GuestState, h: int) -> list[int]:
    rows, specs = _output(st, h)
    if len(rows) == 1:
        return [rows[0].token] if specs[0].sample else []
    return [r.token for r, s in zip(rows, specs) if s.sample]


def inf_take_tokens(st: GuestState, h: int) -> list[int]:
    try:
        return inf_tokens(st, h)
    finally:
        st.futures.pop(h, None)


def inf_wait_tokens(st: GuestState, h: int) -> Any:
    """`take-tokens` once the pass has finished (the guest waits in this call)."""
    kind, fut, _ = st.future(h)
    if kind != "forward":
        raise GuestError(f"future {h} is not a forward pass")
    if fut.done():
        return inf_take_tokens(st, h)
    result = asyncio.get_running_loop().create_future()

    def finish(_: asyncio.Future) -> None:
        if result.done():
            return
        try:
            result.set_result(inf_take_tokens(st, h))
        except GuestError as e:
            result.set_result(Err(str(e)))

    fut.add_done_callback(finish)
    return result


def inf_distribution(st: GuestState, h: int, slot: int) -> tuple[list[int], list[float]]:
    row, spec = _row(st, h, slot)
    if spec.dist_k < 0:
        raise GuestError(f"slot {slot} did not ask for a distribution")
    return (np.frombuffer(row.dist_ids, np.int32).tolist(),
            np.frombuffer(row.dist_probs, np.float32).tolist())


def inf_logits(st: GuestState, h: int, slot: int) -> bytes:
    row, spec = _row(st, h, slot)
    if not spec.raw_logits:
        raise GuestError(f"slot {slot} did not ask for logits")
    return row.logits


def inf_logprobs(st: GuestState, h: int, slot: int) -> list[float]:
    row, spec = _row(st, h, slot)
    if not spec.logprob_ids:
        raise GuestError(f"slot {slot} did not ask for log-probabilities")
    return np.frombuffer(row.logprobs, np.float32).tolist()


def inf_entropy(st: GuestState, h: int, slot: int) -> float:
    row, spec = _row(st, h, slot)
    if not spec.entropy:
        raise GuestError(f"slot {slot} did not ask for the entropy")
    return float(row.entropy)


def _new_grammar(st: GuestState, make: Callable[[], Any]) -> int:
    try:
        g = make()
    except _grammar.GrammarError as e:
        raise GuestError(str(e)) from None
    return st.new_handle(st.grammars, g)


def inf_grammar_from_regex(st: GuestState, pattern: str) -> int:
    return _new_grammar(st, lambda: _grammar.Grammar.from_regex(pattern))


def inf_grammar_from_json_schema(st: GuestState, schema: str) -> int:
    return _new_grammar(st, lambda: _grammar.Grammar.from_json_schema(schema))


def inf_grammar_json(st: GuestState) -> int:
    return _new_grammar(st, _grammar.Grammar.any_json)


def _matcher(st: GuestState, h: int) -> Any:
    m = st.matchers.get(h)
    if m is None:
        raise GuestError(f"unknown matcher handle {h}")
    return m


def inf_matcher_create(st: GuestState, g: int, m: int) -> int:
    grammar = st.grammars.get(g)
    if grammar is None:
        raise GuestError(f"unknown grammar handle {g}")
    _, eng = st.model(m)
    return st.new_handle(st.matchers, _grammar.Matcher(grammar, _grammar.vocab_of(eng)))


def inf_matcher_accept(st: GuestState, h: int, tokens: list[int]) -> None:
    try:
        _matcher(st, h).accept(tokens)
    except _grammar.GrammarError as e:
        raise GuestError(str(e)) from None


def inf_matcher_mask(st: GuestState, h: int) -> list[int]:
    return _matcher(st, h).mask()


def inf_matcher_is_terminated(st: GuestState, h: int) -> bool:
    return _matcher(st, h).is_terminated()


def inf_matcher_reset(st: GuestState, h: int) -> None:
    _matcher(st, h).reset()


# --- session ------------------------------------------------------------------------------

def ss_send(st: GuestState, message: str) -> None:
    st.emit("message", message)


def ss_send_file(st: GuestState, name: str, data: bytes) -> None:
    st.emit("file", (name, data))


def ss_receive(st: GuestState) -> int:
    fut = asyncio.get_running_loop().create_future()
    if st._inbox:
        fut.set_result(st._inbox.pop(0))
    else:
        st._inbox_waiters.append(fut)
    return st.add_future("string", fut)


def ss_receive_file(st: GuestState) -> int:
    fut = asyncio.get_running_loop().create_future()
    if st._file_inbox:
        fut.set_result(st._file_inbox.pop(0))
    else:
        st._file_waiters.append(fut)
    return st.add_future("file", fut)


# --- messaging ----------------------------------------------------------------------------

def ms_push(st: GuestState, topic: str, message: str) -> None:
    st.hub.push(topic, message)


def ms_pull(st: GuestState, topic: str) -> int:
    return st.add_future("string", st.hub.pull(topic))


def ms_broadcast(st: GuestState, topic: str, message: str) -> None:
    st.hub.broadcast(topic, message)


def ms_subscribe(st: GuestState, topic: str) -> int:
    return st.new_handle(st.subs, st.hub.subscribe(topic))


def ms_next(st: GuestState, s: int) -> int:
    sub = st.subs.get(s)
    if sub is None:
        raise GuestError(f"unknown subscription handle {s}")
    return st.add_future("string", sub.next())


def ms_unsubscribe(st: GuestState, s: int) -> None:
    sub = st.subs.pop(s, None)
    if sub is not None:
        sub.close()


# --- scheduling ---------------------------------------------------------------------------

def _stat(eng: EngineService, key: str, default: float = 0.0) -> float:
    try:
        v = eng.stats().get(key, default)
    except Exception:  # noqa: BLE001 - observables are best effort
        return default
    return float(v) if isinstance(v, (int, float)) else default


def sc_price(st: GuestState) -> float:
    return 1.0


def sc_rent(st: GuestState, c: int) -> float:
    return _stat(st.context(c)[0], "clearing_price")


def sc_dividend(st: GuestState, m: int) -> float:
    return _stat(st.model(m)[1], "dividend")


def sc_balance(st: GuestState, m: int) -> float:
    eng = st.model(m)[1]
    fn = getattr(eng, "balance", None)
    if callable(fn):
        return float(_engine_call(fn, st.pid))
    return _stat(eng, "balance")


def sc_latency(st: GuestState, c: int) -> float:
    return _stat(st.context(c)[0], "latency_s")


# --- poll ---------------------------------------------------------------------------------

def _futs(st: GuestState, handles: list[int]) -> list[tuple[int, asyncio.Future]]:
    return [(h, st.future(h)[1]) for h in handles]


def pl_ready(st: GuestState, handles: list[int]) -> list[int]:
    return [h for h, f in _futs(st, handles) if f.done()]


def pl_wait(st: GuestState, handles: list[int], timeout_us: int) -> Any:
    futs = _futs(st, handles)
    ready = [h for h, f in futs if f.done()]
    if ready or (timeout_us == 0):
        return ready
    if not futs and timeout_us < 0:
        raise GuestError("waiting on no futures without a timeout would never return")
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()

    def wake(_: Any = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    for _, f in futs:
        f.add_done_callback(wake)
    timer = loop.call_later(timeout_us / 1e6, wake) if timeout_us > 0 else None

    def finish(_: asyncio.Future) -> None:
        if timer is not None:
            timer.cancel()
        for _, f in futs:
            f.remove_done_callback(wake)

    waiter.add_done_callback(finish)
    result = loop.create_future()

    def resolve(_: asyncio.Future) -> None:
        if not result.done():
            result.set_result([h for h, f in futs if f.done()])

    waiter.add_done_callback(resolve)
    return result


def _take(st: GuestState, h: int, kind: str) -> Any:
    k, fut, _ = st.future(h)
    if k != kind:
        raise GuestError(f"future {h} holds a {k} result, not a {kind}")
    if not fut.done():
        raise GuestError(f"future {h} is not ready; wait on it first")
    del st.futures[h]
    if fut.cancelled():
        raise GuestError(f"future {h} was cancelled")
    exc = fut.exception()
    if exc is not None:
        raise GuestError(str(exc))
    return fut.result()


def pl_take_string(st: GuestState, h: int) -> str:
    return _take(st, h, "string")


def pl_take_file(st: GuestState, h: int) -> tuple[str, bytes]:
    return _take(st, h, "file")


def pl_release(st: GuestState, h: int) -> None:
    ent = st.futures.pop(h, None)
    if ent is not None and not ent[1].done() and ent[0] != "forward":
        ent[1].cancel()


# --- the declaration table ----------------------------------------------------------------

# Imports where a guest may wait indefinitely (for a batch, a message); in every other
# waiting import it is about to continue (see `abi.runnable_guests`).
PARKING = frozenset({"wait", "wait-tokens", "wait-chain"})

_R = RESULT
IFACE = "pie:inferlet/{}@0.1.0"

# (interface, name, function, params, result, may-wait)
IMPORTS: list[tuple[str, str, Callable, list[Ty], Ty | None, bool]] = [
    ("runtime", "version", rt_version, [], STRING, False),
    ("runtime", "instance-id", rt_instance_id, [], STRING, False),
    ("runtime", "username", rt_username, [], STRING, False),
    ("runtime", "models", rt_models, [], LIST(STRING), False),
    ("runtime", "launch", rt_launch, [STRING, STRING], _R(U32), False),
    ("runtime", "set-return", rt_set_return, [STRING], None, False),
    ("runtime", "elapsed-us", rt_elapsed_us, [], U64, False),
    ("runner", "program-files", rn_program_files, [], LIST(TUPLE(STRING, BYTES)), False),
    ("runner", "program-entry", rn_program_entry, [], TUPLE(STRING, STRING), False),
    ("runner", "sdk-files", rn_sdk_files, [], LIST(TUPLE(STRING, BYTES)), False),
    ("model", "load", md_load, [STRING], _R(U32), False),
    ("model", "describe", md_describe, [U32], _R(TUPLE(STRING, STRING)), False),
    ("model", "shape", md_shape, [U32], _R(TUPLE(U32, U32, U32)), False),
    ("model", "stop-tokens", md_stop_tokens, [U32], _R(LIST_U32), False),
    ("model", "eos-tokens", md_eos_tokens, [U32], _R(LIST_U32), False),
    ("model", "encode", md_encode, [U32, STRING], _R(LIST_U32), False),
    ("model", "decode", md_decode, [U32, LIST_U32], _R(STRING), False),
    ("model", "vocabs", md_vocabs, [U32], _R(TUPLE(LIST_U32, LIST(BYTES))), False),
    ("model", "special-tokens", md_special_tokens, [U32], _R(TUPLE(LIST_U32, LIST(BYTES))), False),
    ("model", "render-chat", md_render_chat, [U32, LIST(TUPLE(STRING, STRING)), BOOL],
     _R(STRING), False),
    ("context", "create", cx_create, [U32], _R(U32), False),
    ("context", "fork", cx_fork, [U32], _R(U32), True),
    ("context", "destroy", cx_destroy, [U32], _R(None), False),
    ("context", "save", cx_save, [U32, STRING], _R(None), True),
    ("context", "open", cx_open, [U32, STRING], _R(U32), True),
    ("context", "take", cx_take, [U32, STRING], _R(U32), False),
    ("context", "delete", cx_delete, [U32, STRING], _R(None), False),
    ("context", "pages", cx_pages, [U32], _R(TUPLE(U32, U32, U32, U32)), False),
    ("context", "reserve-pages", cx_reserve_pages, [U32, U32], _R(None), True),
    ("context", "release-pages", cx_release_pages, [U32, U32], _R(None), False),
    ("context", "commit-pages", cx_commit_pages, [U32, U32], _R(None), False),
    ("context", "truncate-tokens", cx_truncate_tokens, [U32, U32], _R(None), False),
    ("context", "suspend", cx_suspend, [U32], _R(None), False),
    ("context", "set-bid", cx_set_bid, [U32, F64], _R(None), False),
    ("inference", "forward", inf_forward,
     [U32, LIST_U32, LIST_U32, LIST(SAMPLER), LIST(LIST_U32), LIST_U32], _R(U32), False),
    ("inference", "forward-after", inf_forward_after,
     [U32, U32, LIST_U32, LIST_U32, LIST(SAMPLER), LIST(LIST_U32), LIST_U32], _R(U32), False),
    ("inference", "register-samplers", inf_register_samplers, [LIST(SAMPLER)], _R(U32), False),
    ("inference", "release-samplers", inf_release_samplers, [U32], None, False),
    ("inference", "forward-next", inf_forward_next, [U32, U32, U32, U32, LIST_U32], _R(U32),
     False),
    ("inference", "forward-chain", inf_forward_chain, [U32, U32, U32, U32, U32, LIST_U32],
     _R(LIST_U32), False),
    ("inference", "wait-chain", inf_wait_chain, [LIST_U32], _R(LIST_U32), True),
    ("inference", "tokens", inf_tokens, [U32], _R(LIST_U32), False),
    ("inference", "take-tokens", inf_take_tokens, [U32], _R(LIST_U32), False),
    ("inference", "wait-tokens", inf_wait_tokens, [U32], _R(LIST_U32), True),
    ("inference", "distribution", inf_distribution, [U32, U32],
     _R(TUPLE(LIST_U32, LIST_F32)), False),
    ("inference", "logits", inf_logits, [U32, U32], _R(BYTES), False),
    ("inference", "logprobs", inf_logprobs, [U32, U32], _R(LIST_F32), False),
    ("inference", "entropy", inf_entropy, [U32, U32], _R(F32), False),
    ("inference", "grammar-from-regex", inf_grammar_from_regex, [STRING], _R(U32), False),
    ("inference", "grammar-from-json-schema", inf_grammar_from_json_schema, [STRING],
     _R(U32), False),
    ("inference", "grammar-json", inf_grammar_json, [], _R(U32), False),
    ("inference", "matcher-create", inf_matcher_create, [U32, U32], _R(U32), False),
    ("inference", "matcher-accept", inf_matcher_accept, [U32, LIST_U32], _R(None), False),
    ("inference", "matcher-mask", inf_matcher_mask, [U32], _R(LIST_U32), False),
    ("inference", "matcher-is-terminated", inf_matcher_is_terminated, [U32], _R(BOOL), False),
    ("inference", "matcher-reset", inf_matcher_reset, [U32], _R(None), False),
    ("session", "send", ss_send, [STRING], None, False),
    ("session", "send-file", ss_send_file, [STRING, BYTES], None, False),
    ("session", "receive", ss_receive, [], U32, False),
    ("session", "receive-file", ss_receive_file, [], U32, False),
    ("messaging", "push", ms_push, [STRING, STRING], None, False),
    ("messaging", "pull", ms_pull, [STRING], U32, False),
    ("messaging", "broadcast", ms_broadcast, [STRING, STRING], None, False),
    ("messaging", "subscribe", ms_subscribe, [STRING], U32, False),
    ("messaging", "next", ms_next, [U32], _R(U32), False),
    ("messaging", "unsubscribe", ms_unsubscribe, [U32], None, False),
    ("scheduling", "price", sc_price, [], F64, False),
    ("scheduling", "rent", sc_rent, [U32], _R(F64), False),
    ("scheduling", "dividend", sc_dividend, [U32], _R(F64), False),
    ("scheduling", "balance", sc_balance, [U32], _R(F64), False),
    ("scheduling", "latency", sc_latency, [U32], _R(F64), False),
    ("poll", "ready", pl_ready, [LIST_U32], LIST_U32, False),
    ("poll", "wait", pl_wait, [LIST_U32, S64], LIST_U32, True),
    ("poll", "take-string", pl_take_string, [U32], _R(STRING), False),
    ("poll", "take-file", pl_take_file, [U32], _R(TUPLE(STRING, BYTES)), False),
    ("poll", "release", pl_release, [U32], None, False),
]

__all__ = ["IFACE", "IMPORTS", "OPTION", "VERSION", "GuestState"]
