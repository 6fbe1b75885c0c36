"""Where Pie keeps its files: the home directory and everything under it.

`PIE_HOME` overrides the default home `~/.pie`. Every function here returns an absolute path;
the directory-returning ones create their directory on demand, so callers never `mkdir`
themselves. Called by the config loader, the program store, the sandbox (runner cache,
scratch), the auth keystore and the CLI.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pie.config import PieConfig

PIE_HOME_ENV = "PIE_HOME"


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def pie_home(create: bool = True) -> Path:
    """The Pie home directory: `$PIE_HOME` if set, else `~/.pie`."""
    override = os.environ.get(PIE_HOME_ENV)
    home = Path(override).expanduser() if override else Path.home() / ".pie"
    home = home.absolute()
    return _ensure(home) if create else home


def config_path() -> Path:
    """The default configuration file, `<home>/config.toml` (not created here)."""
    return pie_home(create=False) / "config.toml"


def cache_dir() -> Path:
    """Derived artifacts that can be rebuilt at any time (compiled components, ...)."""
    return _ensure(pie_home() / "cache")


def programs_dir() -> Path:
    """The program store: uploaded inferlets by name and version."""
    return _ensure(pie_home() / "programs")


def runner_cache_dir() -> Path:
    """The compiled Python runner component and its pre-initialized snapshot."""
    return _ensure(cache_dir() / "runner")


def keys_path() -> Path:
    """The keystore of users allowed to connect when auth is enabled (not created here)."""
    return pie_home() / "authorized_users.toml"


def scratch_root(cfg: PieConfig) -> Path:
    """The host root for per-process `/scratch` directories (`[runtime].fs_scratch_dir`)."""
    return _ensure(Path(cfg.runtime.fs_scratch_dir).expanduser().absolute())
