"""PIE_HOME and the directories under it."""

from __future__ import annotations

from pathlib import Path

from pie import paths
from pie.config import default_config


def test_pie_home_env_overrides_default(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PIE_HOME", str(tmp_path / "h"))
    assert paths.pie_home() == tmp_path / "h" and (tmp_path / "h").is_dir()
    assert paths.config_path() == tmp_path / "h" / "config.toml"
    assert paths.keys_path().parent == tmp_path / "h"
    for d in (paths.cache_dir(), paths.programs_dir(), paths.runner_cache_dir()):
        assert d.is_dir() and tmp_path / "h" in d.parents


def test_default_home_is_dot_pie(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("PIE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert paths.pie_home(create=False) == tmp_path / ".pie"
    assert not (tmp_path / ".pie").exists()


def test_config_path_does_not_create_home(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PIE_HOME", str(tmp_path / "lazy"))
    paths.config_path()
    assert not (tmp_path / "lazy").exists()


def test_scratch_root_follows_config(tmp_path) -> None:
    cfg = default_config(cuda=False)
    cfg.runtime.fs_scratch_dir = str(tmp_path / "scratch")
    assert paths.scratch_root(cfg) == Path(tmp_path / "scratch") and (tmp_path / "scratch").is_dir()
