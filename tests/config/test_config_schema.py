"""The config schema: defaults, every validation rule, unknown keys, the old-schema error."""

from __future__ import annotations

import os
import tempfile
import tomllib

import msgspec
import pytest

from pie.config import (
    ConfigError,
    CudaNativeOptions,
    DummyOptions,
    PieConfig,
    PortableOptions,
    controller_nice,
    default_config,
    dump_config,
    load_config,
    parse_config,
    set_value,
)


def base() -> dict:
    """A valid document (the CPU default) to mutate."""
    return msgspec.to_builtins(default_config(cuda=False))


def with_(**edits: object) -> dict:
    data = base()
    for key, value in edits.items():
        data = set_value(data, key.replace("__", "."), str(value))
    return data


def rejects(data: dict, *fragments: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "cfg.toml")
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


def minimal_model(name: str = "m", device: object = "cpu", **driver: object) -> dict:
    return {
        "name": name,
        "hf_repo": "org/repo",
        "driver": {"type": "portable", "device": device, **driver},
    }


# ----------------------------------------------------------------------------- defaults


def test_schema_defaults_match_the_reference() -> None:
    cfg = parse_config({"model": [minimal_model()]}, "x")
    s, a, t, r = cfg.server, cfg.auth, cfg.telemetry, cfg.runtime
    assert (s.host, s.port, s.verbose, s.python_snapshot) == ("127.0.0.1", 8080, False, True)
    assert s.registry == "https://registry.pie-project.org/"
    assert s.max_concurrent_processes is None
    assert a.enabled is True  # schema default; the template turns it off
    assert (t.enabled, t.endpoint, t.service_name) == (False, "http://localhost:4317", "pie")
    assert r.worker_threads == os.cpu_count()
    assert (r.wasm_max_instances, r.wasm_max_memory_mb) == (1000, 4096)
    assert (r.wasm_warm_memory_mb, r.wasm_warm_slots) == (0, 100)
    assert (r.allow_fs, r.allow_network, r.network_allowed_hosts) == (False, True, ["*"])
    assert r.fs_scratch_dir == os.path.join(tempfile.gettempdir(), "pie")
    assert r.max_upload_mb == 256
    m = cfg.models[0]
    sc, d = m.scheduler, m.driver
    assert (sc.batch_policy, sc.request_timeout_secs, sc.default_token_limit) == (
        "adaptive",
        120,
        None,
    )
    assert (sc.default_endowment_pages, sc.admission_oversubscription_factor) == (64, 4.0)
    assert sc.restore_pause_at_utilization == 0.85
    assert (d.tensor_parallel_size, d.activation_dtype, d.random_seed, d.options) == (
        1,
        "bfloat16",
        42,
        {},
    )
    assert d.device == ["cpu"]  # a single string is normalized to a list
    assert cfg.default_model is m and cfg.model() is m and cfg.model("m") is m


def test_reference_example_parses() -> None:
    text = """
[server]
host = "127.0.0.1"
port = 8080
verbose = true
registry = "https://registry.pie-project.org/"
python_snapshot = true
[auth]
enabled = false
[telemetry]
enabled = false
endpoint = "http://localhost:4317"
service_name = "pie"
[runtime]
worker_threads = 8
wasm_max_instances = 1000
wasm_max_memory_mb = 4096
wasm_warm_memory_mb = 0
wasm_warm_slots = 100
allow_fs = false
fs_scratch_dir = "/tmp/pie"
allow_network = true
network_allowed_hosts = ["*"]
max_upload_mb = 256
[[model]]
name = "default"
hf_repo = "Qwen/Qwen3-0.6B"
[model.scheduler]
batch_policy = "adaptive"
request_timeout_secs = 120
default_endowment_pages = 64
admission_oversubscription_factor = 4.0
restore_pause_at_utilization = 0.85
[model.driver]
type = "cuda_native"
device = ["cuda:0"]
tensor_parallel_size = 1
activation_dtype = "bfloat16"
random_seed = 42
[model.driver.options]
gpu_mem_utilization = 0.85
max_batch_tokens = 10240
max_batch_size = 512
"""
    cfg = parse_config(tomllib.loads(text), "ref")
    assert cfg.runtime.worker_threads == 8 and cfg.server.verbose is True
    opts = cfg.models[0].driver.typed_options()
    assert isinstance(opts, CudaNativeOptions)
    assert (opts.gpu_mem_utilization, opts.kv_page_size, opts.total_pages) == (0.85, 16, None)


