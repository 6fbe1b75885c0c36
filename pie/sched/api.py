"""The narrow interfaces the inferlet host side uses to reach the engine.

`pie/sandbox/` (the host side of the WIT world) talks to a model only through these two
protocols; `pie/sched/` implements `EngineService` for real, and tests implement it with an
in-process fake. Everything here is plain Python: no torch, no wasmtime.

Ownership: every context belongs to a process id (`pid`); named snapshots belong to a user.
A process may only touch its own contexts; the engine checks that and raises `EngineError`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

from pie.ipc.messages import RowResult, SamplerSpec


class EngineError(Exception):
    """A request the engine refuses; the message is meant for the inferlet author."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    arch: str
    vocab_size: int
    page_size: int
    max_model_len: int
    eos_token_ids: tuple[int, ...]
    stop_token_ids: tuple[int, ...]  # tokens that end an assistant turn (eos included)
    bos_token_id: int | None


@dataclass(slots=True)
class ForwardRequest:
    """One forward pass of one context.

    `tokens[i]` is written at the context's next free KV slot with RoPE position
    `positions[i]`. `attention_mask`, when given, has one BRLE row per input token over the
    context's KV slots (after this pass); `logit_mask` is one BRLE over the vocabulary applied
    to every output row. `outputs` attaches a sampler to input indices, one output each, in
    order.
    """

    ctx: int
    tokens: list[int]
    positions: list[int]
    outputs: list[tuple[int, SamplerSpec]] = field(default_factory=list)
    attention_mask: list[list[int]] | None = None
    logit_mask: list[int] | None = None
    after: ForwardRequest | None = None
    """When set, `tokens[0]` is a placeholder for the token that `after`'s first sampling
    output produces; the pass is queued at once and becomes runnable the moment `after`
    finishes, so a decode loop keeps one pass ahead of its caller. If `after` fails, so does
    this pass."""
    ticket: object | None = field(default=None, repr=False)
    """Set by the engine when the pass is queued (what `after` of a later pass links to)."""


@dataclass(slots=True)
class ContextInfo:
    page_size: int
    committed_pages: int
    working_pages: int
    working_tokens: int  # tokens written into working pages, not yet committed


class TokenizerService(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def vocab(self) -> tuple[list[int], list[bytes]]: ...
    def special_tokens(self) -> tuple[list[int], list[bytes]]: ...
    def render_chat(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str: ...


class EngineService(Protocol):
    """One model's scheduler as seen by the inferlets (one instance per [[model]])."""

    info: ModelInfo
    tokenizer: TokenizerService

    # process lifecycle (admission, budgets, cleanup)
    async def register_process(self, pid: str, user: str, token_limit: int | None = None) -> None: ...
    def unregister_process(self, pid: str) -> None: ...  # frees every context it owns

    # contexts
    def create_context(self, pid: str) -> int: ...
    async def fork_context(self, pid: str, ctx: int) -> int: ...
    def destroy_context(self, pid: str, ctx: int) -> None: ...
    def context_info(self, pid: str, ctx: int) -> ContextInfo: ...
    async def reserve_pages(self, pid: str, ctx: int, n: int) -> None: ...
    def release_pages(self, pid: str, ctx: int, n: int) -> None: ...
    def commit_pages(self, pid: str, ctx: int, n: int) -> None: ...
    def truncate_tokens(self, pid: str, ctx: int, n: int) -> None: ...
    def set_bid(self, pid: str, ctx: int, value: float) -> None: ...

    # named snapshots, namespaced by user
    async def save_snapshot(self, pid: str, ctx: int, name: str) -> None: ...
    async def open_snapshot(self, pid: str, name: str) -> int: ...  # a fork; snapshot stays
    def take_snapshot(self, pid: str, name: str) -> int: ...  # moves; snapshot deleted
    def delete_snapshot(self, pid: str, name: str) -> None: ...

    # the hot path
    async def forward(self, pid: str, req: ForwardRequest) -> list[RowResult]: ...
    # the same, queued at once (errors raise here); the future resolves to the outputs
    def submit_forward(self, pid: str, req: ForwardRequest) -> asyncio.Future[list[RowResult]]: ...

    # observables for the scheduling interface
    def stats(self) -> dict: ...
