"""The host's import table matches the WIT world exactly (names, parameter and result types).

The host registers untyped callbacks with pre-bound converters, so wasmtime cannot catch a
drift between `sdk/wit/inferlet.wit` and `pie/sandbox/host.py`; this test does.
"""

import re
from pathlib import Path

from pie.sandbox.host import IMPORTS
from pie.sandbox.runner import WIT_DIR


def _strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*", "", text)


def _wit_funcs() -> dict[tuple[str, str], tuple[list[str], str]]:
    text = _strip_comments((Path(WIT_DIR) / "inferlet.wit").read_text())
    out = {}
    for m in re.finditer(r"interface ([\w-]+) \{(.*?)\n\}", text, re.DOTALL):
        iface, body = m.group(1), m.group(2)
        aliases = dict(re.findall(r"type ([\w-]+) = ([^;]+);", body))
        records = {}
        for r in re.finditer(r"record ([\w-]+) \{(.*?)\}", body, re.DOTALL):
            fields = re.findall(r"([\w-]+): ([^,]+),", r.group(2))
            records[r.group(1)] = "record{" + ", ".join(f for f, _ in fields) + "}"

        def norm(t: str, aliases=aliases, records=records) -> str:
            t = " ".join(t.split())
            for a, v in aliases.items():
                t = re.sub(rf"\b{a}\b", v, t)
            for r, v in records.items():
                t = re.sub(rf"(?<![\w-]){r}(?![\w-])", v, t)
            return t.replace("result<_, string>", "result<_, string>")

        for f in re.finditer(r"([\w-]+): func\((.*?)\)(?: -> ([^;]+))?;", body, re.DOTALL):
            params = [norm(p.split(":", 1)[1]) for p in _split(f.group(2))]
            result = norm(f.group(3)) if f.group(3) else "none"
            out[(iface, f.group(1))] = (params, result)
    return out


def _split(params: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in params:
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def test_every_wit_import_is_implemented_with_its_exact_types():
    wit = _wit_funcs()
    host = {(i, n): ([p.name for p in ps], r.name if r is not None else "none")
            for i, n, _, ps, r, _ in IMPORTS}
    assert set(wit) == set(host), set(wit) ^ set(host)
    for key, (params, result) in wit.items():
        assert host[key] == (params, result), (key, host[key], (params, result))
