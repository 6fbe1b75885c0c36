"""The generic Python runner component: build it once, compile it once, cache both.

The runner is CPython (componentize-py) with the `inferlet` SDK and `sdk/python/runner/`
baked in and pre-initialized. Its build is keyed by a digest of every input (the WIT world,
the runner and SDK sources, the componentize-py and wasmtime versions), so editing the SDK
rebuilds it and nothing else does. Artifacts live under `<PIE_HOME>/cache/runner/`:

    runner-<digest>.wasm                the component (about 20 MB; ~10 s to build)
    runner-<digest>-<engine>.cwasm      compiled for one engine configuration (~10 s)

Called by `pie/sandbox/sandbox.py` at start-up, by `make`, and by the tests' session fixture.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from pie.paths import runner_cache_dir

log = logging.getLogger(__name__)

REPO_SDK = Path(__file__).resolve().parents[2] / "sdk"
WIT_DIR = REPO_SDK / "wit"
PY_SDK = REPO_SDK / "python"
RUNNER_DIR = PY_SDK / "runner"
WORLD = "inferlet"


class RunnerBuildError(RuntimeError):
    """The runner component could not be built; the message carries the tool's output."""


def sdk_sources() -> list[tuple[str, bytes]]:
    """The `inferlet` SDK sources as (module path, bytes), e.g. ("inferlet/context.py", ...)."""
    root = PY_SDK / "inferlet"
    return [(f"inferlet/{p.relative_to(root).as_posix()}", p.read_bytes())
            for p in sorted(root.rglob("*.py"))]


def _inputs() -> list[Path]:
    files = sorted(WIT_DIR.rglob("*.wit")) + sorted(RUNNER_DIR.glob("*.py"))
    return files + sorted((PY_SDK / "inferlet").rglob("*.py"))


def digest() -> str:
    h = hashlib.sha256()
    for tool in ("componentize-py", "wasmtime"):
        h.update(f"{tool}={metadata.version(tool)}\n".encode())
    for p in _inputs():
        h.update(p.relative_to(REPO_SDK).as_posix().encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    return h.hexdigest()[:20]


def wasm_path() -> Path:
    return runner_cache_dir() / f"runner-{digest()}.wasm"


def build(progress: Callable[[str], None] = log.info) -> Path:
    """Build the runner component if it is not cached; returns its path."""
    if not (WIT_DIR / "inferlet.wit").exists() or not RUNNER_DIR.exists():
        raise RunnerBuildError(
            f"the inferlet SDK sources are not installed (looked in {REPO_SDK}); install Pie "
            f"from a source checkout (pip install -e .) to build the Python runner")
    out = wasm_path()
    if out.exists():
        return out
    progress("building the Python inferlet runner (once, ~15 s)...")
    exe = Path(sys.executable).with_name("componentize-py")
    cmd = [str(exe) if exe.exists() else "componentize-py", "-d", str(WIT_DIR), "-w", WORLD,
           "componentize", "runner_app", "-p", str(RUNNER_DIR), "-p", str(PY_SDK)]
    fd, tmp = tempfile.mkstemp(suffix=".wasm", dir=out.parent)
    os.close(fd)
    try:
        res = subprocess.run(cmd + ["-o", tmp], capture_output=True, text=True,
                             cwd=out.parent, check=False)
        if res.returncode != 0:
            tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[:20])
            raise RunnerBuildError(f"building the Python runner failed:\n{tail}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    progress(f"runner built: {out.name} ({out.stat().st_size / 1e6:.1f} MB)")
    return out


def compiled_path(engine_key: str) -> Path:
    return runner_cache_dir() / f"runner-{digest()}-{engine_key}.cwasm"


def load(engine, engine_key: str, progress: Callable[[str], None] = log.info):
    """The runner compiled for `engine` (a wasmtime Engine), from cache when possible."""
    from wasmtime.component import Component

    cwasm = compiled_path(engine_key)
    if cwasm.exists():
        try:
            return Component.deserialize_file(engine, str(cwasm))
        except Exception:  # noqa: BLE001 - a stale or torn file: rebuild it
            cwasm.unlink(missing_ok=True)
    src = build(progress)
    progress("compiling the Python runner for this machine (once, ~10 s)...")
    comp = Component.from_file(engine, str(src))
    fd, tmp = tempfile.mkstemp(suffix=".cwasm", dir=cwasm.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(comp.serialize())
    os.replace(tmp, cwasm)
    _prune(keep=digest())
    return Component.deserialize_file(engine, str(cwasm))


def _prune(keep: str, min_age_s: float = 600.0) -> None:
    """Remove runner builds of other source versions (each is ~55 MB) once they are idle."""
    now = time.time()
    for p in runner_cache_dir().glob("runner-*"):
        if keep not in p.name and now - p.stat().st_mtime > min_age_s:
            p.unlink(missing_ok=True)


def prepare(progress: Callable[[str], None] = log.info) -> None:
    """Build the runner and compile it for the sandbox's engine, so first launches are fast."""
    import asyncio

    from pie.sandbox.sandbox import Sandbox

    async def _start() -> None:
        sb = Sandbox()
        await sb.start(progress=progress)
        sb.close()

    asyncio.run(_start())


if __name__ == "__main__":  # `python -m pie.sandbox.runner`: build and compile ahead of time
    from pie.sandbox.sandbox import ENGINE_KEY

    prepare(print)
    print(compiled_path(ENGINE_KEY))
