"""Cohort completion: clients that compute on the event loop between passes (as Wasm guests do).

Each client blocks the loop for a few milliseconds after its result before it queues its next
pass, so a cohort's passes come back staggered. Without knowing who is still computing, a
batcher fires the part of the cohort that is already queued and the cohort stays split in two
halves that take turns at the worker; with the `pending_clients` probe it waits for the rest.
"""

from __future__ import annotations

import asyncio
import random
import time

from sched_fakes import FakeTokenizer, FakeWorker, model_info

from pie.ipc.messages import SamplerSpec
from pie.sched import ForwardRequest, Scheduler, SchedulerSettings

COHORT = 12
STEPS = 10


async def _run(policy: str, with_probe: bool) -> list[int]:
    w = FakeWorker(page_size=16, latency=0.05, max_batch_size=64)
    busy = [0]
    s = Scheduler(
        model_info(16),
        FakeTokenizer(),
        w,
        SchedulerSettings(batch_policy=policy, default_endowment_pages=1),
        pending_clients=(lambda: busy[0]) if with_probe else None,
    )
    s.start()

    async def client(i: int) -> None:
        rng = random.Random(i)
        pid = f"p{i}"
        busy[0] += 1
        time.sleep(0.002 * (i % 4))  # noqa: ASYNC251 - instantiation work, blocking the loop
        await s.register_process(pid, "u")
        ctx = s.create_context(pid)
        await s.reserve_pages(pid, ctx, 1)
        for step in range(STEPS):
            req = ForwardRequest(ctx=ctx, tokens=[1], positions=[step], outputs=[(0, SamplerSpec())])
            busy[0] -= 1
            try:
                await s.forward(pid, req)
            finally:
                busy[0] += 1
            # the guest computes on the loop, yielding now and then (epoch interruption)
            for _ in range(rng.randint(1, 4)):
                time.sleep(0.0003)  # noqa: ASYNC251 - guest work blocks the loop
                await asyncio.sleep(0)
        busy[0] -= 1

    await asyncio.gather(*(client(i) for i in range(COHORT)))
    await s.close()
    return [n for _, _, n in w.spans]


def test_probe_keeps_staggered_cohorts_whole():
    sizes = asyncio.run(_run("adaptive", with_probe=True))
    assert sum(sizes) == COHORT * STEPS
    steady = sizes[2:]
    assert sum(1 for n in steady if n == COHORT) >= 0.8 * len(steady), sizes


def test_eager_with_probe_keeps_cohorts_whole():
    sizes = asyncio.run(_run("eager", with_probe=True))
    steady = sizes[2:]
    assert sum(1 for n in steady if n == COHORT) >= 0.8 * len(steady), sizes


def test_without_the_probe_staggered_cohorts_split():
    # the behaviour the probe exists for: if this stops splitting, the test above proves less
    sizes = asyncio.run(_run("eager", with_probe=False))
    assert len(sizes) > STEPS + 2, sizes
