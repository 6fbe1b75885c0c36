"""The scheduler on the real default model (portable driver, float32 on CPU): greedy tokens are
the same whether the prompt is prefilled at once, in small chunks, on top of a prefix shared
with another context, or in a fork."""

from __future__ import annotations

import asyncio

import pytest
from sched_fakes import FakeTokenizer

from pie.ipc.client import WorkerClient
from pie.ipc.messages import SamplerSpec
from pie.ipc.spec import WorkerSpec
from pie.sched import ForwardRequest, ModelInfo, Scheduler, SchedulerSettings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 2, 198, 1, 520, 9531, 198, 57, 5248, 1535, 30, 2]
STEPS = 4


async def greedy(s: Scheduler, pid: str, ctx: int, prompt: list[int], start: int = 0) -> list[int]:
    """Prefill `prompt` at positions start.. and decode STEPS greedy tokens."""
    info = s.context_info(pid, ctx)
    ps = info.page_size
    need = -(-(start + len(prompt) + STEPS) // ps) - info.committed_pages - info.working_pages
    if need > 0:
        await s.reserve_pages(pid, ctx, need)
    pos = list(range(start, start + len(prompt)))
    (r,) = await s.forward(
        pid, ForwardRequest(ctx, prompt, pos, outputs=[(len(prompt) - 1, SamplerSpec())])
    )
    out = [r.token]
    for i in range(STEPS - 1):
        (r,) = await s.forward(
            pid, ForwardRequest(ctx, [out[-1]], [pos[-1] + 1 + i], outputs=[(0, SamplerSpec())])
        )
        out.append(r.token)
    return out


def test_chunked_shared_and_forked_prefill_match_on_the_real_model():
    async def main():
        spec = WorkerSpec(
            model="",
            driver="portable",
            devices=("cpu",),
            dtype="float32",
            name="smollm",
            options={"total_pages": 32, "num_threads": 1, "ring_slot_bytes": 1 << 20},
        )
        async with await WorkerClient.start(spec) as w:
            wi = w.info
            info = ModelInfo("smollm", wi.arch, wi.vocab_size, wi.page_size, wi.max_model_len,
                             (2,), (2,), 1)  # fmt: skip
            cfg = SchedulerSettings(batch_policy="eager", default_endowment_pages=4)
            results = {}
            for name, max_tokens in (("whole", None), ("chunked", 5)):
                async with Scheduler(info, FakeTokenizer(), w, cfg) as s:
                    if max_tokens:
                        s.max_batch_tokens = max_tokens  # as if the worker accepted only 5
                    await s.register_process("p", "u")
                    results[name] = await greedy(s, "p", s.create_context("p"), PROMPT)
                    if name == "whole":
                        ps = wi.page_size
                        # a committed prefix shared with a second context, which then prefills
                        # the rest on top of the shared pages
                        a = s.create_context("p")
                        await s.reserve_pages("p", a, 1)
                        await s.forward("p", ForwardRequest(a, PROMPT[:ps], list(range(ps))))
                        s.commit_pages("p", a, 1)
                        b = s.create_context("p")
                        await s.reserve_pages("p", b, 1)
                        await s.forward("p", ForwardRequest(b, PROMPT[:ps], list(range(ps))))
                        s.commit_pages("p", b, 1)
                        assert s.stats()["pages_shared"] == 1
                        results["shared"] = await greedy(s, "p", b, PROMPT[ps:], start=ps)
                        f = await s.fork_context("p", a)
                        results["fork"] = await greedy(s, "p", f, PROMPT[ps:], start=ps)
                    s.unregister_process("p")
                    assert s.stats()["pages_used"] == 0
            assert results["whole"] == results["chunked"] == results["shared"] == results["fork"]

    asyncio.run(asyncio.wait_for(main(), 300))
