"""IPC benchmark: ring round trips against multiprocessing.Queue, and the worker's overhead.

    python bench/ipc.py            # full run (about a minute on 2 cores)
    python bench/ipc.py --quick    # fewer iterations

Part 1 echoes messages through a second process, over two `Ring`s and, in the same run, over
two `multiprocessing.Queue`s: a decode-sized descriptor (8 requests), a prefill-sized one
(4096 tokens) and a 49152-float logits row. Median (p50) and p99 of the round trip.

Part 2 runs the same decode batch (8 requests on the default model) through a `WorkerClient`
and by calling the model directly in this process; the difference of the medians is the
worker's overhead per batch (ring + encode/decode + validation + tensor build + sampling).
The dummy driver's round trip shows the overhead without a model.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pie.ipc.channel import Channel, as_array, to_bytes
from pie.ipc.messages import BatchDescriptor, Request, SamplerSpec
from pie.ipc.ring import Ring, RingClosed

PAGE = 16


def descriptor(num_requests: int, tokens_each: int, start: int = 0) -> BatchDescriptor:
    toks, pos, qo, pages, pindptr, last, out = [], [], [0], [], [0], [], []
    for r in range(num_requests):
        kv = start + tokens_each
        n_pages = (kv + PAGE - 1) // PAGE
        toks += [(r * 31 + i) % 49152 for i in range(tokens_each)]
        pos += list(range(start, kv))
        qo.append(len(toks))
        pages += [r * 16 + p for p in range(n_pages)]
        pindptr.append(len(pages))
        last.append(kv - (n_pages - 1) * PAGE)
        out.append(len(toks) - 1)
    return BatchDescriptor(
        batch_id=0,
        token_ids=to_bytes(toks, "int32"),
        positions=to_bytes(pos, "int32"),
        qo_indptr=to_bytes(qo, "int32"),
        kv_page_indices=to_bytes(pages, "int32"),
        kv_page_indptr=to_bytes(pindptr, "int32"),
        kv_last_page_len=to_bytes(last, "int32"),
        output_rows=to_bytes(out, "int32"),
        samplers=[SamplerSpec()] * num_requests,
    )


# --- part 1: transports -------------------------------------------------------------------------


def _ring_echo(req: str, resp: str, spin_us: float) -> None:
    r = Ring.attach(req, reader_index=0, spin_us=spin_us)
    w = Ring.attach(resp, writer=True, spin_us=spin_us)
    try:
        while True:
            with r.read() as view:
                w.write(view)
    except RingClosed:
        pass
    r.close()
    w.close()


def _queue_echo(q_in, q_out) -> None:
    while True:
        item = q_in.get()
        if item is None:
            return
        q_out.put(item)


def _percentiles(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    return s[len(s) // 2] * 1e6, s[min(len(s) - 1, int(len(s) * 0.99))] * 1e6


def bench_transports(payloads: dict[str, bytes], iters: int, spin_us: float) -> list[tuple]:
    ctx = mp.get_context("spawn")
    rows = []
    req = Ring.create(num_slots=8, slot_bytes=1 << 20, tag="breq", spin_us=spin_us)
    resp = Ring.create(num_slots=8, slot_bytes=1 << 20, tag="bresp", spin_us=spin_us)
    back = Ring.attach(resp.name, reader_index=0, spin_us=spin_us)
    echo = ctx.Process(target=_ring_echo, args=(req.name, resp.name, spin_us), daemon=True)
    echo.start()
    q_in, q_out = ctx.Queue(), ctx.Queue()
    qecho = ctx.Process(target=_queue_echo, args=(q_in, q_out), daemon=True)
    qecho.start()
    try:
        for name, data in payloads.items():
            n = max(50, iters if len(data) < 10_000 else iters // 4)
            ring_t, queue_t = [], []
            for i in range(n + 20):  # first 20 are warm-up
                t = time.perf_counter()
                req.write(data)
                with back.read() as view:
                    assert len(view) == len(data)
                if i >= 20:
                    ring_t.append(time.perf_counter() - t)
            for i in range(n + 20):
                t = time.perf_counter()
                q_in.put(data)
                got = q_out.get()
                if i >= 20:
                    queue_t.append(time.perf_counter() - t)
                assert len(got) == len(data)
            rp50, rp99 = _percentiles(ring_t)
            qp50, qp99 = _percentiles(queue_t)
            rows.append((name, len(data), rp50, rp99, qp50, qp99, qp50 / rp50))
    finally:
        req.close()
        q_in.put(None)
        echo.join(5)
        qecho.join(5)
        back.close()
        resp.close()
    return rows


def bench_codec(desc: BatchDescriptor, iters: int) -> tuple[float, float]:
    """Encode into a ring + read + decode (one process): the channel's own cost, in us."""
    w = Ring.create(num_slots=4, slot_bytes=1 << 20)
    r = Ring.attach(w.name, reader_index=0)
    tx, rx = Channel(w, Request), Channel(r, Request)
    samples = []
    for _ in range(iters):
        t = time.perf_counter()
        tx.send(desc)
        got = rx.recv()
        as_array(got.token_ids, "int32")
        samples.append(time.perf_counter() - t)
    r.close()
    w.close()
    return _percentiles(samples)


# --- part 2: the worker ---------------------------------------------------------------------------


