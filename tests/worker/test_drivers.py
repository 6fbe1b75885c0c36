"""Driver registry and the cuda_native hook (no worker process needed)."""

from __future__ import annotations

import pytest
import torch

from pie.ipc.spec import WorkerSpec
from pie.worker.drivers import DRIVERS, make_driver


def test_unknown_driver_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown driver 'vllm2'.*cuda_native, dummy, portable"):
        make_driver(WorkerSpec(driver="vllm2"))


def test_cuda_native_refuses_a_cpu_device_with_the_alternative():
    assert "cuda_native" in DRIVERS
    with pytest.raises(RuntimeError, match=r'needs a CUDA device.*type = "portable"'):
        make_driver(WorkerSpec(driver="cuda_native", devices=("cpu",)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_native_runs_a_batch_on_the_gpu():
    from descriptor_factory import Req, batch

    from pie.ipc.messages import SamplerSpec
    from pie.worker.batch import ForwardBatch
    from pie.worker.runner import Runner

    driver = make_driver(
        WorkerSpec(driver="cuda_native", devices=("cuda:0",), options={"total_pages": 16})
    )
    desc = batch(1, [Req([1, 2, 3], 0, [0], sampler=SamplerSpec())])
    assert ForwardBatch.decode(desc, driver.limits()).num_tokens == 3
    result = Runner(driver).handle(desc)
    assert result.error == "" and len(result.tokens) == 4


@pytest.mark.parametrize("quant", ["", "int8"])
def test_portable_driver_applies_runtime_quant(quant, tmp_path):
    import sys
    from pathlib import Path

    from descriptor_factory import Req, batch

    from pie.ipc.messages import SamplerSpec
    from pie.worker.runner import Runner

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fixtures.checkpoints import build_checkpoint

    tiny = build_checkpoint("llama", tmp_path / "llama")
    spec = WorkerSpec(
        model=str(tiny),
        driver="portable",
        options={"total_pages": 8, "num_threads": 1, "runtime_quant": quant},
    )
    driver = make_driver(spec)
    assert driver.lm.model.quant == quant
    assert (driver.lm.model.head_q is not None) == (quant == "int8")
    desc = batch(1, [Req([1, 2, 3], 0, [0], sampler=SamplerSpec())])
    result = Runner(driver).handle(desc)
    assert result.error == "" and len(result.tokens) == 4
