"""Sandbox overheads: runner cold start, host-call cost, and batch occupancy.

    .venv/bin/python bench/sandbox.py [--quick]

Prints one table. Each figure is compared, in the same run, with a baseline:
* cold start (instantiate the runner + run a trivial inferlet): pre-initialized snapshot vs
  the snapshot off (SDK imported from source at launch);
* host call (guest-observed, minus an empty guest loop): pre-bound converters vs
  wasmtime-py's generic trampoline, for a scalar call and a list of 16 u32 in and out;
* batch occupancy (N guests looping execute() on the fake engine): fiber guests vs the
  thread-per-guest fallback; reported as the mean steady-state decode batch size over N.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from pie.messaging import MessageHub
from pie.processes import ProcessManager
from pie.sandbox.host import GuestState
from pie.sandbox.sandbox import Sandbox
from pie.sandbox.testing import FakeEngine, ensure_runner, make_program

TRIVIAL = "async def main(input):\n    return 1\n"
CALLS = """
import time
from wit_world.imports import runtime, poll, session
async def main(input):
    n = input["n"]
    hs = [session.receive() for _ in range(16)]
    t = time.perf_counter_ns()
    for _ in range(n):
        pass
    empty = time.perf_counter_ns() - t
    t = time.perf_counter_ns()
    for _ in range(n):
        runtime.elapsed_us()
    scalar = time.perf_counter_ns() - t
    t = time.perf_counter_ns()
    for _ in range(n):
        poll.ready(hs)
    lst = time.perf_counter_ns() - t
    return [(scalar - empty) / n / 1e3, (lst - empty) / n / 1e3]
"""
LOOP = """
import inferlet
async def main(input):
    ctx = inferlet.Context(inferlet.Model.load())
    ctx.append([1, 2, 3])
    await ctx.generate_tokens(inferlet.Sampler.argmax(), max_tokens=input["n"], ignore_eos=True)
    return 0
"""


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def cold_start(snapshot: bool, n: int) -> list[float]:
    sb = Sandbox(python_snapshot=snapshot)
    await sb.start()
    eng = FakeEngine()
    out = []
    for i in range(n):
        st = GuestState(pid=f"p{i}", user="u", engines={"fake": eng}, emit=lambda k, v: None,
                        hub=MessageHub())
        sb.prepare_python(st, TRIVIAL.encode(), "main", "input")
        t = time.perf_counter()
        ok, _ = await sb.run(st, sb.component_for("python", b""), "{}")
        out.append((time.perf_counter() - t) * 1e3)
        assert ok
    sb.close()
    return out[2:]  # the first launches warm caches


async def call_cost(generic: bool, n: int) -> list[float]:
    sb = Sandbox(generic_imports=frozenset({"elapsed-us", "ready"}) if generic else frozenset())
    await sb.start()
    eng = FakeEngine()
    st = GuestState(pid="p", user="u", engines={"fake": eng}, emit=lambda k, v: None,
                    hub=MessageHub())
    sb.prepare_python(st, CALLS.encode(), "main", "input")
    ok, payload = await sb.run(st, sb.component_for("python", b""), json.dumps({"n": n}))
    sb.close()
    assert ok, payload
    return json.loads(payload)


async def occupancy(n_guests: int, steps: int, mode: str) -> float:
    eng = FakeEngine()
    pm = ProcessManager({"fake": eng}, None, sandbox=Sandbox(mode=mode))
    await pm.start()
    prog = make_program(LOOP)
    pids = [await pm.launch(prog, json.dumps({"n": steps}), "u", lambda *a: None)
            for _ in range(n_guests)]
    for p in pids:
        kind, value = await pm.wait(p)
        assert kind == "return", value
    await pm.shutdown()
    # steady state: the last steps-1 batches (launching N guests staggers their prefills)
    return statistics.mean(eng.batches[-(steps - 1):])


async def main(quick: bool) -> None:
    launches = 20 if quick else 60
    calls = 2000 if quick else 20000
    rows = []
    snap = await cold_start(True, launches)
    nosnap = await cold_start(False, max(5, launches // 4))
    rows.append(("cold start p50 (ms)", statistics.median(snap), statistics.median(nosnap),
                 "snapshot off", "<= 5"))
    rows.append(("cold start p99 (ms)", pct(snap, 0.99), pct(nosnap, 0.99), "snapshot off", ""))
    fast = [await call_cost(False, calls) for _ in range(3)]
    slow = [await call_cost(True, calls) for _ in range(3)]
    rows.append(("host call, scalar (us)", statistics.median(f[0] for f in fast),
                 statistics.median(s[0] for s in slow), "generic trampoline", "<= 5"))
    rows.append(("host call, 16 x u32 (us)", statistics.median(f[1] for f in fast),
                 statistics.median(s[1] for s in slow), "generic trampoline", ""))
    steps = 10 if quick else 20
    for n in (8, 64) if quick else (8, 64, 256):
        fiber = await occupancy(n, steps, "fiber")
        thread = await occupancy(n, steps, "thread") if n <= 64 else float("nan")
        rows.append((f"batch size / N, N={n}", fiber / n, thread / n, "thread per guest",
                     ">= 0.95"))
    print(f"{'metric':28} {'pie':>10} {'baseline':>10} {'ratio':>7}  {'baseline is':20} target")
    for name, ours, base, what, target in rows:
        ratio = base / ours if ours else float("nan")
        print(f"{name:28} {ours:10.3f} {base:10.3f} {ratio:7.2f}  {what:20} {target}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = ap.parse_args()
    ensure_runner()  # build/compile the runner first so no figure includes it
    asyncio.run(main(args.quick))
