"""The KV page pool of one worker: physical page ids, reference counts and the content index.

A page is either free (refcount 0, on the free list) or held by one or more owners. Working
pages are always held by exactly one context; committed pages are immutable and published
under a content hash, so a later commit of an identical page (same chain of tokens, positions
and masks) can reuse the existing physical page instead of keeping a duplicate.

Called by `pie.sched.contexts.ContextManager`, which is the only code that holds page ids.
"""

from __future__ import annotations

import numpy as np

from pie.sched.api import EngineError


class PagePool:
    """Reference-counted physical pages `0 .. total_pages-1` plus a hash -> page index."""

    def __init__(self, total_pages: int) -> None:
        if total_pages <= 0:
            raise ValueError(f"a page pool needs at least one page, got {total_pages}")
        self.total_pages = total_pages
        self._refcount = np.zeros(total_pages, dtype=np.int64)
        # popped from the end: low ids are handed out first, which keeps tests readable
        self._free: list[int] = list(range(total_pages - 1, -1, -1))
        self._by_hash: dict[bytes, int] = {}
        self._hash_of: dict[int, bytes] = {}

    # --- accounting ---------------------------------------------------------------------------

    @property
    def free_pages(self) -> int:
        return len(self._free)

    @property
    def used_pages(self) -> int:
        return self.total_pages - len(self._free)

    @property
    def published_pages(self) -> int:
        return len(self._hash_of)

    @property
    def shared_pages(self) -> int:
        """Pages held by more than one owner (shared committed prefixes)."""
        return int(np.count_nonzero(self._refcount > 1))

    def refcount(self, page: int) -> int:
        return int(self._refcount[page])

    def free_list(self) -> list[int]:
        """A copy of the free list (for invariant checks)."""
        return list(self._free)

    # --- allocation ---------------------------------------------------------------------------

    def can_allocate(self, n: int) -> bool:
        return n <= len(self._free)

    def allocate(self, n: int) -> list[int]:
        """Take `n` free pages, each with refcount 1."""
        if n < 0:
            raise EngineError(f"cannot allocate a negative number of pages ({n})")
        if n > len(self._free):
            raise EngineError(
                f"out of KV pages: {n} requested, {len(self._free)} of {self.total_pages} free; "
                "release or commit pages, destroy unused contexts, or give the model more pages"
            )
        if n == 0:
            return []
        pages = self._free[-n:]
        del self._free[-n:]
        pages.reverse()
        self._refcount[pages] = 1
        return pages

    def retain(self, pages: list[int]) -> None:
        """Add one reference to each (already held) page."""
        for p in pages:
            assert self._refcount[p] > 0, f"retain of free page {p}"
            self._refcount[p] += 1

    def release(self, pages: list[int]) -> None:
        """Drop one reference from each page; pages reaching zero return to the free list."""
        for p in pages:
            rc = self._refcount[p] - 1
            assert rc >= 0, f"release of free page {p}"
            self._refcount[p] = rc
            if rc == 0:
                h = self._hash_of.pop(p, None)
                if h is not None:
                    del self._by_hash[h]
                self._free.append(p)

    # --- content index ------------------------------------------------------------------------

    def lookup(self, page_hash: bytes) -> int | None:
        """The live physical page published under `page_hash`, if any."""
        return self._by_hash.get(page_hash)

    def publish(self, page: int, page_hash: bytes) -> int:
        """Make `page` (held by the caller) the committed page for `page_hash`.

        Returns the page the caller should keep: `page` itself, or the existing page with the
        same content (then the caller's reference moves to it and `page` is released).
        """
        existing = self._by_hash.get(page_hash)
        if existing is not None and existing != page:
            self._refcount[existing] += 1
            self.release([page])
            return existing
        assert page not in self._hash_of, f"page {page} published twice"
        self._by_hash[page_hash] = page
        self._hash_of[page] = page_hash
        return page
