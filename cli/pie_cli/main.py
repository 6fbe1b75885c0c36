"""The `pie` command: a typer app that collects its verbs from sibling modules.

Each verb lives in its own module `pie_cli/<verb>.py` exposing `register(app)`; this module
finds the ones that exist and registers them. Every `pie` invocation imports every verb module,
so verb modules keep torch, the model layer and the controller out of their module-level
imports (import them inside the command). Every command is wrapped so that user errors
(`UserError`, `ConfigError`, and types registered in `pie_cli.errors`) print one line and exit
with status 1 instead of a traceback (`PIE_DEBUG=1` shows it). Entry point of the `pie`
console script (`pie_cli.main:app`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from typing import Any

import click
import typer
from typer.core import TyperGroup

from pie_cli.errors import debug_enabled, is_user_error, print_error

# Verb modules in help order; a module that does not exist yet is skipped.
VERBS = ("serve", "run", "generate", "config", "model", "auth", "build", "bench", "doctor")


class PieGroup(TyperGroup):
    """The root command group: turns user errors raised by any command into one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as e:
            if not is_user_error(e) or debug_enabled():
                raise
            print_error(str(e))
            ctx.exit(1)


def version() -> str:
    try:
        return importlib.metadata.version("pie-engine")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"pie {version()}")
        raise typer.Exit()


app = typer.Typer(
    name="pie",
    cls=PieGroup,
    help="Pie: an LLM serving system that serves programs (inferlets), not prompts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    show_version: bool = typer.Option(
        False,
        "--version",
        "-V",
        help="Print the version and exit.",
        callback=_version_callback,
        is_eager=True,
    ),
) -> None:
    """Pie: an LLM serving system that serves programs (inferlets), not prompts."""


def register_verbs(
    target: typer.Typer, verbs: tuple[str, ...] = VERBS, package: str = "pie_cli"
) -> list[str]:
    """Import each existing `<package>.<verb>` module and call its `register(target)`.

    A verb module that does not exist is skipped; one that exists but fails to import (or has
    no `register`) is a bug and raises. Returns the verbs registered.
    """
    registered = []
    for verb in verbs:
        name = f"{package}.{verb}"
        if importlib.util.find_spec(name) is None:
            continue
        module = importlib.import_module(name)
        register = getattr(module, "register", None)
        if not callable(register):
            raise TypeError(f"{name} has no register(app) function")
        register(target)
        registered.append(verb)
    return registered


REGISTERED = register_verbs(app)


if __name__ == "__main__":
    app()
