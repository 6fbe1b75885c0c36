"""`pie bench throughput|latency`: text completions end to end, against baselines.

    pie bench throughput                          # N = 1, 8, 32, 64; 32 new tokens each
    pie bench throughput --direct                 # + the same workload without Wasm
    pie bench throughput --baseline transformers --baseline llama-cpp
    pie bench latency --prompt-tokens 32,512      # one sequence at a time, pie vs direct

The workload is fixed: N chat prompts (`workload_prompts`), greedy decoding of exactly
`--output-tokens` tokens each (end-of-sequence ignored). Every run reports total generated
tokens per second (wall clock, from launch to the last token), time to first token and time
per output token (p50 / p99 over the sequences), and the mean batch size the engine formed.

* `pie`: a private engine (the configured first model, like `pie run`) runs N inferlets of
  `BENCH_INFERLET`, launched in one request over WebSocket; the inferlet streams one message per
  token and the client stamps them. An unmeasured run at each N first leaves N idle instances
  (warm, as on a server that has served the program before).
* `direct`: the same engine's scheduler driven by plain coroutines through the `EngineService`
  calls an inferlet makes (register, context, reserve, forward, commit), with no Wasm and no
  WebSocket. `pie / direct` throughput is the programmability tax.
* `transformers`: `AutoModelForCausalLM.generate` on the same GGUF (dequantized, float32), the N
  prompts left-padded in one batch, timed per step by a logits processor.
* `llama-cpp`: llama.cpp (`llama-cpp-python`, an optional extra) on the same GGUF, the N
  sequences decoded together in one `llama_batch` per step.

With `--direct` the table ends with the programmability tax of each pair of runs made back
to back (median and range over `--repeats` pairs). Baselines run after the engine has stopped,
each with the machine to itself. Registered on the root app by `pie_cli.main`;
`bench/throughput.py` runs the same table.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from pie_cli.errors import UserError

SYSTEM = "You are a helpful assistant."
TOPICS = (
    "the sea", "a lighthouse keeper", "a lost key", "the first snow", "a robot gardener",
    "an old map", "a city at night", "a quiet library", "a paper boat", "the last train",
    "a stubborn cat", "a mountain village", "a broken clock", "a desert well", "a kite",
    "a forgotten song",
)  # fmt: skip

BENCH_INFERLET = """
import inferlet

async def main(input):
    model = inferlet.Model.load()
    ctx = inferlet.Context(model)
    ctx.system(input["system"])
    ctx.user(input["prompt"])
    ctx.cue()
    n = 0
    async for step in ctx.generate(inferlet.Sampler.argmax(), max_tokens=input["max_tokens"],
                                   ignore_eos=True, burst=input.get("burst", 1)):
        out = await step.execute()
        n += len(out.tokens)
        inferlet.session.send(str(len(out.tokens)))
    ctx.release()
    return str(n)
"""
BENCH_MANIFEST = (
    '[package]\nname = "bench-completion"\nversion = "0.1.0"\n\n'
    '[runtime]\nlanguage = "python"\nentry = "main"\ncall = "input"\n'
)

BASELINES = ("transformers", "llama-cpp")
LLAMA_CPP_HINT = (
    "llama-cpp-python is not installed; install it with `pip install llama-cpp-python` (the "
    "`llama-cpp` extra of pie-engine; it builds llama.cpp from source, about 15 minutes on 2 "
    "cores) or drop --baseline llama-cpp."
)


def workload_prompts(n: int) -> list[str]:
    """The fixed user messages of an N-way run (the same for every system compared)."""
    return [f"Write a short story about {TOPICS[i % len(TOPICS)]}." for i in range(n)]


@dataclasses.dataclass
class RunResult:
    """One system at one concurrency: per-sequence stamps reduced to the table's columns."""

    system: str
    n: int
    tokens: int
    wall_s: float
    ttft_s: list[float]
    tpot_s: list[float]
    mean_batch: float | None = None
    note: str = ""
    # pie rows with --direct: 1 - pie / direct throughput of each alternating pair of runs
    paired_tax: list[float] | None = None

    @property
    def tok_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0

    def row(self) -> dict[str, Any]:
        def pct(values: list[float], q: float) -> float:
            return float(np.percentile(values, q)) * 1e3 if values else float("nan")

        return {
            "system": self.system,
            "n": self.n,
            "tok_s": self.tok_per_s,
            "ttft_p50_ms": pct(self.ttft_s, 50),
            "ttft_p99_ms": pct(self.ttft_s, 99),
            "tpot_p50_ms": pct(self.tpot_s, 50),
            "tpot_p99_ms": pct(self.tpot_s, 99),
            "mean_batch": self.mean_batch,
            "note": self.note,
            "tax_paired_median": (
                float(np.median(self.paired_tax)) if self.paired_tax else None
            ),
        }


