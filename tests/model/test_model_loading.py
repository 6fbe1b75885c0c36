"""Model resolution and the errors a user can cause: each one a ModelLoadError naming the file and the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from fixtures.model_helpers import fake_hf_cache

from pie.model import DEFAULT_MODEL, ModelLoadError, load_model, resolve_model
from pie.model.hub import download_model, list_models, model_info, remove_model


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "hub"
    root.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    return root


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelLoadError, match=r"missing\.gguf does not exist"):
        load_model(str(tmp_path / "missing.gguf"))


def test_corrupt_gguf_file(tmp_path, default_gguf):
    bad = tmp_path / "garbage.gguf"
    bad.write_bytes(b"this is not a gguf file at all" * 100)
    with pytest.raises(
        ModelLoadError, match=r"garbage\.gguf is not a readable GGUF file.*re-download"
    ):
        load_model(str(bad))
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(default_gguf.read_bytes()[: 4 << 20])
    with pytest.raises(ModelLoadError, match=r"truncated\.gguf.*re-download"):
        load_model(str(truncated))


def test_directory_without_config(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_model(str(tmp_path))


def test_unsupported_architecture(tmp_path, tiny_checkpoints):
    d = _copy(tiny_checkpoints["llama"], tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "gpt_neox"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        ModelLoadError, match=r"config\.json: model_type 'gpt_neox' is not supported.*llama"
    ):
        load_model(str(d))


def test_corrupt_config_json(tmp_path, tiny_checkpoints):
    d = _copy(tiny_checkpoints["llama"], tmp_path / "m")
    (d / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"config\.json is unreadable or not valid JSON"):
        load_model(str(d))


def test_corrupt_safetensors(tmp_path, tiny_checkpoints):
    d = _copy(tiny_checkpoints["llama"], tmp_path / "m")
    (d / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match=r"model\.safetensors is not a valid safetensors file"):
        load_model(str(d))


def test_missing_shard(tmp_path, tiny_checkpoints):
    d = _copy(tiny_checkpoints["mistral"], tmp_path / "m")
    shard = sorted(d.glob("model-*.safetensors"))[3]
    shard.unlink()
    with pytest.raises(ModelLoadError, match=rf"{shard.name} is missing.*re-download"):
        load_model(str(d))


def test_missing_tensor(tmp_path, tiny_checkpoints):
    from safetensors.torch import load_file, save_file

    d = _copy(tiny_checkpoints["llama"], tmp_path / "m")
    sd = load_file(str(d / "model.safetensors"))
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"model\.layers\.1\.mlp\.up_proj\.weight' is missing"):
        load_model(str(d))


def test_missing_tokenizer(tmp_path, tiny_checkpoints):
    d = _copy(tiny_checkpoints["llama"], tmp_path / "m")
    (d / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match="has no tokenizer.json"):
        load_model(str(d))


def test_unknown_repo_points_to_download(hf_cache):
    with pytest.raises(
        ModelLoadError, match=r"not in the HuggingFace cache.*pie model download someone/nothing"
    ):
        load_model("someone/nothing")


def test_nonsense_spec():
    with pytest.raises(ModelLoadError, match="not an existing path nor a HuggingFace repo id"):
        resolve_model("definitely not a model")


def test_bad_dtype_and_tensor_parallel_split(tiny_checkpoints):
    with pytest.raises(ModelLoadError, match="activation dtype 'int7' is not supported"):
        load_model(str(tiny_checkpoints["llama"]), dtype="int7")
    with pytest.raises(
        ModelLoadError,
        match=r"attention heads \(4\) do not divide evenly over tensor_parallel_size 3",
    ):
        load_model(str(tiny_checkpoints["llama"]), tp_rank=0, tp_size=3)


def test_default_model_resolves_to_bundled_gguf(hf_cache, default_gguf):
    r = resolve_model(DEFAULT_MODEL)
    assert r.kind == "gguf" and r.origin == "bundled" and r.path == default_gguf.resolve()
    listed = {m.repo_id: m for m in list_models()}
    assert listed[DEFAULT_MODEL].origin == "bundled" and listed[DEFAULT_MODEL].compatible


def test_hf_cache_resolution_list_info_remove(hf_cache, tiny_checkpoints):
    snap = fake_hf_cache(hf_cache, "tiny-org/tiny-qwen3", tiny_checkpoints["qwen3"])
    r = resolve_model("tiny-org/tiny-qwen3")
    assert r.origin == "hf-cache" and r.kind == "dir" and r.path == snap
    lm = load_model("tiny-org/tiny-qwen3")
    assert lm.config.arch == "qwen3" and lm.config.qk_norm and lm.config.head_dim == 24
    listed = {m.repo_id: m for m in list_models()}
    assert (
        listed["tiny-org/tiny-qwen3"].compatible
        and listed["tiny-org/tiny-qwen3"].model_type == "qwen3"
    )
    info = model_info("tiny-org/tiny-qwen3")
    assert info["origin"] == "hf-cache" and info["layers"] == 2 and info["kv_heads"] == 2
    assert remove_model("tiny-org/tiny-qwen3") > 0
    assert not (hf_cache / "models--tiny-org--tiny-qwen3").exists()
    with pytest.raises(ModelLoadError, match="not in the HuggingFace cache"):
        remove_model("tiny-org/tiny-qwen3")


def test_directory_with_one_gguf(tmp_path, default_gguf):
    (tmp_path / default_gguf.name).symlink_to(default_gguf)
    r = resolve_model(str(tmp_path))
    assert r.kind == "gguf" and r.path.name == default_gguf.name


def test_download_offline_is_a_clear_error(hf_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ModelLoadError, match="cannot download Qwen/Qwen3-0.6B: HF_HUB_OFFLINE is set"
    ):
        download_model("Qwen/Qwen3-0.6B")


def test_download_unreachable_hub_is_a_clear_error(hf_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    with pytest.raises(ModelLoadError, match="the HuggingFace Hub is unreachable"):
        download_model("Qwen/Qwen3-0.6B")


def test_tied_head_when_lm_head_absent(tmp_path, tiny_checkpoints):
    """qwen2's tiny checkpoint ties the head: no lm_head tensor, the embedding serves as head."""
    lm = load_model(str(tiny_checkpoints["qwen2"]))
    assert lm.config.tie_word_embeddings and lm.model.lm_head is lm.model.embed
    assert lm.config.qkv_bias and not lm.config.o_bias
    assert torch.isfinite(lm.model.layers[0].qkv_bias).all()
