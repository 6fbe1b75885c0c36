"""Programs: an uploaded inferlet with its manifest, stored by name@version.

`Program` is what the server hands to the process manager to launch. The store (add, check,
resolve latest version, list) lives here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Program:
    name: str
    version: str
    kind: str  # "python" (source: a .py file or a zip of modules) or "wasm" (a component)
    payload: bytes
    digest: str  # hex blake3/sha256 of payload
    manifest: dict = field(default_factory=dict)  # parsed Pie.toml

    @property
    def runtime(self) -> dict:
        return self.manifest.get("runtime", {})

    @property
    def entry(self) -> str:
        return self.runtime.get("entry", "main")

    @property
    def call(self) -> str:
        """`input` passes the JSON input as one dict; `kwargs` passes its keys as arguments."""
        return self.runtime.get("call", "input")