def _from_stamps(
    system: str, t0: float, stamps: list[list[float]], mean_batch: float | None = None
) -> RunResult:
    """Per-sequence token arrival times (perf_counter) since a common launch time `t0`."""
    tokens = sum(len(s) for s in stamps)
    last = max((s[-1] for s in stamps if s), default=t0)
    ttft = [s[0] - t0 for s in stamps if s]
    tpot = [(s[-1] - s[0]) / (len(s) - 1) for s in stamps if len(s) > 1]
    return RunResult(system, len(stamps), tokens, last - t0, ttft, tpot, mean_batch)


def _batch_delta(before: dict, after: dict) -> float | None:
    batches = after.get("batches", 0) - before.get("batches", 0)
    passes = after.get("requests", 0) - before.get("requests", 0)
    return passes / batches if batches > 0 else None


# -- the engine: through inferlets, and direct ------------------------------------------------


async def run_pie(
    engine: Any, client: Any, prompts: list[str], output_tokens: int, burst: int = 1
) -> RunResult:
    """One bench inferlet per prompt, all launched in one request; a stamp per streamed token.

    `burst` > 1: the inferlet reads (and streams) its tokens that many at a time."""
    service = next(iter(engine.engines.values()))
    inputs = [
        {"system": SYSTEM, "prompt": p, "max_tokens": output_tokens, "burst": burst}
        for p in prompts
    ]
    before = service.stats()
    t0 = time.perf_counter()
    procs = await client.launch_processes("bench-completion@0.1.0", inputs)

    async def stamps_of(proc: Any) -> list[float]:
        stamps: list[float] = []
        async for event in proc:
            if event.kind == "message":
                now = time.perf_counter()
                stamps.extend([now] * int(event.value))
        if proc.error is not None:
            raise RuntimeError(f"the bench inferlet failed: {proc.error}")
        return stamps

    stamps = await asyncio.gather(*(stamps_of(p) for p in procs))
    return _from_stamps("pie", t0, list(stamps), _batch_delta(before, service.stats()))


