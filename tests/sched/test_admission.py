"""Admission under random arrivals, exits and cancellations: the bounds always hold, waiters
are admitted in arrival order as soon as they fit, and nothing is left claimed at the end."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from pie.sched.admission import Admission

ops = st.lists(
    st.one_of(
        st.tuples(st.just("arrive")),
        st.tuples(st.just("leave"), st.integers(0, 20)),
        st.tuples(st.just("cancel"), st.integers(0, 20)),
        st.tuples(st.just("tick")),
        st.tuples(st.just("tick")),
    ),
    max_size=40,
)


@settings(max_examples=100, deadline=None)
@given(
    ops=ops, max_procs=st.one_of(st.none(), st.integers(1, 4)), factor=st.sampled_from([1.0, 2.5])
)
def test_admission_bounds_and_order(ops, max_procs, factor):
    async def body():
        adm = Admission(
            total_pages=8,
            endowment_pages=3,
            oversubscription=factor,
            max_processes=max_procs,
            default_token_limit=None,
        )
        tasks: dict[str, asyncio.Task] = {}
        order: list[str] = []  # admission order
        n = 0

        async def register(pid: str) -> None:
            await adm.admit(pid, "u")
            order.append(pid)

        def check() -> None:
            running = len(adm.processes)
            assert max_procs is None or running <= max_procs
            assert adm.claimed <= adm.capacity
            assert adm.claimed == 3 * running + 3 * adm._reserved
            # a waiter is only left waiting when the head of the line does not fit
            if adm.waiting and adm._reserved == 0:
                assert not adm._fits(3)

        for o in ops:
            if o[0] == "arrive":
                pid = f"p{n}"
                n += 1
                tasks[pid] = asyncio.ensure_future(register(pid))
            elif o[0] == "leave" and adm.processes:
                pids = sorted(adm.processes)
                adm.leave(pids[o[1] % len(pids)])
            elif o[0] == "cancel":
                pending = [p for p, t in tasks.items() if not t.done()]
                if pending:
                    tasks[pending[o[1] % len(pending)]].cancel()
            elif o[0] == "tick":  # let woken registrations run (other ops race with them)
                await asyncio.sleep(0)
                await asyncio.sleep(0)
            check()
        # admission order follows arrival order (p<i> arrived i-th)
        assert order == sorted(order, key=lambda p: int(p[1:]))
        for t in tasks.values():
            t.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        for pid in list(adm.processes):
            adm.leave(pid)
        assert adm.claimed == 0 and adm._reserved == 0 and not adm.processes

    asyncio.run(body())
