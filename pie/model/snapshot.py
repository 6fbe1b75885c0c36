"""`Snapshot`: a HuggingFace model directory (config.json + safetensors, sharded or not).

The loader (`pie.model.loader`) opens one for a local directory or an HF cache snapshot, reads
its `ModelConfig` and tokenizer, and streams tensors into the decoder by HF name. Tensors are
read lazily, one at a time, so peak memory stays near the size of the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pie.model.config import ModelConfig
from pie.model.errors import ModelLoadError


def read_json(path: Path) -> dict[str, Any]:
    """Parse a JSON file, turning a corrupt file into a ModelLoadError that names it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(
            f"{path} is unreadable or not valid JSON ({e}); re-download the model"
        ) from None


class Snapshot:
    """Weights and metadata of one model directory."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        cfg_path = self.dir / "config.json"
        if not cfg_path.is_file():
            raise ModelLoadError(
                f"{self.dir} has no config.json; point at a HuggingFace model directory or a .gguf file"
            )
        self.hf_config = read_json(cfg_path)
        gen_path = self.dir / "generation_config.json"
        self.generation_config = read_json(gen_path) if gen_path.is_file() else {}
        self.config = ModelConfig.from_hf(self.hf_config, self.generation_config, str(self.dir))
        self._weight_map = self._index()
        self._handles: dict[str, Any] = {}

    def _index(self) -> dict[str, str]:
        """Tensor name -> file name, from the shard index or the files' own headers."""
        from safetensors import safe_open

        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ModelLoadError(f"{index} has no weight_map; re-download the model")
            missing = sorted({f for f in weight_map.values() if not (self.dir / f).is_file()})
            if missing:
                raise ModelLoadError(
                    f"{self.dir / missing[0]} is missing ({len(missing)} shard(s) absent); "
                    "re-download the model"
                )
            return dict(weight_map)
        files = sorted(self.dir.glob("*.safetensors"))
        if not files:
            hint = (
                " (only PyTorch .bin weights found; convert them to safetensors)"
                if any(self.dir.glob("*.bin"))
                else ""
            )
            raise ModelLoadError(
                f"{self.dir} has no *.safetensors weights{hint}; run `pie model download <repo>` "
                "or point at a complete model directory"
            )
        weight_map = {}
        for f in files:
            try:
                with safe_open(str(f), framework="pt") as h:
                    for k in h.keys():  # noqa: SIM118 - safe_open handles are not mappings
                        weight_map[k] = f.name
            except Exception as e:  # noqa: BLE001 - the library raises many types
                raise ModelLoadError(
                    f"{f} is not a valid safetensors file ({e}); re-download it"
                ) from None
        return weight_map

    def has(self, name: str) -> bool:
        return name in self._weight_map

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        fname = self._weight_map[name]
        h = self._handles.get(fname)
        path = self.dir / fname
        try:
            if h is None:
                h = self._handles[fname] = safe_open(str(path), framework="pt")
            return h.get_tensor(name)
        except Exception as e:  # noqa: BLE001 - the library raises many types
            raise ModelLoadError(
                f"{path}: cannot read tensor {name!r} ({e}); re-download the model"
            ) from None

    def close(self) -> None:
        self._handles.clear()

    def size_bytes(self) -> int:
        return sum((self.dir / f).stat().st_size for f in set(self._weight_map.values()))
