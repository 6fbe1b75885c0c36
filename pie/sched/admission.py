"""Process admission and compute budgets for one model.

A process is admitted when (a) fewer than `max_concurrent_processes` are running, and (b) the
sum of admitted endowments plus its own stays within `total_pages ×
admission_oversubscription_factor`. Processes that cannot be admitted yet wait in arrival
order; one whose endowment alone exceeds that bound fails at once, since it could never fit.

Each admitted process also carries a token budget (`token_limit`, else
`default_token_limit`): every forward pass is charged its input tokens up front and refunded
if the pass fails.

Called by `pie.sched.scheduler.Scheduler` (register/unregister process, forward).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from pie.sched.api import EngineError


@dataclass(slots=True)
class ProcessRecord:
    pid: str
    user: str
    claim: int  # pages counted against the admission bound
    token_limit: int | None
    tokens_used: int = 0


class Admission:
    def __init__(
        self,
        total_pages: int,
        endowment_pages: int,
        oversubscription: float,
        max_processes: int | None,
        default_token_limit: int | None,
    ) -> None:
        if endowment_pages <= 0:
            raise ValueError("default_endowment_pages must be > 0")
        if not oversubscription > 0:
            raise ValueError("admission_oversubscription_factor must be a finite number > 0")
        if max_processes is not None and max_processes <= 0:
            raise ValueError("max_concurrent_processes must be > 0 when set")
        self.capacity = total_pages * oversubscription
        self.endowment = endowment_pages
        self.max_processes = max_processes
        self.default_token_limit = default_token_limit
        self.processes: dict[str, ProcessRecord] = {}
        self.claimed = 0
        self._waiters: deque[tuple[asyncio.Future[None], int]] = deque()
        self._reserved = 0  # woken waiters whose slot and claim are held until they resume

    def _fits(self, claim: int) -> bool:
        held = len(self.processes) + self._reserved
        if self.max_processes is not None and held >= self.max_processes:
            return False
        return self.claimed + claim <= self.capacity

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def admit(self, pid: str, user: str, token_limit: int | None = None) -> ProcessRecord:
        if pid in self.processes:
            raise EngineError(f"process {pid} is already registered")
        if token_limit is not None and token_limit <= 0:
            raise EngineError(f"token limit must be > 0, got {token_limit}")
        claim = self.endowment
        if claim > self.capacity:
            raise EngineError(
                f"a process needs an endowment of {claim} KV pages but the model admits at most "
                f"{self.capacity:g} (total pages × admission_oversubscription_factor); lower "
                "default_endowment_pages or raise admission_oversubscription_factor"
            )
        if self._waiters or not self._fits(claim):
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = (fut, claim)
            self._waiters.append(entry)
            try:
                await fut
            except BaseException:
                if entry in self._waiters:
                    self._waiters.remove(entry)
                elif fut.done() and not fut.cancelled() and fut.exception() is None:
                    # admitted just as we were cancelled: hand the slot on
                    self._reserved -= 1
                    self.claimed -= claim
                self._wake()
                raise
            self._reserved -= 1
            self.claimed -= claim
        if pid in self.processes:
            raise EngineError(f"process {pid} is already registered")
        limit = token_limit if token_limit is not None else self.default_token_limit
        rec = ProcessRecord(pid=pid, user=user, claim=claim, token_limit=limit)
        self.processes[pid] = rec
        self.claimed += claim
        return rec

    def _wake(self) -> None:
        """Admit waiters in order while they fit (their slot is held until they run)."""
        while self._waiters:
            fut, claim = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            if not self._fits(claim):
                return
            self._waiters.popleft()
            self._reserved += 1
            self.claimed += claim
            fut.set_result(None)

    def close(self, reason: str) -> None:
        """Fail every process still waiting for admission."""
        waiters, self._waiters = self._waiters, deque()
        for fut, _ in waiters:
            if not fut.done():
                fut.set_exception(EngineError(reason))

    def leave(self, pid: str) -> ProcessRecord | None:
        rec = self.processes.pop(pid, None)
        if rec is not None:
            self.claimed -= rec.claim
            self._wake()
        return rec

    def get(self, pid: str) -> ProcessRecord:
        rec = self.processes.get(pid)
        if rec is None:
            raise EngineError(f"process {pid} is not registered with this model")
        return rec

    def charge(self, rec: ProcessRecord, n: int) -> None:
        limit = rec.token_limit
        if limit is not None and rec.tokens_used + n > limit:
            raise EngineError(
                f"process token limit exhausted: {rec.tokens_used} of {limit} tokens used, this "
                f"pass needs {n}; launch the inferlet with a larger token limit"
            )
        rec.tokens_used += n

    def refund(self, rec: ProcessRecord, n: int) -> None:
        rec.tokens_used -= n
