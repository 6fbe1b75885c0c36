"""`pie config init|show|set` through the real command group."""

from __future__ import annotations

import tomllib

import pytest
from pie_cli.main import app
from typer.testing import CliRunner

from pie.config import default_config, load_config

runner = CliRunner()


@pytest.fixture
def home(monkeypatch, tmp_path):
    monkeypatch.setenv("PIE_HOME", str(tmp_path))
    monkeypatch.delenv("PIE_DEBUG", raising=False)
    monkeypatch.setattr("pie.config._cuda_available", lambda: False)
    return tmp_path


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_init_writes_working_default_and_refuses_overwrite(home) -> None:
    r = invoke("config", "init")
    assert r.exit_code == 0, r.output
    path = home / "config.toml"
    assert load_config(path) == default_config(cuda=False)
    path.write_text(path.read_text() + "\n# mine\n")
    r = invoke("config", "init")
    assert r.exit_code == 1
    assert "already exists" in r.stderr and "--force" in r.stderr
    assert "# mine" in path.read_text()
    r = invoke("config", "init", "--force")
    assert r.exit_code == 0 and "# mine" not in path.read_text()


def test_init_cuda_flag_and_explicit_path(home) -> None:
    target = home / "sub" / "gpu.toml"
    r = invoke("config", "init", "--cuda", "--path", str(target))
    assert r.exit_code == 0, r.output
    cfg = load_config(target)
    assert cfg.models[0].driver.type == "cuda_native" and cfg.models[0].driver.device == ["cuda:0"]


def test_show_prints_effective_config(home) -> None:
    r = invoke("config", "show")
    assert r.exit_code == 0
    assert "does not exist" in r.stdout
    body = "\n".join(line for line in r.stdout.splitlines())
    assert tomllib.loads(body)["model"][0]["driver"]["type"] == "portable"
    invoke("config", "init")
    invoke("config", "set", "server.port", "9191")
    r = invoke("config", "show")
    assert r.exit_code == 0 and "port = 9191" in r.stdout


@pytest.mark.parametrize(
    ("key", "value", "check"),
    [
        ("server.port", "9090", lambda c: c.server.port == 9090),
        ("auth.enabled", "true", lambda c: c.auth.enabled is True),
        (
            "model.0.hf_repo",
            "meta-llama/Llama-3.2-1B",
            lambda c: c.models[0].hf_repo == "meta-llama/Llama-3.2-1B",
        ),
        (
            "model.0.driver.device",
            "cuda:0,cuda:1",
            lambda c: c.models[0].driver.device == ["cuda:0", "cuda:1"],
        ),
        ("model.0.driver.device", "cpu", lambda c: c.models[0].driver.device == ["cpu"]),
        ("runtime.allow_fs", "true", lambda c: c.runtime.allow_fs is True),
        (
            "model.0.scheduler.batch_policy",
            "eager",
            lambda c: c.models[0].scheduler.batch_policy == "eager",
        ),
        (
            "model.0.driver.options.num_threads",
            "2",
            lambda c: c.models[0].driver.option("num_threads") == 2,
        ),
    ],
)
def test_set_round_trips(home, key, value, check) -> None:
    invoke("config", "init", "--no-cuda")
    if value.startswith("cuda"):  # the CPU default's int8 weights run on CPU only
        r = invoke("config", "set", "model.0.driver.options.runtime_quant", "")
        assert r.exit_code == 0, r.output
    r = invoke("config", "set", key, value)
    assert r.exit_code == 0, r.output
    assert check(load_config(home / "config.toml"))


def test_int8_default_must_be_cleared_before_moving_to_a_gpu(home) -> None:
    invoke("config", "init", "--no-cuda")
    r = invoke("config", "set", "model.0.driver.device", "cuda:0")
    assert r.exit_code != 0
    assert "runtime_quant" in r.output and "CPU only" in r.output
    r = invoke("config", "set", "model.0.driver.activation_dtype", "bfloat16")
    assert r.exit_code != 0
    assert 'needs model.0.driver.activation_dtype "float32"' in r.output


def test_set_without_file_starts_from_default(home) -> None:
    r = invoke("config", "set", "server.port", "7000")
    assert r.exit_code == 0, r.output
    cfg = load_config(home / "config.toml")
    assert (
        cfg.server.port == 7000
        and cfg.models[0].hf_repo == default_config(cuda=False).models[0].hf_repo
    )


def test_set_keeps_unrelated_keys(home) -> None:
    (home / "config.toml").write_text(
        '[runtime]\nworker_threads = 3\n\n[[model]]\nname = "a"\nhf_repo = "r"\n'
        '[model.driver]\ntype = "dummy"\ndevice = "cpu"\n'
    )
    assert invoke("config", "set", "telemetry.enabled", "true").exit_code == 0
    raw = tomllib.loads((home / "config.toml").read_text())
    assert raw["runtime"] == {"worker_threads": 3}
    assert raw["telemetry"] == {"enabled": True}
    assert "scheduler" not in raw["model"][0]  # defaults stay implicit


