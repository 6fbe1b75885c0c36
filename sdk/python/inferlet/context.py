"""The inferlet's KV context: chat fills, prefill, forward passes, forks and snapshots.

The SDK keeps the page accounting the engine checks: before a pass it reserves the working
pages the new tokens need, after it commits every full working page (so identical prefixes are
shared engine-wide). Chat fills are text until the next pass, so a whole prompt is encoded in
one piece, exactly as the model's tokenizer would encode the rendered template.
"""

from __future__ import annotations

from typing import Any

from wit_world.imports import context as _ctx
from wit_world.imports import inference as _inf

from . import _loop
from ._errors import PieError, call
from .forward import Forward, Output, has_probe, submit, submit_next
from .model import Model
from .sampler import Probe, Sampler


class Ahead:
    """A one-token pass queued ahead by a generation, fed by the token of the pass before it."""

    __slots__ = ("fed", "handle", "position", "slots")

    def __init__(self, handle: int, position: int, slots: list) -> None:
        self.handle, self.position, self.slots = handle, position, slots
        self.fed = -1  # the token it feeds, once the pass before it has been read


class Chain:
    """Passes a burst generation has queued past the last token it accepted.

    `passes` holds (handle, position) in order; a handle of None is a pass that has finished
    and is counted in the working tokens. `fed` is the token the first of them feeds. The
    generation that queued them (`owner`) continues from them; anything else settles them.
    """

    __slots__ = ("fed", "owner", "passes")

    def __init__(self, owner: object, passes: list[tuple[int | None, int]], fed: int) -> None:
        self.owner, self.passes, self.fed = owner, passes, fed


