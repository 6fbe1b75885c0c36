"""The scheduler against a real worker process (dummy driver): the descriptors it builds pass
the worker's validation, chunked passes give the tokens of unchunked ones, page copies work,
and logit masks reach the worker."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from sched_fakes import FakeTokenizer

from pie.ipc.client import WorkerClient
from pie.ipc.messages import SamplerSpec
from pie.ipc.spec import WorkerSpec
from pie.sched import ForwardRequest, ModelInfo, Scheduler, SchedulerSettings

pytestmark = pytest.mark.e2e

VOCAB = 500


def test_scheduler_drives_a_dummy_worker():
    async def main():
        spec = WorkerSpec(
            driver="dummy",
            name="dummy",
            options={
                "vocab_size": VOCAB,
                "total_pages": 128,
                "max_batch_tokens": 16,
                "max_batch_size": 8,
                "ring_slots": 4,
                "ring_slot_bytes": 1 << 20,
            },
        )
        async with await WorkerClient.start(spec) as w:
            ps = w.info.page_size
            info = ModelInfo("dummy", "dummy", VOCAB, ps, w.info.max_model_len, (0,), (0,), None)
            cfg = SchedulerSettings(batch_policy="adaptive", default_endowment_pages=4)
            async with Scheduler(info, FakeTokenizer(), w, cfg) as s:
                await s.register_process("p", "alice")
                prompt = [int(x) for x in np.random.default_rng(0).integers(1, VOCAB, 40)]
                outs = [(i, SamplerSpec()) for i in (0, 15, 16, 39)]

                async def prefill() -> tuple[int, list[int]]:
                    c = s.create_context("p")
                    await s.reserve_pages("p", c, -(-len(prompt) // ps) + 1)
                    r = await s.forward(
                        "p", ForwardRequest(c, prompt, list(range(len(prompt))), outputs=outs)
                    )
                    return c, [x.token for x in r]

                # 40 tokens through a 16-token worker: three chunks, outputs in two of them
                (c1, t1), (_, t2) = await asyncio.gather(prefill(), prefill())
                assert t1 == t2 and all(0 <= t < VOCAB for t in t1)
                assert s.stats()["chunked_parts"] >= 2
                f = await s.fork_context("p", c1)
                only_five = [5, 1, VOCAB - 6]  # 0-4 out, 5 in, the rest out
                r = await s.forward(
                    "p",
                    ForwardRequest(
                        f, [7], [40], outputs=[(0, SamplerSpec())], logit_mask=only_five
                    ),
                )
                assert r[0].token == 5
                s.unregister_process("p")
                assert s.stats()["pages_used"] == 0

    asyncio.run(asyncio.wait_for(main(), 60))
