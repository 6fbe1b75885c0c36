"""WorkerClient against real worker processes running the dummy driver."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from descriptor_factory import Req, batch, replace

from pie.ipc.channel import as_array, to_bytes
from pie.ipc.client import WorkerClient, WorkerDied, WorkerStartError
from pie.ipc.messages import CopyPages, Health, SamplerSpec, SwapIn, SwapOut
from pie.ipc.ring import MessageTooLarge
from pie.ipc.spec import WorkerSpec

pytestmark = pytest.mark.e2e

VOCAB = 1000


def spec(**options) -> WorkerSpec:
    opts = {"vocab_size": VOCAB, "total_pages": 4096, "ring_slots": 4, "ring_slot_bytes": 1 << 20}
    opts.update(options)
    return WorkerSpec(driver="dummy", name="dummy", options=opts)


def shm_exists(name: str) -> bool:
    return os.path.exists(f"/dev/shm/{name}")


def run(coro):
    return asyncio.run(coro)


def decode_batch(bid: int, prompts: list[list[int]], page_base: int = 0) -> object:
    return batch(
        bid, [Req(p, 0, [page_base + i * 4 + k for k in range(4)]) for i, p in enumerate(prompts)]
    )


def test_batch_256_and_tokens_do_not_depend_on_batching():
    async def main():
        progress = []
        async with await WorkerClient.start(spec(), on_progress=progress.append) as c:
            assert c.info.vocab_size == VOCAB and c.info.arch == "dummy"
            prompts = [[(7 * i + j) % VOCAB for j in range(1 + i % 5)] for i in range(256)]
            big = await c.submit(decode_batch(1, prompts))
            assert big.error == ""
            tokens = as_array(big.tokens, "int32")
            assert tokens.shape == (256,)
            assert ((tokens >= 0) & (tokens < VOCAB)).all()
            assert len(set(tokens.tolist())) > 100  # pseudo-random, not constant
            # the same requests alone, and concurrently in many small batches
            alone = await c.submit(decode_batch(2, prompts[:1]))
            assert as_array(alone.tokens, "int32")[0] == tokens[0]
            small = await asyncio.gather(
                *[c.submit(decode_batch(100 + i, prompts[i : i + 8], 0)) for i in range(0, 256, 8)]
            )
            again = np.concatenate([as_array(r.tokens, "int32") for r in small])
            assert np.array_equal(again, tokens)
        return c

    c = run(main())
    assert not any(shm_exists(n) for n in c.ring_names)


def test_logit_masks_are_honoured():
    async def main():
        async with await WorkerClient.start(spec()) as c:
            allowed = [5, 6, 7, 500]
            runs = [5, 3, 492, 1]  # 0-4 out, 5-7 in, 8-499 out, 500 in
            reqs = [Req([i, i + 1], 0, [i], logit_mask=runs) for i in range(64)]
            r = await c.submit(batch(1, reqs))
            assert r.error == ""
            toks = as_array(r.tokens, "int32").tolist()
            assert set(toks) <= set(allowed)
            assert len(set(toks)) > 1
            none = await c.submit(batch(2, [Req([1], 0, [0], logit_mask=[VOCAB])]))
            assert "the logit mask of output row 0 allows no token" in none.error

    run(main())


def test_malformed_batches_fail_alone_and_the_worker_keeps_serving():
    async def main():
        async with await WorkerClient.start(spec(total_pages=64)) as c:
            good = decode_batch(1, [[1, 2, 3]])
            bad_page = replace(
                decode_batch(2, [[1, 2, 3]]), kv_page_indices=to_bytes([640], "int32")
            )
            bad_pos = replace(
                decode_batch(3, [[1, 2, 3]]), positions=to_bytes([0, 1, 2, 3], "int32")
            )
            bad_sampler = replace(
                decode_batch(4, [[1, 2, 3]]), samplers=[SamplerSpec(), SamplerSpec()]
            )
            results = await asyncio.gather(
                c.submit(good),
                c.submit(bad_page),
                c.submit(bad_pos),
                c.submit(bad_sampler),
                c.submit(decode_batch(5, [[1, 2, 3]])),
            )
            ok, e_page, e_pos, e_sampler, ok2 = results
            assert ok.error == "" and ok2.error == ""
            assert ok.tokens == ok2.tokens
            assert "kv_page_indices[0] = 640 is outside the KV pool of 64 pages" in e_page.error
            assert "positions has 4 entries but token_ids has 3" in e_pos.error
            assert "1 output rows but 2 samplers" in e_sampler.error
            for r in (e_page, e_pos, e_sampler):
                assert r.tokens == b"" and r.rows == []
            # control ops: good ones answer, bad ones name the problem
            assert (await c.submit(Health(10))).error == ""
            assert (
                await c.submit(CopyPages(11, to_bytes([1], "int32"), to_bytes([2], "int32")))
            ).error == ""
            bad = await c.submit(SwapOut(12, to_bytes([1], "int32"), to_bytes([99], "int32")))
            assert "host_slots[0] = 99 is outside the host swap space of 16 pages" in bad.error
            assert (
                await c.submit(SwapIn(13, to_bytes([1], "int32"), to_bytes([2], "int32")))
            ).error == ""
            with pytest.raises(ValueError, match="already in flight"):
                await asyncio.gather(c.submit(Health(20)), c.submit(Health(20)))

    run(main())


def test_back_pressure_with_more_requests_than_slots():
    async def main():
        async with await WorkerClient.start(spec(ring_slots=2, step_latency_us=2000)) as c:
            start = time.perf_counter()
            results = await asyncio.gather(*[c.submit(decode_batch(i, [[i]])) for i in range(20)])
            elapsed = time.perf_counter() - start
            assert [r.batch_id for r in results] == list(range(20))
            assert all(r.error == "" for r in results)
            assert elapsed >= 20 * 0.002  # they ran one after another
            assert c.pending == 0

    run(main())


def test_oversize_request_is_refused_and_the_client_keeps_working():
    async def main():
        async with await WorkerClient.start(spec(ring_slot_bytes=4096)) as c:
            with pytest.raises(
                MessageTooLarge,
                match=r"BatchDescriptor of \d+ bytes does not fit a ring slot of 4096 bytes",
            ):
                await c.submit(batch(1, [Req([1] * 2000, 0, list(range(125)))]))
            assert c.pending == 0
            assert (await c.submit(decode_batch(1, [[1, 2]]))).error == ""

    run(main())


def test_killed_worker_fails_pending_requests_fast_and_leaves_no_shm():
    async def main():
        c = await WorkerClient.start(spec(step_latency_us=3_000_000))
        names = c.ring_names
        futs = [asyncio.ensure_future(c.submit(decode_batch(i, [[i]]))) for i in range(3)]
        await asyncio.sleep(0.3)  # the first batch is inside its 3 s forward pass
        os.kill(c.pids[0], signal.SIGKILL)
        start = time.perf_counter()
        for f in futs:
            with pytest.raises(
                WorkerDied, match=r"exited with code -9 while 3 request\(s\) were pending"
            ):
                await asyncio.wait_for(f, 2.0)
        assert time.perf_counter() - start < 1.0
        with pytest.raises(WorkerDied):
            await c.submit(Health(99))
        await c.close()
        await c.close()
        assert not any(shm_exists(n) for n in names)

    run(main())


def test_start_errors_are_one_clear_sentence():
    async def main():
        with pytest.raises(
            WorkerStartError, match=r"unknown driver 'nope'; set \[model.driver\].type"
        ):
            await WorkerClient.start(WorkerSpec(driver="nope", name="m"))

    run(main())


def test_controller_crash_leaves_no_worker_and_no_shm(tmp_path):
    script = tmp_path / "controller.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, sys, time
            from pie.ipc.client import WorkerClient
            from pie.ipc.spec import WorkerSpec

            async def main():
                c = await WorkerClient.start(WorkerSpec(driver="dummy", options={"vocab_size": 10}))
                print(" ".join([*c.ring_names, str(c.pids[0])]), flush=True)
                await asyncio.sleep(60)

            if __name__ == "__main__":
                asyncio.run(main())
            """
        )
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        req, resp, worker_pid = proc.stdout.readline().split()
        assert shm_exists(req) and shm_exists(resp)
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        deadline = time.time() + 10
        while time.time() < deadline and (
            shm_exists(req) or shm_exists(resp) or _alive(int(worker_pid))
        ):
            time.sleep(0.1)
        assert not _alive(int(worker_pid)), "the worker outlived its controller"
        assert not shm_exists(req) and not shm_exists(resp), "rings leaked after a controller crash"
    finally:
        proc.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_probes_unknown_stages_and_oversize_results():

    async def main():
        async with await WorkerClient.start(
            spec(max_dist_size=VOCAB, ring_slot_bytes=64 << 10)
        ) as c:
            probe = SamplerSpec(dist_k=4, entropy=True, logprob_ids=to_bytes([1, 2], "int32"))
            reqs = [Req([3, 4], 0, [0], sampler=probe), Req([5], 0, [1])]
            r = await c.submit(batch(1, reqs))
            assert r.error == ""
            assert len(r.rows) == 2
            row = r.rows[0]
            assert len(as_array(row.dist_ids, "int32")) == 4
            probs = as_array(row.dist_probs, "float32")
            assert np.all(np.diff(probs) <= 0) and 0 < probs.sum() <= 1.0001
            assert row.entropy > 0
            assert len(as_array(row.logprobs, "float32")) == 2
            assert r.rows[0].token == as_array(r.tokens, "int32")[0]
            again = await c.submit(batch(2, reqs))
            assert again.rows[0] == r.rows[0]  # the dummy's logits are deterministic
            bad = await c.submit(
                batch(3, [Req([3], 0, [0], sampler=SamplerSpec(extra={"no_such": 1.0}))])
            )
            assert "sampler 0 sets 'no_such', which no registered sampling stage reads" in bad.error
            assert (await c.submit(batch(4, reqs))).error == ""
            # a result larger than a slot becomes that batch's error, not a hang
            raw = [Req([i], 0, [i], sampler=SamplerSpec(raw_logits=True)) for i in range(20)]
            r = await c.submit(batch(5, raw))  # 20 x 1000 float32 logits > 64 KiB
            assert "BatchResult of" in r.error
            assert "does not fit a ring slot of 65536 bytes" in r.error
            r = await c.submit(batch(6, raw[:2]))
            assert r.error == "" and len(as_array(r.rows[1].logits, "float32")) == VOCAB

    run(main())


def test_idle_worker_parks():
    """A worker with nothing to do burns (almost) no CPU: it parks after its spin window."""
    psutil = pytest.importorskip("psutil")

    async def main():
        async with await WorkerClient.start(spec()) as c:
            await c.submit(Health(1))
            proc = psutil.Process(c.pids[0])
            before = proc.cpu_times()
            await asyncio.sleep(1.0)
            after = proc.cpu_times()
            used = (after.user + after.system) - (before.user + before.system)
            assert used < 0.1, f"an idle worker used {used:.2f} s of CPU in 1 s"

    run(main())


def test_a_script_without_a_main_guard_can_start_workers(tmp_path):
    """spawn must not re-run the caller's script in the worker (it would recurse)."""
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import asyncio\n"
        "from pie.ipc.client import WorkerClient\n"
        "from pie.ipc.spec import WorkerSpec\n"
        "async def main():\n"
        "    c = await WorkerClient.start(WorkerSpec(driver='dummy', options={'vocab_size': 10}))\n"
        "    print('ready', c.info.vocab_size)\n"
        "    await c.close()\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ready", "10"]
