"""Stateful property test of the page pool + context manager.

Random sequences of create / fork / reserve / write / commit / release / truncate / save /
open / take / delete / destroy / exit across processes of two users. A simulated KV memory
applies every write and every planned page copy, so the invariants check data as well as
bookkeeping:

* refcount(page) == number of times the page appears in any context or snapshot;
* a page is on the free list exactly when its refcount is 0, and only once;
* working pages are never shared, and never also committed;
* every written slot of every context reads back its own history through its page table
  (catches wrong copies, wrong dedupe, pages freed while still in use);
* snapshots are visible only to their user, and open/take return the saved history.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pie.sched.api import EngineError
from pie.sched.contexts import ContextManager, CopyPlan
from pie.sched.pages import PagePool

PAGE = 2
TOTAL = 24
PIDS = ["p0", "p1", "p2"]
USER = {"p0": "alice", "p1": "alice", "p2": "bob"}
NAMES = ["s", "t"]
PROMPTS = [[1, 0, 1, 1, 0], [1, 0, 1, 0], [0, 0, 1]]


class ContextMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.pool = PagePool(TOTAL)
        self.kv = ContextManager(self.pool, PAGE)
        self.mem = np.full((TOTAL, PAGE), -1, dtype=np.int64)
        # model of each snapshot's history, by (user, name)
        self.saved: dict[tuple[str, str], list[int]] = {}
        self.alive = set(PIDS)

    # --- helpers --------------------------------------------------------------------------

    def _contexts(self, pid: str | None = None):
        ctxs = sorted(self.kv.contexts.values(), key=lambda c: c.id)
        return [c for c in ctxs if pid is None or c.owner == pid]

    def _pick(self, data, pid: str | None = None):
        ctxs = self._contexts(pid)
        if not ctxs:
            return None
        return data.draw(st.sampled_from(ctxs))

    def _copy(self, plan: CopyPlan) -> None:
        self.mem[plan.dst] = self.mem[plan.src]

    # --- rules ----------------------------------------------------------------------------

    def _has_contexts(self) -> bool:
        return bool(self.kv.contexts)

    @rule(pid=st.sampled_from(PIDS), n=st.integers(0, 3))
    def create(self, pid, n):
        ctx = self.kv.create(pid)
        if self.pool.can_allocate(n):
            self.kv.reserve(ctx, n)

    @rule(pid=st.sampled_from(PIDS), prompt=st.sampled_from(PROMPTS), commit=st.booleans())
    def prefill(self, pid, prompt, commit):
        """A new context with one of a few shared prompts (what makes prefixes dedupe)."""
        need = -(-len(prompt) // PAGE)
        if not self.pool.can_allocate(need):
            return
        ctx = self.kv.create(pid)
        self.kv.reserve(ctx, need)
        start = self.kv.begin_write(ctx, prompt, list(range(len(prompt))), None)
        table = ctx.page_table()
        for i, t in enumerate(prompt):
            self.mem[table[(start + i) // PAGE], (start + i) % PAGE] = t
        self.kv.end_write(ctx, start, start + len(prompt), ok=True)
        if commit:
            used = self.pool.used_pages
            self.kv.commit(ctx, len(prompt) // PAGE)
            assert self.pool.used_pages <= used

    @precondition(_has_contexts)
    @rule(data=st.data())
    def fork(self, data):
        src = self._pick(data)
        if src is None:
            return
        free_before = self.pool.free_pages
        try:
            new, plan = self.kv.fork(src, src.owner)
        except EngineError:
            assert self.pool.free_pages == free_before
            return
        self._copy(plan)
        assert new.tokens == src.tokens and new.kv_len == src.kv_len
        assert len(new.working) == len(src.working)

    @rule(data=st.data())
    def destroy(self, data):
        ctx = self._pick(data)
        if ctx is not None:
            self.kv.destroy(ctx)

    @rule(data=st.data(), n=st.integers(0, 4))
    def reserve(self, data, n):
        ctx = self._pick(data)
        if ctx is None:
            return
        before = len(ctx.working)
        try:
            self.kv.reserve(ctx, n)
        except EngineError:
            assert n > self.pool.free_pages and len(ctx.working) == before
            return
        assert len(ctx.working) == before + n

    @rule(data=st.data(), n=st.integers(0, 3))
    def release(self, data, n):
        ctx = self._pick(data)
        if ctx is None:
            return
        try:
            self.kv.release(ctx, n)
        except EngineError:
            assert n > len(ctx.working)

    @precondition(_has_contexts)
    @rule(
        data=st.data(),
        tokens=st.lists(st.integers(0, 1), min_size=1, max_size=5),
        ok=st.booleans(),
        grow=st.booleans(),
        commit=st.booleans(),
    )
    def write(self, data, tokens, ok, grow, commit):
        """A forward pass; `grow` reserves the pages it needs first, `commit` commits after."""
        ctx = self._pick(data)
        need = -(-(ctx.kv_len + len(tokens) - ctx.capacity) // PAGE)
        if grow and need > 0 and self.pool.can_allocate(need):
            self.kv.reserve(ctx, need)
        before = list(ctx.tokens)
        positions = list(range(ctx.kv_len, ctx.kv_len + len(tokens)))
        try:
            start = self.kv.begin_write(ctx, tokens, positions, None)
        except EngineError as e:
            assert ctx.kv_len + len(tokens) > ctx.capacity
            assert "reserve" in str(e)
            return
        table = ctx.page_table()
        for i, t in enumerate(tokens):
            s = start + i
            self.mem[table[s // PAGE], s % PAGE] = t
        self.kv.end_write(ctx, start, start + len(tokens), ok=ok)
        assert ctx.tokens == (before + tokens if ok else before)
        if commit:
            self.kv.commit(ctx, ctx.working_tokens // PAGE)

    @rule(data=st.data(), n=st.integers(0, 3))
    def commit(self, data, n):
        ctx = self._pick(data)
        if ctx is None:
            return
        full = ctx.working_tokens // PAGE
        committed = len(ctx.committed)
        try:
            self.kv.commit(ctx, n)
        except EngineError:
            assert n > full or n > len(ctx.working)
            return
        assert n <= full and len(ctx.committed) == committed + n

    @rule(data=st.data(), n=st.integers(0, 4))
    def truncate(self, data, n):
        ctx = self._pick(data)
        if ctx is None:
            return
        try:
            self.kv.truncate(ctx, n)
        except EngineError:
            assert n > ctx.working_tokens

    @rule(data=st.data(), name=st.sampled_from(NAMES))
    def save(self, data, name):
        ctx = self._pick(data)
        if ctx is None:
            return
        user = USER[ctx.owner]
        try:
            snap, plan = self.kv.save(ctx, user, name)
        except EngineError:
            return  # out of pages; nothing may have changed (checked by the invariants)
        self._copy(plan)
        self.kv.finish_save(snap, user, name)
        self.saved[(user, name)] = list(ctx.tokens)

    @rule(pid=st.sampled_from(PIDS), name=st.sampled_from(NAMES))
    def open(self, pid, name):
        user = USER[pid]
        try:
            ctx, plan = self.kv.open(user, name, pid)
        except EngineError as e:
            if (user, name) in self.saved:
                assert "out of KV pages" in str(e)
            return
        assert (user, name) in self.saved, "opened a snapshot that belongs to another user"
        self._copy(plan)
        assert ctx.tokens == self.saved[(user, name)] and ctx.owner == pid

    @rule(pid=st.sampled_from(PIDS), name=st.sampled_from(NAMES))
    def take(self, pid, name):
        user = USER[pid]
        try:
            ctx = self.kv.take(user, name, pid)
        except EngineError:
            assert (user, name) not in self.saved
            return
        assert ctx.tokens == self.saved.pop((user, name)) and ctx.owner == pid

    @rule(pid=st.sampled_from(PIDS), name=st.sampled_from(NAMES))
    def delete(self, pid, name):
        user = USER[pid]
        try:
            self.kv.delete(user, name)
        except EngineError:
            assert (user, name) not in self.saved
            return
        del self.saved[(user, name)]

    @rule(pid=st.sampled_from(PIDS))
    def exit(self, pid):
        self.kv.drop_owner(pid)
        assert not self._contexts(pid)

    # --- invariants -----------------------------------------------------------------------

    def _holders(self):
        return list(self.kv.contexts.values()) + list(self.kv.snapshots.values())

    @invariant()
    def refcounts_exact(self):
        counts: Counter[int] = Counter()
        working: Counter[int] = Counter()
        committed: set[int] = set()
        for c in self._holders():
            counts.update(c.committed)
            counts.update(c.working)
            working.update(c.working)
            committed.update(c.committed)
        for p in range(TOTAL):
            assert self.pool.refcount(p) == counts[p], f"page {p} refcount"
        free = self.pool.free_list()
        assert len(free) == len(set(free)), "page on the free list twice"
        assert set(free) == {p for p in range(TOTAL) if counts[p] == 0}, "leaked or double-owned"
        assert all(v == 1 for v in working.values()), "working page shared"
        assert not (set(working) & committed), "page both working and committed"

    @invariant()
    def data_readback(self):
        for c in self._holders():
            assert len(c.tokens) == len(c.positions) == len(c.masks) == c.kv_len
            assert len(c.hashes) == len(c.committed)
            table = c.page_table()
            assert list(table) == c.committed + c.working
            slots = np.arange(c.computed_len)
            got = self.mem[table[slots // PAGE], slots % PAGE] if len(slots) else []
            assert list(got) == c.tokens[: c.computed_len], f"context {c.id} reads wrong KV"

    @invariant()
    def snapshots_match_model(self):
        assert set(self.kv.snapshots) == set(self.saved)
        for key, snap in self.kv.snapshots.items():
            assert snap.owner is None
            assert snap.tokens == self.saved[key]


TestContextMachine = ContextMachine.TestCase
TestContextMachine.settings = settings(
    max_examples=80,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
