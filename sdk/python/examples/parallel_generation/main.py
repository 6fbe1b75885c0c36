"""Several continuations of one prompt, generated in parallel from a shared prefix.

The prompt is prefilled once; each branch is a `fork()` of it (the KV pages are shared, not
recomputed), and the branches generate concurrently, so the engine batches their steps.
Input: {"prompt": str, "n": int, "max_tokens": int}. Returns the list of texts.
"""

import asyncio

import inferlet


async def main(input: dict) -> list:
    model = inferlet.Model.load()
    base = inferlet.Context(model)
    base.system("You are a creative writer.")
    base.user(input.get("prompt", "Write one line about the sea."))
    base.cue()
    await base.flush()
    n = int(input.get("n", 4))
    branches = [await base.fork() for _ in range(n)]
    samplers = [inferlet.Sampler.top_k(0.8, 40, seed=i + 1) for i in range(n)]
    texts = await asyncio.gather(*(
        b.generate_text(s, max_tokens=int(input.get("max_tokens", 32)))
        for b, s in zip(branches, samplers)))
    for b in branches:
        b.release()
    return list(texts)