@pytest.mark.parametrize("cuda", [False, True])
def test_default_config_per_machine(cuda: bool) -> None:
    cfg = default_config(cuda=cuda)
    m = cfg.models[0]
    assert (m.name, m.hf_repo) == ("default", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert cfg.auth.enabled is False
    if cuda:
        assert (m.driver.type, m.driver.device, m.driver.activation_dtype) == (
            "cuda_native",
            ["cuda:0"],
            "bfloat16",
        )
    else:
        assert (m.driver.type, m.driver.device, m.driver.activation_dtype) == (
            "portable",
            ["cpu"],
            "float32",
        )
        opts = m.driver.typed_options()
        assert isinstance(opts, PortableOptions)
        assert (opts.kv_page_size, opts.num_threads, opts.omp_wait_policy) == (16, 2, "passive")
        assert opts.runtime_quant == "int8"
    # the controller yields to a worker on its own cores only
    assert cfg.runtime.controller_nice is None
    assert controller_nice(cfg) == (0 if cuda else 10)
    # what init writes reads back to the same config
    assert parse_config(tomllib.loads(dump_config(cfg)), "dump") == cfg


def test_controller_nice_set_explicitly() -> None:
    assert controller_nice(parse_config(set_value(base(), "runtime.controller_nice", "3"),
                                        "cfg.toml")) == 3
    assert controller_nice(parse_config(set_value(base(), "runtime.controller_nice", "0"),
                                        "cfg.toml")) == 0


def test_missing_default_file_gives_builtin_default(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PIE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr("pie.config._cuda_available", lambda: False)
    assert load_config() == default_config(cuda=False)


def test_explicit_missing_path_is_an_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="pie config init --path"):
        load_config(tmp_path / "nope.toml")


def test_bad_toml_names_the_file(tmp_path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[server\nport = 1\n")
    with pytest.raises(ConfigError, match="c.toml is not valid TOML"):
        load_config(p)


def test_load_from_pie_home(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PIE_HOME", str(tmp_path))
    data = with_(server__port=9999)
    (tmp_path / "config.toml").write_text(dump_config(parse_config(data, "x")))
    assert load_config().server.port == 9999


# ----------------------------------------------------------------------------- validation

RANGE_CASES = [
    ("server.port", "0", "server.port must be in 1..65535"),
    ("server.port", "70000", "server.port must be in 1..65535"),
    ("server.max_concurrent_processes", "0", "server.max_concurrent_processes must be > 0"),
    ("runtime.worker_threads", "0", "runtime.worker_threads must be > 0"),
    ("runtime.wasm_max_instances", "0", "runtime.wasm_max_instances must be > 0"),
    ("runtime.wasm_max_memory_mb", "-1", "runtime.wasm_max_memory_mb must be > 0"),
    ("runtime.wasm_warm_memory_mb", "-1", "runtime.wasm_warm_memory_mb must be >= 0"),
    ("runtime.wasm_warm_slots", "-1", "runtime.wasm_warm_slots must be >= 0"),
    ("runtime.max_upload_mb", "0", "runtime.max_upload_mb must be > 0"),
    ("runtime.controller_nice", "20", "runtime.controller_nice must be in 0..19"),
    ("runtime.controller_nice", "-1", "runtime.controller_nice must be in 0..19"),
    ("model.0.scheduler.request_timeout_secs", "0", "request_timeout_secs must be > 0"),
    ("model.0.scheduler.default_token_limit", "0", "default_token_limit must be > 0"),
    ("model.0.scheduler.default_endowment_pages", "0", "default_endowment_pages must be > 0"),
    ("model.0.scheduler.admission_oversubscription_factor", "0", "finite number > 0"),
    ("model.0.scheduler.admission_oversubscription_factor", "inf", "finite number > 0"),
    ("model.0.scheduler.admission_oversubscription_factor", "nan", "finite number > 0"),
    ("model.0.scheduler.restore_pause_at_utilization", "0", "must be in (0, 1]"),
    ("model.0.scheduler.restore_pause_at_utilization", "1.5", "must be in (0, 1]"),
    ("model.0.scheduler.batch_policy", "fifo", 'one of "adaptive", "eager", "greedy"'),
    ("model.0.driver.type", "tpu", 'one of "portable", "cuda_native", "dummy"'),
    ("model.0.driver.activation_dtype", "int8", 'one of "float32", "float16", "bfloat16"'),
    ("model.0.driver.tensor_parallel_size", "0", "tensor_parallel_size must be > 0"),
    ("model.0.driver.random_seed", "-1", "random_seed must be >= 0"),
    ("model.0.driver.device", "", "must list at least one device"),
    ("model.0.driver.device", "cpu,cpu", 'lists "cpu" twice'),
    ("model.0.driver.device", "GPU 0", "not a device name"),
    ("model.0.name", " ", "name must not be empty"),
    ("model.0.hf_repo", "", "hf_repo must not be empty"),
    ("model.0.driver.options.kv_page_size", "0", "options.kv_page_size must be > 0"),
    ("model.0.driver.options.total_pages", "0", "options.total_pages must be > 0"),
    ("model.0.driver.options.max_batch_tokens", "0", "options.max_batch_tokens must be > 0"),
    ("model.0.driver.options.max_batch_size", "-3", "options.max_batch_size must be > 0"),
    ("model.0.driver.options.num_threads", "0", "options.num_threads must be > 0"),
    ("model.0.driver.options.spin_us", "-1", "options.spin_us must be >= 0"),
    ("model.0.driver.options.omp_wait_policy", "busy", 'one of "passive", "active"'),
    ("model.0.driver.options.runtime_quant", "int4", 'runtime_quant must be one of "", "int8", "bf16"'),
    ("model.0.driver.activation_dtype", "bfloat16", 'runtime_quant "int8" needs'),
    ("model.0.driver.device", "cuda:0", 'runtime_quant "int8" runs on CPU only'),
    ("model.0.driver.options.gpu_mem_utilization", "1.5", "must be in (0, 1]"),
    ("model.0.driver.options.host_pages", "0", "options.host_pages must be > 0"),
]


@pytest.mark.parametrize(("key", "value", "fragment"), RANGE_CASES)
def test_each_rule_rejects_out_of_range(key: str, value: str, fragment: str) -> None:
    err = rejects(set_value(base(), key, value), "cfg.toml", fragment)
    assert len(err.issues) == 1


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("server.port", "1"),
        ("server.port", "65535"),
        ("server.max_concurrent_processes", "1"),
        ("runtime.wasm_warm_memory_mb", "0"),
        ("runtime.controller_nice", "0"),
        ("runtime.controller_nice", "19"),
        ("model.0.scheduler.restore_pause_at_utilization", "1.0"),
        ("model.0.scheduler.admission_oversubscription_factor", "0.5"),
        ("model.0.scheduler.request_timeout_secs", "0.25"),
        ("model.0.driver.options.spin_us", "0"),
        ("model.0.driver.options.omp_wait_policy", "active"),
        ("model.0.driver.options.runtime_quant", ""),
    ],
)
def test_boundary_values_are_accepted(key: str, value: str) -> None:
    parse_config(set_value(base(), key, value), "cfg.toml")


def test_cuda_native_utilization_range() -> None:
    data = base()
    data["model"][0]["driver"] = {"type": "cuda_native", "device": "cuda:0", "options": {}}
    parse_config(set_value(data, "model.0.driver.options.gpu_mem_utilization", "1"), "x")
    for bad in ("0", "1.01", "-0.5"):
        rejects(set_value(data, "model.0.driver.options.gpu_mem_utilization", bad), "(0, 1]")


def test_dummy_options() -> None:
    data = {
        "model": [
            {
                "name": "d",
                "hf_repo": "r",
                "driver": {"type": "dummy", "device": "cpu", "options": {"vocab_size": 100}},
            }
        ]
    }
    opts = parse_config(data, "x").models[0].driver.typed_options()
    assert isinstance(opts, DummyOptions) and opts.vocab_size == 100 and opts.step_latency_us == 0
    data["model"][0]["driver"]["options"]["vocab_size"] = 0
    rejects(data, "options.vocab_size must be > 0")


def test_wrong_types_name_the_key_and_expected_type() -> None:
    data = base()
    data["server"]["port"] = "8080"
    data["auth"]["enabled"] = "yes"
    data["runtime"]["network_allowed_hosts"] = ["*", 3]
    data["model"][0]["driver"]["random_seed"] = 1.5
    err = rejects(
        data,
        'server.port must be an integer, got string "8080"',
        'auth.enabled must be true or false, got string "yes"',
        "runtime.network_allowed_hosts.1 must be a string, got integer 3",
        "model.0.driver.random_seed must be an integer, got number 1.5",
        "cfg.toml",
    )
    assert len(err.issues) == 4


def test_bool_is_not_an_integer_and_int_is_a_float() -> None:
    data = with_(server__port="true")
    rejects(data, "server.port must be an integer, got boolean true")
    data = base()
    data["model"][0]["scheduler"]["admission_oversubscription_factor"] = 2
    cfg = parse_config(data, "x")
    assert cfg.models[0].scheduler.admission_oversubscription_factor == 2.0


def test_section_must_be_a_table() -> None:
    data = base()
    data["server"] = 5
    rejects(data, "server must be a table, got integer 5")


def test_unknown_keys_name_key_and_section() -> None:
    data = base()
    data["server"]["prot"] = 1
    data["runtime"]["threads"] = 2
    data["model"][0]["scheduler"]["fifo"] = True
    data["extra"] = {}
    rejects(
        data,
        "unknown key `server.prot` in [server]",
        "unknown key `runtime.threads` in [runtime]",
        "unknown key `model.0.scheduler.fifo` in [model.scheduler]",
        "unknown key `extra` in the top level",
    )


def test_unknown_embedded_driver_option_is_an_error() -> None:
    data = set_value(base(), "model.0.driver.options.vocab_size", "5")
    rejects(data, "unknown key `model.0.driver.options.vocab_size`", "for the portable driver")


def test_driver_knob_directly_under_driver_points_to_options() -> None:
    data = base()
    data["model"][0]["driver"]["max_batch_tokens"] = 100
    rejects(data, "unknown key `model.0.driver.max_batch_tokens`", "[model.driver.options]")


def test_python_driver_options_pass_through() -> None:
    data = {
        "model": [
            {
                "name": "v",
                "hf_repo": "r",
                "driver": {
                    "type": "vllm",
                    "device": ["cuda:0"],
                    "options": {"venv": "/opt/v", "anything": [1, 2]},
                },
            }
        ]
    }
    d = parse_config(data, "x").models[0].driver
    assert d.typed_options() is None and not d.embedded
    assert d.option("anything") == [1, 2] and d.option("missing", 7) == 7
    data["model"][0]["driver"]["options"]["python"] = 3
    rejects(data, "options.python must be a string")


def test_required_keys() -> None:
    rejects(
        {"model": [{"name": "x"}]}, "`model.0.hf_repo` is required", "`model.0.driver` is required"
    )
    rejects(
        {"model": [{"name": "x", "hf_repo": "r", "driver": {}}]},
        "`model.0.driver.type` is required",
        "`model.0.driver.device` is required",
    )
    rejects({"server": {}}, "at least one [[model]] block is required")
    rejects({"model": []}, "at least one [[model]] block is required")


def test_single_model_table_must_be_an_array() -> None:
    rejects({"model": minimal_model()}, "write [[model]] instead of [model]")


def test_model_names_unique_and_devices_disjoint() -> None:
    rejects(
        {"model": [minimal_model("a", "cpu"), minimal_model("a", "cuda:1")]},
        'model.1.name "a" is already used by model.0',
        "must be unique",
    )
    rejects(
        {"model": [minimal_model("a", ["cuda:0", "cuda:1"]), minimal_model("b", ["cuda:1"])]},
        'model.1.driver.device "cuda:1" is already used by model "a"',
        "disjoint",
    )
    rejects({"model": [minimal_model("a", "cuda"), minimal_model("b", "cuda:0")]}, "disjoint")
    cfg = parse_config({"model": [minimal_model("a", "cuda:0"), minimal_model("b", "cuda:1")]}, "x")
    assert [m.name for m in cfg.models] == ["a", "b"] and cfg.default_model.name == "a"
    with pytest.raises(ConfigError, match="no model named 'c'"):
        cfg.model("c")


def test_tensor_parallel_size_must_divide_devices() -> None:
    m = minimal_model("a", ["cuda:0", "cuda:1", "cuda:2"], tensor_parallel_size=2)
    rejects({"model": [m]}, "tensor_parallel_size 2 does not divide the 3 devices")


def test_cpu_hosts_any_tensor_parallel_size() -> None:
    d = parse_config({"model": [minimal_model("a", "cpu", tensor_parallel_size=2)]}, "x")
    assert d.models[0].driver.groups == [["cpu", "cpu"]]


def test_worker_knobs_shared_by_embedded_drivers() -> None:
    for driver_type in ("portable", "cuda_native", "dummy"):
        data = base()
        data["model"][0]["driver"]["type"] = driver_type
        data["model"][0]["driver"]["options"] = {
            "ring_slots": 4,
            "ring_slot_bytes": 1 << 20,
            "host_pages": 8,
            "max_model_len": 512,
            "num_threads": 2,
        }
        d = parse_config(data, "x").models[0].driver
        assert (d.option("ring_slots"), d.option("host_pages"), d.option("max_model_len")) == (
            4,
            8,
            512,
        )
        data["model"][0]["driver"]["options"]["ring_slots"] = 0
        rejects(data, "options.ring_slots must be > 0")


def test_tensor_parallel_groups() -> None:
    m = minimal_model("a", ["cuda:0", "cuda:1", "cuda:2", "cuda:3"], tensor_parallel_size=2)
    d = parse_config({"model": [m]}, "x").models[0].driver
    assert d.groups == [["cuda:0", "cuda:1"], ["cuda:2", "cuda:3"]]


def test_driver_option_accessor_uses_typed_defaults() -> None:
    d = default_config(cuda=False).models[0].driver
    assert d.option("total_pages") == 1024 and d.option("spin_us") == 100
    assert d.option("max_dist_size") == 32 and d.option("nope", "x") == "x"


def test_all_issues_reported_in_one_line() -> None:
    data = with_(server__port=0, runtime__max_upload_mb=0)
    err = rejects(data, "server.port", "runtime.max_upload_mb", "pie config set")
    assert len(err.issues) == 2


# ----------------------------------------------------------------------------- old schema

OLD_FLAT = """
host = "0.0.0.0"
port = 8080
enable_auth = true
gpu_mem_utilization = 0.85
max_num_embeds = 256

[[model]]
hf_repo = "Qwen/Qwen3-0.6B"
device = ["cuda:0"]
tensor_parallel_size = 1
activation_dtype = "bfloat16"
weight_dtype = "bfloat16"
kv_page_size = 16
max_batch_tokens = 10240
"""

OLD_NAMED = """
[server]
primary_model = "llama"
allow_filesystem = true

[model.llama]
hf_repo = "meta-llama/Llama-3.2-1B"
default_token_budget = 1000
default_endowment_pages = 32
oversubscription_factor = 2.0

[model.llama.scheduler]
policy = "eager"

[model.llama.driver]
type = "cuda_native"

[model.llama.driver.cuda_native]
gpu_mem_utilization = 0.9
"""


def test_old_flat_schema_names_every_moved_key() -> None:
    err = rejects(
        tomllib.loads(OLD_FLAT),
        "uses the old config schema",
        "`host` -> [server].host",
        "`port` -> [server].port",
        "`enable_auth` -> [auth].enabled",
        "`gpu_mem_utilization` -> [model.driver.options].gpu_mem_utilization",
        "`max_num_embeds` -> [model.driver.options].max_num_embeds",
        "`model.0.device` -> [model.driver].device",
        "`model.0.tensor_parallel_size` -> [model.driver].tensor_parallel_size",
        "`model.0.activation_dtype` -> [model.driver].activation_dtype",
        "`model.0.weight_dtype` -> nowhere",
        "`model.0.kv_page_size` -> [model.driver.options].kv_page_size",
        "`model.0.max_batch_tokens` -> [model.driver.options].max_batch_tokens",
        "pie config init --force",
    )
    assert len(err.issues) == 11


def test_old_named_schema_names_every_moved_key() -> None:
    err = rejects(
        tomllib.loads(OLD_NAMED),
        "`server.primary_model` -> nowhere: removed, the first [[model]] is the implicit default",
        "`server.allow_filesystem` -> [runtime].allow_fs",
        '[model.llama] -> [[model]] with name = "llama"',
        "`model.llama.default_token_budget` -> [model.scheduler].default_token_limit",
        "`model.llama.default_endowment_pages` -> [model.scheduler].default_endowment_pages",
        "`model.llama.oversubscription_factor` -> [model.scheduler].admission_oversubscription_factor",
        "`model.llama.scheduler.policy` -> [model.scheduler].batch_policy",
        "[model.llama.driver.cuda_native] -> [model.driver.options]",
    )
    assert len(err.issues) == 8


def test_old_keys_inside_new_shape_are_migration_errors() -> None:
    data = base()
    data["model"][0]["scheduler"]["policy"] = "eager"
    data["model"][0]["driver"]["portable"] = {"kv_page_size": 16}
    rejects(
        data,
        "`model.0.scheduler.policy` -> [model.scheduler].batch_policy",
        "[model.0.driver.portable] -> [model.driver.options]",
    )


def test_typed_config_is_a_struct() -> None:
    assert isinstance(default_config(cuda=False), PieConfig)


@pytest.mark.parametrize(
    ("entry", "ok"),
    [
        ("*", True),
        ("127.0.0.1", True),
        ("10.0.0.0/8", True),
        ("10.0.0.0/8:443", True),
        ("example.com", True),
        ("example.com:443", True),
        ("[::1]:8080", True),
        ("fe80::1", True),
        ("10.0.0.0/33", False),
        ("host:0", False),
        ("host:http", False),
        ("a b", False),
        ("", False),
    ],
)
def test_network_allowed_hosts_forms(entry: str, ok: bool) -> None:
    data = base()
    data["runtime"]["network_allowed_hosts"] = [entry]
    if ok:
        parse_config(data, "x")
    else:
        rejects(data, "runtime.network_allowed_hosts.0")


def test_unknown_key_suggests_the_close_one() -> None:
    data = base()
    data["server"]["prot"] = 1
    rejects(data, "unknown key `server.prot` in [server] (did you mean `port`?)")
    data = base()
    data["server"]["zzz"] = 1
    rejects(data, "known keys: host, port, verbose")
