"""The Python runner end to end against the fake engine: generation, entry points, errors."""

import asyncio
import io
import json
import zipfile

from pie.sandbox.testing import (
    EOT,
    IM_END,
    FakeEngine,
    FakeTokenizer,
    reference_greedy,
    run_inferlet,
)

CHAT = """
import inferlet
async def main(input: dict) -> str:
    model = inferlet.Model.load()
    ctx = inferlet.Context(model)
    ctx.system("You are a helpful assistant.")
    ctx.user(input.get("prompt", "Hello"))
    ctx.cue()
    toks = await ctx.generate_tokens(inferlet.Sampler.argmax(),
                                     max_tokens=input.get("max_tokens", 64),
                                     ignore_eos=input.get("ignore_eos", False))
    return toks
"""


def _prompt(user: str) -> list[int]:
    tok = FakeTokenizer()
    return tok.encode(tok.render_chat([{"role": "system", "content": "You are a helpful assistant."},
                                       {"role": "user", "content": user}], True))


def test_greedy_matches_the_model_exactly():
    for prompt, n in [("hi", 30), ("a longer prompt that spans several KV pages " * 3, 40)]:
        kind, value, _ = asyncio.run(run_inferlet(CHAT, {"prompt": prompt, "max_tokens": n}))
        assert kind == "return", value
        assert json.loads(value) == reference_greedy(_prompt(prompt), n, {IM_END, EOT})


def test_ignore_eos_runs_to_max_tokens():
    kind, value, _ = asyncio.run(run_inferlet(CHAT, {"prompt": "x", "max_tokens": 60,
                                                     "ignore_eos": True}))
    assert kind == "return", value
    assert len(json.loads(value)) == 60


def test_generate_text_and_stdout_events():
    src = """
import inferlet
async def main(input):
    ctx = inferlet.Context(inferlet.Model.load())
    ctx.user("hello")
    ctx.cue()
    print("starting")
    text = await ctx.generate_text(inferlet.Sampler.argmax(), max_tokens=10)
    return {"text": text}
"""
    kind, value, events = asyncio.run(run_inferlet(src))
    assert kind == "return", value
    tok = FakeTokenizer()
    expected = reference_greedy(tok.encode(tok.render_chat([{"role": "user", "content": "hello"}])),
                                10, {IM_END, EOT})
    expected = [t for t in expected if t not in (IM_END, EOT)]
    assert json.loads(value)["text"] == tok.decode(expected)
    assert [v for k, v in events if k == "stdout"] == ["starting\n"]
    assert events[-1][0] == "return"


def test_kwargs_call_style_and_custom_entry():
    src = "async def go(a, b=2):\n    return a * b\n"
    kind, value = asyncio.run(_run_with_manifest(src, {"a": 21}, entry="go", call="kwargs"))
    assert (kind, value) == ("return", "42")


async def _run_with_manifest(src, inp, entry, call):
    from pie.processes import ProcessManager
    from pie.sandbox.sandbox import Sandbox
    from pie.sandbox.testing import make_program

    eng = FakeEngine()
    pm = ProcessManager({"fake": eng}, None, sandbox=Sandbox())
    pid = await pm.launch(make_program(src, entry=entry, call=call), json.dumps(inp), "u",
                          lambda *a: None)
    out = await pm.wait(pid)
    await pm.shutdown()
    return out


def test_string_return_is_not_json_encoded():
    kind, value, _ = asyncio.run(run_inferlet("async def main(input):\n    return 'plain'\n"))
    assert (kind, value) == ("return", "plain")


def test_zip_program_with_modules():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("Pie.toml", '[package]\nname = "z"\nversion = "0.1.0"\n')
        z.writestr("main.py", "from helpers.util import double\nasync def main(input):\n"
                              "    return double(input['x'])\n")
        z.writestr("helpers/__init__.py", "")
        z.writestr("helpers/util.py", "def double(x):\n    return 2 * x\n")
    kind, value, _ = asyncio.run(run_inferlet(buf.getvalue(), {"x": 5}))
    assert (kind, value) == ("return", "10")


def test_errors_become_error_events():
    kind, value, _ = asyncio.run(run_inferlet("async def main(input):\n    raise ValueError('bad input')\n"))
    assert kind == "error" and "ValueError: bad input" in value
    kind, value, _ = asyncio.run(run_inferlet("async def main(input)\n    return 1\n"))
    assert kind == "error" and "SyntaxError" in value
    kind, value, _ = asyncio.run(run_inferlet("x = 1\n"))
    assert kind == "error" and "entry function" in value


def test_snapshot_off_imports_sdk_from_source():
    src = "import inferlet\nasync def main(input):\n    return inferlet.__file__\n"
    kind, value, _ = asyncio.run(run_inferlet(src, python_snapshot=False))
    assert kind == "return" and value == "inferlet/__init__.py"
    kind, value, _ = asyncio.run(run_inferlet(src))
    assert kind == "return" and value != "inferlet/__init__.py"


def test_output_arrives_in_lines_and_the_tail_before_the_result():
    src = """
import sys
async def main(input):
    print("a", end="")
    print("b")
    print("c\\nd", end="")
    sys.stderr.write("warn\\n")
    return "r"
"""
    kind, value, events = asyncio.run(run_inferlet(src))
    assert (kind, value) == ("return", "r")
    assert [(k, v) for k, v in events if k == "stdout"] == [("stdout", "ab\n"), ("stdout", "c\n"),
                                                           ("stdout", "d")]
    assert ("stderr", "warn\n") in events
    assert events[-1] == ("return", "r")
