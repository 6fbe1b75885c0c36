"""`pie model list|info|download|remove`: the models available on this machine.

Thin commands over `pie.model.hub` (the HuggingFace cache plus the bundled default model).
Registered on the root app by `pie_cli.main`; `ModelLoadError` is reported as one line.
"""

from __future__ import annotations

import json

import typer

from pie.model.errors import ModelLoadError
from pie_cli.errors import register_user_error

model_app = typer.Typer(
    help="List, inspect, download and remove models (HuggingFace cache).", no_args_is_help=True
)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


@model_app.command("list")
def list_cmd() -> None:
    """List cached models; ✓ marks architectures Pie can serve."""
    from pie.model.hub import list_models
    from pie.model.resolve import hf_cache_dir

    models = list_models()
    if not models:
        typer.echo(f"no models in {hf_cache_dir()}; run `pie model download <repo>`")
        return
    width = max(len(m.repo_id) for m in models)
    for m in models:
        mark = "✓" if m.compatible else "○"
        kind = m.model_type or "unknown"
        typer.echo(f"{mark} {m.repo_id:<{width}}  {_size(m.size_bytes):>9}  {kind:<8} {m.origin}")


@model_app.command("info")
def info_cmd(
    spec: str = typer.Argument(..., help="HF repo id, model directory or .gguf file."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Show where a model resolves and its architecture (no weights are loaded)."""
    from pie.model.hub import model_info

    info = model_info(spec)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    info["size_bytes"] = _size(info["size_bytes"])
    info["params"] = f"{info['params'] / 1e6:.1f}M"
    width = max(len(k) for k in info)
    for k, v in info.items():
        typer.echo(f"{k:<{width}}  {v}")


@model_app.command("download")
def download_cmd(
    repo: str = typer.Argument(..., help="HuggingFace repo id, e.g. Qwen/Qwen3-0.6B."),
    all_files: bool = typer.Option(
        False, "--all", help="Fetch every file, not only config, tokenizer and safetensors."
    ),
) -> None:
    """Download a model into the HuggingFace cache and check that Pie can serve it."""
    from pie.model.hub import download_model

    path = download_model(repo, all_files=all_files)
    typer.echo(f"✓ {repo} -> {path}")


@model_app.command("remove")
def remove_cmd(
    repo: str = typer.Argument(..., help="HuggingFace repo id to delete from the cache."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete a model from the HuggingFace cache."""
    from pie.model.hub import remove_model

    if not yes and not typer.confirm(f"Delete {repo} from the HuggingFace cache?"):
        raise typer.Exit(1)
    freed = remove_model(repo)
    typer.echo(f"removed {repo} ({_size(freed)} freed)")


def register(app: typer.Typer) -> None:
    register_user_error(ModelLoadError)
    app.add_typer(model_app, name="model")
