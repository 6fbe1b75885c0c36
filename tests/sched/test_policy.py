"""Batch policies: unit rules, and behaviour with a fake worker of controllable latency.

The workload: a cohort of inferlets decoding in lock step, each "thinking" a random few
milliseconds between its result and its next pass, so arrivals are spread out. We measure,
per batch, how long the worker stayed idle although a request of that batch was already
queued (`idle_with_work`), and the batch sizes.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from sched_fakes import FakeTokenizer, FakeWorker, model_info

from pie.ipc.messages import SamplerSpec
from pie.sched import AdaptivePolicy, ForwardRequest, Scheduler, SchedulerSettings, make_policy

LATENCY = 0.03
COHORT = 6
STEPS = 14


def test_adaptive_rules():
    p = AdaptivePolicy()
    assert p.decide(1, 8, now=10.0, first_arrival=10.0) == 0.0  # nothing fired yet
    p.fired(4, latency=0.5)  # warm-up latency bounds the wait until a second batch is measured
    assert p.high_water == 4
    assert p.decide(2, 8, now=10.1, first_arrival=10.0) == pytest.approx(0.4)
    p.fired(4, latency=0.02)
    assert p.decide(2, 8, now=10.005, first_arrival=10.0) == pytest.approx(0.015)
    assert p.decide(4, 8, 10.0, 10.0) == 0.0  # the cohort is in
    assert p.decide(8, 8, 10.0, 10.0) == 0.0  # a full batch
    assert p.decide(2, 8, now=10.03, first_arrival=10.0) == 0.0  # waited a whole latency
    assert p.fire_at(8) == 4 and p.fire_at(2) == 2
    p.fired(2, 0.02)
    assert p.high_water == 3  # decays by one on a smaller fire
    p.fired(7, 0.02)
    assert p.high_water == 7  # ratchets up
    with pytest.raises(ValueError, match="one of 'adaptive', 'eager', 'greedy'"):
        make_policy("fifo")


async def _workload(policy: str) -> tuple[list[int], list[float]]:
    w = FakeWorker(page_size=16, latency=LATENCY, max_batch_size=COHORT)
    cfg = SchedulerSettings(batch_policy=policy, default_endowment_pages=1)
    s = Scheduler(model_info(16), FakeTokenizer(), w, cfg)
    s.start()
    calls: list[tuple[float, float]] = []  # (arrival, return) of every pass

    async def inferlet(i: int) -> None:
        rng = random.Random(i)
        pid = f"p{i}"
        await s.register_process(pid, "u")
        ctx = s.create_context(pid)
        await s.reserve_pages(pid, ctx, 2)
        for step in range(STEPS):
            a = time.monotonic()
            await s.forward(
                pid,
                ForwardRequest(ctx=ctx, tokens=[1], positions=[step], outputs=[(0, SamplerSpec())]),
            )
            calls.append((a, time.monotonic()))
            await asyncio.sleep(rng.uniform(0, 0.008))

    await asyncio.gather(*(inferlet(i) for i in range(COHORT)))
    await s.close()
    spans = w.spans
    ends = [e for _, e, _ in spans]
    first_arrival = [float("inf")] * len(spans)
    for a, r in calls:
        b = max(i for i, e in enumerate(ends) if e <= r)  # the batch that answered it
        first_arrival[b] = min(first_arrival[b], a)
    idle = []
    for b in range(1, len(spans)):
        ready = max(first_arrival[b], ends[b - 1])
        idle.append(spans[b][0] - ready)
    return [r for _, _, r in spans], idle


def _second_largest(idle: list[float]) -> float:
    """The idle gaps bar the largest: a policy that waits does so at batch after batch, while
    one gap can be the machine (a preempted vCPU) rather than the policy."""
    return sorted(idle)[-2]


def test_adaptive_batches_whole_cohorts():
    sizes, idle = asyncio.run(_workload("adaptive"))
    steady = sizes[2:]
    assert sum(1 for n in steady if n == COHORT) >= 0.8 * len(steady), sizes
    assert len(sizes) <= STEPS + 4
    assert max(idle) > 0.003  # it does wait for stragglers (the measure can see waiting)


def test_eager_never_idles_the_worker():
    sizes, idle = asyncio.run(_workload("eager"))
    assert _second_largest(idle) < 0.01, idle
    assert sum(sizes) == COHORT * STEPS


def test_greedy_never_waits():
    greedy_sizes, idle = asyncio.run(_workload("greedy"))
    assert _second_largest(idle) < 0.01, idle
    adaptive_sizes, _ = asyncio.run(_workload("adaptive"))
    # firing at the first arrival fragments the cohort into more, smaller batches
    assert len(greedy_sizes) > len(adaptive_sizes)
