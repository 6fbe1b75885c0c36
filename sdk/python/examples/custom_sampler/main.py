"""A sampler written in the inferlet: probe the top-k distribution, choose in the guest.

Each step asks the engine for the top-k (ids, probabilities) instead of a token, then picks
with the guest's own rule: here "min-probability nucleus with a repetition ban" (tokens used
in the last `window` steps are skipped unless nothing else is left), seeded for
reproducibility. Input: {"prompt": str, "max_tokens": int, "k": int, "window": int, "seed": int}.
"""

import random

import inferlet


def pick(ids: list, probs: list, recent: list, rng: random.Random) -> int:
    candidates = [(i, p) for i, p in zip(ids, probs) if i not in recent and p >= 0.01]
    if not candidates:
        return ids[0]
    total = sum(p for _, p in candidates)
    r = rng.random() * total
    for i, p in candidates:
        r -= p
        if r <= 0:
            return i
    return candidates[-1][0]


async def main(input: dict) -> dict:
    model = inferlet.Model.load()
    ctx = inferlet.Context(model)
    ctx.user(input.get("prompt", "Tell me a story."))
    ctx.cue()
    rng = random.Random(int(input.get("seed", 0)))
    k, window = int(input.get("k", 16)), int(input.get("window", 4))
    stop = set(model.stop_tokens())
    chosen: list = []
    for _ in range(int(input.get("max_tokens", 32))):
        fwd = ctx.forward()
        pending = ctx.buffer()
        fwd.probe(len(pending) - 1, inferlet.Probe.distribution(k=k))
        out = await fwd.execute()
        ids, probs = out.distribution(0)
        tok = pick(ids, probs, chosen[-window:], rng)
        chosen.append(tok)
        if tok in stop:
            break
        ctx.append([tok])
    text = model.tokenizer().decode([t for t in chosen if t not in stop])
    return {"tokens": chosen, "text": text}
