"""`pie build`: manifest validation and the packed artifact runs."""

import asyncio
import zipfile

import pytest
from typer.testing import CliRunner

from pie.sandbox.package import PackageError, build, check_manifest
from pie.sandbox.testing import run_inferlet

GOOD = '''[package]
name = "demo"
version = "1.2.3"

[runtime]
language = "python"

[parameters]
x = { type = "int", description = "a number" }
'''


def _tree(tmp_path, manifest=GOOD, files=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "Pie.toml").write_text(manifest)
    for name, src in (files or {"main.py": "from lib import f\nasync def main(input):\n"
                                            "    return f(input['x'])\n",
                                 "lib.py": "def f(x):\n    return x + 1\n"}).items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(src)
    return tmp_path


def test_build_packs_and_the_artifact_runs(tmp_path):
    pkg = build(_tree(tmp_path / "src"), tmp_path / "out")
    assert pkg.artifact.name == "demo-1.2.3.zip" and pkg.manifest.read_text() == GOOD
    with zipfile.ZipFile(pkg.artifact) as z:
        assert sorted(z.namelist()) == ["Pie.toml", "lib.py", "main.py"]
    kind, value, _ = asyncio.run(run_inferlet(pkg.artifact.read_bytes(), {"x": 41}))
    assert (kind, value) == ("return", "42")
    again = build(tmp_path / "src", tmp_path / "out2")
    assert again.artifact.read_bytes() == pkg.artifact.read_bytes()  # reproducible


@pytest.mark.parametrize("bad, words", [
    (GOOD.replace('"1.2.3"', '"1.2"'), "semantic version"),
    (GOOD.replace('name = "demo"', 'name = "bad name!"'), "[package].name"),
    (GOOD.replace('type = "int"', 'type = "complex"'), "has type"),
    (GOOD.replace('description = "a number"', 'colour = "red"'), "unknown keys"),
    (GOOD.replace('[runtime]\nlanguage = "python"', '[runtime]\ncall = "positional"'), "call"),
])
def test_manifest_errors_name_the_fix(bad, words):
    with pytest.raises(PackageError, match=None) as e:
        check_manifest(bad)
    assert words in str(e.value)


def test_source_errors(tmp_path):
    with pytest.raises(PackageError, match="line 1"):
        build(_tree(tmp_path / "a", files={"main.py": "async def main(input)\n"}))
    with pytest.raises(PackageError, match="no top-level function 'main'"):
        build(_tree(tmp_path / "b", files={"main.py": "def other(): pass\n"}))
    t = _tree(tmp_path / "c")
    (t / "fast.so").write_bytes(b"\x7fELF")
    with pytest.raises(PackageError, match="native extension"):
        build(t)


def test_cli_build(tmp_path):
    from pie_cli.main import app

    src = _tree(tmp_path / "src")
    res = CliRunner().invoke(app, ["build", str(src), "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "demo-1.2.3.zip").exists()
    (src / "Pie.toml").write_text(GOOD.replace('"1.2.3"', '"x"'))
    res = CliRunner().invoke(app, ["build", str(src)])
    assert res.exit_code == 1 and "semantic version" in res.output


def test_every_example_builds(tmp_path):
    from pathlib import Path

    examples = Path(__file__).resolve().parents[2] / "sdk" / "python" / "examples"
    dirs = sorted(p for p in examples.iterdir() if (p / "Pie.toml").exists())
    assert len(dirs) >= 4
    for d in dirs:
        pkg = build(d, tmp_path / d.name)
        assert pkg.artifact.exists()
