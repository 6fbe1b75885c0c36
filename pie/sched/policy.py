"""Batch-firing policies (`[model.scheduler].batch_policy`): when the free worker gets a batch.

The scheduler loop asks `decide(...)` whenever the worker is free and passes are queued: `0.0`
means fire now, a positive number means wait that long (or until another pass arrives) and
ask again. `fired(...)` reports each completed batch. `settle_turns` is how many event-loop
turns the loop may let pass before building the batch, so that inferlets woken by the previous
batch's results can queue their next pass first (a zero-time collection window).

* `greedy`: fire the moment anything is queued; never waits, not even one loop turn.
* `eager`: fire as soon as the worker is free, after letting already-woken inferlets queue
  (no timed wait, so the worker never idles while work is queued).
* `adaptive`: wait for the cohort it expects, bounded by the last batch latency (see
  `AdaptivePolicy`).
"""

from __future__ import annotations

from typing import Protocol


class BatchPolicy(Protocol):
    name: str
    settle_turns: int

    def decide(self, queued: int, max_size: int, now: float, first_arrival: float) -> float: ...

    def fire_at(self, max_size: int) -> int:
        """The queue length at which `decide` would fire without waiting."""
        ...

    def fired(self, size: int, latency: float) -> None: ...


class GreedyPolicy:
    name = "greedy"
    settle_turns = 0

    def decide(self, queued: int, max_size: int, now: float, first_arrival: float) -> float:
        return 0.0

    def fire_at(self, max_size: int) -> int:
        return 1

    def fired(self, size: int, latency: float) -> None:
        pass


class EagerPolicy(GreedyPolicy):
    name = "eager"
    settle_turns = 8


class AdaptivePolicy:
    """Fire when the expected cohort is in, or when waiting longer would cost more than a batch.

    Fire if the queue fills a batch (`max_size`); or nothing was fired yet; or the queue holds
    at least the recent cohort size (a high-water mark that rises to any larger batch and
    decays by one on each smaller one, so it follows a shrinking population); or the oldest
    queued pass has waited as long as the last batch took. Otherwise wait for the remainder.

    The first batch's latency includes warm-up, so it only bounds the wait until a second
    batch has been measured; ignoring it altogether would fire the second batch at the first
    straggler and split the cohort into halves that then alternate for good.
    """

    name = "adaptive"
    settle_turns = 0

    def __init__(self) -> None:
        self.fires = 0
        self.high_water = 1
        self.last_latency = 0.0

    def decide(self, queued: int, max_size: int, now: float, first_arrival: float) -> float:
        if queued >= max_size or self.fires == 0 or queued >= self.high_water:
            return 0.0
        remaining = self.last_latency - (now - first_arrival)
        return remaining if remaining > 0 else 0.0

    def fire_at(self, max_size: int) -> int:
        return 1 if self.fires == 0 else min(self.high_water, max_size)

    def fired(self, size: int, latency: float) -> None:
        self.fires += 1
        if size >= self.high_water:
            self.high_water = size
        else:
            self.high_water = max(1, self.high_water - 1)
        self.last_latency = latency


POLICIES: dict[str, type[BatchPolicy]] = {
    "adaptive": AdaptivePolicy,
    "eager": EagerPolicy,
    "greedy": GreedyPolicy,
}


def make_policy(name: str) -> BatchPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(
            f"unknown batch_policy {name!r}; set [model.scheduler].batch_policy to one of "
            + ", ".join(repr(k) for k in POLICIES)
        ) from None