async def run_direct(
    service: Any, prompts: list[str], output_tokens: int, tag: str, lookahead: bool = True
) -> RunResult:
    """The same sequences through the scheduler's `EngineService`, as an inferlet would call it
    (with the SDK's default lookahead: each step's pass chained to the one before)."""
    from pie.ipc.messages import SamplerSpec
    from pie.sched.api import ForwardRequest

    tok = service.tokenizer
    page = service.info.page_size
    greedy = SamplerSpec()
    before = service.stats()
    # the clock starts before the chat template and the tokenizer, which an inferlet runs too
    t0 = time.perf_counter()
    prompt_ids = [
        tok.encode(
            tok.render_chat(
                [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}],
                add_generation_prompt=True,
            )
        )
        for p in prompts
    ]

    async def sequence(i: int, prompt: list[int]) -> list[float]:
        pid = f"bench-direct-{tag}-{i}"
        await service.register_process(pid, "bench")
        try:
            ctx = service.create_context(pid)
            stamps: list[float] = []
            # as the SDK's Context and generation loop track them: pages are reserved for the
            # passes in flight too, and (lookahead) the next step is queued, chained to this
            # one, before this one is read
            working_pages = working_tokens = inflight = kv = 0

            async def submit(tokens: list[int], start: int, after: Any = None) -> tuple:
                nonlocal working_pages, inflight
                need = -(-(working_tokens + inflight + len(tokens)) // page) - working_pages
                if need > 0:
                    await service.reserve_pages(pid, ctx, need)
                    working_pages += need
                req = ForwardRequest(
                    ctx, tokens, list(range(start, start + len(tokens))),
                    [(len(tokens) - 1, greedy)], after=after,
                )
                inflight += len(tokens)
                return req, asyncio.ensure_future(service.forward(pid, req)), len(tokens)

            cur = await submit(prompt, 0)
            for step in range(output_tokens):
                more = step + 1 < output_tokens
                ahead = await submit([0], kv + cur[2], after=cur[0]) if lookahead and more else None
                rows = await cur[1]
                stamps.append(time.perf_counter())
                n = cur[2]
                inflight -= n
                kv += n
                working_tokens += n
                full = working_tokens // page
                if full:
                    service.commit_pages(pid, ctx, full)
                    working_pages -= full
                    working_tokens -= full * page
                if ahead is not None:
                    cur = ahead
                elif more:
                    cur = await submit([rows[0].token], kv)
            service.destroy_context(pid, ctx)
            return stamps
        finally:
            service.unregister_process(pid)

    stamps = await asyncio.gather(*(sequence(i, p) for i, p in enumerate(prompt_ids)))
    return _from_stamps("direct", t0, list(stamps), _batch_delta(before, service.stats()))


@contextlib.asynccontextmanager
async def _private_engine(cfg: Any, say: Any) -> Any:
    """A booted engine (like `pie run`'s), a client on it with the bench inferlet installed."""
    from pie.client import PieClient
    from pie.controller import Engine

    engine = Engine(cfg, host="127.0.0.1", port=0, auth_enabled=True)
    try:
        await engine.start(say)
        async with PieClient(engine.url) as client:
            await client.auth_by_token(engine.internal_token)
            await client.install_program(BENCH_MANIFEST, BENCH_INFERLET.encode(), True)
            say("warming up")
            await run_pie(engine, client, workload_prompts(2), 4)
            await run_direct(next(iter(engine.engines.values())), workload_prompts(2), 4, "warmup")
            yield engine, client
    finally:
        await engine.stop()


def median_run(runs: list[RunResult]) -> RunResult:
    """The run with the median throughput (the lower middle one for an even count)."""
    ranked = sorted(runs, key=lambda r: r.tokens / r.wall_s)
    return ranked[(len(ranked) - 1) // 2]


async def run_engine(
    cfg: Any,
    ns: list[int],
    output_tokens: int,
    direct: bool,
    say: Any,
    repeats: int = 1,
    burst: int = 1,
) -> list[RunResult]:
    """Every N through inferlets (and directly through the scheduler, when asked).

    With `repeats > 1` each system runs that many times in alternating order (pie, direct,
    direct, pie, ...) so neither profits from going second; the median run of each is kept.
    With `direct`, the pie row also carries the tax of each pair of runs made back to back
    (`paired_tax`): the machine's speed drifts between runs, and a ratio of runs made minutes
    apart measures the drift as much as the tax.
    """
    results: list[RunResult] = []
    async with _private_engine(cfg, say) as (engine, client):
        service = next(iter(engine.engines.values()))
        for n in ns:
            prompts = workload_prompts(n)
            # unmeasured: afterwards the engine holds an idle instance per inferlet, as a
            # server that has run the program at this concurrency before does (the first
            # launch of each instance costs several times a later one, bench/RESULTS.md)
            say(f"pie: warming {n} instances")
            await run_pie(engine, client, prompts, 2, burst)
            runs: dict[str, list[RunResult]] = {"pie": [], "direct": []}
            for rep in range(repeats):
                order = ["pie", "direct"] if rep % 2 == 0 else ["direct", "pie"]
                for system in order:
                    if system == "pie":
                        say(f"pie: {n} concurrent inferlets x {output_tokens} tokens")
                        runs["pie"].append(
                            await run_pie(engine, client, prompts, output_tokens, burst)
                        )
                    elif direct:
                        say(f"direct: {n} sequences x {output_tokens} tokens")
                        runs["direct"].append(
                            await run_direct(service, prompts, output_tokens, f"{n}-{rep}")
                        )
            kept = median_run(runs["pie"])
            results.append(kept)
            if direct:
                results.append(median_run(runs["direct"]))
                kept.paired_tax = [
                    1 - p.tok_per_s / d.tok_per_s
                    for p, d in zip(runs["pie"], runs["direct"])
                    if d.tok_per_s > 0
                ]
    return results


LATENCY_FILLER = "Rivers carry water, stories and silt from the hills down to the sea. "


def latency_prompt(tokenizer: Any, tokens: int) -> str:
    """A user message of about `tokens` tokens (the chat template adds about 20 more)."""
    per = len(tokenizer.encode(LATENCY_FILLER))
    return "Summarize this text: " + LATENCY_FILLER * max(1, round(tokens / per))


async def run_latency(
    cfg: Any, prompt_tokens: list[int], output_tokens: int, repeats: int, say: Any
) -> list[RunResult]:
    """One sequence at a time, `repeats` times per prompt length, through pie and directly.

    Rows carry the prompt length in `n`; their TTFT/TPOT percentiles are over the repeats.
    """
    results: list[RunResult] = []
    async with _private_engine(cfg, say) as (engine, client):
        service = next(iter(engine.engines.values()))
        for target in prompt_tokens:
            prompt = latency_prompt(service.tokenizer, target)
            for system in ("pie", "direct"):
                say(f"{system}: prompt of ~{target} tokens, {repeats} runs")
                runs = []
                for i in range(repeats):
                    if system == "pie":
                        runs.append(await run_pie(engine, client, [prompt], output_tokens))
                    else:
                        runs.append(await run_direct(service, [prompt], output_tokens, f"l{i}"))
                results.append(
                    RunResult(
                        system,
                        target,
                        sum(r.tokens for r in runs),
                        sum(r.wall_s for r in runs),
                        [t for r in runs for t in r.ttft_s],
                        [t for r in runs for t in r.tpot_s],
                        1.0,
                    )
                )
    return results


# -- baselines ----------------------------------------------------------------------------------


def chat_prompt_ids(hf_repo: str, n: int) -> tuple[Any, list[list[int]]]:
    """(the resolved model, token ids of the N chat prompts as the engine renders them)."""
    from pie.model import load_tokenizer
    from pie.model.resolve import resolve_model

    tok = load_tokenizer(hf_repo)
    ids = [
        tok.encode(
            tok.render_chat(
                [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}],
                add_generation_prompt=True,
            )
        )
        for p in workload_prompts(n)
    ]
    return resolve_model(hf_repo), ids


def run_transformers(
    hf_repo: str, ns: list[int], output_tokens: int, threads: int, say: Any
) -> list[RunResult]:
    """`generate` on one left-padded batch of the N prompts, greedy, exactly `output_tokens`."""
    import torch
    from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

    resolved, _ = chat_prompt_ids(hf_repo, 1)
    say(f"transformers: loading {resolved.path.name}")
    torch.set_num_threads(threads)
    with contextlib.redirect_stderr(open(os.devnull, "w")):  # silences progress bars
        if resolved.kind == "gguf":
            model = AutoModelForCausalLM.from_pretrained(
                str(resolved.path.parent), gguf_file=resolved.path.name, dtype=torch.float32
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(str(resolved.path), dtype=torch.float32)
    model.eval()

    class Stamp(LogitsProcessor):
        """Called once per generated token of the whole batch: stamps each step."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            self.times.append(time.perf_counter())
            return scores

    results = []
    for n in [1, *ns]:  # the first N=1 is a warm-up
        _, prompts = chat_prompt_ids(hf_repo, n)
        width = max(len(p) for p in prompts)
        pad = (
            model.config.eos_token_id
            if model.config.pad_token_id is None
            else model.config.pad_token_id
        )
        pad = pad[0] if isinstance(pad, list) else pad
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        stamp = Stamp()
        say(f"transformers: batch of {n} x {output_tokens} tokens")
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=output_tokens,
                min_new_tokens=output_tokens,
                do_sample=False,
                pad_token_id=pad,
                logits_processor=LogitsProcessorList([stamp]),
            )
        stamps = [list(stamp.times)] * n
        results.append(_from_stamps("transformers", t0, stamps, float(n)))
    return results[1:]


def _llama_decode(L: Any, ctx: Any, batch: Any, entries: list[tuple[int, int, int, bool]]) -> None:
    """One `llama_decode` of (token, position, sequence, wants logits) entries."""
    batch.n_tokens = len(entries)
    for j, (token, pos, seq, logits) in enumerate(entries):
        batch.token[j] = token
        batch.pos[j] = pos
        batch.n_seq_id[j] = 1
        batch.seq_id[j][0] = seq
        batch.logits[j] = logits
    if L.llama_decode(ctx, batch) != 0:
        raise RuntimeError("llama_decode failed")


def _llama_argmax(L: Any, ctx: Any, row: int, vocab: int) -> int:
    ptr = L.llama_get_logits_ith(ctx, row)
    return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(vocab,))))


def run_llama_cpp(
    hf_repo: str, ns: list[int], output_tokens: int, threads: int, say: Any
) -> list[RunResult]:
    """llama.cpp on the same GGUF: all N sequences in one `llama_batch` per step, greedy."""
    try:
        import llama_cpp as L
    except ImportError:
        raise UserError(LLAMA_CPP_HINT) from None
    resolved, _ = chat_prompt_ids(hf_repo, 1)
    if resolved.kind != "gguf":
        raise UserError(f"--baseline llama-cpp needs a .gguf model; {hf_repo} is a directory.")
    llm = L.Llama(model_path=str(resolved.path), n_ctx=64, n_threads=threads, verbose=False)
    vocab = llm.n_vocab()
    results = []
    for n in [1, *ns]:  # the first N=1 is a warm-up
        _, prompts = chat_prompt_ids(hf_repo, n)
        total_prompt = sum(len(p) for p in prompts)
        say(f"llama.cpp: {n} sequences x {output_tokens} tokens")
        # a context of its own: `Llama` does not pass n_seq_max on; per-sequence KV (not
        # unified) is llama.cpp's faster layout at large batches
        params = L.llama_context_default_params()
        params.n_ctx = n * (max(len(p) for p in prompts) + output_tokens + 16)
        params.n_batch = params.n_ubatch = max(total_prompt, n)  # all prompts in one decode
        params.n_seq_max = n
        params.n_threads = params.n_threads_batch = threads
        ctx = L.llama_init_from_model(llm._model.model, params)
        if not ctx:
            raise RuntimeError(f"llama.cpp could not create a context for {n} sequences")
        batch = L.llama_batch_init(max(total_prompt, n), 0, n)
        try:
            stamps: list[list[float]] = [[] for _ in range(n)]
            t0 = time.perf_counter()
            entries, rows = [], []
            for s, p in enumerate(prompts):
                entries += [(t, i, s, i == len(p) - 1) for i, t in enumerate(p)]
                rows.append(len(entries) - 1)
            _llama_decode(L, ctx, batch, entries)
            nxt = [_llama_argmax(L, ctx, r, vocab) for r in rows]
            now = time.perf_counter()
            for s in range(n):
                stamps[s].append(now)
            pos = [len(p) for p in prompts]
            for _ in range(output_tokens - 1):
                _llama_decode(L, ctx, batch, [(nxt[s], pos[s], s, True) for s in range(n)])
                nxt = [_llama_argmax(L, ctx, s, vocab) for s in range(n)]
                now = time.perf_counter()
                for s in range(n):
                    stamps[s].append(now)
                    pos[s] += 1
            results.append(_from_stamps("llama.cpp", t0, stamps, float(n)))
        finally:
            L.llama_batch_free(batch)
            L.llama_free(ctx)
    llm.close()
    return results[1:]


def _baseline_child(fn: Any, args: tuple, quiet: bool, out: Any) -> None:
    def say(msg: str) -> None:
        if not quiet:
            typer.echo(f"bench: {msg}", err=True)

    try:
        out.send(("ok", fn(*args, say)))
    except UserError as e:
        out.send(("error", str(e)))
    except Exception as e:  # noqa: BLE001 - reported by the parent, next to the table
        out.send(("error", f"{type(e).__name__}: {e}"))


def _isolated(
    fn: Any, hf_repo: str, ns: list[int], output_tokens: int, threads: int, quiet: bool
) -> tuple[list[RunResult], str | None]:
    """Run one baseline in a child process, so a crash in a native library (a llama.cpp build
    using instructions this machine refuses, say) costs that baseline's rows only."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(
        target=_baseline_child, args=(fn, (hf_repo, ns, output_tokens, threads), quiet, send)
    )
    child.start()
    send.close()
    try:
        kind, value = recv.recv()
    except EOFError:
        child.join()
        code = child.exitcode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        hint = ""
        if fn is run_llama_cpp:
            hint = (
                "; a llama-cpp-python build can use CPU instructions this machine does not "
                "allow: rebuild it, e.g. CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_AVX2=ON' pip "
                "install --force-reinstall --no-cache-dir llama-cpp-python"
            )
        return [], f"the process died ({how}){hint}"
    finally:
        recv.close()
    child.join()
    return (value, None) if kind == "ok" else ([], value)


# -- the table --------------------------------------------------------------------------------


def format_table(
    results: list[RunResult], output_tokens: int, first: str = "N", burst: int = 1
) -> str:
    """One markdown table: a row per (N, system), with ratios against `pie` at the same N."""
    pie_rate = {r.n: r.tok_per_s for r in results if r.system == "pie"}
    how = f"; the inferlets read tokens in bursts of {burst}" if burst > 1 else ""
    lines = [
        (
            f"{output_tokens} new tokens per sequence{how}; pie / system = pie's tok/s over "
            "the row's."
        ),
        "",
        (
            f"| {first} | system | tok/s | pie / system | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | "
            "TPOT p99 ms | mean batch |"
        ),
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(results, key=lambda r: (r.n, r.system != "pie", r.system)):
        row = r.row()
        ratio = pie_rate.get(r.n, float("nan")) / r.tok_per_s if r.tok_per_s else float("nan")
        batch = f"{row['mean_batch']:.1f}" if row["mean_batch"] is not None else "-"
        lines.append(
            f"| {r.n} | {r.system} | {row['tok_s']:.1f} | {ratio:.2f} | "
            f"{row['ttft_p50_ms']:.0f} | {row['ttft_p99_ms']:.0f} | {row['tpot_p50_ms']:.1f} | "
            f"{row['tpot_p99_ms']:.1f} | {batch} |"
        )
    taxes = [r for r in sorted(results, key=lambda r: r.n) if r.system == "pie" and r.paired_tax]
    if taxes:
        pairs = len(taxes[0].paired_tax or [])
        lines += ["", (
            "Programmability tax, 1 - pie / direct over each pair of runs made back to back "
            f"(median of {pairs} pair{'s' if pairs != 1 else ''}, lowest..highest): "
            + "; ".join(f"{first} = {r.n}: {_tax_span(r.paired_tax or [])}" for r in taxes)
            + "."
        )]
    return "\n".join(lines)


def _tax_span(taxes: list[float]) -> str:
    mid = float(np.median(taxes)) * 100
    if len(taxes) == 1:
        return f"{mid:.1f} %"
    return f"{mid:.1f} % ({min(taxes) * 100:.1f}..{max(taxes) * 100:.1f})"


def _bench_config(config: Path | None, num_threads: int | None, omp_wait_policy: str | None) -> Any:
    """The config with the first model's worker thread options overridden when given."""
    import msgspec

    from pie.config import load_config

    cfg = load_config(config)
    if not cfg.models:
        raise UserError("The config has no [[model]]; run `pie config init` first.")
    model = cfg.models[0]
    options = dict(model.driver.options)
    if num_threads is not None:
        options["num_threads"] = num_threads
    if omp_wait_policy is not None:
        options["omp_wait_policy"] = omp_wait_policy
    driver = msgspec.structs.replace(model.driver, options=options)
    model = msgspec.structs.replace(model, driver=driver)
    return msgspec.structs.replace(cfg, models=[model, *cfg.models[1:]])


def _run_loop(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(coro)


def _numbers(text: str, option: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(
            f"{option} must be numbers separated by commas, like 1,8,32; got {text!r}."
        ) from None
    if not values or min(values) < 1:
        raise UserError(f"{option} needs at least one number >= 1, like 1,8,32,64.")
    return values


def latency(
    prompt_tokens: str = "32,512",
    output_tokens: int = 32,
    repeats: int = 5,
    config: Path | None = None,
    num_threads: int | None = None,
    omp_wait_policy: str | None = None,
    quiet: bool = False,
) -> list[RunResult]:
    """Single-stream TTFT and TPOT, through inferlets and directly; prints the table."""
    lengths = _numbers(prompt_tokens, "--prompt-tokens")
    if output_tokens < 2:
        raise UserError("--output-tokens must be at least 2 (TPOT needs two tokens).")
    if repeats < 1:
        raise UserError("--repeats must be at least 1.")

    def say(msg: str) -> None:
        if not quiet:
            typer.echo(f"bench: {msg}", err=True)

    cfg = _bench_config(config, num_threads, omp_wait_policy)
    results = _run_loop(run_latency(cfg, lengths, output_tokens, repeats, say))
    typer.echo(format_table(results, output_tokens, first="prompt tokens"))
    return results


def throughput(
    concurrency: str = "1,8,32,64",
    output_tokens: int = 32,
    direct: bool = False,
    baselines: list[str] | None = None,
    config: Path | None = None,
    num_threads: int | None = None,
    omp_wait_policy: str | None = None,
    baseline_threads: int | None = None,
    json_path: Path | None = None,
    quiet: bool = False,
    repeats: int = 1,
    burst: int = 1,
) -> list[RunResult]:
    """Run the whole benchmark and print its table; returns the rows (used by bench/)."""
    ns = _numbers(concurrency, "--concurrency")
    if repeats < 1:
        raise UserError("--repeats must be at least 1.")
    if not 1 <= burst <= 64:
        raise UserError("--burst must be from 1 to 64 (tokens the inferlet reads per step).")
    if output_tokens < 2:
        raise UserError("--output-tokens must be at least 2 (TPOT needs two tokens).")
    for b in baselines or []:
        if b not in BASELINES:
            raise UserError(f"Unknown baseline {b!r}; choose from {', '.join(BASELINES)}.")
    if "llama-cpp" in (baselines or []):
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise UserError(LLAMA_CPP_HINT) from None

    def say(msg: str) -> None:
        if not quiet:
            typer.echo(f"bench: {msg}", err=True)

    cfg = _bench_config(config, num_threads, omp_wait_policy)
    model = cfg.models[0]
    results = _run_loop(run_engine(cfg, ns, output_tokens, direct, say, repeats, burst))
    threads = baseline_threads or os.cpu_count() or 1
    failed: list[str] = []
    for name, fn in (("transformers", run_transformers), ("llama-cpp", run_llama_cpp)):
        if name in (baselines or []):
            rows, error = _isolated(fn, model.hf_repo, ns, output_tokens, threads, quiet)
            results += rows
            if error:
                failed.append(f"baseline {name} failed: {error}")
    typer.echo(format_table(results, output_tokens, burst=burst))
    for line in failed:
        typer.echo(f"bench: {line}", err=True)
    if json_path is not None:
        json_path.write_text(json.dumps([r.row() for r in results], indent=1))
    return results


# options shared by the bench commands
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file (default: $PIE_HOME/config.toml)."),
]
NumThreadsOption = Annotated[
    int | None, typer.Option("--num-threads", help="Override the worker's num_threads.")
]
WaitPolicyOption = Annotated[
    str | None, typer.Option("--omp-wait-policy", help="Override the worker's omp_wait_policy.")
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]


def register(app: typer.Typer) -> None:
    bench = typer.Typer(help="Benchmarks: end-to-end throughput against baselines.")
    app.add_typer(bench, name="bench")

    @bench.command("throughput")
    def _throughput(
        concurrency: Annotated[
            str, typer.Option("--concurrency", "-n", help="Concurrent sequences, comma separated.")
        ] = "1,8,32,64",
        output_tokens: Annotated[
            int, typer.Option("--output-tokens", help="New tokens per sequence (EOS ignored).")
        ] = 32,
        direct: Annotated[
            bool,
            typer.Option("--direct", help="Also run the workload on the scheduler without Wasm."),
        ] = False,
        baseline: Annotated[
            list[str] | None,
            typer.Option("--baseline", help="transformers or llama-cpp (repeatable)."),
        ] = None,
        config: ConfigOption = None,
        num_threads: NumThreadsOption = None,
        omp_wait_policy: WaitPolicyOption = None,
        baseline_threads: Annotated[
            int | None,
            typer.Option(
                "--baseline-threads", help="Threads for the baselines (default: all cores)."
            ),
        ] = None,
        json_out: Annotated[
            Path | None, typer.Option("--json", help="Also write the rows to this JSON file.")
        ] = None,
        quiet: QuietOption = False,
        repeats: Annotated[
            int,
            typer.Option(
                "--repeats", help="Runs per system and N, in alternating order; the median is kept."
            ),
        ] = 1,
        burst: Annotated[
            int,
            typer.Option(
                "--burst",
                help="Tokens the bench inferlet reads per step (generate(burst=...)); 1 streams "
                "every token as it comes.",
            ),
        ] = 1,
    ) -> None:
        """N concurrent text completions: tok/s, TTFT, TPOT and batch size, against baselines."""
        throughput(
            concurrency,
            output_tokens,
            direct,
            baseline,
            config,
            num_threads,
            omp_wait_policy,
            baseline_threads,
            json_out,
            quiet,
            repeats,
            burst,
        )

    @bench.command("latency")
    def _latency(
        prompt_tokens: Annotated[
            str, typer.Option("--prompt-tokens", help="Prompt lengths, comma separated.")
        ] = "32,512",
        output_tokens: Annotated[
            int, typer.Option("--output-tokens", help="New tokens per run (EOS ignored).")
        ] = 32,
        repeats: Annotated[int, typer.Option("--repeats", "-r", help="Runs per length.")] = 5,
        config: ConfigOption = None,
        num_threads: NumThreadsOption = None,
        omp_wait_policy: WaitPolicyOption = None,
        quiet: QuietOption = False,
    ) -> None:
        """One sequence at a time: TTFT and TPOT through inferlets and directly."""
        latency(prompt_tokens, output_tokens, repeats, config, num_threads, omp_wait_policy, quiet)
