"""An in-process fake engine for testing inferlets without a model or a worker.

`FakeEngine` implements `pie.sched.api.EngineService` with a deterministic "model": the
logits of a row are a pseudo-random function of every (token, position) in the context's KV
up to that row, so greedy decoding depends on the whole prefix (forks, snapshots and page
accounting mistakes show up as different tokens). It keeps real page accounting (a forward
pass that writes past the reserved pages fails, as the real scheduler's does), namespaces
snapshots by user, checks that a process only touches its own contexts (attention masks
are checked for shape but not applied: the scheduler tests' paged worker does that), and batches
concurrent `forward` calls: a batch fires once an event-loop turn passes with no new request
and no guest is still running (`abi.runnable_guests()`, bounded by `cohort_wait_s`), and
`batches` records every batch's size.

`FakeTokenizer` is byte-level plus three ChatML specials. Used by the sandbox and process
tests and by `bench/sandbox.py`; `reference_greedy` computes what greedy decoding must yield.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

import numpy as np

from pie.ipc.messages import RowResult
from pie.sandbox.abi import runnable_guests
from pie.sched.api import ContextInfo, EngineError, ForwardRequest, ModelInfo

IM_START, IM_END, EOT = 256, 257, 258
SPECIALS = {"<|im_start|>": IM_START, "<|im_end|>": IM_END, "<|endoftext|>": EOT}
VOCAB = 260


class FakeTokenizer:
    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        i = 0
        while i < len(text):
            for s, t in SPECIALS.items():
                if text.startswith(s, i):
                    out.append(t)
                    i += len(s)
                    break
            else:
                j = i
                while j < len(text) and not any(text.startswith(s, j) for s in SPECIALS):
                    j += 1
                out.extend(text[i:j].encode("utf-8"))
                i = j
        return out

    def decode(self, ids: list[int]) -> str:
        inv = {v: k for k, v in SPECIALS.items()}
        parts, buf = [], bytearray()
        for t in ids:
            if t < 256:
                buf.append(t)
            else:
                parts.append(buf.decode("utf-8", "replace"))
                buf = bytearray()
                parts.append(inv.get(t, ""))
        parts.append(buf.decode("utf-8", "replace"))
        return "".join(parts)

    def vocab(self) -> tuple[list[int], list[bytes]]:
        inv = {v: k.encode() for k, v in SPECIALS.items()}
        return list(range(VOCAB)), [bytes([i]) if i < 256 else inv.get(i, b"") for i in range(VOCAB)]

    def special_tokens(self) -> tuple[list[int], list[bytes]]:
        return list(SPECIALS.values()), [k.encode() for k in SPECIALS]

    def render_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        out = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return out + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def fake_logits(kv: list[tuple[int, int]]) -> np.ndarray:
    """The fake model: logits after the KV sequence `kv` of (token, position) pairs."""
    h = hashlib.blake2b(np.asarray(kv, np.int64).tobytes(), digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(h, "little"))
    logits = rng.standard_normal(VOCAB).astype(np.float32) * 3.0
    logits[258:] -= 100.0  # never <|endoftext|> or padding
    logits[IM_END] += 2.0 if len(kv) % 7 == 0 else -4.0  # end turns now and then
    return logits


def reference_greedy(prompt: list[int], max_tokens: int, stop: set[int]) -> list[int]:
    """What greedy decoding must produce from `prompt` (positions 0..n-1)."""
    kv = [(t, i) for i, t in enumerate(prompt)]
    out: list[int] = []
    for _ in range(max_tokens):
        tok = int(np.argmax(fake_logits(kv)))
        out.append(tok)
        if tok in stop:
            break
        kv.append((tok, len(kv)))
    return out


@dataclass
class _Ctx:
    pid: str | None
    committed: list[tuple[int, int]] = field(default_factory=list)  # full pages of KV rows
    working: list[tuple[int, int]] = field(default_factory=list)
    committed_pages: int = 0
    working_pages: int = 0
    bid: float = 0.0

    def copy(self, pid: str | None) -> _Ctx:
        return _Ctx(pid, list(self.committed), list(self.working), self.committed_pages,
                    self.working_pages, self.bid)


class FakeEngine:
    """A deterministic EngineService; see the module docstring."""

    def __init__(self, name: str = "fake", page_size: int = 16, total_pages: int = 1 << 16,
                 max_model_len: int = 8192, forward_delay_s: float = 0.0,
                 cohort_wait_s: float = 0.25) -> None:
        self.info = ModelInfo(name=name, arch="fake", vocab_size=VOCAB, page_size=page_size,
                              max_model_len=max_model_len, eos_token_ids=(EOT,),
                              stop_token_ids=(IM_END, EOT), bos_token_id=None)
        self.tokenizer = FakeTokenizer()
        self.total_pages = total_pages
        self.used_pages = 0
        self.forward_delay_s = forward_delay_s
        self.processes: dict[str, str] = {}
        self.unregistered: list[str] = []
        self.batches: list[int] = []
        self.forward_calls = 0
        self._ctxs: dict[int, _Ctx] = {}
        self._snapshots: dict[tuple[str, str], _Ctx] = {}
        self._next = 1
        self._queue: list[tuple[asyncio.Future, str, ForwardRequest]] = []
        self._flush_scheduled = False
        self._seen = 0
        self._first_idle: float | None = None
        self.cohort_wait_s = cohort_wait_s

    # --- processes -----------------------------------------------------------------------

    async def register_process(self, pid: str, user: str, token_limit: int | None = None) -> None:
        self.processes[pid] = user

    def unregister_process(self, pid: str) -> None:
        for cid in [c for c, x in self._ctxs.items() if x.pid == pid]:
            self._free(cid)
        self.processes.pop(pid, None)
        self.unregistered.append(pid)

    def _user(self, pid: str) -> str:
        if pid not in self.processes:
            raise EngineError(f"process {pid} is not registered")
        return self.processes[pid]

    # --- contexts ------------------------------------------------------------------------

    def _own(self, pid: str, ctx: int) -> _Ctx:
        c = self._ctxs.get(ctx)
        if c is None or c.pid != pid:
            raise EngineError(f"context {ctx} does not exist or belongs to another process")
        return c

    def _add(self, c: _Ctx) -> int:
        cid = self._next
        self._next += 1
        self._ctxs[cid] = c
        return cid

    def _free(self, cid: int) -> None:
        c = self._ctxs.pop(cid)
        self.used_pages -= c.committed_pages + c.working_pages

    def _alloc(self, n: int) -> None:
        if self.used_pages + n > self.total_pages:
            raise EngineError(f"out of KV pages ({self.total_pages} in total)")
        self.used_pages += n

    def create_context(self, pid: str) -> int:
        self._user(pid)
        return self._add(_Ctx(pid))

    async def fork_context(self, pid: str, ctx: int) -> int:
        c = self._own(pid, ctx)
        self._alloc(c.committed_pages + c.working_pages)
        return self._add(c.copy(pid))

    def destroy_context(self, pid: str, ctx: int) -> None:
        self._own(pid, ctx)
        self._free(ctx)

    def context_info(self, pid: str, ctx: int) -> ContextInfo:
        c = self._own(pid, ctx)
        return ContextInfo(self.info.page_size, c.committed_pages, c.working_pages, len(c.working))

    async def reserve_pages(self, pid: str, ctx: int, n: int) -> None:
        c = self._own(pid, ctx)
        self._alloc(n)
        c.working_pages += n

    def release_pages(self, pid: str, ctx: int, n: int) -> None:
        c = self._own(pid, ctx)
        ps = self.info.page_size
        if n > c.working_pages or (c.working_pages - n) * ps < len(c.working):
            raise EngineError(f"cannot release {n} working pages: they hold tokens")
        c.working_pages -= n
        self.used_pages -= n

    def commit_pages(self, pid: str, ctx: int, n: int) -> None:
        c = self._own(pid, ctx)
        ps = self.info.page_size
        if n > len(c.working) // ps:
            raise EngineError(f"cannot commit {n} pages: only {len(c.working) // ps} are full")
        c.committed += c.working[: n * ps]
        c.working = c.working[n * ps:]
        c.committed_pages += n
        c.working_pages -= n

    def truncate_tokens(self, pid: str, ctx: int, n: int) -> None:
        c = self._own(pid, ctx)
        if n > len(c.working):
            raise EngineError(f"cannot truncate {n} tokens: only {len(c.working)} are uncommitted")
        if n:
            del c.working[-n:]

    def set_bid(self, pid: str, ctx: int, value: float) -> None:
        self._own(pid, ctx).bid = value

    # --- snapshots -----------------------------------------------------------------------

    async def save_snapshot(self, pid: str, ctx: int, name: str) -> None:
        c = self._own(pid, ctx)
        self._snapshots[(self._user(pid), name)] = c.copy(None)

    def _snap(self, pid: str, name: str) -> _Ctx:
        s = self._snapshots.get((self._user(pid), name))
        if s is None:
            raise EngineError(f"no snapshot named {name!r}")
        return s

    async def open_snapshot(self, pid: str, name: str) -> int:
        s = self._snap(pid, name)
        self._alloc(s.committed_pages + s.working_pages)
        return self._add(s.copy(pid))

    def take_snapshot(self, pid: str, name: str) -> int:
        s = self._snap(pid, name)
        del self._snapshots[(self._user(pid), name)]
        self._alloc(s.committed_pages + s.working_pages)
        return self._add(s.copy(pid))

    def delete_snapshot(self, pid: str, name: str) -> None:
        self._snap(pid, name)
        del self._snapshots[(self._user(pid), name)]

    # --- forward -------------------------------------------------------------------------

    def submit_forward(self, pid: str, req: ForwardRequest) -> asyncio.Future:
        return asyncio.ensure_future(self.forward(pid, req))

    async def forward(self, pid: str, req: ForwardRequest) -> list[RowResult]:
        fut = asyncio.get_running_loop().create_future()
        req.ticket = fut
        try:
            if req.after is not None:  # chained: wait for the token it feeds on
                prev = req.after.ticket
                if not isinstance(prev, asyncio.Future):
                    raise EngineError("a chained forward pass must follow a queued pass")
                rows = await asyncio.shield(prev)
                fed = next(r.token for r, (_, s) in zip(rows, req.after.outputs) if s.sample)
                req.tokens = [fed, *req.tokens[1:]]
            c = self._own(pid, req.ctx)
            ps = self.info.page_size
            capacity = (c.committed_pages + c.working_pages) * ps
            after = len(c.committed) + len(c.working) + len(req.tokens)
            if after > capacity:
                raise EngineError(f"the pass needs {after} KV slots but only {capacity} are "
                                  f"reserved; reserve pages first")
        except BaseException as e:
            if not fut.done():  # passes chained to this one fail with it
                fut.set_exception(e if isinstance(e, Exception) else EngineError("cancelled"))
                fut.exception()
            raise
        self._queue.append((fut, pid, req))
        self.forward_calls += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._seen = 0
            asyncio.get_running_loop().call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        if len(self._queue) != self._seen:  # still arriving: wait one more loop turn
            self._seen = len(self._queue)
            self._first_idle = None
            loop.call_soon(self._flush)
            return
        if runnable_guests() > 0:  # a guest still running may join: wait, but not forever
            now = loop.time()
            if self._first_idle is None:
                self._first_idle = now
            if now - self._first_idle < self.cohort_wait_s:
                loop.call_soon(self._flush)
                return
        self._first_idle = None
        batch, self._queue = self._queue, []
        self._flush_scheduled = False
        self.batches.append(len(batch))
        if self.forward_delay_s:
            loop.call_later(self.forward_delay_s, self._execute, batch)
        else:
            self._execute(batch)

    def _execute(self, batch: list) -> None:
        for fut, pid, req in batch:
            if fut.done():
                continue
            try:
                fut.set_result(self._run(pid, req))
            except EngineError as e:
                fut.set_exception(e)

    def _run(self, pid: str, req: ForwardRequest) -> list[RowResult]:
        c = self._own(pid, req.ctx)
        base = c.committed + c.working
        rows = []
        new = list(zip(req.tokens, req.positions))
        mask = _brle_bits(req.logit_mask, VOCAB) if req.logit_mask else None
        for idx, spec in req.outputs:
            logits = fake_logits(base + new[: idx + 1])
            masked = logits if mask is None else np.where(mask, logits, -np.inf)
            rows.append(_row(logits, masked, spec))
        c.working += new
        return rows

    def stats(self) -> dict:
        return {"used_pages": self.used_pages, "total_pages": self.total_pages,
                "batches": len(self.batches), "clearing_price": 0.0, "latency_s": 0.0}


def _brle_bits(runs: list[int], n: int) -> np.ndarray:
    bits = np.ones(n, bool)
    pos, val = 0, False
    for r in runs:
        bits[pos:pos + r] = val
        pos += r
        val = not val
    return bits


def _row(raw: np.ndarray, logits: np.ndarray, spec) -> RowResult:
    out = RowResult()
    if spec.sample:
        if spec.temperature == 0:
            out.token = int(np.argmax(logits))
        else:
            z = logits / spec.temperature
            if spec.top_k:
                kth = np.sort(z)[-spec.top_k]
                z = np.where(z >= kth, z, -np.inf)
            p = np.exp(z - z.max())
            p /= p.sum()
            rng = np.random.default_rng(spec.seed or None)
            out.token = int(rng.choice(len(p), p=p))
    if spec.dist_k >= 0:
        z = logits / (spec.temperature or 1.0)
        p = np.exp(z - z.max())
        p /= p.sum()
        k = spec.dist_k or len(p)
        ids = np.argsort(-p)[:k].astype(np.int32)
        out.dist_ids = ids.tobytes()
        out.dist_probs = p[ids].astype(np.float32).tobytes()
    if spec.raw_logits:
        out.logits = raw.astype(np.float32).tobytes()
    if spec.logprob_ids:
        ids = np.frombuffer(spec.logprob_ids, np.int32)
        lse = np.log(np.exp(logits - logits.max()).sum()) + logits.max()
        out.logprobs = (logits[ids] - lse).astype(np.float32).tobytes()
    if spec.entropy:
        p = np.exp(logits - logits.max())
        p /= p.sum()
        nz = p[p > 0]
        out.entropy = float(-(nz * np.log(nz)).sum())
    return out


# --- running inferlets in tests -----------------------------------------------------------


class CountingEngine(FakeEngine):
    """A FakeEngine that counts chained passes and the most passes in flight at once."""

    def __init__(self) -> None:
        super().__init__()
        self.inflight = self.peak = self.chained = 0

    async def forward(self, pid: str, req: ForwardRequest) -> list[RowResult]:
        self.chained += req.after is not None
        self.inflight += 1
        self.peak = max(self.peak, self.inflight)
        try:
            return await super().forward(pid, req)
        finally:
            self.inflight -= 1


def make_program(source: str | bytes, name: str = "test", version: str = "0.1.0",
                 entry: str = "main", call: str = "input"):
    """A Python `Program` from source text (or zip bytes)."""
    from pie.programs import Program

    payload = source.encode() if isinstance(source, str) else source
    return Program(name=name, version=version, kind="python", payload=payload,
                   digest=hashlib.sha256(payload).hexdigest(),
                   manifest={"package": {"name": name, "version": version},
                             "runtime": {"language": "python", "entry": entry, "call": call}})


async def run_inferlet(source: str | bytes, input: dict | str | None = None, *,
                       engine: FakeEngine | None = None, runtime_cfg=None,
                       user: str = "tester", **sandbox_kw):
    """Run one inferlet to its end through a ProcessManager; (kind, value, events)."""
    import json as _json

    from pie.processes import ProcessManager
    from pie.sandbox.sandbox import Sandbox

    engine = engine or FakeEngine()
    sandbox = Sandbox(runtime_cfg, **sandbox_kw)
    pm = ProcessManager({engine.info.name: engine}, runtime_cfg, sandbox=sandbox)
    await pm.start()
    events: list[tuple[str, object]] = []
    arg = input if isinstance(input, str) else _json.dumps(input or {})
    try:
        pid = await pm.launch(make_program(source), arg, user,
                              lambda p, k, v: events.append((k, v)))
        kind, value = await pm.wait(pid)
    finally:
        await pm.shutdown()
    return kind, value, events


def ensure_runner() -> None:
    """Build and compile the runner once (cached under PIE_HOME) before tests use it."""
    from pie.sandbox.runner import prepare

    prepare(progress=lambda m: print(m, flush=True))
