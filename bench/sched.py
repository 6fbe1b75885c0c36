"""Scheduler overhead per request with 8 / 64 / 256 / 1024 live contexts decoding in lock step.

Every context runs a decode loop (one token per pass) against an instant worker, so all time
measured is controller time (process CPU time, which other jobs on a shared machine do not
inflate): `forward()` validation and KV slot claim, the policy, batch
selection and numpy packing, msgpack encoding of the descriptor, result scatter and waking the
inferlet coroutine.

Baselines in the same run:
* `floor`: the same coroutines exchanging futures with a trivial loop that batches them
  without any scheduling work: the cost of asyncio itself, which no scheduler can beat.
* `naive pack`: building the same descriptor with per-token Python lists instead of numpy.

    .venv/bin/python bench/sched.py [--steps 30] [--repeats 5] [--no-uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import struct
import time

import msgspec
import numpy as np

from pie.ipc.messages import BatchDescriptor, BatchResult, SamplerSpec, WorkerInfo
from pie.sched import ForwardRequest, ModelInfo, Scheduler, SchedulerSettings
from pie.sched.batch import pack, select

PAGE = 16
VOCAB = 49152
SIZES = (8, 64, 256, 1024)
_ENC = msgspec.msgpack.Encoder()


class InstantWorker:
    """Answers every batch at once with token 7 for each output row (after encoding it)."""

    def __init__(self, total_pages: int) -> None:
        self.info = WorkerInfo(
            arch="bench",
            vocab_size=VOCAB,
            page_size=PAGE,
            total_pages=total_pages,
            host_pages=0,
            max_batch_tokens=16384,
            max_batch_size=2048,
            max_model_len=8192,
            dtype="bfloat16",
            device="none",
        )
        self.batches = 0

    async def submit(self, msg: object) -> BatchResult:
        _ENC.encode(msg)  # the ring write would do this
        self.batches += 1
        if isinstance(msg, BatchDescriptor):
            n = len(msg.output_rows) // 4
            return BatchResult(batch_id=msg.batch_id, tokens=np.full(n, 7, np.int32).tobytes())
        return BatchResult(batch_id=getattr(msg, "batch_id", 0))


class _Tok:
    def encode(self, text: str) -> list[int]:
        return []

    def decode(self, ids: list[int]) -> str:
        return ""

    def vocab(self):
        return [], []

    def special_tokens(self):
        return [], []

    def render_chat(self, messages, add_generation_prompt=True) -> str:
        return ""


async def scheduler_run(n: int, steps: int, policy: str = "eager") -> float:
    """CPU seconds per request for `n` contexts doing `steps` decode passes each."""
    prompt = 64
    pages = n * (-(-(prompt + steps) // PAGE)) + 16
    worker = InstantWorker(pages)
    info = ModelInfo("bench", "bench", VOCAB, PAGE, 8192, (0,), (0,), None)
    cfg = SchedulerSettings(batch_policy=policy, default_endowment_pages=1)
    s = Scheduler(info, _Tok(), worker, cfg)
    s.start()
    sampler = SamplerSpec()
    ready = asyncio.Event()
    started = 0

    async def inferlet(i: int) -> None:
        nonlocal started
        pid = f"p{i}"
        await s.register_process(pid, "bench")
        ctx = s.create_context(pid)
        await s.reserve_pages(pid, ctx, -(-(prompt + steps) // PAGE))
        await s.forward(pid, ForwardRequest(ctx, list(range(1, prompt + 1)), list(range(prompt))))
        started += 1
        if started == n:
            ready.set()
        await ready.wait()
        tok = 1
        for step in range(steps):
            (r,) = await s.forward(
                pid, ForwardRequest(ctx, [tok], [prompt + step], outputs=[(0, sampler)])
            )
            tok = r.token

    tasks = [asyncio.ensure_future(inferlet(i)) for i in range(n)]
    await ready.wait()
    t0 = time.process_time()
    await asyncio.gather(*tasks)
    dt = time.process_time() - t0
    await s.close()
    return dt / (n * steps)


async def floor_run(n: int, steps: int) -> float:
    """The same coroutine traffic through a loop that only batches futures."""
    queue: list[asyncio.Future] = []
    arrival = asyncio.Event()

    async def loop() -> None:
        while True:
            await arrival.wait()
            arrival.clear()
            await asyncio.sleep(0)
            batch, queue[:] = list(queue), []
            for f in batch:
                f.set_result(7)

    async def inferlet() -> None:
        for _ in range(steps):
            f = asyncio.get_running_loop().create_future()
            queue.append(f)
            arrival.set()
            await f

    task = asyncio.ensure_future(loop())
    t0 = time.process_time()
    await asyncio.gather(*(inferlet() for _ in range(n)))
    dt = time.process_time() - t0
    task.cancel()
    return dt / (n * steps)


def _pack_inputs(n: int, tokens: int):
    """A batch of `n` passes of `tokens` tokens each over 80-token histories."""
    import collections

    from pie.sched.context import Context
    from pie.sched.request import PendingForward

    loop = asyncio.new_event_loop()
    queue = collections.deque()
    for i in range(n):
        npages = -(-(80 + tokens) // PAGE)
        ctx = Context(
            id=i + 1, owner="p", page_size=PAGE, working=list(range(i * npages, (i + 1) * npages))
        )
        queue.append(
            PendingForward(
                pid="p",
                ctx=ctx,
                tokens=np.full(tokens, 5, np.int32),
                positions=np.arange(80, 80 + tokens, dtype=np.int32),
                out_list=[tokens - 1],
                n=tokens,
                samplers=[SamplerSpec()],
                masks=None,
                logit_mask=None,
                start=80,
                future=loop.create_future(),
                enqueued=0.0,
                deadline=1e9,
                results=[None],
            )
        )
    loop.close()
    return queue


def naive_pack(queue) -> BatchDescriptor:
    """Per-token Python lists + struct.pack: the way not to build a descriptor."""
    toks, poss, qo, pages, pind, last, rows, samplers = [], [], [0], [], [0], [], [], []
    for req in queue:
        for t, p in zip(req.tokens.tolist(), req.positions.tolist()):
            toks.append(t)
            poss.append(p)
        kv = req.start + len(req.tokens)
        np_ = -(-kv // PAGE)
        for pg in (req.ctx.committed + req.ctx.working)[:np_]:
            pages.append(pg)  # noqa: PERF402 - the naive way, on purpose
        pind.append(len(pages))
        last.append(kv - (np_ - 1) * PAGE)
        for i in req.out_list:
            rows.append(qo[-1] + i)
        samplers.extend(req.samplers)
        qo.append(len(toks))

    def b(xs):
        return struct.pack(f"<{len(xs)}i", *xs)

    return BatchDescriptor(
        0, b(toks), b(poss), b(qo), b(pages), b(pind), b(last), b(rows), samplers
    )


def pack_us(n: int, tokens: int, repeats: int) -> tuple[float, float]:
    """Median µs per pass to select + pack a batch, numpy vs per-token lists."""
    queue = _pack_inputs(n, tokens)
    fast, slow = [], []
    for _ in range(repeats * 5):
        for r in queue:
            r.sent = 0
        t0 = time.perf_counter()
        parts, _, _ = select(queue, 1 << 30, 2048)
        d1 = pack(parts, 1, PAGE).descriptor
        fast.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        d2 = naive_pack(queue)
        slow.append(time.perf_counter() - t0)
    assert d1.token_ids == d2.token_ids and d1.kv_page_indices == d2.kv_page_indices
    assert d1.kv_last_page_len == d2.kv_last_page_len and d1.output_rows == d2.output_rows
    return statistics.median(fast) / n * 1e6, statistics.median(slow) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-uvloop", action="store_true")
    args = ap.parse_args()
    runner = asyncio.run
    loop_name = "asyncio"
    if not args.no_uvloop:
        try:
            import uvloop

            runner = uvloop.run
            loop_name = "uvloop"
        except ImportError:
            pass
    print(
        f"scheduler overhead, decode steps={args.steps}, repeats={args.repeats}, loop={loop_name}"
    )
    print(
        f"{'contexts':>8} | {'sched cpu us':>12} | {'floor cpu us':>12} | {'sched-floor':>11} | "
        f"{'pack 1 tok':>10} | {'naive 1 tok':>11} | {'pack 128':>8} | {'naive 128':>9} | "
        f"{'naive/np 128':>12}"
    )
    print("-" * 120)
    for n in SIZES:
        sched = [runner(scheduler_run(n, args.steps)) * 1e6 for _ in range(args.repeats)]
        floor = [runner(floor_run(n, args.steps)) * 1e6 for _ in range(args.repeats)]
        ms, mf = statistics.median(sched), statistics.median(floor)
        fast1, slow1 = pack_us(n, 1, args.repeats)
        fast128, slow128 = pack_us(min(n, 128), 128, args.repeats)
        print(
            f"{n:>8} | {ms:>12.1f} | {mf:>12.1f} | {ms - mf:>11.1f} | {fast1:>10.2f} | "
            f"{slow1:>11.2f} | {fast128:>8.2f} | {slow128:>9.2f} | {slow128 / fast128:>11.1f}x"
        )
    print("cpu us = CPU microseconds per forward pass (median of repeats); pack columns: select +")
    print("pack of one batch per pass, 1-token (decode) and 128-token (prefill) passes;")
    print("the 128-token batch holds min(contexts, 128) passes.")


if __name__ == "__main__":
    main()
