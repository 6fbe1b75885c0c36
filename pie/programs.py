"""Programs: an uploaded inferlet with its manifest, stored by name@version.

`Program` is what the server hands to the process manager to launch. `ProgramStore` keeps them
on disk under the programs directory as

    <root>/<name>/<version>.{py|zip|wasm}     the payload
    <root>/<name>/<version>.toml              its Pie.toml, verbatim
    <root>/<name>/<version>.blake3            the payload digest, checked when the store loads

A manifest with `[runtime] language = "python"` carries Python source (one `.py` file, or a zip
of pure-Python modules); `entry` names the async function to call and `call = "kwargs"` passes
the JSON input as keyword arguments (`"input"`, the default, passes it as one dict). Anything
else is a WebAssembly component. Launching by bare name resolves the highest version.

`pack_path` turns a local file or directory into (manifest text, payload) for uploading; the
client and `pie run` use it. The server owns the store (`add`, `get`, `exists`, `has_digest`).
"""

from __future__ import annotations

import ast
import hashlib
import io
import logging
import re
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import blake3

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
WASM_MAGIC = b"\0asm"
ZIP_MAGIC = b"PK\x03\x04"
_EXT = {"wasm": ".wasm", "py": ".py", "zip": ".zip"}


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

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def is_zip(self) -> bool:
        return self.payload[:4] == ZIP_MAGIC


class ProgramError(Exception):
    """An upload or lookup a user got wrong; the message names the fix."""


class ProgramNotFound(ProgramError):
    pass


def digest_of(payload: bytes) -> str:
    """The digest programs are identified by (blake3 hex, as the original clients send)."""
    return blake3.blake3(payload).hexdigest()


def digest_matches(payload: bytes, claimed: str) -> bool:
    """True when `claimed` is the blake3 or the sha256 hex digest of `payload`."""
    claimed = claimed.strip().lower()
    if claimed == digest_of(payload):
        return True
    return len(claimed) == 64 and claimed == hashlib.sha256(payload).hexdigest()


def split_ref(ref: str) -> tuple[str, str | None]:
    """`"name@1.2.0"` -> ("name", "1.2.0"); `"name"` -> ("name", None)."""
    name, sep, version = ref.strip().partition("@")
    return name, (version or None) if sep else None


def version_key(version: str) -> tuple:
    """Order versions semver-style: numeric parts numerically, a pre-release below its release."""
    core, _, pre = version.partition("-")
    core = core.partition("+")[0]
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in core.split("."))
    return parts + (((1,) if not pre else (0, pre)),)


