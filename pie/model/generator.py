"""`Generator`: batched text generation straight on the model layer, with a private page pool.

This is the smallest complete user of `LlamaModel.forward_batch`: it keeps one paged KV pool,
gives each sequence its own page table, runs every active sequence in one ragged batch per step
(whole prompts on the first step, one token each afterwards) and samples the next tokens. It is
what `pie generate`, the model tests and `bench/forward.py` drive; the serving path goes
through the worker and scheduler instead and does not use it.

    prompts (token ids) -> step: ragged batch [T] + AttentionPlan -> logits [B, V] -> next tokens
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from pie.kernels.attention import AttentionPlan
from pie.model.llama import LlamaModel


class PagePool:
    """Free list of KV page ids; `shuffle_seed` hands pages out in a scrambled order (for tests)."""

    def __init__(self, num_pages: int, shuffle_seed: int | None = None) -> None:
        self.free = list(range(num_pages))
        if shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(self.free)
        self.free.reverse()  # pop() then yields the list's original head first

    def can_allocate(self, n: int) -> bool:
        return len(self.free) >= n

    def allocate(self, n: int) -> list[int]:
        if n > len(self.free):
            raise RuntimeError(
                f"KV pool exhausted: need {n} pages, {len(self.free)} free; raise num_pages"
            )
        return [self.free.pop() for _ in range(n)]

    def deallocate(self, pages: list[int]) -> None:
        self.free.extend(reversed(pages))


@dataclass
class _Sequence:
    tokens: list[int]
    pending: int  # tokens at the end of `tokens` not yet in the KV cache
    pages: list[int] = field(default_factory=list)
    new_tokens: list[int] = field(default_factory=list)
    done: bool = False


class Generator:
    """Greedy or sampled generation for a batch of prompts over one paged KV pool."""

    def __init__(
        self,
        model: LlamaModel,
        page_size: int = 16,
        num_pages: int = 256,
        shuffle_pages_seed: int | None = None,
    ) -> None:
        self.model = model
        self.page_size = page_size
        self.kv = model.allocate_kv(num_pages, page_size)
        self.pool = PagePool(num_pages, shuffle_pages_seed)

    def _grow(self, seq: _Sequence) -> None:
        need = -(-len(seq.tokens) // self.page_size) - len(seq.pages)
        if need > 0:
            seq.pages.extend(self.pool.allocate(need))

    def step(self, seqs: list[_Sequence]) -> torch.Tensor:
        """One ragged forward over every sequence's pending tokens; logits [len(seqs), V]."""
        qo, pages, page_ptr, last_len, ids, pos, out_rows = [0], [], [0], [], [], [], []
        for s in seqs:
            self._grow(s)
            n, total = s.pending, len(s.tokens)
            ids.extend(s.tokens[total - n :])
            pos.extend(range(total - n, total))
            qo.append(qo[-1] + n)
            out_rows.append(qo[-1] - 1)
            pages.extend(s.pages)
            page_ptr.append(len(pages))
            last_len.append(total - (len(s.pages) - 1) * self.page_size)
        dev = self.model.device
        plan = AttentionPlan.build(
            np.array(qo),
            np.array(pages),
            np.array(page_ptr),
            np.array(last_len),
            self.page_size,
            device=dev,
        )
        logits = self.model.forward_batch(
            torch.tensor(ids, device=dev),
            torch.tensor(pos, device=dev),
            plan,
            self.kv,
            torch.tensor(out_rows, device=dev),
        )
        for s in seqs:
            s.pending = 0
        return logits

    def generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop_token_ids: tuple[int, ...] | list[int] = (),
        seed: int | None = None,
        on_token: Callable[[int, int], None] | None = None,
    ) -> list[list[int]]:
        """New tokens per prompt (a stop token ends a sequence and is included in its output).

        `on_token(sequence_index, token)` is called as each token is chosen (for streaming).
        """
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        stops = set(stop_token_ids)
        seqs = [_Sequence(tokens=list(p), pending=len(p)) for p in prompts]
        try:
            for step in range(max_new_tokens):
                active = [i for i, s in enumerate(seqs) if not s.done]
                if not active:
                    break
                logits = self.step([seqs[i] for i in active])
                nxt = self._sample(logits, temperature, top_p, seed, step)
                for i, t in zip(active, nxt):
                    s = seqs[i]
                    s.tokens.append(t)
                    s.new_tokens.append(t)
                    s.pending = 1
                    if on_token is not None:
                        on_token(i, t)
                    if t in stops:
                        s.done = True
        finally:
            for s in seqs:
                self.pool.deallocate(s.pages)
                s.pages = []
        return [s.new_tokens for s in seqs]

    @staticmethod
    def _sample(
        logits: torch.Tensor, temperature: float, top_p: float, seed: int | None, step: int
    ) -> list[int]:
        """Next token per row: argmax when greedy, else the shared sampling pipeline."""
        # logits: [B, V] float32
        if temperature <= 0:
            return logits.argmax(-1).tolist()
        from pie.ipc.messages import SamplerSpec
        from pie.kernels.sampling import sample_rows

        def row_seed(row: int) -> int:
            # a distinct reproducible stream per (seed, step, row); 0 would mean "fresh randomness"
            return 0 if seed is None else (seed * 1_000_003 + step * 8191 + row) % (2**31 - 1) + 1

        specs = [
            SamplerSpec(temperature=temperature, top_p=top_p, seed=row_seed(r))
            for r in range(logits.shape[0])
        ]
        tokens, _ = sample_rows(logits, specs)
        return tokens.tolist()