def test_invalid_set_leaves_file_untouched(home) -> None:
    invoke("config", "init")
    before = (home / "config.toml").read_text()
    for key, value in [
        ("server.port", "0"),
        ("server.port", "abc"),
        ("server.prot", "1"),
        ("model.0.driver.type", "tpu"),
    ]:
        r = invoke("config", "set", key, value)
        assert r.exit_code == 1
        assert r.stderr.startswith("error: Not saved") and r.stderr.count("\n") == 1
        assert "Traceback" not in r.output
    assert (home / "config.toml").read_text() == before


def test_wrong_type_in_file_is_one_line_naming_file_and_key(home) -> None:
    path = home / "config.toml"
    invoke("config", "init")
    path.write_text(path.read_text().replace("port = 8080", 'port = "eighty"'))
    for args in (["config", "show"], ["config", "set", "server.host", "0.0.0.0"]):
        r = invoke(*args)
        assert r.exit_code == 1
        assert r.stdout == ""
        assert r.stderr.count("\n") == 1
        assert str(path) in r.stderr and "server.port must be an integer" in r.stderr


def test_old_schema_file_shows_migration(home) -> None:
    (home / "config.toml").write_text('host = "0.0.0.0"\nenable_auth = true\n')
    r = invoke("config", "show")
    assert r.exit_code == 1
    assert "`host` -> [server].host" in r.stderr and "`enable_auth` -> [auth].enabled" in r.stderr


def test_debug_env_shows_the_exception(home, monkeypatch) -> None:
    (home / "config.toml").write_text("port = 1\n")
    monkeypatch.setenv("PIE_DEBUG", "1")
    r = invoke("config", "show")
    assert r.exit_code != 0 and type(r.exception).__name__ == "ConfigError"


def test_switching_driver_type_drops_foreign_options(home) -> None:
    invoke("config", "init", "--cuda")
    r = invoke("config", "set", "model.0.driver.type", "dummy")
    assert r.exit_code == 0, r.output
    assert "dropped options" in r.stdout and "gpu_mem_utilization" in r.stdout
    d = load_config(home / "config.toml").models[0].driver
    assert d.type == "dummy" and "gpu_mem_utilization" not in d.options
    assert d.options["max_batch_tokens"] == 10240  # shared knobs survive


def test_unset_restores_default_and_removes_blocks(home) -> None:
    invoke("config", "init")
    invoke("config", "set", "server.max_concurrent_processes", "8")
    assert load_config(home / "config.toml").server.max_concurrent_processes == 8
    r = invoke("config", "unset", "server.max_concurrent_processes")
    assert r.exit_code == 0, r.output
    assert load_config(home / "config.toml").server.max_concurrent_processes is None
    for key, value in [
        ("model.1.name", "b"),
        ("model.1.hf_repo", "r"),
        ("model.1.driver.device", "cuda:1"),
    ]:
        runner.invoke(app, ["config", "set", key, value])
    # the model block is incomplete (no driver.type): each set is refused
    assert len(load_config(home / "config.toml").models) == 1
    r = invoke("config", "unset", "model.0.hf_repo")
    assert r.exit_code == 1 and "model.0.hf_repo` is required" in r.stderr
    r = invoke("config", "unset", "server.nope")
    assert r.exit_code == 1 and "nothing to unset" in r.stderr


def test_add_a_model_as_an_inline_table(home) -> None:
    invoke("config", "init")
    r = invoke(
        "config",
        "set",
        "model.1",
        '{name = "b", hf_repo = "org/b", driver = {type = "dummy", device = "cuda:1"}}',
    )
    assert r.exit_code == 0, r.output
    cfg = load_config(home / "config.toml")
    assert [m.name for m in cfg.models] == ["default", "b"]
    assert cfg.model("b").driver.device == ["cuda:1"]
    assert invoke("config", "unset", "model.1").exit_code == 0
    assert len(load_config(home / "config.toml").models) == 1


def test_keys_lists_schema_with_defaults(home) -> None:
    r = invoke("config", "keys")
    assert r.exit_code == 0
    assert "server.port" in r.stdout and "8080" in r.stdout
    assert "model.0.scheduler.batch_policy" in r.stdout and '"adaptive"' in r.stdout
    assert "model.0.driver.options.gpu_mem_utilization (cuda_native)" in r.stdout
    r = invoke("config", "keys", "auth")
    assert r.exit_code == 0 and r.stdout.splitlines()[0].startswith("auth.enabled")
    assert "server.port" not in r.stdout
    assert invoke("config", "keys", "nope").exit_code == 1