class Context:
    """A KV cache handle owned by this inferlet. Use as a context manager to release it."""

    def __init__(self, model: Model | None = None, *, _handle: int | None = None) -> None:
        self.model = model if model is not None else Model.load()
        self._h = call(_ctx.create, self.model._h) if _handle is None else _handle
        self.page_size, self.committed_pages, self.working_pages, self.working_tokens = call(
            _ctx.pages, self._h
        )
        self.seq_len = self.committed_pages * self.page_size + self.working_tokens
        self._buffer: list[int] = []
        self._text = ""  # pending chat text, encoded at the next pass
        self._messages: list[tuple[str, str]] = []
        self._rendered = ""
        self._ops: list[tuple] = []  # chat steps not yet rendered (see `_render_pending`)
        self._turn_open = False  # after cue(), until the generated reply is recorded
        self._released = False
        self._inflight = 0  # input tokens of passes submitted and not yet completed
        self._ahead: Ahead | Chain | None = None  # chained passes a generation queued ahead

    # --- chat fills (no engine work until the next pass) ----------------------------------
    #
    # Fills, cues and the end of a generated turn are queued (`_ops`) and rendered when the
    # text is needed (the next pass, `buffer()`, raw text appended after them): a prompt
    # built from several fills then costs one render of the chat template, not one per fill,
    # and a turn that nothing follows is never rendered. When the whole conversation's render
    # does not continue what is already in the context, the queued steps are applied one by
    # one, each as its own render.

    def _fill(self, role: str, content: str) -> Context:
        self._ops.append(("fill", role, content))
        return self

    def system(self, text: str) -> Context:
        return self._fill("system", text)

    def user(self, text: str) -> Context:
        return self._fill("user", text)

    def assistant(self, text: str) -> Context:
        return self._fill("assistant", text)

    def cue(self) -> Context:
        """Open the assistant turn (the template's generation prompt)."""
        self._ops.append(("cue",))
        self._turn_open = True
        return self

    def seal(self) -> Context:
        """Close a generated assistant turn: nothing to add when it ended on a stop token."""
        return self

    def _close_turn(self, tokens: list[int], stop_token: int | None) -> None:
        """Record a generated assistant reply so later fills continue the template exactly.

        With a stop token the turn is already closed in the KV (plus whatever the template
        puts after it, e.g. a newline, which becomes pending); without one (max_tokens) the
        template's end of turn is added as pending text, so the next fill starts cleanly.
        """
        if not self._turn_open:
            return
        self._turn_open = False
        self._ops.append(("close", list(tokens), stop_token))

    def _render_pending(self) -> None:
        """Turn the queued chat steps into pending text. A render that fails (the template
        raised) leaves the steps it did not apply queued, the context as it was before them."""
        ops = self._ops
        if not ops:
            return
        messages, base, gen, rest = list(self._messages), self._rendered, False, ops
        closed = None
        if ops[0][0] == "close":
            closed = self._reply(ops[0][1], ops[0][2])
            messages.append(("assistant", closed[0]))
            base, rest = closed[1], ops[1:]
        whole = True
        for op in rest:
            if op[0] == "fill" and not gen:
                messages.append((op[1], op[2]))
            elif op[0] == "cue":
                gen = True
            else:  # a fill after a cue: step by step, as the template may render it apart
                whole = False
                break
        if whole:
            full = self.model.render_chat(messages, gen)
            if full.startswith(base):
                self._text += full[len(base):]
                self._messages, self._rendered, self._ops = messages, full, []
                return
        for i, op in enumerate(ops):  # each step changes the context only once it rendered
            if op[0] == "fill":
                self._apply_fill(op[1], op[2])
            elif op[0] == "cue":
                self._apply_cue()
            else:
                reply = closed if i == 0 and closed is not None else self._reply(op[1], op[2])
                self._apply_close(*reply)
            self._ops = ops[i + 1:]

    def _reply(self, tokens: list[int], stop_token: int | None) -> tuple[str, str]:
        """(the reply's text, the text the KV holds once it is written)."""
        tok = self.model.tokenizer()
        body = [t for t in tokens if t != stop_token] if stop_token is not None else tokens
        text = tok.decode(body)
        return text, self._rendered + text + (tok.decode([stop_token]) if stop_token is not None
                                              else "")

    def _apply_fill(self, role: str, content: str) -> None:
        msgs = self._messages + [(role, content)]
        text = self.model.render_chat(msgs, False)
        if text.startswith(self._rendered):
            self._text += text[len(self._rendered):]
        else:  # the template re-renders earlier turns: add this message on its own
            self._text += self.model.render_chat([(role, content)], False)
        self._messages, self._rendered = msgs, text

    def _apply_cue(self) -> None:
        full = self.model.render_chat(self._messages, True)
        self._text += full[len(self._rendered):]
        self._rendered = full

    def _apply_close(self, text: str, kv_text: str) -> None:
        self._messages = self._messages + [("assistant", text)]
        full = self.model.render_chat(self._messages, False)
        if full.startswith(kv_text):
            self._text += full[len(kv_text):]
        self._rendered = full

    def append(self, tokens: list[int] | str) -> Context:
        """Append raw tokens (or text) to the pending input."""
        if isinstance(tokens, str):
            self._render_pending()  # after the fills queued before it
            self._text += tokens
        else:
            self._encode_text()
            self._buffer.extend(int(t) for t in tokens)
        return self

    append_text = append

    def _encode_text(self) -> None:
        if self._ops:
            self._render_pending()
        if self._text:
            self._buffer.extend(self.model.tokenizer().encode(self._text))
            self._text = ""

    def buffer(self) -> list[int]:
        self._encode_text()
        return list(self._buffer)

    def _take_buffer(self) -> list[int]:
        self._encode_text()
        out, self._buffer = self._buffer, []
        return out

    # --- passes ----------------------------------------------------------------------------

    async def flush(self, keep_last: bool = True) -> None:
        """Prefill the pending tokens in one pass with no output.

        The last pending token stays pending by default: the next pass (a generation step)
        feeds it, because sampling needs that token's output row. `keep_last=False` writes
        everything (what `save` does).
        """
        await self.settle()
        self._check()
        tokens = self._take_buffer()
        if keep_last and tokens:
            self._buffer = tokens[-1:]
            tokens = tokens[:-1]
        if tokens:
            pos = list(range(self.seq_len, self.seq_len + len(tokens)))
            await self._run_pass(tokens, pos, [], [], [], take_pending=False)

    def forward(self) -> Forward:
        return Forward(self)

    async def _run_pass(self, tokens: list[int], positions: list[int],
                        slots: list[tuple[int, Sampler | Probe]], attn: list[list[int]],
                        mask: list[int], take_pending: bool = True) -> Output:
        await self.settle()
        self._check()
        pending = self._take_buffer() if take_pending else []
        if pending:  # tokens buffered before this pass go first (slot indices count them)
            base = self.seq_len
            positions = list(range(base, base + len(pending))) + list(positions)
            tokens = pending + list(tokens)
        if not tokens:
            raise PieError("a forward pass needs at least one input token")
        handle = self._submit(tokens, positions, slots, attn, mask)
        return await self._complete(handle, len(tokens), positions, slots)

    def _reserve_for(self, n: int) -> None:
        need = (-(-(self.working_tokens + self._inflight + n) // self.page_size)
                - self.working_pages)
        if need > 0:
            call(_ctx.reserve_pages, self._h, need)
            self.working_pages += need

    def _submit(self, tokens: list[int], positions: list[int],
                slots: list[tuple[int, Sampler | Probe]], attn: list[list[int]],
                mask: list[int]) -> int:
        """Reserve the pages `tokens` need and queue the pass; `_complete` finishes it."""
        self._reserve_for(len(tokens))
        handle = submit(self._h, tokens, positions, slots, attn, mask)
        self._inflight += len(tokens)
        return handle

    def _submit_next(self, after: int, position: int, samplers: int, mask: list[int]) -> int:
        """Queue a one-token pass fed by the token pass `after` samples (see `generate`)."""
        self._reserve_for(1)
        handle = submit_next(self._h, after, position, samplers, mask)
        self._inflight += 1
        return handle

    def _submit_chain(self, after: int, position: int, count: int, samplers: int,
                      mask: list[int]) -> list[int]:
        """Queue `count` one-token passes, each fed by the one before (the first by `after`)."""
        self._reserve_for(count)
        handles = call(_inf.forward_chain, self._h, after, position, count, samplers, mask)
        self._inflight += count
        return handles

    async def _wait_chain(self, handles: list[int], n: int) -> list[int]:
        """Wait for passes of `n` input tokens in all; the first sampled token of each."""
        try:
            if not _loop.idle():
                for h in handles:
                    await _loop.wait_for(h)
            return call(_inf.wait_chain, handles)
        finally:
            self._inflight -= n

    def _account(self, n: int, commit: bool = True, end: int = 0) -> None:
        """`n` more input tokens are in the KV (the sequence reaching at least position `end`);
        commit the working pages they fill."""
        self.working_tokens += n
        self.seq_len = max(self.seq_len + n, end)
        full = self.working_tokens // self.page_size if commit else 0
        if full:
            call(_ctx.commit_pages, self._h, full)
            self.committed_pages += full
            self.working_pages -= full
            self.working_tokens -= full * self.page_size

    async def _complete(self, handle: int, n: int, positions: list[int],
                        slots: list[tuple[int, Sampler | Probe]], commit: bool = True) -> Output:
        """Wait for a submitted pass, then account its tokens and commit full pages."""
        kinds = [s for _, s in slots]
        out = None
        try:
            if _loop.idle() and not has_probe(kinds):
                # nothing else to run here: wait and take the tokens in one host call
                out = Output.taken(call(_inf.wait_tokens, handle), kinds)
            else:
                await _loop.wait_for(handle)
        finally:
            self._inflight -= n
        if out is None:
            out = Output(handle, kinds)
        self._account(n, commit, max(positions) + 1)
        return out

    async def settle(self) -> None:
        """Undo a pass a generation queued ahead and no longer needs.

        A generation submits its next step before the inferlet reads the current one; when it
        ends on a stop token (or the inferlet leaves the loop early), that step has already
        written the last sampled token. Settling waits for it and takes the token back out of
        the KV into the pending input, exactly where it is without lookahead; the step's own
        output is dropped. Every operation on the context settles first, and so does the end
        of an `async for` over `generate`.
        """
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return
        if isinstance(ahead, Chain):
            running = [h for h, _ in ahead.passes if h is not None]
            if running:
                await self._wait_chain(running, len(running))
                self._account(len(running), commit=False)
            n = len(ahead.passes)
            call(_ctx.truncate_tokens, self._h, n)
            self.working_tokens -= n
            self.seq_len -= n
            self._buffer.insert(0, ahead.fed)
            return
        out = await self._complete(ahead.handle, 1, [ahead.position], ahead.slots, commit=False)
        out.release()
        call(_ctx.truncate_tokens, self._h, 1)
        self.working_tokens -= 1
        self.seq_len -= 1
        self._buffer.insert(0, ahead.fed)

    def _check_settled(self) -> None:
        if self._ahead is not None:
            raise PieError("a generation step of this context is still running; finish the "
                           "`async for` over generate() or `await ctx.settle()` first")

    def generate(self, sampler: Sampler | None = None, *, max_tokens: int = 256,
                 stop: list[int] | None = None, constrain: Any = None,
                 logit_mask: list[int] | None = None, ignore_eos: bool = False,
                 probes: list[Probe] | None = None, lookahead: bool = True, burst: int = 1):
        """Steps of token generation (see `inferlet.generation`).

        `lookahead` (default on, off with a constraint) queues step k+1, fed by the token step
        k samples, before the inferlet reads step k, so the engine never waits for the
        inferlet between steps. A generation that ends on a stop token then computes one
        extra step, whose output is discarded.

        `burst` > 1 makes each step read up to that many tokens: the engine runs the passes
        chained one after another and the inferlet wakes once per burst, which saves it
        per-token work (tokens then arrive in groups). A stop token inside a burst ends the
        generation there; the passes computed past it (at most `burst`) are discarded. Bursts
        read tokens only: they cannot be combined with constraints or probes.
        """
        from .generation import Generator

        return Generator(self, sampler or Sampler.argmax(), max_tokens=max_tokens, stop=stop,
                         constrain=constrain, logit_mask=logit_mask, ignore_eos=ignore_eos,
                         probes=probes, lookahead=lookahead, burst=burst)

    async def generate_text(self, sampler: Sampler | None = None, *, max_tokens: int = 256,
                            stop: list[int] | None = None, constrain: Any = None,
                            ignore_eos: bool = False, on_text=None, burst: int = 1) -> str:
        """Generate and return the decoded text (without the final stop token)."""
        gen = self.generate(sampler, max_tokens=max_tokens, stop=stop, constrain=constrain,
                            ignore_eos=ignore_eos, burst=burst)
        return await gen.collect_text(on_text=on_text)

    async def generate_tokens(self, sampler: Sampler | None = None, **kw: Any) -> list[int]:
        return await self.generate(sampler, **kw).collect_tokens()

    # --- structure -------------------------------------------------------------------------

    async def fork(self) -> Context:
        """A copy sharing this context's KV; pending (unflushed) input is copied too."""
        await self.settle()
        self._check()
        child = Context(self.model, _handle=call(_ctx.fork, self._h))
        child._copy_pending_from(self)
        return child

    def fork_sync(self) -> Context:
        self._check()
        self._check_settled()
        child = Context(self.model, _handle=call(_ctx.fork, self._h))
        child._copy_pending_from(self)
        return child

    def _copy_pending_from(self, other: Context) -> None:
        self._buffer = list(other._buffer)
        self._text = other._text
        self._ops = list(other._ops)
        self._messages = list(other._messages)
        self._rendered = other._rendered
        self._turn_open = other._turn_open
        self.seq_len = other.seq_len

    async def save(self, name: str) -> None:
        """Save a named snapshot (pending input is flushed first)."""
        await self.flush(keep_last=False)
        call(_ctx.save, self._h, name)

    @staticmethod
    def open(model: Model, name: str) -> Context:
        return Context(model, _handle=call(_ctx.open, model._h, name))

    @staticmethod
    def take(model: Model, name: str) -> Context:
        return Context(model, _handle=call(_ctx.take, model._h, name))

    @staticmethod
    def delete(model: Model, name: str) -> None:
        call(_ctx.delete, model._h, name)

    def truncate(self, n: int) -> None:
        """Forget the last n tokens written into working pages."""
        self._check_settled()
        call(_ctx.truncate_tokens, self._h, n)
        self._sync()

    def release_pages(self, n: int) -> None:
        self._check_settled()
        call(_ctx.release_pages, self._h, n)
        self._sync()

    def _sync(self) -> None:
        _, self.committed_pages, self.working_pages, self.working_tokens = call(_ctx.pages, self._h)

    def set_bid(self, value: float) -> None:
        call(_ctx.set_bid, self._h, float(value))

    def suspend(self) -> None:
        call(_ctx.suspend, self._h)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._ahead = None  # a pass still queued ahead is dropped with the context
            call(_ctx.destroy, self._h)

    destroy = release

    def _check(self) -> None:
        if self._released:
            raise PieError("this context was released; create or fork a new one")

    def __enter__(self) -> Context:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Context(model={self.model.name!r}, seq_len={self.seq_len})"
