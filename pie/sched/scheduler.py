"""The per-model scheduler: the `EngineService` the inferlets call, and the batch loop.

One `Scheduler` per [[model]] lives in the controller's event loop. It owns the model's KV
pages (`ContextManager` over a `PagePool`), admits processes (`Admission`), queues forward
passes and feeds the worker one batch at a time:

    inferlet --forward()--> validate, claim KV slots, charge tokens --> queue
    loop: worker free + policy says fire --> select + pack --> worker.submit(BatchDescriptor)
          BatchResult --> scatter rows --> each pass's future --> inferlet resumes

The worker is sequential, so at most one batch is in flight; page copies for fork / snapshot
go through the same lane (`_worker_lock`), which keeps every worker operation in the order the
scheduler planned it (a page freed here is only rewritten by operations submitted later).

    sched = Scheduler(model_info, tokenizer, worker, cfg, max_concurrent_processes=None)
    sched.start()
    ...
    await sched.close()

`worker` is anything with `.info` (`pie.ipc.messages.WorkerInfo`) and
`async submit(msg) -> BatchResult`; `cfg` is `[model.scheduler]` (any object with the
attributes of `SchedulerSettings`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, Self

import numpy as np

from pie.ipc.messages import BatchResult, CopyPages, RowResult, WorkerInfo
from pie.sched.admission import Admission
from pie.sched.api import ContextInfo, EngineError, ForwardRequest, ModelInfo, TokenizerService
from pie.sched.batch import Batch, brle_prefix, pack, scatter, select
from pie.sched.context import Context
from pie.sched.contexts import ContextManager, CopyPlan
from pie.sched.pages import PagePool
from pie.sched.policy import make_policy
from pie.sched.request import PendingForward
from pie.sched.stats import SchedulerStats

log = logging.getLogger(__name__)


def _bounds(values: list[int]) -> tuple[int, int]:
    """(min, max) of a list of ints; plain Python is faster than numpy for short lists."""
    if len(values) <= 64:
        return min(values), max(values)
    a = np.asarray(values, dtype=np.int64)
    return int(a.min()), int(a.max())


class Worker(Protocol):
    info: WorkerInfo

    async def submit(self, msg: Any) -> BatchResult: ...


@dataclass
class SchedulerSettings:
    """Defaults of `[model.scheduler]`, for callers without a loaded config."""

    batch_policy: str = "adaptive"
    request_timeout_secs: float = 120.0
    default_token_limit: int | None = None
    default_endowment_pages: int = 64
    admission_oversubscription_factor: float = 4.0
    restore_pause_at_utilization: float = 0.85


class Scheduler:
    """KV contexts, admission and batching for one model on one worker."""

    def __init__(
        self,
        info: ModelInfo,
        tokenizer: TokenizerService,
        worker: Worker,
        cfg: Any = None,
        *,
        max_concurrent_processes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        pending_clients: Callable[[], int] | None = None,
    ) -> None:
        cfg = cfg if cfg is not None else SchedulerSettings()
        winfo = worker.info
        if info.page_size != winfo.page_size:
            raise ValueError(
                f"model {info.name!r} expects page size {info.page_size} but its worker uses "
                f"{winfo.page_size}; start both from the same configuration"
            )
        self.info = info
        self.tokenizer = tokenizer
        self.worker = worker
        self.page_size = winfo.page_size
        self.max_batch_tokens = winfo.max_batch_tokens
        self.max_batch_size = winfo.max_batch_size
        self.max_model_len = min(info.max_model_len, winfo.max_model_len)
        self.vocab_size = info.vocab_size
        self.pool = PagePool(winfo.total_pages)
        self.kv = ContextManager(self.pool, self.page_size)
        self.admission = Admission(
            total_pages=winfo.total_pages,
            endowment_pages=cfg.default_endowment_pages,
            oversubscription=cfg.admission_oversubscription_factor,
            max_processes=max_concurrent_processes,
            default_token_limit=cfg.default_token_limit,
        )
        self.policy = make_policy(cfg.batch_policy)
        timeout = cfg.request_timeout_secs
        if not timeout > 0:
            raise ValueError("request_timeout_secs must be > 0")
        self.request_timeout = float(timeout)
        self.restore_pause_at_utilization = cfg.restore_pause_at_utilization
        self._clock = clock
        # How many clients are still running and may submit a pass any moment (for the sandbox:
        # guests not parked on a host future, and guests waiting to start). When set, a batch
        # about to fire waits for them (bounded by `_cohort_budget`), so a cohort whose passes
        # come back staggered is not split into halves that then take turns at the worker.
        self._pending_clients = pending_clients
        self._last_latency = 0.0
        self._stats = SchedulerStats()
        self._queue: deque[PendingForward] = deque()
        self._last_pass: dict[int, PendingForward] = {}  # newest queued pass per context id
        self._last_parts = 0  # passes in the last batch (the cohort a ready queue must match)
        self._arrival = asyncio.Event()
        self._wake_at = 1  # queue length at which an arrival wakes the loop (see _run)
        self._worker_lock = asyncio.Lock()
        self._op_ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._dead: str | None = None
        self._closed = False

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the batch loop on the running event loop."""
        if self._closed:
            raise RuntimeError("scheduler is closed")
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="pie-sched")

    async def close(self) -> None:
        """Stop the loop and fail every queued pass; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._dead = self._dead or f"model {self.info.name!r} is shutting down"
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._fail_queued(EngineError(self._dead))
        self.admission.close(self._dead)

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- processes ----------------------------------------------------------------------------

    async def register_process(self, pid: str, user: str, token_limit: int | None = None) -> None:
        self._check_alive()
        await self.admission.admit(pid, user, token_limit)

    def unregister_process(self, pid: str) -> None:
        """Destroy every context `pid` owns and fail its queued passes; snapshots survive."""
        self.kv.drop_owner(pid)
        if any(p.pid == pid for p in self._queue):
            err = EngineError(f"process {pid} exited")
            keep: deque[PendingForward] = deque()
            for p in self._queue:
                if p.pid == pid:
                    self._finish_failed(p, err)
                else:
                    keep.append(p)
            self._queue = keep
        self.admission.leave(pid)

    def _user(self, pid: str) -> str:
        return self.admission.get(pid).user

    # --- contexts -----------------------------------------------------------------------------

    def create_context(self, pid: str) -> int:
        self.admission.get(pid)
        return self.kv.create(pid).id

    async def fork_context(self, pid: str, ctx: int) -> int:
        src = self.kv.get(pid, ctx)
        await self._quiesce(src)
        new, plan = self.kv.fork(src, pid)
        await self._copy_or_undo(plan, new, self.kv.abort_copy)
        return new.id

    def destroy_context(self, pid: str, ctx: int) -> None:
        c = self.kv.get(pid, ctx)
        self.kv.destroy(c)
        self._last_pass.pop(c.id, None)

    def context_info(self, pid: str, ctx: int) -> ContextInfo:
        return self.kv.info(self.kv.get(pid, ctx))

    async def reserve_pages(self, pid: str, ctx: int, n: int) -> None:
        self.kv.reserve(self.kv.get(pid, ctx), n)

    def release_pages(self, pid: str, ctx: int, n: int) -> None:
        self.kv.release(self.kv.get(pid, ctx), n)

    def commit_pages(self, pid: str, ctx: int, n: int) -> None:
        self.kv.commit(self.kv.get(pid, ctx), n)

    def truncate_tokens(self, pid: str, ctx: int, n: int) -> None:
        self.kv.truncate(self.kv.get(pid, ctx), n)

    def set_bid(self, pid: str, ctx: int, value: float) -> None:
        if not value >= 0:
            raise EngineError(f"a bid must be a number >= 0, got {value}")
        self.kv.get(pid, ctx).bid = float(value)

    # --- named snapshots ----------------------------------------------------------------------

    async def save_snapshot(self, pid: str, ctx: int, name: str) -> None:
        user = self._user(pid)
        src = self.kv.get(pid, ctx)
        await self._quiesce(src)
        snap, plan = self.kv.save(src, user, name)
        await self._copy_or_undo(plan, snap, self.kv.abort_save)
        self.kv.finish_save(snap, user, name)

    async def open_snapshot(self, pid: str, name: str) -> int:
        user = self._user(pid)
        new, plan = self.kv.open(user, name, pid)
        await self._copy_or_undo(plan, new, self.kv.abort_copy)
        return new.id

    def take_snapshot(self, pid: str, name: str) -> int:
        return self.kv.take(self._user(pid), name, pid).id

    def delete_snapshot(self, pid: str, name: str) -> None:
        self.kv.delete(self._user(pid), name)

    async def _quiesce(self, ctx: Context) -> None:
        """Wait until no forward pass of `ctx` is queued or in flight."""
        while ctx.inflight:
            p = self._last_pass.get(ctx.id)
            if p is None or p.future.done():
                # its caller went away while the pass runs; the batch will end soon
                await asyncio.sleep(0.001)
                continue
            await asyncio.wait([p.future])

    async def _copy_or_undo(
        self, plan: CopyPlan, ctx: Context, undo: Callable[[Context], None]
    ) -> None:
        if not plan.src:
            return
        msg = CopyPages(
            batch_id=next(self._op_ids),
            src=np.asarray(plan.src, dtype=np.int32).tobytes(),
            dst=np.asarray(plan.dst, dtype=np.int32).tobytes(),
        )
        try:
            self._check_alive()
            async with self._worker_lock:
                res = await self.worker.submit(msg)
            if res.error:
                raise EngineError(f"the worker failed to copy KV pages: {res.error}")
        except EngineError:
            undo(ctx)
            raise
        except BaseException as e:
            undo(ctx)
            if isinstance(e, Exception):
                raise EngineError(f"the worker failed to copy KV pages: {e}") from e
            raise

    # --- forward passes -----------------------------------------------------------------------

    async def forward(self, pid: str, req: ForwardRequest) -> list[RowResult]:
        """Queue one forward pass and wait for its outputs (one RowResult per `req.outputs`)."""
        fut = self.submit_forward(pid, req)
        p = req.ticket
        try:
            return await fut
        except asyncio.CancelledError:
            # the caller went away: a pass not yet sent is withdrawn at once
            if isinstance(p, PendingForward) and p.sent == 0 and p in self._queue:
                self._queue.remove(p)
                self._finish_failed(p, EngineError("the forward pass was cancelled"))
            raise

    def submit_forward(self, pid: str, req: ForwardRequest) -> asyncio.Future[list[RowResult]]:
        """Queue one forward pass now; its future resolves to the outputs.

        Errors in the request raise `EngineError` here. Cancelling the future withdraws the
        pass if it has not been sent to the worker yet (at the next batch), and otherwise
        drops its results.
        """
        self._check_alive()
        if self._task is None:
            raise EngineError("the scheduler is not running; call start() first")
        rec = self.admission.get(pid)
        ctx = self.kv.get(pid, req.ctx)
        feed = self._feed_of(pid, req)
        p = self._validate(pid, ctx, req)
        self.admission.charge(rec, p.size)
        try:
            p.start = self.kv.begin_write(ctx, req.tokens, req.positions, req.attention_mask)
        except EngineError:
            self.admission.refund(rec, p.size)
            raise
        req.ticket = p
        if feed is not None:
            source, slot = feed
            if source.future.done():  # finished between the caller's submit and now
                self._fill(p, source.results[slot].token)  # type: ignore[union-attr]
            else:
                p.feed, p.feed_slot = source, slot
                if source.followers is None:
                    source.followers = []
                source.followers.append(p)
        self._queue.append(p)
        self._last_pass[ctx.id] = p
        if len(self._queue) >= self._wake_at:
            self._arrival.set()
        return p.future

    def _feed_of(self, pid: str, req: ForwardRequest) -> tuple[PendingForward, int] | None:
        """The pass (and its output index) whose sampled token `req.tokens[0]` waits for."""
        after = req.after
        if after is None:
            return None
        source = after.ticket
        if not isinstance(source, PendingForward) or source.pid != pid:
            raise EngineError(
                "a chained forward pass must follow a pass this process submitted to this model"
            )
        if source.future.done() and (source.future.cancelled() or source.future.exception()):
            raise EngineError("the forward pass this one follows failed; nothing to feed from")
        for slot, spec in enumerate(source.samplers):
            if spec.sample:
                break
        else:
            raise EngineError("a chained forward pass must follow a pass that samples a token")
        if not req.tokens:
            raise EngineError("a chained forward pass needs a placeholder first token")
        return source, slot

    def _fill(self, p: PendingForward, token: int) -> None:
        """Put a chained pass's input token in place; the pass becomes runnable."""
        p.tokens[0] = token
        p.ctx.tokens[p.start] = token  # what the page hash of this slot covers
        p.feed = None

    def _feed_followers(self, p: PendingForward) -> None:
        for f in p.followers or ():
            if not f.future.done():
                self._fill(f, p.results[f.feed_slot].token)  # type: ignore[union-attr]
        p.followers = None

    def _fail_followers(self, p: PendingForward, err: Exception) -> None:
        followers, p.followers = p.followers or [], None
        for f in followers:
            if f.future.done():
                continue
            cause = EngineError(f"the forward pass it follows failed: {err}")
            if f in self._queue and f.sent == 0:
                self._queue.remove(f)
                self._finish_failed(f, cause)
            else:
                f.future.set_exception(cause)

    def _validate(self, pid: str, ctx: Context, req: ForwardRequest) -> PendingForward:
        n = len(req.tokens)
        if n == 0:
            raise EngineError("a forward pass needs at least one input token")
        if len(req.positions) != n:
            raise EngineError(
                f"a forward pass needs one position per token: {n} tokens, "
                f"{len(req.positions)} positions"
            )
        if n == 1:  # decode: the common case, checked without building anything
            lo = hi = req.tokens[0]
            plo = phi = req.positions[0]
        else:
            lo, hi = _bounds(req.tokens)
            plo, phi = _bounds(req.positions)
        if lo < 0 or hi >= self.vocab_size:
            raise EngineError(f"token ids must be in [0, {self.vocab_size}); got {lo}..{hi}")
        if plo < 0 or phi >= 2**31:
            raise EngineError(f"positions must be in [0, 2**31); got {plo}..{phi}")
        if ctx.kv_len + n > self.max_model_len:
            raise EngineError(
                f"context {ctx.id} would hold {ctx.kv_len + n} tokens, more than the model's "
                f"maximum length {self.max_model_len}"
            )
        outputs = req.outputs
        if len(outputs) == 1:
            out_list, samplers = [outputs[0][0]], [outputs[0][1]]
        else:
            out_list, samplers = [i for i, _ in outputs], [s for _, s in outputs]
        if out_list and (min(out_list) < 0 or max(out_list) >= n):
            raise EngineError(f"output indices must be in [0, {n}) (the pass's input tokens)")
        if req.attention_mask is not None and len(req.attention_mask) != n:
            raise EngineError(
                f"an attention mask needs one row per input token: {n} tokens, "
                f"{len(req.attention_mask)} rows"
            )
        logit_mask = None
        if req.logit_mask is not None:
            logit_mask = np.asarray(req.logit_mask, dtype=np.uint32)
            covered = int(logit_mask.sum(dtype=np.int64))
            if covered > self.vocab_size:
                raise EngineError(
                    f"the logit mask covers {covered} ids but the vocabulary has {self.vocab_size}"
                )
        if n > self.max_batch_tokens and req.attention_mask is not None:
            # a mask that cannot be chunked fails now rather than mid-way through the chunks
            start = ctx.kv_len
            for i in range(0, n - self.max_batch_tokens, self.max_batch_tokens):
                hi = i + self.max_batch_tokens
                for row in req.attention_mask[i:hi]:
                    brle_prefix(row, start + hi)
        now = self._clock()
        return PendingForward(
            pid=pid,
            ctx=ctx,
            tokens=np.array(req.tokens, dtype=np.int32),
            positions=np.array(req.positions, dtype=np.int32),
            out_list=out_list,
            samplers=samplers,
            masks=req.attention_mask,
            logit_mask=logit_mask,
            start=0,
            future=asyncio.get_running_loop().create_future(),
            enqueued=now,
            deadline=now + self.request_timeout,
            results=[None] * len(out_list),
            n=n,
        )

    def _check_alive(self) -> None:
        if self._dead is not None:
            raise EngineError(self._dead)

    # --- the loop -----------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                if not self._queue:
                    self._arrival.clear()
                    await self._arrival.wait()
                    continue
                now = self._clock()
                wait = self._expire(now)
                if not self._queue:
                    continue
                delay = self.policy.decide(
                    len(self._queue), self.max_batch_size, now, self._queue[0].enqueued
                )
                if delay > 0:
                    # arrivals that cannot change the decision do not wake the loop
                    self._wake_at = self.policy.fire_at(self.max_batch_size)
                    await self._wait_arrival(min(delay, wait))
                    self._wake_at = 1
                    continue
                if not self._cohort_ready():
                    for _ in range(self.policy.settle_turns):
                        before = len(self._queue)
                        await asyncio.sleep(0)
                        if len(self._queue) == before:
                            break
                    if self._pending_clients is not None and self.policy.name != "greedy":
                        await self._complete_cohort()
                # no await between here and the worker ring: a cohort of chained passes goes
                # out before the callers woken by the previous batch start running
                batch = self._next_batch()
                if batch is None:
                    if self._queue:  # nothing runnable (e.g. suspended contexts): wait for news
                        await self._wait_arrival(wait)
                    continue
                await self._execute(batch)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # a bug here must not leave inferlets hanging
            log.exception("scheduler loop of model %s crashed", self.info.name)
            self._dead = f"the scheduler of model {self.info.name!r} crashed: {e}"
            self._fail_queued(EngineError(self._dead))
            raise

    def _cohort_ready(self) -> bool:
        """Whether the queue already holds a whole cohort of runnable passes.

        Chained passes (`ForwardRequest.after`) become runnable the moment the previous batch
        finishes; when at least as many are runnable as the last batch carried, waiting for
        callers gains nothing, so the batch fires at once and overlaps with their work.
        """
        want = self._last_parts
        if want == 0:
            return False
        ready = 0
        for p in self._queue:
            if p.feed is None:
                ready += 1
                if ready >= want:
                    return True
        return False

    async def _complete_cohort(self) -> None:
        """Let clients that are still running queue their pass before the batch is built.

        Bounded by half the last batch latency (at least 2 ms), so a client that computes for a
        long time (or spins) delays a batch by at most that much.
        """
        probe = self._pending_clients
        assert probe is not None
        start = self._clock()
        budget = max(0.002, 0.5 * self._last_latency)
        turns = 0
        while len(self._queue) < self.max_batch_size and probe() > 0:
            if self._clock() - start >= budget:
                break
            turns += 1
            # guests run on this loop: yield turns first, then sleep briefly so a client running
            # on another thread does not make this a busy wait
            await asyncio.sleep(0 if turns < 64 else 0.0005)

    def wake(self) -> None:
        """Make the loop look at the queue again (a context became runnable)."""
        self._arrival.set()

    async def _wait_arrival(self, timeout: float) -> None:
        """Wait for a wake-up or `timeout` seconds (a timer, not a task per wait)."""
        self._arrival.clear()
        timer = asyncio.get_running_loop().call_later(timeout, self._arrival.set)
        try:
            await self._arrival.wait()
        finally:
            timer.cancel()

    def _expire(self, now: float) -> float:
        """Fail passes that waited past `request_timeout_secs`; returns time to the next expiry.

        The queue keeps arrival order and every pass has the same timeout, so deadlines grow
        along it: only its expired prefix is visited (passes already partly sent never expire).
        """
        nearest = self.request_timeout
        expired = 0
        for p in self._queue:
            if p.sent:
                continue
            if p.deadline > now:
                nearest = p.deadline - now
                break
            expired += 1
        if expired:
            keep: deque[PendingForward] = deque()
            for p in self._queue:
                if p.sent == 0 and p.deadline <= now:
                    self._stats.timeouts += 1
                    self._finish_failed(
                        p,
                        EngineError(
                            f"forward pass waited {now - p.enqueued:.1f}s without being scheduled, "
                            f"longer than request_timeout_secs={self.request_timeout:g}; the model "
                            "is overloaded (fewer concurrent inferlets or a larger timeout help)"
                        ),
                    )
                else:
                    keep.append(p)
            self._queue = keep
        return max(nearest, 0.0)

    def _next_batch(self) -> Batch | None:
        parts, left, dropped = select(self._queue, self.max_batch_tokens, self.max_batch_size)
        self._queue = left
        for p in dropped:
            self._finish_failed(p, EngineError("the forward pass's context was destroyed"))
        if not parts:
            return None
        now = self._clock()
        for part in parts:
            if part.lo == 0:
                self._stats.queue_wait.append(now - part.req.enqueued)
            elif part.lo:
                self._stats.chunks += 1
        try:
            return pack(parts, next(self._op_ids), self.page_size)
        except EngineError as e:
            for part in parts:
                self._finish_failed(part.req, e)
            self._queue = deque(p for p in self._queue if not p.future.done())
            return None

    async def _execute(self, batch: Batch) -> None:
        t0 = self._clock()
        try:
            async with self._worker_lock:
                result = await self.worker.submit(batch.descriptor)
        except asyncio.CancelledError:
            self._fail_parts(batch, EngineError(f"model {self.info.name!r} is shutting down"))
            raise
        except Exception as e:  # noqa: BLE001 - any failure of the worker client means it is gone
            self._dead = f"the worker of model {self.info.name!r} failed: {e}"
            log.error("%s", self._dead)
            self._fail_parts(batch, EngineError(self._dead))
            self._fail_queued(EngineError(self._dead))
            return
        latency = self._clock() - t0
        finished = []
        if not result.error:
            try:
                finished = scatter(batch, result)
            except EngineError as e:
                result = BatchResult(batch_id=result.batch_id, error=str(e))
        if result.error:
            self._stats.failures += 1
            self._fail_parts(batch, EngineError(f"the worker rejected a batch: {result.error}"))
        else:
            for part in finished:
                self._finish_ok(part.req)
        self._stats.record_batch(len(batch.parts), batch.num_tokens, batch.num_outputs, latency)
        self.policy.fired(len(batch.parts), latency)
        self._last_latency = latency
        self._last_parts = len(batch.parts)

    # --- completion ---------------------------------------------------------------------------

    def _finish_ok(self, p: PendingForward) -> None:
        self.kv.end_write(p.ctx, p.start, p.end, ok=True)
        self._forget(p)
        self._stats.requests += 1
        if p.followers:
            self._feed_followers(p)
        if not p.future.done():
            p.future.set_result(p.results)  # type: ignore[arg-type]

    def _finish_failed(self, p: PendingForward, err: Exception) -> None:
        if p.feed is not None:
            if p.feed.followers and p in p.feed.followers:
                p.feed.followers.remove(p)
            p.feed = None
        if p.followers:
            self._fail_followers(p, err)
        later = self.kv.end_write(p.ctx, p.start, p.end, ok=False)
        if later:
            # queued passes of the same context were built on this one: they fail with it
            # (and are dropped from the queue by the next selection)
            cause = EngineError(f"an earlier forward pass of this context failed: {err}")
            for q in self._queue:
                if q.ctx is p.ctx and (q.start, q.end) in later and not q.future.done():
                    q.future.set_exception(cause)
        self._forget(p)
        rec = self.admission.processes.get(p.pid)
        if rec is not None:
            self.admission.refund(rec, p.size)
        if not p.future.done():
            p.future.set_exception(err)

    def _forget(self, p: PendingForward) -> None:
        if self._last_pass.get(p.ctx.id) is p:
            del self._last_pass[p.ctx.id]

    def _fail_parts(self, batch: Batch, err: Exception) -> None:
        failed = {id(part.req) for part in batch.parts}
        for part in batch.parts:
            self._finish_failed(part.req, err)
        self._queue = deque(p for p in self._queue if id(p) not in failed)

    def _fail_queued(self, err: Exception) -> None:
        queue, self._queue = self._queue, deque()
        for p in queue:
            self._finish_failed(p, err)

    # --- observables --------------------------------------------------------------------------

    def stats(self) -> dict:
        pool = self.pool
        d = self._stats.as_dict()
        d.update(
            policy=self.policy.name,
            pages_total=pool.total_pages,
            pages_used=pool.used_pages,
            pages_free=pool.free_pages,
            pages_committed=pool.published_pages,
            pages_shared=pool.shared_pages,
            utilization=pool.used_pages / pool.total_pages,
            contexts=len(self.kv.contexts),
            snapshots=len(self.kv.snapshots),
            processes=len(self.admission.processes),
            processes_waiting=self.admission.waiting,
            queued=len(self._queue),
            # market observables: no rent is charged until contention handling exists
            clearing_price=0.0,
            dividend=0.0,
        )
        return d

    def balance(self, pid: str) -> float:
        """The process's credit balance in pages (its endowment: no rent is charged yet)."""
        return float(self.admission.get(pid).claim)
