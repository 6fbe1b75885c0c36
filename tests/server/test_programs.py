"""The program store and local packing: manifests, versions, digests, persistence."""

from __future__ import annotations

import io
import zipfile

import pytest

from pie.programs import (
    ProgramError,
    ProgramNotFound,
    ProgramStore,
    digest_of,
    pack_path,
    parse_manifest,
    python_manifest,
    split_ref,
    version_key,
)

SRC = "async def main(input):\n    return 'ok'\n"
WASM = b"\0asm\x0d\x00\x01\x00" + b"component-bytes"


def man(name="p", version="1.0.0", python=True, extra=""):
    rt = '[runtime]\nlanguage = "python"\n' if python else ""
    return f'[package]\nname = "{name}"\nversion = "{version}"\n{rt}{extra}'


def test_refs_and_version_order():
    assert split_ref("a@1.2") == ("a", "1.2") and split_ref("a") == ("a", None)
    versions = ["1.0.0", "0.10.0", "0.9.1", "1.0.0-rc.1", "0.9.10", "2.0.0+build"]
    ordered = sorted(versions, key=version_key)
    assert ordered == ["0.9.1", "0.9.10", "0.10.0", "1.0.0-rc.1", "1.0.0", "2.0.0+build"]


def test_manifest_validation():
    assert parse_manifest(man())["package"]["name"] == "p"
    for bad, why in [
        ("not toml ][", "not valid TOML"),
        ('[runtime]\nlanguage = "python"\n', "no [package]"),
        (man(name="../etc"), "[package].name"),
        (man(version=""), "[package].version"),
        (man(extra='call = "positional"\n'), "call"),
    ]:
        with pytest.raises(ProgramError, match=why.replace("[", r"\[").replace("]", r"\]")):
            parse_manifest(bad)


def test_add_get_latest_and_persistence(tmp_path):
    store = ProgramStore(tmp_path)
    a = store.add(man(version="0.9.0"), SRC.encode())
    store.add(man(version="0.10.0"), SRC.encode() + b"#2\n")
    w = store.add(man(name="w", python=False), WASM, expected_digest=digest_of(WASM))
    assert a.kind == "python" and a.digest == digest_of(SRC.encode()) and a.ref == "p@0.9.0"
    assert w.kind == "wasm"
    assert store.get("p").version == "0.10.0"
    assert store.get("p", "latest").version == "0.10.0"
    assert store.get("p@0.9.0").payload == SRC.encode()
    assert store.has_digest(a.digest.upper()) and not store.has_digest("00")
    assert (tmp_path / "p" / "0.9.0.py").exists() and (tmp_path / "w" / "1.0.0.wasm").exists()
    with pytest.raises(ProgramNotFound, match="installed: 0.9.0, 0.10.0"):
        store.get("p@3.0.0")
    with pytest.raises(ProgramNotFound, match="not installed"):
        store.get("q")
    again = ProgramStore(tmp_path)
    assert sorted(p.ref for p in again.list()) == ["p@0.10.0", "p@0.9.0", "w@1.0.0"]
    assert again.get("p@0.9.0") == a
    again.remove("p", "0.9.0")
    assert not (tmp_path / "p" / "0.9.0.py").exists()
    assert [p.ref for p in ProgramStore(tmp_path).list() if p.name == "p"] == ["p@0.10.0"]


def test_corrupt_files_are_skipped_on_load(tmp_path):
    store = ProgramStore(tmp_path)
    store.add(man(), SRC.encode())
    store.add(man(name="other"), SRC.encode())
    (tmp_path / "p" / "1.0.0.py").write_text(SRC + "# tampered\n")
    reloaded = ProgramStore(tmp_path)
    assert [p.name for p in reloaded.list()] == ["other"]


def test_payload_checks(tmp_path):
    store = ProgramStore(tmp_path)
    with pytest.raises(ProgramError, match="corrupt"):
        store.add(man(), SRC.encode(), expected_digest="ab" * 32)
    import hashlib

    store.add(man(), SRC.encode(), expected_digest=hashlib.sha256(SRC.encode()).hexdigest())
    with pytest.raises(ProgramError, match="no top-level function 'main'"):
        store.add(man(name="x"), b"async def other():\n    pass\n")
    with pytest.raises(ProgramError, match="neither UTF-8"):
        store.add(man(name="x"), b"\xff\xfe\x00")
    with pytest.raises(ProgramError, match="zip payload is corrupt"):
        store.add(man(name="x"), b"PK\x03\x04garbage")
    with pytest.raises(ProgramError, match="not a WebAssembly component"):
        store.add(man(name="x", python=False), SRC.encode())
    custom = store.add(
        man(name="c", extra='entry = "go"\ncall = "kwargs"\n'),
        b"async def go(**kw):\n    return kw\n",
    )
    assert (custom.entry, custom.call) == ("go", "kwargs")


def test_python_manifest_infers_call_style():
    assert 'call = "input"' in python_manifest("a", "async def main(input):\n    pass\n")
    assert 'call = "kwargs"' in python_manifest("a", "async def main(prompt, n=1):\n    pass\n")
    assert 'call = "kwargs"' in python_manifest("a", "async def main():\n    pass\n")
    m = parse_manifest(python_manifest("my file!", None))
    assert m["package"]["name"] == "my-file" and m["runtime"]["language"] == "python"


def test_pack_path_file_dir_and_wasm(tmp_path):
    f = tmp_path / "solo.py"
    f.write_text("async def main(prompt):\n    return prompt\n")
    text, payload = pack_path(f)
    assert parse_manifest(text)["package"]["name"] == "solo" and payload == f.read_bytes()

    d = tmp_path / "pkg"
    (d / "lib").mkdir(parents=True)
    (d / "Pie.toml").write_text(man(name="pkg"))
    (d / "main.py").write_text("from lib.util import f\nasync def main(input):\n    return f()\n")
    (d / "lib" / "util.py").write_text("def f():\n    return 1\n")
    (d / "__pycache__").mkdir()
    (d / "__pycache__" / "x.pyc").write_bytes(b"junk")
    text, payload = pack_path(d)
    names = sorted(zipfile.ZipFile(io.BytesIO(payload)).namelist())
    assert names == ["lib/util.py", "main.py"]
    assert pack_path(d)[1] == payload  # deterministic: same digest on every pack

    single = tmp_path / "single"
    single.mkdir()
    (single / "Pie.toml").write_text(man(name="single"))
    (single / "app.py").write_text(SRC)
    assert pack_path(single)[1] == SRC.encode()

    wd = tmp_path / "wasmpkg"
    wd.mkdir()
    (wd / "Pie.toml").write_text(man(name="wp", python=False))
    (wd / "wp.wasm").write_bytes(WASM)
    assert pack_path(wd) == (man(name="wp", python=False), WASM)
    assert pack_path(wd / "wp.wasm")[1] == WASM
    with pytest.raises(ProgramError, match="no Pie.toml"):
        pack_path(tmp_path / "pkg" / "lib")
    with pytest.raises(ProgramError, match="does not exist"):
        pack_path(tmp_path / "nope.py")

    store = ProgramStore(tmp_path / "store")
    prog = store.add(*pack_path(d))
    assert prog.kind == "python" and prog.is_zip and (tmp_path / "store/pkg/1.0.0.zip").exists()
