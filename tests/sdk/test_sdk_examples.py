"""The example inferlets run unchanged against the fake engine and do what they say."""

import asyncio
import json
import re
from pathlib import Path

from pie.sandbox.testing import (
    EOT,
    IM_END,
    FakeEngine,
    FakeTokenizer,
    reference_greedy,
    run_inferlet,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "sdk" / "python" / "examples"


def _src(name: str) -> str:
    return (EXAMPLES / name / "main.py").read_text()


def test_text_completion_streams_the_greedy_reply():
    kind, value, events = asyncio.run(run_inferlet(_src("text_completion"),
                                                   {"prompt": "hi", "max_tokens": 40}))
    assert kind == "return", value
    tok = FakeTokenizer()
    prompt = tok.encode(tok.render_chat([{"role": "system", "content": "You are a helpful assistant."},
                                         {"role": "user", "content": "hi"}]))
    expected = [t for t in reference_greedy(prompt, 40, {IM_END, EOT}) if t not in (IM_END, EOT)]
    assert value == tok.decode(expected)
    streamed = "".join(v for k, v in events if k == "message")
    assert streamed == value


def test_parallel_generation_batches_the_branches():
    eng = FakeEngine()
    kind, value, _ = asyncio.run(run_inferlet(_src("parallel_generation"),
                                              {"n": 4, "max_tokens": 8}, engine=eng))
    assert kind == "return", value
    texts = json.loads(value)
    assert len(texts) == 4 and len(set(texts)) > 1  # different seeds, different branches
    assert max(eng.batches) == 4  # branch steps shared batches


def test_custom_sampler_is_reproducible_and_respects_its_rule():
    args = {"prompt": "story", "max_tokens": 20, "k": 8, "window": 3, "seed": 7}
    runs = [asyncio.run(run_inferlet(_src("custom_sampler"), args)) for _ in range(2)]
    assert runs[0][0] == "return", runs[0][1]
    a, b = (json.loads(r[1]) for r in runs)
    assert a == b
    toks = a["tokens"]
    for i, t in enumerate(toks[:-1]):
        assert t not in toks[max(0, i - 3):i]  # the guest's repetition ban held


def test_agent_tool_calls_are_grammar_shaped():
    kind, value, _ = asyncio.run(run_inferlet(_src("agent_tool"), {"max_turns": 2}))
    assert kind == "return", value
    out = json.loads(value)
    first = out["transcript"][0]
    assert re.fullmatch(r"(CALL calc\([0-9+\-*/ ().]{1,40}\)|ANSWER [A-Za-z0-9 .,]{1,60})", first)
    if first.startswith("CALL"):
        assert out["transcript"][1].startswith("calc -> ")
