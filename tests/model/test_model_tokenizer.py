"""Tokenizers and chat templates against transformers on a varied corpus.

The default model's tokenizer is rebuilt from GGUF metadata and compared with transformers'
own GGUF conversion; the tiny checkpoints exercise the tokenizer.json path. Chat templates are
rendered by our jinja2 environment and by transformers'.
"""

from __future__ import annotations

import pytest

from pie.model import load_tokenizer
from pie.model.chat_template import ChatTemplate

CORPUS = [
    "",
    "Hello, world!",
    "The capital of France is Paris. 12345 + 67890 = 80235; 3.14159e-10",
    "  leading spaces and\ttabs\nnewlines\n\n  indented\r\nwindows line",
    "Unicode: naïve café, 日本語のテキスト, emoji 🤖🚀👩‍👩‍👧, Ελληνικά, русский, العربية, हिन्दी",
    "def f(x):\n    return x**2  # comment\n\nclass A:\n\tpass\n",
    "I'm sure they'll've done it; we're 'quoted' DON'T \"double\"",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa          !!!!!!!!",
    'https://example.com/path?query=1&x=%20 <html><body>tag</body></html> {"json": [1, 2]}',
    "mixed 中文English123数字 and  double  spaces   triple",
    "\u00a0non-breaking\u2009thin\u200bzero-width",
]

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"}],
    [
        {"role": "user", "content": "Write code:\n```py\nprint('x')\n```"},
        {"role": "assistant", "content": "Done — 日本語 🤖."},
        {"role": "user", "content": "  spaces  and\ttabs  "},
    ],
]


@pytest.fixture(scope="module")
def gguf_pair(default_gguf):
    from transformers import AutoTokenizer

    ours = load_tokenizer(str(default_gguf))
    ref = AutoTokenizer.from_pretrained(str(default_gguf.parent), gguf_file=default_gguf.name)
    return ours, ref


def test_gguf_tokenizer_matches_transformers(gguf_pair):
    ours, ref = gguf_pair
    for text in CORPUS:
        assert ours.encode(text) == ref.encode(text, add_special_tokens=False), repr(text)
        assert ours.decode(ours.encode(text)) == text
    assert ours.vocab_size == len(ref)


def test_gguf_chat_template_matches_transformers(gguf_pair):
    ours, ref = gguf_pair
    for conv in CONVERSATIONS:
        for gen in (True, False):
            expect = ref.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
            assert ours.render_chat(conv, add_generation_prompt=gen) == expect


def test_default_model_special_and_stop_tokens(gguf_pair):
    ours, _ = gguf_pair
    ids, raw = ours.special_tokens()
    specials = dict(zip(raw, ids))
    assert specials[b"<|im_end|>"] == 2 and specials[b"<|im_start|>"] == 1
    assert 2 in ours.stop_token_ids and 1 not in ours.stop_token_ids
    assert ours.encode("<|im_end|>") == [2]


@pytest.mark.parametrize("which", ["gguf", "dir"])
def test_vocab_bytes_reassemble_text(which, request, tiny_checkpoints):
    if which == "gguf":
        tok = request.getfixturevalue("gguf_pair")[0]
    else:
        tok = load_tokenizer(str(tiny_checkpoints["llama"]))
    ids, raw = tok.vocab()
    assert ids == sorted(ids) and len(ids) == len(raw) == tok.vocab_size
    table = dict(zip(ids, raw))
    for text in CORPUS:
        assert b"".join(table[i] for i in tok.encode(text)) == text.encode("utf-8"), repr(text)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_dir_tokenizer_matches_transformers(arch, tiny_checkpoints):
    from transformers import AutoTokenizer

    path = tiny_checkpoints[arch]
    ours = load_tokenizer(str(path))
    ref = AutoTokenizer.from_pretrained(str(path))
    for text in CORPUS:
        for special in (False, True):
            assert ours.encode(text, add_special_tokens=special) == ref.encode(
                text, add_special_tokens=special
            )
    for conv in CONVERSATIONS:
        assert ours.render_chat(conv) == ref.apply_chat_template(
            conv, tokenize=False, add_generation_prompt=True
        )
    assert ours.stop_token_ids[0] == 2


TRICKY_TEMPLATE = """{{ bos_token }}{% set ns = namespace(count=0) %}
{%- for m in messages %}
  {%- if m['role'] == 'system' %}{% continue %}{% endif %}
  {%- set ns.count = ns.count + 1 %}
  {%- if m['role'] not in ['user', 'assistant'] %}{{ raise_exception('bad role ' + m['role']) }}{% endif %}
[{{ ns.count }}] {{ m['role'] | upper }}: {{ m['content'] | trim }}
  {%- if m['role'] == 'assistant' %}{% generation %} <<{{ m['content'] | length }}>>{% endgeneration %}{% endif %}
{% endfor %}
{%- if tools %}TOOLS={{ tools | tojson }}{% endif %}
{%- if add_generation_prompt %}[{{ ns.count + 1 }}] ASSISTANT:{% endif %}{{ eos_token }}"""


def test_chat_template_environment_matches_transformers():
    from transformers.utils.chat_template_utils import render_jinja_template

    tools = [{"name": "weather", "description": "Météo <now>", "parameters": {"city": "str"}}]
    special = {"bos_token": "<s>", "eos_token": "</s>"}
    ours = ChatTemplate(TRICKY_TEMPLATE, special)
    for conv in CONVERSATIONS:
        for gen in (True, False):
            rendered, _ = render_jinja_template(
                [conv],
                tools=tools,
                chat_template=TRICKY_TEMPLATE,
                add_generation_prompt=gen,
                **special,
            )
            assert ours.render(conv, add_generation_prompt=gen, tools=tools) == rendered[0]
    import jinja2

    with pytest.raises(jinja2.exceptions.TemplateError, match="bad role tool"):
        ours.render([{"role": "tool", "content": "x"}])
