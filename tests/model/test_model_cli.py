"""`pie model ...` and `pie generate` through the real typer app."""

from __future__ import annotations

import json

import pytest
from fixtures.model_helpers import fake_hf_cache
from pie_cli.main import app
from typer.testing import CliRunner


@pytest.fixture
def runner(tmp_path, monkeypatch) -> CliRunner:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "hub").mkdir()
    return CliRunner()


def test_model_list_info_remove(runner, tmp_path, tiny_checkpoints):
    fake_hf_cache(tmp_path / "hub", "tiny-org/tiny-llama", tiny_checkpoints["llama"])
    res = runner.invoke(app, ["model", "list"])
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if "tiny-org/tiny-llama" in x)
    assert line.startswith("✓") and "llama" in line
    res = runner.invoke(app, ["model", "info", "tiny-org/tiny-llama", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["arch"] == "llama" and info["rope_scaling"]["rope_type"] == "llama3"
    res = runner.invoke(app, ["model", "remove", "tiny-org/tiny-llama", "-y"])
    assert res.exit_code == 0 and "removed tiny-org/tiny-llama" in res.output
    res = runner.invoke(app, ["model", "remove", "tiny-org/tiny-llama", "-y"])
    assert res.exit_code == 1
    assert "not in the HuggingFace cache" in res.output and "Traceback" not in res.output


def test_model_download_offline_fails_in_one_line(runner, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = runner.invoke(app, ["model", "download", "Qwen/Qwen3-0.6B"])
    assert res.exit_code == 1
    errors = [x for x in res.output.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "HF_HUB_OFFLINE" in errors[0]


def test_generate_with_tiny_model(runner, tiny_checkpoints):
    from pie.model import load_model
    from pie.model.generator import Generator

    path = str(tiny_checkpoints["qwen2"])
    res = runner.invoke(app, ["generate", "hello there", "-m", path, "--max-tokens", "6", "-q"])
    assert res.exit_code == 0, res.output
    # the same greedy tokens as the generator produces directly (stop tokens are not printed)
    lm = load_model(path)
    ids = lm.tokenizer.encode(
        lm.tokenizer.render_chat([{"role": "user", "content": "hello there"}])
    )
    new = Generator(lm.model, page_size=16, num_pages=8).generate(
        [ids], 6, stop_token_ids=lm.tokenizer.stop_token_ids
    )[0]
    expect = lm.tokenizer.decode([t for t in new if t not in lm.tokenizer.stop_token_ids])
    assert res.output.rstrip("\n") == expect


def test_generate_bad_model_is_one_line(runner, tmp_path):
    res = runner.invoke(app, ["generate", "hi", "-m", str(tmp_path / "nope.gguf"), "-q"])
    assert res.exit_code == 1
    assert "nope.gguf does not exist" in res.output and "Traceback" not in res.output


def test_cli_modules_do_not_import_torch():
    """`pie --version` and friends must not pay for torch because these verbs exist."""
    import subprocess
    import sys

    code = (
        "import sys, pie_cli.model, pie_cli.generate, pie.model; assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_generate_defaults_to_the_configured_model(runner, tmp_path, monkeypatch, tiny_checkpoints):
    from pie.config import default_config, write_config

    monkeypatch.setenv("PIE_HOME", str(tmp_path / "home"))
    cfg = default_config(cuda=False)
    cfg.models[0].hf_repo = str(tiny_checkpoints["mistral"])
    write_config(cfg, tmp_path / "home" / "config.toml")
    res = runner.invoke(app, ["generate", "hi", "--max-tokens", "2"])
    assert res.exit_code == 0, res.output
    assert "loaded mistral" in res.output
    assert "int8 weights" in res.output  # the configured runtime_quant of the CPU default


def test_generate_quant_option(runner, tiny_checkpoints):
    from pie.model import load_model
    from pie.model.generator import Generator

    path = str(tiny_checkpoints["llama"])
    res = runner.invoke(app, ["generate", "hi", "-m", path, "-n", "5", "--quant", "int8"])
    assert res.exit_code == 0, res.output
    assert "int8 weights" in res.output
    lm = load_model(path, quant="int8")
    ids = lm.tokenizer.encode(lm.tokenizer.render_chat([{"role": "user", "content": "hi"}]))
    stops = lm.tokenizer.stop_token_ids
    new = Generator(lm.model, page_size=16, num_pages=8).generate([ids], 5, stop_token_ids=stops)[0]
    assert lm.tokenizer.decode([t for t in new if t not in stops]) in res.stdout
    res = runner.invoke(
        app, ["generate", "hi", "-m", path, "-n", "2", "--quant", "int8", "--dtype", "bfloat16"]
    )
    assert res.exit_code == 1 and 'activation_dtype = "float32"' in res.output
