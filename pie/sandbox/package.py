"""Packing a Python inferlet into an uploadable artifact, with its manifest checked.

`build(path, out_dir)` takes a directory with a `Pie.toml` (or a single `.py` file with a
`Pie.toml` beside it) and writes `<name>-<version>.zip` (the manifest plus every Python module)
and `<name>-<version>.toml` (the manifest, for uploading next to it). Checks, each failing
with one sentence that names the fix: the manifest's name, a semantic version, the
`[runtime]` keys, the `[parameters]` table, that every module compiles, that the entry
function exists, and that nothing native (.so/.pyd) is included.

Called by `pie build` (`cli/pie_cli/build.py`).
"""

from __future__ import annotations

import ast
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pie.programs import ProgramError, parse_manifest

SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
                    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$")
PARAM_TYPES = {"string", "str", "int", "integer", "float", "number", "bool", "boolean",
               "object", "dict", "array", "list", "any"}
PARAM_KEYS = {"type", "description", "optional", "default"}
_SKIP = {"__pycache__", ".git", ".venv", "build", "dist", ".pytest_cache"}


class PackageError(ProgramError):
    """The inferlet cannot be packed; the message says what to fix."""


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    artifact: Path
    manifest: Path
    modules: tuple[str, ...]


def check_manifest(text: str) -> dict:
    """Parse and validate a Pie.toml for a Python inferlet."""
    try:
        doc = parse_manifest(text)
    except ProgramError as e:
        raise PackageError(str(e)) from None
    version = doc["package"]["version"]
    if not SEMVER.match(version):
        raise PackageError(f"[package].version {version!r} is not a semantic version; "
                           f"use MAJOR.MINOR.PATCH such as 0.1.0.")
    runtime = doc.get("runtime", {})
    lang = str(runtime.get("language", "python")).lower()
    if lang != "python":
        raise PackageError(f'[runtime].language is {lang!r}; pie build packs Python inferlets '
                           f'(set language = "python").')
    entry = runtime.get("entry", "main")
    if not isinstance(entry, str) or not re.match(r"^([\w.]+:)?[A-Za-z_]\w*$", entry):
        raise PackageError(f'[runtime].entry {entry!r} must be a function name or '
                           f'"module:function".')
    params = doc.get("parameters", {})
    if not isinstance(params, dict):
        raise PackageError("[parameters] must be a table of name = { type = ... } entries.")
    for pname, spec in params.items():
        if isinstance(spec, str):
            spec = {"type": spec}
        if not isinstance(spec, dict):
            raise PackageError(f"parameter {pname!r} must be a table like "
                               f'{{ type = "string", description = "..." }}.')
        unknown = set(spec) - PARAM_KEYS
        if unknown:
            raise PackageError(f"parameter {pname!r} has unknown keys {sorted(unknown)}; "
                               f"allowed: {sorted(PARAM_KEYS)}.")
        t = spec.get("type", "any")
        if t not in PARAM_TYPES:
            raise PackageError(f"parameter {pname!r} has type {t!r}; use one of "
                               f"{', '.join(sorted(PARAM_TYPES))}.")
        if "optional" in spec and not isinstance(spec["optional"], bool):
            raise PackageError(f"parameter {pname!r}: optional must be true or false.")
    return doc


def _files(root: Path) -> list[Path]:
    return [p for p in sorted(root.rglob("*")) if p.is_file()
            and not any(part in _SKIP or part.startswith(".") for part in p.relative_to(root).parts)
            and p.suffix != ".pyc"]


def build(path: str | Path, out_dir: str | Path | None = None) -> Package:
    """Validate and pack the inferlet at `path`; returns where the artifact went."""
    path = Path(path).expanduser()
    if not path.exists():
        raise PackageError(f"{path} does not exist; pass an inferlet directory or .py file.")
    root = path if path.is_dir() else path.parent
    manifest_path = root / "Pie.toml"
    if not manifest_path.exists():
        raise PackageError(f"{root} has no Pie.toml; add one with [package] name and version.")
    text = manifest_path.read_text()
    doc = check_manifest(text)
    name, version = doc["package"]["name"], doc["package"]["version"]
    files = _files(root) if path.is_dir() else [path]
    native = [p for p in files if p.suffix in (".so", ".pyd", ".dylib", ".dll")]
    if native:
        raise PackageError(f"{native[0].relative_to(root)} is a native extension; inferlets "
                           f"run in a WebAssembly sandbox and must be pure Python.")
    modules = [p for p in files if p.suffix == ".py"]
    if not modules:
        raise PackageError(f"{root} has no Python modules to pack.")
    trees = {}
    for p in modules:
        rel = p.relative_to(root).as_posix()
        try:
            trees[rel] = ast.parse(p.read_text(), filename=rel)
        except SyntaxError as e:
            raise PackageError(f"{rel}, line {e.lineno}: {e.msg}; fix the syntax error.") from None
    entry = doc.get("runtime", {}).get("entry", "main")
    module, _, func = entry.rpartition(":")
    if module:
        entry_file = module.replace(".", "/") + ".py"
    elif len(modules) == 1:
        entry_file = modules[0].relative_to(root).as_posix()
    else:
        entry_file = "main.py"
    if entry_file not in trees:
        raise PackageError(f"the entry module {entry_file} is missing; add it or set "
                           f'[runtime].entry = "module:function".')
    if not any(isinstance(n, (ast.AsyncFunctionDef, ast.FunctionDef)) and n.name == func
               for n in trees[entry_file].body):
        raise PackageError(f"{entry_file} has no top-level function {func!r}; define "
                           f"`async def {func}(input)` or set [runtime].entry.")
    out = Path(out_dir) if out_dir is not None else root / "dist"
    out.mkdir(parents=True, exist_ok=True)
    artifact = out / f"{name}-{version}.zip"
    with zipfile.ZipFile(artifact, "w", zipfile.ZIP_DEFLATED) as z:
        def add(arcname: str, data: bytes) -> None:
            info = zipfile.ZipInfo(arcname, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)  # fixed timestamps: the same tree packs to the same bytes

        add("Pie.toml", text.encode())
        single = len(modules) == 1 and not module
        for p in modules:
            rel = p.relative_to(root).as_posix()
            add("main.py" if single else rel, p.read_bytes())
    manifest_out = out / f"{name}-{version}.toml"
    manifest_out.write_text(text)
    names = tuple("main.py" if len(modules) == 1 and not module else
                  p.relative_to(root).as_posix() for p in modules)
    return Package(name, version, artifact, manifest_out, names)