def bench_worker(iters: int, skip_model: bool) -> list[tuple]:
    """Rows of (what, p50 us, ratio or None) for the worker path."""
    from pie.ipc.client import WorkerClient
    from pie.ipc.spec import WorkerSpec

    desc = descriptor(8, 1, start=40)
    rows = []

    def numbered(i: int) -> BatchDescriptor:
        fields = {f: getattr(desc, f) for f in desc.__struct_fields__}
        return BatchDescriptor(**{**fields, "batch_id": i})

    async def through(spec: WorkerSpec) -> tuple[list[float], list[float]]:
        """Round trips and (round trip - the worker's own time) per batch, in seconds."""
        async with await WorkerClient.start(spec) as c:
            rtt, transport = [], []
            for i in range(iters + 5):
                t = time.perf_counter()
                r = await c.submit(numbered(i))
                dt = time.perf_counter() - t
                assert r.error == "", r.error
                if i >= 5:
                    rtt.append(dt)
                    transport.append(dt - r.forward_us * 1e-6)
            return rtt, transport

    med = statistics.median
    rtt, transport = asyncio.run(through(WorkerSpec(driver="dummy", options={"total_pages": 1024})))
    rows.append(("dummy driver: submit round trip", med(rtt) * 1e6, None))
    rows.append(
        (
            "dummy driver: round trip minus worker time (ring, codec, client)",
            med(transport) * 1e6,
            None,
        )
    )
    if skip_model:
        return rows
    opts = {"total_pages": 256, "num_threads": 1}
    rtt, transport = asyncio.run(through(WorkerSpec(driver="portable", options=opts)))
    rows.append(("portable worker: submit round trip", med(rtt) * 1e6, None))
    rows.append(("portable worker: round trip minus worker time", med(transport) * 1e6, None))

    # in this process, alternating so machine load hits both alike: the worker's runner
    # (decode + checks + tensor build + forward + sampling) against the bare model call
    import torch

    from pie.kernels.attention import AttentionPlan
    from pie.worker.batch import ForwardBatch
    from pie.worker.drivers.portable import PortableDriver
    from pie.worker.runner import Runner

    driver = PortableDriver(WorkerSpec(driver="portable", options=opts))
    runner = Runner(driver)
    model, kv = driver.lm.model, driver.kv
    fb = ForwardBatch.decode(desc, runner.limits)
    ids = torch.from_numpy(fb.token_ids.astype(np.int64))
    pos = torch.from_numpy(fb.positions.astype(np.int64))
    out = torch.from_numpy(fb.output_rows.astype(np.int64))
    via_runner, direct = [], []
    for i in range(iters + 5):
        t = time.perf_counter()
        plan = AttentionPlan.build(
            fb.qo_indptr, fb.kv_page_indices, fb.kv_page_indptr, fb.kv_last_page_len, PAGE
        )
        torch.argmax(model.forward_batch(ids, pos, plan, kv, out), dim=-1).numpy()
        t1 = time.perf_counter()
        assert runner.handle(desc).error == ""
        t2 = time.perf_counter()
        if i >= 5:
            direct.append(t1 - t)
            via_runner.append(t2 - t1)
    d50, r50 = med(direct) * 1e6, med(via_runner) * 1e6
    overhead = med([b - a for a, b in zip(direct, via_runner)]) * 1e6
    rows.append(("model called directly (plan + forward + argmax)", d50, None))
    rows.append(
        ("worker runner in-process (checks + tensors + forward + sampling)", r50, r50 / d50)
    )
    total = overhead + med(transport) * 1e6
    rows.append(
        ("worker overhead per batch (runner extra + transport)", total, (d50 + total) / d50)
    )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer iterations")
    ap.add_argument("--spin-us", type=float, default=100.0, help="ring spin window (us)")
    ap.add_argument("--no-model", action="store_true", help="skip the default-model worker part")
    args = ap.parse_args()
    iters = 400 if args.quick else 3000
    codec = msgspec_codec()
    small = descriptor(8, 1, start=40)
    large = descriptor(1, 4096)
    payloads = {
        "decode descriptor (8 req)": codec.encode(small),
        "prefill descriptor (4096 tok)": codec.encode(large),
        "logits row (49152 x f32)": np.random.rand(49152).astype(np.float32).tobytes(),
    }
    print(
        f"# bench/ipc.py  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  "
        f"cpus={os.cpu_count()}  spin_us={args.spin_us}"
    )
    print()
    print(
        "| message | bytes | ring p50 us | ring p99 us | mp.Queue p50 us | mp.Queue p99 us "
        "| Queue/ring p50 |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, n, rp50, rp99, qp50, qp99, ratio in bench_transports(payloads, iters, args.spin_us):
        print(
            f"| {name} | {n} | {rp50:.1f} | {rp99:.1f} | {qp50:.1f} | {qp99:.1f} | {ratio:.1f}x |"
        )
    for label, d in (("decode", small), ("prefill", large)):
        p50, p99 = bench_codec(d, 200 if args.quick else 1000)
        print(
            f"| {label} descriptor: encode + ring + decode, one process | "
            f"{len(codec.encode(d))} | {p50:.1f} | {p99:.1f} | | | |"
        )
    print()
    print("| worker path (decode batch, 8 requests) | p50 us | worker / direct |")
    print("| --- | ---: | ---: |")
    for name, p50, ratio in bench_worker(30 if args.quick else 100, args.no_model):
        print(f"| {name} | {p50:.0f} | {'' if ratio is None else f'{ratio:.2f}x'} |")


def msgspec_codec():
    import msgspec

    return msgspec.msgpack.Encoder()


if __name__ == "__main__":
    main()