def parse_manifest(text: str) -> dict:
    """Parse and check a Pie.toml; raises `ProgramError` naming what to fix."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProgramError(f"The manifest is not valid TOML ({e}); fix Pie.toml.") from None
    pkg = doc.get("package")
    if not isinstance(pkg, dict):
        raise ProgramError("The manifest has no [package] table; add name and version under it.")
    for key in ("name", "version"):
        value = pkg.get(key)
        if not isinstance(value, str) or not _NAME_RE.match(value):
            raise ProgramError(
                f"The manifest's [package].{key} is {value!r}; set it to a plain string of "
                "letters, digits, '.', '_', '+' or '-'."
            )
    runtime = doc.get("runtime", {})
    if not isinstance(runtime, dict):
        raise ProgramError("The manifest's [runtime] must be a table.")
    if runtime.get("call", "input") not in ("input", "kwargs"):
        raise ProgramError('The manifest\'s [runtime].call must be "input" or "kwargs".')
    return doc


def is_python_manifest(manifest: dict) -> bool:
    return str(manifest.get("runtime", {}).get("language", "")).lower() == "python"


def _entry_function(tree: ast.Module, entry: str) -> ast.AsyncFunctionDef | ast.FunctionDef | None:
    for node in tree.body:
        if isinstance(node, (ast.AsyncFunctionDef, ast.FunctionDef)) and node.name == entry:
            return node
    return None


def check_python_payload(payload: bytes, manifest: dict) -> None:
    """Reject Python payloads that cannot run: bad zip, undecodable or uncompilable source."""
    name = manifest["package"]["name"]
    entry = manifest.get("runtime", {}).get("entry", "main")
    if payload[:4] == ZIP_MAGIC:
        try:
            with zipfile.ZipFile(io.BytesIO(payload)) as zf:
                bad = zf.testzip()
        except zipfile.BadZipFile as e:
            raise ProgramError(f"Program {name}: the zip payload is corrupt ({e}).") from None
        if bad is not None:
            raise ProgramError(f"Program {name}: the zip member {bad} is corrupt.")
        return
    try:
        source = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ProgramError(
            f'Program {name} declares language = "python" but its payload is neither UTF-8 '
            "source nor a zip; upload the .py file or a zip of modules."
        ) from None
    try:
        tree = ast.parse(source, filename=f"{name}.py")
    except SyntaxError as e:
        raise ProgramError(f"Program {name}: syntax error at line {e.lineno}: {e.msg}.") from None
    if _entry_function(tree, entry) is None:
        raise ProgramError(
            f"Program {name} has no top-level function {entry!r}; define `async def {entry}(...)` "
            "or set [runtime].entry in the manifest."
        )


def python_manifest(
    name: str, source: str | None = None, version: str = "0.0.0", entry: str = "main"
) -> str:
    """A Pie.toml for a bare Python file: `call = "kwargs"` unless `entry` takes one `input`."""
    call = "kwargs"
    if source is not None:
        try:
            fn = _entry_function(ast.parse(source), entry)
        except SyntaxError:
            fn = None
        if fn is not None:
            params = [a.arg for a in fn.args.posonlyargs + fn.args.args]
            if params == ["input"] and not fn.args.kwonlyargs:
                call = "input"
    safe = re.sub(r"[^A-Za-z0-9_.+-]", "-", name).strip("-.") or "inferlet"
    return (
        "[package]\n"
        f'name = "{safe}"\n'
        f'version = "{version}"\n\n'
        "[runtime]\n"
        'language = "python"\n'
        f'entry = "{entry}"\n'
        f'call = "{call}"\n'
    )


_SKIP_DIRS = {"__pycache__", ".git", ".venv", "node_modules", "build", "dist"}


def pack_path(path: str | Path, manifest_path: str | Path | None = None) -> tuple[str, bytes]:
    """(manifest text, payload) for a local inferlet: a .py file, a .wasm, or a directory.

    A directory needs a Pie.toml: a Python one is zipped (all files but caches and VCS data;
    a single-module directory is sent as plain source), a Wasm one sends its one .wasm file.
    A bare .py gets a generated manifest. A .wasm needs `manifest_path` or a Pie.toml beside it.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ProgramError(f"{path} does not exist; pass a .py file, a .wasm file or a directory.")
    if path.is_file() and path.suffix == ".py":
        if manifest_path is not None:
            return Path(manifest_path).read_text(), path.read_bytes()
        source = path.read_text()
        return python_manifest(path.stem, source), source.encode()
    if path.is_file():
        mp = Path(manifest_path) if manifest_path else path.with_name("Pie.toml")
        if not mp.exists():
            raise ProgramError(f"{path} needs a manifest: put Pie.toml beside it or pass one.")
        return mp.read_text(), path.read_bytes()
    mp = Path(manifest_path) if manifest_path else path / "Pie.toml"
    if not mp.exists():
        raise ProgramError(f"{path} has no Pie.toml; add one with [package] name and version.")
    text = mp.read_text()
    manifest = parse_manifest(text)
    if not is_python_manifest(manifest):
        wasms = sorted(path.glob("*.wasm")) or sorted(path.glob("**/*.wasm"))
        if len(wasms) != 1:
            raise ProgramError(
                f"{path} should hold exactly one .wasm component (found {len(wasms)}); build it "
                "with `pie build` or pass the .wasm file itself."
            )
        return text, wasms[0].read_bytes()
    files = [
        p
        for p in sorted(path.rglob("*"))
        if p.is_file()
        and not any(
            part in _SKIP_DIRS or part.startswith(".") for part in p.relative_to(path).parts
        )
        and p.suffix not in (".pyc", ".wasm")
        and p.name != "Pie.toml"
    ]
    py_files = [p for p in files if p.suffix == ".py"]
    if len(files) == 1 and len(py_files) == 1:
        return text, py_files[0].read_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in files:
            # fixed timestamps keep the digest stable across packs of the same tree
            info = zipfile.ZipInfo(p.relative_to(path).as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, p.read_bytes())
    return text, buf.getvalue()


def default_programs_dir() -> Path:
    from pie.paths import programs_dir

    return programs_dir()


