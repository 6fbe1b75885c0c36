"""`pie run`: boot a private engine, run one inferlet, stream its output, print its result.

    pie run --path hello.py -- --name pie --max-tokens 32
    pie run text-completion@0.1.0 -- --prompt "Hi"

The engine listens on an ephemeral localhost port and admits only this command, through the
engine's internal token. `--path` uploads a local `.py` file, `.wasm` file or inferlet directory
first (replacing an older upload of the same name@version); a bare name must already be in the
program store. Arguments after the inferlet become its JSON input (`parse_inferlet_args`).
`message` and `stdout` events go to stdout as they arrive (unchanged: text inferlets stream
deltas), `stderr` to stderr; the return value is printed last, on its own line, unless it is
exactly the streamed messages (a chat reply is not shown twice). Exit codes: 0 on return, 1 on an inferlet error, 130 on Ctrl-C.
Registered on the root app by `pie_cli.main`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from pie.config import load_config
from pie_cli.errors import UserError

_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$|^[+-]?(inf|nan)$", re.IGNORECASE)


def infer_arg(text: str) -> Any:
    """int, then float, then bool, else the string itself."""
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def parse_inferlet_args(argv: list[str]) -> dict[str, Any]:
    """`--max-tokens 64 --greedy -k v --temp=0.5 extra` -> JSON-ready dict.

    Option names go kebab -> snake case; values are typed by `infer_arg`; an option followed by
    another option (or by nothing) is the flag `true`; `--key=value` works; a repeated key
    becomes a list; bare words collect under `_positional`.
    """
    out: dict[str, Any] = {}
    positional: list[Any] = []

    def put(key: str, value: Any) -> None:
        if key in out:
            prev = out[key]
            out[key] = (prev if isinstance(prev, list) else [prev]) + [value]
        else:
            out[key] = value

    i = 0
    while i < len(argv):
        arg = argv[i]
        is_option = arg.startswith("-") and len(arg) > 1 and not _FLOAT.match(arg)
        if not is_option:
            positional.append(infer_arg(arg))
            i += 1
            continue
        name = arg.lstrip("-")
        value: Any
        if "=" in name:
            name, raw = name.split("=", 1)
            value = infer_arg(raw)
            i += 1
        elif i + 1 < len(argv) and not (
            argv[i + 1].startswith("-") and len(argv[i + 1]) > 1 and not _FLOAT.match(argv[i + 1])
        ):
            value = infer_arg(argv[i + 1])
            i += 2
        else:
            value = True
            i += 1
        if not name:
            raise UserError(f"Cannot read the inferlet argument {arg!r}; write --key value.")
        put(name.replace("-", "_"), value)
    if positional:
        out["_positional"] = positional
    return out


def _on_sigint(callback: Any) -> None:
    with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, callback)


async def _run(
    engine: Any,
    ref: str | None,
    path: Path | None,
    manifest: Path | None,
    payload: dict[str, Any],
    quiet: bool,
    say: Any,
) -> int:
    from pie.client import PieClient, PieError
    from pie.programs import ProgramError

    await engine.start(say)
    say.done()
    async with PieClient(engine.url) as client:
        await client.auth_by_token(engine.internal_token)
        try:
            if path is not None:
                ref = await client.install_path(path, manifest, force_overwrite=True)
            assert ref is not None
            process = await client.launch_process(ref, payload)
        except (PieError, ProgramError) as e:
            raise UserError(str(e)) from None
        line_open = False  # the streamed output so far does not end with a newline
        streamed: list[str] = []  # the `message` texts, to spot a result that repeats them
        interrupted = asyncio.Event()
        _on_sigint(interrupted.set)  # from now on Ctrl-C terminates the inferlet first
        try:

            async def pump() -> None:
                nonlocal line_open
                async for event in process:
                    if event.kind in ("message", "stdout"):
                        # streamed as is: a text inferlet sends deltas, not lines
                        text = str(event.value)
                        if event.kind == "message":
                            streamed.append(text)
                        sys.stdout.write(text)
                        sys.stdout.flush()
                        if text:
                            line_open = not text.endswith("\n")
                    elif event.kind == "stderr":
                        sys.stderr.write(str(event.value))
                        sys.stderr.flush()
                    elif event.kind == "file" and not quiet:
                        sys.stderr.write(f"pie: received a file of {len(event.value)} bytes\n")

            pump_task = asyncio.create_task(pump())
            stop_task = asyncio.create_task(interrupted.wait())
            done, _ = await asyncio.wait(
                {pump_task, stop_task}, return_when=asyncio.FIRST_COMPLETED
            )
            if stop_task in done and not pump_task.done():
                sys.stderr.write("\npie: interrupted; terminating the inferlet\n")
                with contextlib.suppress(Exception):  # the engine stops right after anyway
                    await asyncio.wait_for(process.terminate(), 5)
                pump_task.cancel()
                return 130
            stop_task.cancel()
            pump_task.result()
        finally:
            _on_sigint(asyncio.current_task().cancel)  # back to: Ctrl-C stops the engine
        if process.error is not None:
            sys.stderr.write(f"error: {process.error}\n")
            return 1
        if process.result and process.result == "".join(streamed):
            if line_open:  # a text inferlet returned exactly what it streamed: not twice
                sys.stdout.write("\n")
        elif process.result:
            if line_open:
                sys.stdout.write("\n")
            sys.stdout.write(process.result + ("\n" if not process.result.endswith("\n") else ""))
        return 0


def register(app: typer.Typer) -> None:
    @app.command(
        "run",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def run(
        ctx: typer.Context,
        path: Annotated[
            Path | None,
            typer.Option(
                "--path", "-p", help="A local .py file, .wasm file or inferlet directory."
            ),
        ] = None,
        manifest: Annotated[
            Path | None,
            typer.Option("--manifest", "-m", help="Pie.toml for a --path that does not carry one."),
        ] = None,
        config: Annotated[
            Path | None,
            typer.Option("--config", "-c", help="Config file (default: $PIE_HOME/config.toml)."),
        ] = None,
        input_json: Annotated[
            str | None,
            typer.Option(
                "--input", help="The input as one JSON object (merged under the --key args)."
            ),
        ] = None,
        port: Annotated[
            int, typer.Option("--port", help="Port of the private engine (0: any free).")
        ] = 0,
        debug: Annotated[bool, typer.Option("--debug", help="Verbose engine diagnostics.")] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    ) -> None:
        """Run one inferlet on a private engine: `pie run NAME|--path FILE [-- --key value ...]`."""
        from pie.controller import Engine
        from pie_cli.serve import _Progress, boot_error, setup_logging

        args = list(ctx.args)
        ref = None
        if path is None:
            if not args or args[0].startswith("-"):
                raise UserError("Name an inferlet (`pie run NAME`) or give --path FILE.")
            ref = args.pop(0)
        elif not path.exists():
            raise UserError(f"{path} does not exist; pass a .py file, .wasm file or directory.")
        payload: dict[str, Any] = {}
        if input_json:
            try:
                payload = json.loads(input_json)
            except ValueError as e:
                raise UserError(f"--input is not JSON ({e}); pass an object like '{{}}'.") from None
            if not isinstance(payload, dict):
                raise UserError('--input must be a JSON object, like \'{"prompt": "hi"}\'.')
        payload.update(parse_inferlet_args(args))

        cfg = load_config(config)
        setup_logging(debug, cfg.server.verbose)
        engine = Engine(cfg, host="127.0.0.1", port=port, auth_enabled=True)
        say = _Progress(quiet)

        async def main() -> int:
            # handled on the loop, so Ctrl-C works even where SIGINT arrives ignored (a
            # background job) and the engine is always stopped in order
            _on_sigint(asyncio.current_task().cancel)
            try:
                return await _run(engine, ref, path, manifest, payload, quiet, say)
            except asyncio.CancelledError:
                sys.stderr.write("\npie: interrupted\n")
                return 130
            finally:
                say.done()
                await engine.stop()

        try:
            import uvloop

            code = uvloop.run(main())
        except KeyboardInterrupt:
            code = 130
        except UserError:
            raise
        except Exception as e:
            err = boot_error(e, "127.0.0.1", port)
            if err is None:
                raise
            raise err from None
        raise typer.Exit(code)
