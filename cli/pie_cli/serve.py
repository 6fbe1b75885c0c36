"""`pie serve`: boot the engine from the config and serve clients until Ctrl-C or SIGTERM.

Shows progress while the models load, then one line with the address. Boot failures a user can
fix (a busy port, a missing model, a bad device list) are one line and exit code 1; a clean
shutdown exits 0. Registered on the root app by `pie_cli.main`; `pie_cli.run` reuses `boot_error`.
"""

from __future__ import annotations

import errno
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from pie.config import load_config
from pie_cli.errors import UserError


def setup_logging(debug: bool, verbose: bool = False) -> None:
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not debug:
        logging.getLogger("websockets").setLevel(logging.WARNING)


def boot_error(e: BaseException, host: str, port: int) -> UserError | None:
    """The one-line message for a boot failure the user can fix, or None for a bug."""
    if isinstance(e, OSError) and e.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
        why = {
            errno.EADDRINUSE: "is in use",
            errno.EACCES: "needs more privileges",
            errno.EADDRNOTAVAIL: "is not an address of this machine",
        }[e.errno]
        return UserError(
            f"Cannot listen on {host}:{port}: the address {why}; pass --port/--host "
            "or set server.port."
        )
    names = {type(e).__name__, *(c.__name__ for c in type(e).__mro__)}
    if names & {
        "ModelLoadError",
        "WorkerStartError",
        "WorkerDied",
        "ConfigError",
        "AuthError",
        "ProgramError",
        "ValueError",
    }:
        return UserError(str(e))
    return None


class _Progress:
    """A one-line spinner on stderr while booting (plain lines when stderr is not a terminal)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.status = None
        if not quiet and sys.stderr.isatty():
            from rich.console import Console

            self.status = Console(stderr=True).status("starting Pie")
            self.status.start()

    def __call__(self, message: str) -> None:
        if self.quiet:
            return
        if self.status is not None:
            self.status.update(message)
        else:
            sys.stderr.write(f"pie: {message}\n")
            sys.stderr.flush()

    def done(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        config: Annotated[
            Path | None,
            typer.Option("--config", "-c", help="Config file (default: $PIE_HOME/config.toml)."),
        ] = None,
        host: Annotated[
            str | None, typer.Option("--host", help="Bind address (server.host).")
        ] = None,
        port: Annotated[int | None, typer.Option("--port", help="TCP port (server.port).")] = None,
        no_auth: Annotated[
            bool, typer.Option("--no-auth", help="Accept clients without keys.")
        ] = False,
        debug: Annotated[bool, typer.Option("--debug", help="Verbose engine diagnostics.")] = False,
        no_snapshot: Annotated[
            bool,
            typer.Option(
                "--no-snapshot", help="Start Python inferlets without the runner snapshot."
            ),
        ] = False,
    ) -> None:
        """Boot the engine (workers, schedulers, runtime) and serve WebSocket clients."""
        from pie.controller import Engine, run_forever, with_overrides

        cfg = load_config(config)
        cfg = with_overrides(cfg, python_snapshot=False if no_snapshot else None)
        setup_logging(debug, cfg.server.verbose)
        engine = Engine(cfg, host=host, port=port, auth_enabled=False if no_auth else None)
        progress = _Progress()

        def ready(e: Engine) -> None:
            progress.done()
            auth = "on" if e.auth_enabled else "off"
            models = ", ".join(m.name for m in cfg.models)
            typer.echo(
                f"Pie is serving {models} on {e.url} (auth {auth}); Ctrl-C stops it.", err=True
            )
            if e.auth_enabled and e.keystore is not None and not e.keystore.users:
                typer.echo(
                    "warning: auth is on but no keys are authorised; add one with "
                    "`pie auth add USER < key.pub` or serve with --no-auth.",
                    err=True,
                )

        try:
            code = run_forever(engine, progress, ready)
        except KeyboardInterrupt:
            code = 0
        except Exception as e:
            progress.done()
            err = boot_error(e, engine.host, port if port is not None else cfg.server.port)
            if err is None:
                raise
            raise err from None
        progress.done()
        raise typer.Exit(code)
