"""The `pie` app itself: verb discovery, --version, errors as one line, doctor."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import typer
from pie_cli import main
from pie_cli.doctor import run_checks
from pie_cli.errors import UserError, register_user_error, user_error_types
from typer.testing import CliRunner

runner = CliRunner()


def test_version() -> None:
    r = runner.invoke(main.app, ["--version"])
    assert r.exit_code == 0 and r.stdout.startswith("pie ") and main.version() in r.stdout


def test_help_lists_registered_verbs() -> None:
    r = runner.invoke(main.app, ["--help"])
    assert r.exit_code == 0
    assert "config" in main.REGISTERED and "doctor" in main.REGISTERED
    for verb in main.REGISTERED:
        assert verb in r.stdout


def test_verb_discovery_skips_missing_and_raises_on_broken(tmp_path, monkeypatch) -> None:
    pkg = tmp_path / "fakecli"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "good.py").write_text(
        textwrap.dedent("""
        def register(app):
            @app.command("good")
            def good():
                print("good ran")
    """)
    )
    (pkg / "broken.py").write_text("import module_that_does_not_exist\n")
    (pkg / "noreg.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    app = typer.Typer(cls=main.PieGroup)

    @app.callback()
    def _root() -> None: ...

    assert main.register_verbs(app, ("missing", "good"), package="fakecli") == ["good"]
    assert runner.invoke(app, ["good"]).stdout == "good ran\n"
    with pytest.raises(ModuleNotFoundError):
        main.register_verbs(app, ("broken",), package="fakecli")
    with pytest.raises(TypeError, match="no register"):
        main.register_verbs(app, ("noreg",), package="fakecli")


def test_user_errors_are_one_line_and_registrable(monkeypatch) -> None:
    monkeypatch.setattr("pie_cli.errors._USER_ERRORS", list(user_error_types()))

    class ModelMissing(Exception):
        pass

    app = typer.Typer(cls=main.PieGroup)

    @app.command("a")
    def a() -> None:
        raise UserError("first line\nsecond line")

    @app.command("b")
    def b() -> None:
        raise ModelMissing("no such model; run pie model download")

    @app.command("c")
    def c() -> None:
        raise ValueError("a bug")

    r = runner.invoke(app, ["a"])
    assert r.exit_code == 1 and r.stderr == "error: first line second line\n"
    r = runner.invoke(app, ["b"])
    assert isinstance(r.exception, ModelMissing)  # not a user error until registered
    register_user_error(ModelMissing)
    assert ModelMissing in user_error_types()
    r = runner.invoke(app, ["b"])
    assert r.exit_code == 1 and r.stderr == "error: no such model; run pie model download\n"
    r = runner.invoke(app, ["c"])
    assert isinstance(r.exception, ValueError)  # real bugs are not swallowed


def test_console_script_prints_no_traceback(tmp_path) -> None:
    bad = tmp_path / "c.toml"
    bad.write_text('[server]\nport = "x"\n')
    env = {**os.environ, "PIE_HOME": str(tmp_path)}
    env.pop("PIE_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pie_cli.main", "config", "show", "--path", str(bad)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert str(bad) in proc.stderr and "server.port must be an integer" in proc.stderr


def test_doctor_reports_config_and_model(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PIE_HOME", str(tmp_path))
    checks = {c.name: c for c in run_checks()}
    assert {
        "python",
        "torch",
        "triton",
        "wasmtime",
        "cuda",
        "config",
        "default model",
        "PIE_HOME",
        "/dev/shm free",
    } <= set(checks)
    assert checks["config"].ok and "built-in default" in checks["config"].detail
    assert str(tmp_path) in checks["PIE_HOME"].detail
    (tmp_path / "config.toml").write_text("port = 1\n")
    checks = {c.name: c for c in run_checks()}
    assert not checks["config"].ok and "old config schema" in checks["config"].detail
    r = runner.invoke(main.app, ["doctor"])
    assert r.exit_code == 1 and "FAIL" in r.stdout and "config" in r.stdout


def test_user_errors_registered_by_name(monkeypatch) -> None:
    monkeypatch.setattr("pie_cli.errors._USER_ERROR_NAMES", set())

    class Base(Exception):
        pass

    class Derived(Base):
        pass

    app = typer.Typer(cls=main.PieGroup)

    @app.command("x")
    def x() -> None:
        raise Derived("named error")

    @app.command("y")
    def y() -> None:
        pass

    assert isinstance(runner.invoke(app, ["x"]).exception, Derived)
    register_user_error(f"{Base.__module__}.{Base.__qualname__}")
    r = runner.invoke(app, ["x"])
    assert r.exit_code == 1 and r.stderr == "error: named error\n"


def test_config_and_doctor_verbs_start_without_torch() -> None:
    code = (
        "import sys\n"
        "import pie_cli.errors, pie_cli.config, pie_cli.doctor, pie.config, pie.paths\n"
        "heavy = sorted(m for m in ('torch', 'pie.model', 'pie.controller') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.strip() == "", f"heavy imports at CLI start: {proc.stdout}"
