"""One forward pass built by the guest (`ctx.forward()`) and its output.

A pass names its inputs (tokens at explicit positions), optional attention and logit masks
(binary run-length encoded), and output slots: samplers and probes at input indices. The
context does the KV page accounting around it (reserve before, commit full pages after).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from wit_world.imports import inference as _inf
from wit_world.imports import poll as _poll

from ._errors import call
from .sampler import Probe, Sampler, sampler_record

if TYPE_CHECKING:
    from .context import Context


class Output:
    """The outputs of one pass, read from the host on demand (logits stay host-side)."""

    def __init__(self, handle: int, slots: list[Sampler | Probe]) -> None:
        self._slots = slots
        if not has_probe(slots):
            # nothing but tokens to read: take them and free the host-side rows in one call
            self._h = None
            self.tokens: list[int] = call(_inf.take_tokens, handle)
            return
        self._h = handle
        try:
            self.tokens = list(call(_inf.tokens, handle))
        except BaseException:
            self.release()
            raise

    @classmethod
    def taken(cls, tokens: list[int], slots: list[Sampler | Probe]) -> Output:
        """The output of a pass without probes whose tokens were already taken."""
        out = cls.__new__(cls)
        out._slots, out._h, out.tokens = slots, None, tokens
        return out

    def release(self) -> None:
        """Free the host-side results (probes cannot be read afterwards)."""
        if self._h is not None:
            _poll.release(self._h)
            self._h = None

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # noqa: BLE001, S110 - the instance may be shutting down
            pass

    def token(self, slot: int = 0) -> int:
        """The token chosen by sampler slot `slot` (counting only sampling slots)."""
        sampling = [i for i, s in enumerate(self._slots) if isinstance(s, Sampler)]
        return self.tokens[sampling.index(slot)] if slot in sampling else self.tokens[slot]

    def distribution(self, slot: int) -> tuple[list[int], list[float]]:
        ids, probs = call(_inf.distribution, self._h, slot)
        return list(ids), list(probs)

    def logits(self, slot: int) -> list[float]:
        raw = call(_inf.logits, self._h, slot)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))

    def logits_bytes(self, slot: int) -> bytes:
        return call(_inf.logits, self._h, slot)

    def logprobs(self, slot: int) -> list[float]:
        return list(call(_inf.logprobs, self._h, slot))

    def entropy(self, slot: int) -> float:
        return call(_inf.entropy, self._h, slot)


class Forward:
    """Builder of one pass on a context; `await fwd.execute()` runs it.

    The pass's inputs are the context's pending tokens (fills not yet written) followed by
    the tokens added with `input`/`input_at`; sampler and probe indices count all of them.
    """

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._tokens: list[int] = []
        self._positions: list[int] | None = []
        self._slots: list[tuple[int, Sampler | Probe]] = []
        self._attn: list[list[int]] = []
        self._mask: list[int] = []

    def input(self, tokens: list[int]) -> Forward:
        """Append tokens at the next positions after the context's sequence."""
        start = self._ctx.seq_len + len(self._ctx._buffer) + len(self._tokens)
        self._positions.extend(range(start, start + len(tokens)))
        self._tokens.extend(tokens)
        return self

    def input_at(self, tokens: list[int], positions: list[int]) -> Forward:
        if len(tokens) != len(positions):
            raise ValueError("input_at needs one position per token")
        self._tokens.extend(tokens)
        self._positions.extend(positions)
        return self

    def attention_mask(self, rows: list[list[int]]) -> Forward:
        """One BRLE row per input token over the context's KV slots."""
        self._attn = [list(r) for r in rows]
        return self

    def mask(self, brle: list[int]) -> Forward:
        """A vocabulary mask (BRLE) applied before every sampler of this pass."""
        self._mask = list(brle)
        return self

    logit_mask = mask

    def sample(self, indices: int | list[int], sampler: Sampler) -> list[int]:
        """Attach `sampler` at each input index; returns the slot numbers."""
        return self._attach(indices, sampler)

    def probe(self, indices: int | list[int], probe: Probe) -> list[int]:
        return self._attach(indices, probe)

    def _attach(self, indices: int | list[int], what: Sampler | Probe) -> list[int]:
        idx = [indices] if isinstance(indices, int) else list(indices)
        out = []
        for i in idx:
            out.append(len(self._slots))
            self._slots.append((i, what))
        return out

    async def execute(self) -> Output:
        return await self._ctx._run_pass(
            self._tokens, self._positions, self._slots, self._attn, self._mask
        )


def submit(ctx_handle: int, tokens: list[int], positions: list[int],
           slots: list[tuple[int, Sampler | Probe]], attn: list[list[int]], mask: list[int]) -> int:
    recs = [sampler_record(i, s) for i, s in slots]
    return call(_inf.forward, ctx_handle, tokens, positions, recs, attn, mask)


def submit_next(ctx_handle: int, after: int, position: int, samplers: int,
                mask: list[int]) -> int:
    """Queue a one-token pass whose input is the token pass `after` samples (not known yet).

    `samplers` is a handle of the slots registered once (`register_samplers`).
    """
    return call(_inf.forward_next, ctx_handle, after, position, samplers, mask)


def register_samplers(slots: list[tuple[int, Sampler | Probe]]) -> int:
    """A host handle for these output slots, reused by every `submit_next` that has them."""
    return call(_inf.register_samplers, [sampler_record(i, s) for i, s in slots])


def release_samplers(handle: int) -> None:
    _inf.release_samplers(handle)


def has_probe(slots: list[Sampler | Probe]) -> bool:
    for s in slots:
        if isinstance(s, Probe):
            return True
    return False
