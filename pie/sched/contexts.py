"""Every KV context of one model: creation, page accounting, commit with prefix sharing, fork,
named snapshots and per-process cleanup.

All operations here are synchronous and only move page ids around; the ones that need the
worker to copy KV data (fork, save, open) return a `CopyPlan` that the caller executes (see
`pie.sched.scheduler.Scheduler`) and undoes with `abort_copy` if the copy fails.

Invariants (checked by the property tests): every page's refcount equals the number of times
it appears in a context's committed or working list (live contexts and snapshots); a page is
free exactly when its refcount is zero; working pages are never shared.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import numpy as np

from pie.sched.api import ContextInfo, EngineError
from pie.sched.context import Context
from pie.sched.pages import PagePool

_ROOT_HASH = b"\x00" * 16


def page_hash(
    prev: bytes, tokens: list[int], positions: list[int], masks: list[list[int] | None]
) -> bytes:
    """Content hash of one full page, chained over the hash of the page before it."""
    h = hashlib.blake2b(prev, digest_size=16)
    h.update(np.asarray(tokens, dtype=np.int32).tobytes())
    h.update(np.asarray(positions, dtype=np.int32).tobytes())
    if any(m is not None for m in masks):
        for m in masks:
            if m is None:
                h.update(b"c")  # causal
            else:
                h.update(b"m%d:" % len(m))
                h.update(np.asarray(m, dtype=np.uint32).tobytes())
    return h.digest()


@dataclass(frozen=True, slots=True)
class CopyPlan:
    """Pages the worker must copy (`src[i]` -> `dst[i]`) before the new context is usable."""

    src: list[int]
    dst: list[int]


class ContextManager:
    """Contexts by id, their owners, and named snapshots by (user, name)."""

    def __init__(self, pool: PagePool, page_size: int) -> None:
        self.pool = pool
        self.page_size = page_size
        self.contexts: dict[int, Context] = {}
        self.owned: dict[str, set[int]] = {}
        self.snapshots: dict[tuple[str, str], Context] = {}
        self._ids = itertools.count(1)

    # --- lookup -------------------------------------------------------------------------------

    def get(self, pid: str, ctx_id: int) -> Context:
        ctx = self.contexts.get(ctx_id)
        if ctx is None or ctx.owner != pid:
            raise EngineError(
                f"context {ctx_id} does not exist or belongs to another process; "
                "use a context this process created, forked or opened"
            )
        return ctx

    def info(self, ctx: Context) -> ContextInfo:
        return ContextInfo(
            page_size=self.page_size,
            committed_pages=len(ctx.committed),
            working_pages=len(ctx.working),
            working_tokens=ctx.working_tokens,
        )

    def owned_by(self, pid: str) -> list[Context]:
        return [self.contexts[i] for i in self.owned.get(pid, ())]

    # --- lifecycle ----------------------------------------------------------------------------

    def create(self, pid: str) -> Context:
        ctx = Context(id=next(self._ids), owner=pid, page_size=self.page_size)
        self._adopt(ctx, pid)
        return ctx

    def _adopt(self, ctx: Context, pid: str) -> None:
        ctx.owner = pid
        self.contexts[ctx.id] = ctx
        self.owned.setdefault(pid, set()).add(ctx.id)

    def destroy(self, ctx: Context) -> None:
        """Release every page of a live context and forget it."""
        if ctx.owner is not None:
            self.contexts.pop(ctx.id, None)
            ids = self.owned.get(ctx.owner)
            if ids is not None:
                ids.discard(ctx.id)
                if not ids:
                    del self.owned[ctx.owner]
        self._free(ctx)

    def _free(self, ctx: Context) -> None:
        self.pool.release(ctx.committed)
        self.pool.release(ctx.working)
        ctx.committed, ctx.hashes, ctx.working = [], [], []
        ctx.working_tokens = 0
        ctx.tokens, ctx.positions, ctx.masks = [], [], []
        ctx.alive = False
        ctx.pages_changed()

    def drop_owner(self, pid: str) -> list[Context]:
        """Destroy every context `pid` owns (named snapshots survive). Returns them."""
        victims = self.owned_by(pid)
        for ctx in victims:
            self.destroy(ctx)
        return victims

    def _clone(
        self, src: Context, pid: str | None, extra_working: int = 0
    ) -> tuple[Context, CopyPlan]:
        """A new context sharing `src`'s committed chain, with copies of its written pages.

        `extra_working` more (empty) working pages are reserved on top of the written ones.
        """
        if src.inflight:
            raise EngineError(
                f"context {src.id} has a forward pass in flight; wait for it before copying it"
            )
        written = -(-src.working_tokens // self.page_size)
        dst = self.pool.allocate(written + extra_working)
        self.pool.retain(src.committed)
        ctx = Context(
            id=next(self._ids),
            owner=None,
            page_size=self.page_size,
            committed=list(src.committed),
            hashes=list(src.hashes),
            working=dst,
            working_tokens=src.working_tokens,
            tokens=list(src.tokens),
            positions=list(src.positions),
            masks=list(src.masks),
            bid=src.bid,
        )
        return ctx, CopyPlan(src=src.working[:written], dst=dst[:written])

    def fork(self, src: Context, pid: str) -> tuple[Context, CopyPlan]:
        """Copy-on-write clone: committed pages shared, working pages copied (same reservation)."""
        written = -(-src.working_tokens // self.page_size)
        ctx, plan = self._clone(src, pid, extra_working=len(src.working) - written)
        self._adopt(ctx, pid)
        return ctx, plan

    def abort_copy(self, ctx: Context) -> None:
        """Undo a fork/save/open whose page copy failed."""
        self.destroy(ctx)

    # --- pages --------------------------------------------------------------------------------

    def reserve(self, ctx: Context, n: int) -> None:
        if n < 0:
            raise EngineError(f"cannot reserve a negative number of pages ({n})")
        ctx.working.extend(self.pool.allocate(n))
        ctx.pages_changed()

    def release(self, ctx: Context, n: int) -> None:
        """Free the last `n` working pages; tokens written into them are dropped."""
        if n < 0 or n > len(ctx.working):
            raise EngineError(
                f"cannot release {n} working pages: context {ctx.id} has {len(ctx.working)}"
            )
        if n == 0:
            return
        keep = len(ctx.working) - n
        kept_slots = keep * self.page_size
        if ctx.working_tokens > kept_slots:
            if ctx.inflight:
                raise EngineError(
                    f"releasing {n} pages of context {ctx.id} would drop tokens a forward pass "
                    "is still writing; wait for the pass to finish"
                )
            self._cut(ctx, ctx.working_tokens - kept_slots)
        self.pool.release(ctx.working[keep:])
        del ctx.working[keep:]
        ctx.pages_changed()

    def truncate(self, ctx: Context, n: int) -> None:
        """Forget the last `n` working tokens (their pages stay reserved)."""
        if n < 0 or n > ctx.working_tokens:
            raise EngineError(
                f"cannot truncate {n} tokens: context {ctx.id} has {ctx.working_tokens} "
                "uncommitted tokens (committed tokens cannot be truncated)"
            )
        if n and ctx.inflight:
            raise EngineError(
                f"context {ctx.id} has a forward pass in flight; wait for it before truncating"
            )
        self._cut(ctx, n)

    def _cut(self, ctx: Context, n: int) -> None:
        if n == 0:
            return
        ctx.working_tokens -= n
        keep = ctx.kv_len
        del ctx.tokens[keep:], ctx.positions[keep:], ctx.masks[keep:]

    def commit(self, ctx: Context, n: int) -> None:
        """Promote the first `n` working pages, which must be full, to the committed chain."""
        ps = self.page_size
        if n < 0 or n > len(ctx.working):
            raise EngineError(
                f"cannot commit {n} pages: context {ctx.id} has {len(ctx.working)} working pages"
            )
        base = len(ctx.committed) * ps
        if base + n * ps > ctx.computed_len:
            full = (ctx.computed_len - base) // ps
            raise EngineError(
                f"cannot commit {n} pages of context {ctx.id}: only {full} working pages are full "
                f"of computed tokens ({ctx.working_tokens} tokens written, page size {ps}"
                + (", a forward pass is still in flight" if ctx.inflight else "")
                + ")"
            )
        prev = ctx.hashes[-1] if ctx.hashes else _ROOT_HASH
        for i in range(n):
            lo, hi = base + i * ps, base + (i + 1) * ps
            h = page_hash(prev, ctx.tokens[lo:hi], ctx.positions[lo:hi], ctx.masks[lo:hi])
            page = self.pool.publish(ctx.working[i], h)
            ctx.committed.append(page)
            ctx.hashes.append(h)
            prev = h
        del ctx.working[:n]
        ctx.working_tokens -= n * ps
        ctx.pages_changed()

    # --- writes by forward passes ---------------------------------------------------------------

    def begin_write(
        self,
        ctx: Context,
        tokens: list[int],
        positions: list[int],
        masks: list[list[int]] | None,
    ) -> int:
        """Claim the next `len(tokens)` slots for a forward pass; returns the first slot."""
        n = len(tokens)
        start = ctx.kv_len
        if start + n > ctx.capacity:
            need = -(-(start + n - ctx.capacity) // self.page_size)
            raise EngineError(
                f"forward pass of {n} tokens would write KV slots {start}..{start + n - 1} but "
                f"context {ctx.id} has {ctx.capacity} slots ({len(ctx.committed)} committed + "
                f"{len(ctx.working)} working pages of {self.page_size}); reserve {need} more "
                "working page(s) first"
            )
        ctx.working_tokens += n
        ctx.tokens.extend(tokens)
        ctx.positions.extend(positions)
        if masks is None:
            ctx.masks.extend(itertools.repeat(None, n))
        else:
            ctx.masks.extend(masks)
        ctx.inflight.append((start, start + n))
        return start

    def end_write(self, ctx: Context, start: int, end: int, ok: bool) -> list[tuple[int, int]]:
        """Mark a forward pass finished. A failed pass is rolled back together with every later
        pass of the context (they were written on top of it); returns those later ranges, whose
        passes the caller must fail.
        """
        try:
            ctx.inflight.remove((start, end))
        except ValueError:
            return []
        if ok or not ctx.alive:
            return []
        later = [r for r in ctx.inflight if r[0] >= end]
        for r in later:
            ctx.inflight.remove(r)
        # commits need computed slots and truncation needs no pass in flight, so every slot
        # from `start` on is still a working slot claimed by this pass or a later one
        n = ctx.kv_len - start
        assert 0 <= n <= ctx.working_tokens, (start, ctx.kv_len, ctx.working_tokens)
        self._cut(ctx, n)
        return later

    # --- named snapshots ----------------------------------------------------------------------

    @staticmethod
    def _check_name(name: str) -> None:
        if not isinstance(name, str) or not name:
            raise EngineError("a snapshot needs a non-empty name")

    def save(self, ctx: Context, user: str, name: str) -> tuple[Context, CopyPlan]:
        """Plan a named snapshot of `ctx` for `user`; call `finish_save` once the copy is done."""
        self._check_name(name)
        return self._clone(ctx, None)

    def finish_save(self, snap: Context, user: str, name: str) -> None:
        """Publish a saved snapshot, replacing any older one of the same name."""
        old = self.snapshots.pop((user, name), None)
        if old is not None:
            self._free(old)
        self.snapshots[(user, name)] = snap

    def abort_save(self, snap: Context) -> None:
        self._free(snap)

    def _snapshot(self, user: str, name: str) -> Context:
        self._check_name(name)
        snap = self.snapshots.get((user, name))
        if snap is None:
            raise EngineError(f"no snapshot named {name!r} for user {user!r}; save one first")
        return snap

    def open(self, user: str, name: str, pid: str) -> tuple[Context, CopyPlan]:
        """A fork of the snapshot owned by `pid`; the snapshot stays."""
        return self.fork(self._snapshot(user, name), pid)

    def take(self, user: str, name: str, pid: str) -> Context:
        """Move the snapshot's pages into a context owned by `pid`; the snapshot is gone."""
        snap = self._snapshot(user, name)
        del self.snapshots[(user, name)]
        self._adopt(snap, pid)
        return snap

    def delete(self, user: str, name: str) -> None:
        snap = self._snapshot(user, name)
        del self.snapshots[(user, name)]
        self._free(snap)

    def snapshot_names(self, user: str) -> list[str]:
        return sorted(n for (u, n) in self.snapshots if u == user)
