"""WorkerSpec: options with defaults, and one spec per data-parallel group from the config."""

from __future__ import annotations

import pickle

from pie.config import parse_config
from pie.ipc.spec import WorkerSpec, worker_specs


def _model(driver: dict) -> object:
    cfg = parse_config({"model": [{"name": "m", "hf_repo": "some/repo", "driver": driver}]})
    return cfg.models[0]


def test_option_defaults_and_overrides():
    s = WorkerSpec(options={"kv_page_size": 32, "total_pages": None})
    assert s.option("kv_page_size") == 32
    assert s.option("total_pages", 7) == 7  # None means unset
    assert s.option("spin_us") == 100
    assert pickle.loads(pickle.dumps(s)) == s


def test_data_parallel_groups_follow_device_and_tp():
    m = _model(
        {
            "type": "portable",
            "device": ["cuda:0", "cuda:1", "cuda:2", "cuda:3"],
            "tensor_parallel_size": 2,
            "options": {"total_pages": 64},
        }
    )
    specs = worker_specs(m)
    assert [s.devices for s in specs] == [("cuda:0", "cuda:1"), ("cuda:2", "cuda:3")]
    assert all(s.tp_size == 2 and s.option("total_pages") == 64 for s in specs)
    assert specs[0].model == "some/repo" and specs[0].name == "m"


def test_runtime_quant_reaches_the_worker():
    m = _model(
        {
            "type": "portable",
            "device": ["cpu"],
            "activation_dtype": "float32",
            "options": {"runtime_quant": "int8"},
        }
    )
    (s,) = worker_specs(m)
    assert s.option("runtime_quant") == "int8"
    (s,) = worker_specs(_model({"type": "portable", "device": ["cpu"]}))
    assert s.option("runtime_quant") == ""  # the schema default: float weights
    assert WorkerSpec().option("runtime_quant") == ""


def test_one_cpu_hosts_every_tensor_parallel_rank():
    m = _model({"type": "dummy", "device": ["cpu"], "tensor_parallel_size": 2})
    (s,) = worker_specs(m)
    assert s.devices == ("cpu", "cpu")
    assert s.option("vocab_size") == 49152  # the dummy driver's typed default


def test_device_groups():
    from pie.ipc.spec import device_groups

    assert device_groups(["cuda:0", "cuda:1", "cuda:2", "cuda:3"], 2) == [
        ("cuda:0", "cuda:1"),
        ("cuda:2", "cuda:3"),
    ]
    assert device_groups("cuda:0,cuda:1", 1) == [("cuda:0",), ("cuda:1",)]
    assert device_groups(["cpu"], 2) == [("cpu", "cpu")]
    import pytest

    with pytest.raises(
        ValueError, match="3 devices cannot be split into tensor-parallel groups of 2"
    ):
        device_groups(["cuda:0", "cuda:1", "cuda:2"], 2)
