"""`pie generate PROMPT`: one chat completion straight through the model layer (temporary).

This command is a stopgap for trying a model before the serving path is wired end to end: it
loads the model in-process, renders the prompt with the model's chat template, and generates
with `pie.model.generator.Generator` (greedy, or temperature / top-p sampling), streaming the
answer to stdout. It bypasses the server, scheduler and inferlets entirely; once `pie run`
with a chat inferlet covers this, the command goes away. Registered by `pie_cli.main`; `make
run` calls it.
"""

from __future__ import annotations

import os
import sys
import time

import typer

from pie.model.errors import ModelLoadError
from pie_cli.errors import UserError, register_user_error


def generate(
    prompt: str = typer.Argument(..., help="The user message."),
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="HF repo id, model directory or .gguf file (default: the first [[model]] of the config).",
    ),
    max_tokens: int = typer.Option(
        256, "--max-tokens", "-n", min=1, help="Most tokens to generate."
    ),
    temperature: float = typer.Option(0.0, "--temperature", "-t", min=0.0, help="0 = greedy."),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0, help="Nucleus sampling mass."),
    seed: int | None = typer.Option(None, "--seed", help="Seed for sampling."),
    system: str | None = typer.Option(None, "--system", help="Optional system message."),
    raw: bool = typer.Option(
        False, "--raw", help="Send PROMPT as plain text, without the chat template."
    ),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or bfloat16."),
    quant: str | None = typer.Option(
        None,
        "--quant",
        help="Weight quantization: none, int8 or bf16 (CPU, float32). Default: the config's "
        "runtime_quant when the model comes from the config (int8 on CPU), else none.",
    ),
    threads: int | None = typer.Option(None, "--threads", min=1, help="Torch CPU threads."),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="No progress or speed lines on stderr."
    ),
) -> None:
    """Generate a chat answer with the model layer directly (temporary: bypasses the server)."""
    # Idle OpenMP threads sleep instead of spinning: on a busy machine two spinning threads
    # collapse decode speed ~4x (must be set before torch starts its thread pool).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from pie.model import load_model
    from pie.model.generator import Generator

    if threads:
        torch.set_num_threads(threads)

    def note(msg: str) -> None:
        if not quiet:
            typer.echo(msg, err=True)

    configured_quant = ""
    if model is None:
        from pie.config import load_config

        first = load_config().models[0]
        model = first.hf_repo
        if first.driver.type == "portable" and str(dtype).lower() in ("float32", "fp32", "float"):
            configured_quant = str(first.driver.option("runtime_quant", "") or "")
    quant = configured_quant if quant is None else ("" if quant.lower() == "none" else quant)
    t0 = time.perf_counter()
    note(f"loading {model} ...")
    lm = load_model(model, dtype=dtype, quant=quant)
    note(
        f"loaded {lm.config.arch} ({lm.config.num_params / 1e6:.0f}M params) from {lm.source.path} "
        f"in {time.perf_counter() - t0:.1f}s" + (f", {quant} weights" if quant else "")
    )
    tok = lm.tokenizer
    if raw or not tok.has_chat_template:
        text = prompt
    else:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        text = tok.render_chat(messages, add_generation_prompt=True)
    ids = tok.encode(text)
    if len(ids) + max_tokens > lm.config.max_position:
        raise UserError(
            f"prompt ({len(ids)} tokens) plus --max-tokens {max_tokens} exceeds the model's context "
            f"of {lm.config.max_position}; shorten the prompt or lower --max-tokens"
        )
    page_size = 16
    num_pages = -(-(len(ids) + max_tokens) // page_size)
    gen = Generator(lm.model, page_size=page_size, num_pages=num_pages)
    stops = set(tok.stop_token_ids)
    out: list[int] = []
    shown = ""

    stamps: list[float] = []

    def on_token(_: int, token: int) -> None:
        nonlocal shown
        stamps.append(time.perf_counter())
        if token in stops:
            return
        out.append(token)
        text_now = tok.decode(out)
        if text_now.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return
        sys.stdout.write(text_now[len(shown) :])
        sys.stdout.flush()
        shown = text_now

    t1 = time.perf_counter()
    new = gen.generate(
        [ids],
        max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop_token_ids=tuple(stops),
        seed=seed,
        on_token=on_token,
    )[0]
    end = time.perf_counter()
    final = tok.decode(out)
    sys.stdout.write(final[len(shown) :] + "\n")
    sys.stdout.flush()
    prefill = (stamps[0] if stamps else end) - t1
    decode = f"{(len(new) - 1) / (end - stamps[0]):.1f} tok/s" if len(new) > 1 else "n/a"
    note(f"{len(new)} tokens; prefill {len(ids)} tokens in {prefill * 1e3:.0f} ms; decode {decode}")


def register(app: typer.Typer) -> None:
    register_user_error(ModelLoadError)
    app.command("generate")(generate)
