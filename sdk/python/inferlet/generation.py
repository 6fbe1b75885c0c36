"""Token generation on a context: `async for step in ctx.generate(...)`, one pass per step.

Each step feeds the pending input (the prompt on the first step, then the last sampled token),
samples one token at the last input, and stops at a stop token or `max_tokens`. The sampled
token enters the KV cache on the next pass, so a finished context ends with its last token
still pending (a later fill or flush writes it).

Lookahead (the default without constraints): when a step is executed, the pass of the step
after it is queued at once, chained to this one (`inference.forward-after`: its input is the
token this pass samples, filled in by the engine). The engine can then run step k+1 while the
inferlet handles step k's token. A generation that stops on a stop token has already queued the
pass that feeds the stop token; when the loop ends (or at the context's next operation) that
pass is undone (`Context.settle`), so the context ends exactly as without lookahead. Input
appended to the context between steps is handled the same way.

Bursts (`burst=B` > 1): the first step reads the input pass's token alone (the time to the
first token does not change); after that, each step waits for B passes, each chained to the one
before it (`inference.forward-chain`), and reads their tokens in one call
(`inference.wait-chain`). The pass after them is already queued by then, so the engine keeps
running while the inferlet handles the burst, and the inferlet wakes once per B tokens instead
of once per token. Passes past a stop token (at most B) are undone like the lookahead pass.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from wit_world.imports import poll as _poll

from ._errors import PieError
from .context import Ahead, Chain
from .forward import Output, register_samplers, release_samplers
from .sampler import Probe, Sampler


class StepOutput:
    """What one step produced: `tokens` (the accepted tokens) plus probe results."""

    def __init__(self, tokens: list[int], output: Output, probe_slots: list[int]) -> None:
        self.tokens = tokens
        self.output = output
        self._probe_slots = probe_slots

    @property
    def token(self) -> int:
        return self.tokens[0]

    def distribution(self, i: int = 0) -> tuple[list[int], list[float]]:
        return self.output.distribution(self._probe_slots[i])

    def logprobs(self, i: int = 0) -> list[float]:
        return self.output.logprobs(self._probe_slots[i])

    def entropy(self, i: int = 0) -> float:
        return self.output.entropy(self._probe_slots[i])

    def logits(self, i: int = 0) -> list[float]:
        return self.output.logits(self._probe_slots[i])


class GenStep:
    __slots__ = ("_gen",)

    def __init__(self, gen: Generator) -> None:
        self._gen = gen

    def execute(self) -> Awaitable[StepOutput]:
        """Run this step: `out = await step.execute()`."""
        return self._gen._step()


class Generator:
    def __init__(self, ctx, sampler: Sampler, *, max_tokens: int, stop: list[int] | None,
                 constrain: Any, logit_mask: list[int] | None, ignore_eos: bool,
                 probes: list[Probe] | None, lookahead: bool = True, burst: int = 1) -> None:
        if max_tokens < 0:
            raise ValueError("max_tokens must be >= 0")
        if not (isinstance(burst, int) and 1 <= burst <= 64):
            raise ValueError(f"burst must be an integer from 1 to 64, got {burst!r}")
        if burst > 1 and (constrain is not None or probes or not lookahead):
            raise ValueError("burst > 1 reads tokens only: it needs lookahead and cannot be "
                             "combined with constraints or probes (use burst=1 for those)")
        self.burst = burst
        self.ctx = ctx
        self.sampler = sampler
        self.max_tokens = max_tokens
        if ignore_eos:
            self.stop: set[int] = set(stop or [])
        else:
            self.stop = set(ctx.model.stop_tokens() if stop is None else stop)
        self._constraints = [] if constrain is None else (
            list(constrain) if isinstance(constrain, (list, tuple)) else [constrain])
        self._constraints = [c.build_constraint(ctx.model) if hasattr(c, "build_constraint")
                             else c for c in self._constraints]
        self._mask = list(logit_mask or [])
        self._probes = list(probes or [])
        self.generated: list[int] = []
        self._last: list[int] = []
        self.done = max_tokens == 0
        self.stopped_by: int | None = None
        self._lookahead = lookahead and not self._constraints
        self._next_slots = self._slots(0)  # the slots of every one-token step
        self._probe_slots = list(range(1, len(self._next_slots)))
        self._samplers: int | None = None  # their host handle, registered at first use

    def is_done(self) -> bool:
        return self.done

    def tokens_generated(self) -> int:
        return len(self.generated)

    def __aiter__(self) -> Generator:
        return self

    async def __anext__(self) -> GenStep:
        if self.done:
            await self.ctx.settle()
            raise StopAsyncIteration
        return GenStep(self)

    def _slots(self, last: int) -> list[tuple[int, Sampler | Probe]]:
        return [(last, self.sampler)] + [(last, p) for p in self._probes]

    def _input(self) -> list[int]:
        """The context's pending input, which a step without a pass queued ahead feeds."""
        tokens = self.ctx._take_buffer()
        if not tokens:
            self.done = True
            raise PieError("nothing to generate from: the context has no pending input; "
                           "append at least one token (e.g. the next turn) first")
        return tokens

    async def _step(self) -> StepOutput:
        if self.done:
            raise PieError("this generation is finished")
        if self.burst > 1:
            return await self._burst_step()
        ctx = self.ctx
        ahead = ctx._ahead
        if ahead is not None and (ctx._buffer or ctx._text or ctx._ops):
            # input was appended since the last step: it goes after the last sampled token,
            # which the pass queued ahead fed without it; settling undoes that pass and the
            # step is rebuilt from the pending input
            ahead = None
        if ahead is None:
            await ctx.settle()
            mask = self._mask
            for c in self._constraints:
                m = c.step(self._last)
                mask = _brle_and(mask, m) if mask else list(m)
            tokens = self._input()
            slots = self._slots(len(tokens) - 1)
            pos = list(range(ctx.seq_len, ctx.seq_len + len(tokens)))
            handle = ctx._submit(tokens, pos, slots, [], mask)
        else:
            ctx._ahead = None
            handle, pos, slots = ahead.handle, [ahead.position], ahead.slots
        if self._lookahead and len(self.generated) + 1 < self.max_tokens:
            nxt_pos = pos[-1] + 1
            if self._samplers is None:
                self._samplers = register_samplers(self._next_slots)
            ctx._ahead = Ahead(ctx._submit_next(handle, nxt_pos, self._samplers, self._mask),
                               nxt_pos, self._next_slots)
        try:
            out = await ctx._complete(handle, len(pos), pos, slots)
        except BaseException:
            # the pass queued ahead fails with this one
            dropped, ctx._ahead = ctx._ahead, None
            if dropped is not None:
                ctx._inflight -= 1
                _poll.release(dropped.handle)
            self.done = True
            self._release_samplers()
            raise
        tok = out.tokens[0]
        self.generated.append(tok)
        self._last = [tok]
        if ctx._ahead is None:
            ctx._buffer.append(tok)
        else:
            ctx._ahead.fed = tok  # the pass queued ahead feeds it
        if tok in self.stop:
            self.done, self.stopped_by = True, tok
        elif len(self.generated) >= self.max_tokens:
            self.done = True
        if self.done:
            self._release_samplers()
            ctx._close_turn(self.generated, self.stopped_by)
        return StepOutput([tok], out, self._probe_slots)

    async def _burst_step(self) -> StepOutput:
        ctx = self.ctx
        ahead = ctx._ahead
        if ahead is not None and (ctx._buffer or ctx._text or ctx._ops
                                  or not isinstance(ahead, Chain)
                                  or ahead.owner is not self):
            ahead = None  # new input, or passes queued by something else: settle them first
        if ahead is None:
            await ctx.settle()
            tokens = self._input()
            pos = ctx.seq_len + len(tokens) - 1
            handle = ctx._submit(tokens, list(range(ctx.seq_len, pos + 1)),
                                 self._slots(len(tokens) - 1), [], self._mask)
            passes = [(handle, len(tokens), pos)]
            size = 1  # the first token comes alone, as soon as the input pass has run
        else:
            ctx._ahead = None
            passes = [(h, 1, p) for h, p in ahead.passes]  # a chain of this generation: queued
            size = self.burst
        # keep one pass queued past this step, never more than the tokens still wanted
        want = min(size + 1, self.max_tokens - len(self.generated))
        if len(passes) < want:
            if self._samplers is None:
                self._samplers = register_samplers(self._next_slots)
            last, _, pos = passes[-1]
            handles = ctx._submit_chain(last, pos + 1, want - len(passes), self._samplers,
                                        self._mask)
            passes += [(h, 1, pos + 1 + i) for i, h in enumerate(handles)]
        group, rest = passes[:size], passes[size:]
        try:
            toks = await ctx._wait_chain([h for h, _, _ in group], sum(n for _, n, _ in group))
        except BaseException:
            for h, n, _ in rest:  # chained to the group: they fail with it
                ctx._inflight -= n
                _poll.release(h)
            self.done = True
            self._release_samplers()
            raise
        accepted = len(toks)
        for i, tok in enumerate(toks):
            if tok in self.stop:
                self.done, self.stopped_by, accepted = True, tok, i + 1
                break
        toks = toks[:accepted]
        self.generated.extend(toks)
        if len(self.generated) >= self.max_tokens:
            self.done = True
        self._last = [toks[-1]]
        ctx._account(sum(n for _, n, _ in group[:accepted]))
        undone = group[accepted:]  # finished passes that fed tokens past the stop token
        if undone or rest:
            ctx._account(len(undone), commit=False)
            ctx._ahead = Chain(self, [(None, p) for _, _, p in undone]
                               + [(h, p) for h, _, p in rest], toks[-1])
        else:
            ctx._buffer.append(toks[-1])
        if self.done:
            self._release_samplers()
            ctx._close_turn(self.generated, self.stopped_by)
        return StepOutput(toks, Output.taken(toks, [self.sampler]), [])

    def _release_samplers(self) -> None:
        if self._samplers is not None:
            h, self._samplers = self._samplers, None
            release_samplers(h)

    def __del__(self) -> None:
        try:
            self._release_samplers()
        except Exception:  # noqa: BLE001, S110 - the instance may be shutting down
            pass

    async def collect_tokens(self) -> list[int]:
        async for step in self:
            await step.execute()
        return list(self.generated)

    async def collect_text(self, on_text: Callable[[str], Any] | None = None) -> str:
        from .chat import Decoder, Delta

        dec = Decoder(self.ctx.model, stop=self.stop)
        async for step in self:
            out = await step.execute()
            ev = dec.feed(out.tokens)
            if on_text is not None and isinstance(ev, Delta) and ev.text:
                on_text(ev.text)
        return dec.text()

    async def collect_json(self) -> Any:
        import json

        return json.loads(await self.collect_text())


def _brle_and(a: list[int], b: list[int]) -> list[int]:
    """Intersection of two BRLE masks (empty = all allowed)."""
    if not a:
        return list(b)
    if not b:
        return list(a)
    def bits(m: list[int]) -> list[bool]:
        out: list[bool] = []
        v = False
        for run in m:
            out.extend([v] * run)
            v = not v
        return out
    x, y = bits(a), bits(b)
    n = max(len(x), len(y))
    x += [True] * (n - len(x))
    y += [True] * (n - len(y))
    runs, cur, count = [], False, 0
    for u, w in zip(x, y):
        v = u and w
        if v == cur:
            count += 1
        else:
            runs.append(count)
            cur, count = v, 1
    runs.append(count)
    return runs
