"""One KV context: its page chain, its write cursor and the token history behind its pages.

A context's KV slots are numbered `0 .. kv_len-1`: slots of committed pages first (immutable,
possibly shared with other contexts), then working pages (private, writable). Forward passes
append at slot `kv_len` (= committed_pages * page_size + working_tokens).

The context keeps the token, position and mask of every slot it holds (`tokens`, `positions`,
`masks`), so that its pages can later be dropped and recomputed, or swapped out and back, with
the same handle: nothing outside this object refers to its physical pages.

Owned and mutated only by `pie.sched.contexts.ContextManager`; the scheduler reads it.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

import numpy as np


class ContextState(enum.Enum):
    ACTIVE = "active"  # pages resident on the worker
    SUSPENDED = "suspended"  # pages swapped out or dropped (restored on demand)


@dataclass(eq=False, slots=True)
class Context:
    id: int
    owner: str | None  # process id; None while held by a named snapshot
    page_size: int
    committed: list[int] = field(default_factory=list)  # physical pages, root -> tip
    hashes: list[bytes] = field(default_factory=list)  # content hash chain, one per committed page
    working: list[int] = field(default_factory=list)  # physical pages, writable
    working_tokens: int = 0  # slots written (or being written) in working pages
    # history of every held slot, committed then working: what recompute would replay
    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    masks: list[list[int] | None] = field(default_factory=list)
    # (start, end) slot ranges written by forward passes that have not completed, oldest first
    inflight: deque[tuple[int, int]] = field(default_factory=deque)
    bid: float = 0.0
    state: ContextState = ContextState.ACTIVE
    alive: bool = True  # False once destroyed; late completions of its passes are ignored
    _table: np.ndarray | None = None

    @property
    def kv_len(self) -> int:
        """Slots written so far, including writes still in flight."""
        return len(self.committed) * self.page_size + self.working_tokens

    @property
    def computed_len(self) -> int:
        """Slots whose KV is known to be written (no forward pass in flight for them)."""
        return self.inflight[0][0] if self.inflight else self.kv_len

    @property
    def capacity(self) -> int:
        return (len(self.committed) + len(self.working)) * self.page_size

    def page_table(self) -> np.ndarray:
        """int32 [committed + working] physical page ids, cached until the pages change."""
        t = self._table
        if t is None:
            t = np.asarray(self.committed + self.working, dtype=np.int32)
            self._table = t
        return t

    def pages_changed(self) -> None:
        self._table = None

    def all_pages(self) -> list[int]:
        return self.committed + self.working
