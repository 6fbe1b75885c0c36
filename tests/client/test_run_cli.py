"""`pie run`: argument parsing, and the whole command over a faked engine."""

from __future__ import annotations

import json

import pytest
import typer
from fake_processes import FakeProcessManager
from pie_cli.errors import UserError
from pie_cli.run import parse_inferlet_args, register
from typer.testing import CliRunner

import pie.controller
from pie.programs import ProgramStore


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], {}),
        (["--max-tokens", "64"], {"max_tokens": 64}),
        (["--temperature", "0.5", "--top-p", "1e-1"], {"temperature": 0.5, "top_p": 0.1}),
        (["--greedy", "--stream", "false"], {"greedy": True, "stream": False}),
        (["--prompt", "hello world", "--last"], {"prompt": "hello world", "last": True}),
        (["-k", "3", "--offset", "-2"], {"k": 3, "offset": -2}),
        (["--name=pie", "--ratio=-0.25"], {"name": "pie", "ratio": -0.25}),
        (["--tag", "a", "--tag", "b"], {"tag": ["a", "b"]}),
        (["file.txt", "--n", "1", "7"], {"n": 1, "_positional": ["file.txt", 7]}),
        (["--version", "1.2.3"], {"version": "1.2.3"}),
    ],
)
def test_parse_inferlet_args(argv, expected):
    assert parse_inferlet_args(argv) == expected


def test_parse_rejects_nameless_option():
    with pytest.raises(UserError):
        parse_inferlet_args(["--=3"])


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.setenv("PIE_HOME", str(tmp_path / "home"))
    real = pie.controller.Engine

    class FakedEngine(real):
        def __init__(self, cfg, **kw):
            super().__init__(
                cfg,
                engines={},
                programs=ProgramStore(tmp_path / "programs"),
                process_manager_factory=lambda e: FakeProcessManager(),
                **kw,
            )

    monkeypatch.setattr(pie.controller, "Engine", FakedEngine)
    app = typer.Typer()
    register(app)

    @app.command("noop")
    def _noop() -> None:  # keeps typer in multi-command mode
        pass

    runner = CliRunner()

    def invoke(*args):
        try:
            return runner.invoke(app, list(args), catch_exceptions=False)
        except UserError as e:
            return e

    return invoke


def test_pie_run_streams_and_prints_the_result(tmp_path, cli):
    src = tmp_path / "greet.py"
    src.write_text(
        "async def main(name, times=1, loud=False):\n"
        "    for i in range(times):\n"
        "        session.send(f'{i}: {name}')\n"
        "    print('to stdout')\n"
        "    return {'name': name.upper() if loud else name, 'times': times}\n"
    )
    r = cli("run", "--path", str(src), "-q", "--", "--name", "pie", "--times", "2", "--loud")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == "0: pie1: pieto stdout"  # messages and stdout stream unchanged
    assert json.loads(lines[1]) == {"name": "PIE", "times": 2}
    # the upload stays in the store: run it again by name, with --input merged in
    r = cli("run", "greet", "-q", "--input", '{"name": "x"}', "--", "--times", "0")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.splitlines()[-1]) == {"name": "x", "times": 0}
    src.write_text("async def main():\n    session.send('partial')\n    return 'done'\n")
    r = cli("run", "--path", str(src), "-q")
    assert r.stdout == "partial\ndone\n"  # the result starts on its own line


def test_pie_run_reports_inferlet_errors(tmp_path, cli):
    src = tmp_path / "boom.py"
    src.write_text("async def main():\n    raise RuntimeError('kaput')\n")
    r = cli("run", "--path", str(src), "-q")
    assert r.exit_code == 1
    assert "kaput" in r.stderr


def test_pie_run_user_mistakes(tmp_path, cli):
    e = cli("run", "-q")
    assert isinstance(e, UserError) and "--path" in str(e)
    e = cli("run", "-q", "ghost")
    assert isinstance(e, UserError) and "not installed" in str(e)
    e = cli("run", "-q", "--path", str(tmp_path / "missing.py"))
    assert isinstance(e, UserError) and "does not exist" in str(e)
    bad = tmp_path / "bad.py"
    bad.write_text("def main(:\n")
    e = cli("run", "-q", "--path", str(bad))
    assert isinstance(e, UserError) and "syntax error" in str(e)
    e = cli("run", "-q", "--input", "[1]", "ghost")
    assert isinstance(e, UserError) and "JSON object" in str(e)