class ProgramStore:
    """Every installed program, by name then version; backed by files under `root`."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_programs_dir()
        self._programs: dict[str, dict[str, Program]] = {}
        self._by_digest: dict[str, Program] = {}
        self._load()

    # -- queries ---------------------------------------------------------------------------

    def exists(self, name: str, version: str | None = None) -> bool:
        versions = self._programs.get(name, {})
        return bool(versions) if version is None else version in versions

    def has_digest(self, digest: str) -> bool:
        return digest.strip().lower() in self._by_digest

    def get(self, ref: str, version: str | None = None) -> Program:
        """Resolve "name", "name@version" (or name + version); raises `ProgramNotFound`."""
        name, ref_version = split_ref(ref)
        version = version or ref_version
        versions = self._programs.get(name)
        if not versions:
            raise ProgramNotFound(
                f"Program {name!r} is not installed; upload it first (add_program, or "
                "`pie run --path <file or dir>`)."
            )
        if version is None or version == "latest":
            return versions[max(versions, key=version_key)]
        if version not in versions:
            have = ", ".join(sorted(versions, key=version_key))
            raise ProgramNotFound(
                f"Program {name!r} has no version {version!r} (installed: {have}); launch one of "
                f"those or upload {name}@{version}."
            )
        return versions[version]

    def list(self) -> list[Program]:
        return [p for vs in self._programs.values() for p in vs.values()]

    # -- changes ---------------------------------------------------------------------------

    def add(
        self,
        manifest_text: str,
        payload: bytes,
        *,
        expected_digest: str | None = None,
        force: bool = False,
    ) -> Program:
        """Validate and install a program; idempotent for identical bytes."""
        manifest = parse_manifest(manifest_text)
        name, version = manifest["package"]["name"], manifest["package"]["version"]
        digest = digest_of(payload)
        expected = (expected_digest or "").strip().lower()
        if expected and expected != digest and not digest_matches(payload, expected):
            raise ProgramError(
                f"Upload of {name}@{version} is corrupt: its program_hash {expected_digest} does "
                f"not match the bytes received (blake3 {digest_of(payload)}); send it again."
            )
        if is_python_manifest(manifest):
            check_python_payload(payload, manifest)
            kind, ext = "python", (_EXT["zip"] if payload[:4] == ZIP_MAGIC else _EXT["py"])
        elif payload[:4] == WASM_MAGIC:
            kind, ext = "wasm", _EXT["wasm"]
        else:
            raise ProgramError(
                f"Program {name}@{version} is not a WebAssembly component; build it with "
                '`pie build`, or set [runtime] language = "python" for Python source.'
            )
        old = self._programs.get(name, {}).get(version)
        if old is not None:
            if old.digest == digest and old.manifest == manifest:
                return old
            if not force:
                raise ProgramError(
                    f"{name}@{version} is already installed with different content; bump the "
                    "version or upload with force_overwrite."
                )
        program = Program(name, version, kind, payload, digest, manifest)
        self._write(program, ext, manifest_text)
        if old is not None:
            self._by_digest.pop(old.digest, None)
        self._programs.setdefault(name, {})[version] = program
        self._by_digest[digest] = program
        return program

    def remove(self, name: str, version: str | None = None) -> None:
        versions = self._programs.get(name, {})
        doomed = list(versions) if version is None else [version]
        for v in doomed:
            program = versions.pop(v, None)
            if program is None:
                raise ProgramNotFound(f"Program {name}@{v} is not installed.")
            self._by_digest.pop(program.digest, None)
            for ext in (".py", ".zip", ".wasm", ".toml", ".blake3"):
                (self.root / name / f"{v}{ext}").unlink(missing_ok=True)
        if not versions:
            self._programs.pop(name, None)

    # -- disk ------------------------------------------------------------------------------

    def _write(self, program: Program, ext: str, manifest_text: str) -> None:
        folder = self.root / program.name
        folder.mkdir(parents=True, exist_ok=True)
        for other in (".py", ".zip", ".wasm"):
            if other != ext:
                (folder / f"{program.version}{other}").unlink(missing_ok=True)
        for suffix, data in (
            (ext, program.payload),
            (".toml", manifest_text.encode()),
            (".blake3", program.digest.encode()),
        ):
            target = folder / f"{program.version}{suffix}"
            tmp = target.with_name(target.name + ".part")
            tmp.write_bytes(data)
            tmp.replace(target)

    def _load(self) -> None:
        if not self.root.is_dir():
            return
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for mf in sorted(folder.glob("*.toml")):
                version = mf.name[: -len(".toml")]
                payload_path = next(
                    (
                        folder / f"{version}{e}"
                        for e in (".py", ".zip", ".wasm")
                        if (folder / f"{version}{e}").exists()
                    ),
                    None,
                )
                if payload_path is None:
                    continue
                try:
                    manifest = parse_manifest(mf.read_text())
                    payload = payload_path.read_bytes()
                except (ProgramError, OSError) as e:
                    log.warning("skipping stored program %s: %s", payload_path, e)
                    continue
                digest = digest_of(payload)
                recorded = folder / f"{version}.blake3"
                if recorded.exists() and recorded.read_text().strip() != digest:
                    log.warning("skipping stored program %s: digest mismatch", payload_path)
                    continue
                kind = "wasm" if payload_path.suffix == ".wasm" else "python"
                name = manifest["package"]["name"]
                program = Program(
                    name, manifest["package"]["version"], kind, payload, digest, manifest
                )
                self._programs.setdefault(name, {})[program.version] = program
                self._by_digest[digest] = program
