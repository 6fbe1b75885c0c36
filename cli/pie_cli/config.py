"""`pie config init|show|set`: write, inspect and edit the configuration file.

Thin commands over `pie.config`: every write is validated first (a rejected edit leaves the
file untouched). Registered on the root app by `pie_cli.main`.
"""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import typer

from pie import paths
from pie.config import (
    ConfigError,
    default_config,
    describe_keys,
    dump_config,
    dump_toml,
    parse_config,
    read_toml,
    retarget_driver_options,
    set_value,
    toml_value,
    unset_value,
    write_config,
)
from pie_cli.errors import UserError

config_app = typer.Typer(
    help="Create, show and edit the configuration file (default: $PIE_HOME/config.toml).",
    no_args_is_help=True,
)

PathOption = typer.Option(
    None, "--path", "-p", help="Config file to use instead of $PIE_HOME/config.toml."
)

HEADER = (
    "# Pie configuration. Every key is documented in the comment above it; edit with\n"
    "# `pie config set KEY VALUE` (e.g. `pie config set server.port 9090`).\n\n"
)


def _resolve(path: Path | None) -> Path:
    return Path(path).expanduser() if path is not None else paths.config_path()


@config_app.command("init")
def init(
    path: Path | None = PathOption,
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing file."),
    cuda: bool | None = typer.Option(
        None,
        "--cuda/--no-cuda",
        help="Write the GPU (cuda:0, cuda_native) or CPU (portable) default; default: detect.",
    ),
) -> None:
    """Write a working default configuration for this machine."""
    target = _resolve(path)
    if target.exists() and not force:
        raise UserError(f"{target} already exists; pass --force to overwrite it.")
    cfg = default_config(cuda=cuda)
    write_config(HEADER + dump_config(cfg), target)
    driver = cfg.default_model.driver
    typer.echo(
        f"Wrote {target} (model {cfg.default_model.hf_repo!r} on {', '.join(driver.device)}, "
        f"{driver.type} driver, {driver.activation_dtype})."
    )


@config_app.command("show")
def show(path: Path | None = PathOption) -> None:
    """Validate the configuration and print it with every default filled in."""
    target = _resolve(path)
    if path is None and not target.exists():
        typer.echo(f"# {target} does not exist: the built-in default is in effect.")
        typer.echo("# Write it with `pie config init`.\n")
        cfg = default_config()
    else:
        cfg = parse_config(read_toml(target), str(target))
        typer.echo(f"# {target}")
    typer.echo(dump_config(cfg), nl=False)


@config_app.command("set")
def set_(
    key: str = typer.Argument(..., help="Dot path under a section: server.port, model.0.hf_repo."),
    value: str = typer.Argument(
        ..., help='New value: true/false, numbers, "a,b" for lists, anything else is a string.'
    ),
    path: Path | None = PathOption,
) -> None:
    """Set one key, validate the result, and write the file (created from the default)."""
    target = _resolve(path)
    if target.exists():
        data = read_toml(target)
        parse_config(data, str(target))  # refuse to edit a file that is already invalid
    else:
        data = msgspec.to_builtins(default_config())
    updated = set_value(data, key, value)
    notes = []
    match = re.fullmatch(r"model\.(\d+)\.driver\.type", key)
    if match:
        dropped = retarget_driver_options(updated, int(match.group(1)))
        if dropped:
            notes.append(f"dropped options the {value} driver does not take: {', '.join(dropped)}")
    _save(updated, target, f"{key} = {value!r}")
    new = updated
    for seg in key.split("."):
        new = new[int(seg)] if isinstance(new, list) else new[seg]
    typer.echo(f"{key} = {toml_value(new)}  ({target})")
    for note in notes:
        typer.echo(f"note: {note}")


@config_app.command("unset")
def unset(
    key: str = typer.Argument(
        ..., help="Dot path to remove, e.g. server.max_concurrent_processes."
    ),
    path: Path | None = PathOption,
) -> None:
    """Remove one key so it falls back to its default (or a whole [[model]] block: model.1)."""
    target = _resolve(path)
    data = read_toml(target)
    parse_config(data, str(target))
    updated = unset_value(data, key)
    _save(updated, target, f"removing {key}")
    typer.echo(f"{key} removed  ({target})")


def _save(updated: dict, target: Path, change: str) -> None:
    """Validate the edited document and write it; an invalid result is refused."""
    try:
        parse_config(updated, str(target))
    except ConfigError as e:
        raise ConfigError(
            f"Not saved: {change} would make the config invalid: " + "; ".join(e.issues) + ".",
            e.issues,
        ) from None
    write_config(HEADER + dump_toml(updated), target)


@config_app.command("keys")
def keys(
    prefix: str = typer.Argument(
        "", help="Only keys starting with this, e.g. runtime or model.0.driver."
    ),
) -> None:
    """List every config key with its default and what it does."""
    rows = [r for r in describe_keys() if r[0].startswith(prefix)]
    if not rows:
        raise UserError(
            f"No config key starts with {prefix!r}; run `pie config keys` for all of them."
        )
    width = max(len(r[0]) for r in rows)
    for key, default, doc in rows:
        typer.echo(f"{key.ljust(width)}  {default}")
        if doc:
            typer.echo(f"    {doc}")


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
