"""Chat text completion, streamed to the client as it is generated.

Input: {"prompt": str, "system": str, "max_tokens": int, "temperature": float, "burst": int}
Events: one `message` per decoded text delta; returns the full reply. `burst` > 1 reads that
many tokens per step (fewer wake-ups of the inferlet, deltas in bigger pieces).
"""

import inferlet
from inferlet import chat


async def main(input: dict) -> str:
    model = inferlet.Model.load()
    ctx = inferlet.Context(model)
    ctx.system(input.get("system", "You are a helpful assistant."))
    ctx.user(input.get("prompt", "Hello"))
    ctx.cue()
    temperature = float(input.get("temperature", 0.0))
    sampler = (inferlet.Sampler.top_p(temperature, 0.95) if temperature > 0
               else inferlet.Sampler.argmax())
    decoder = chat.Decoder(model)
    text = ""
    async for step in ctx.generate(sampler, max_tokens=int(input.get("max_tokens", 128)),
                                   burst=int(input.get("burst", 1))):
        out = await step.execute()
        event = decoder.feed(out.tokens)
        if isinstance(event, chat.Delta):
            inferlet.session.send(event.text)
            text += event.text
        elif isinstance(event, chat.Done):
            return event.text
    return text
