"""The message hub: queues deliver each message exactly once in order; broadcasts reach every
open subscription and nobody else."""

import asyncio
import io
import zipfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pie.messaging import MessageHub
from pie.sandbox.sandbox import SandboxError, python_program

OPS = st.lists(st.one_of(st.tuples(st.just("push"), st.integers(0, 999)),
                         st.tuples(st.just("pull"), st.just(0))), max_size=60)


@settings(max_examples=80, deadline=None)
@given(OPS)
def test_queue_is_fifo_and_exactly_once(ops):
    async def go():
        hub = MessageHub()
        pulls, pushed = [], []
        for op, v in ops:
            if op == "push":
                hub.push("q", str(v))
                pushed.append(str(v))
            else:
                pulls.append(hub.pull("q"))
        await asyncio.sleep(0)
        got = [f.result() for f in pulls if f.done()]
        waiting = sum(not f.done() for f in pulls)
        return pushed, got, waiting, hub.pending("q")

    pushed, got, waiting, left = asyncio.run(go())
    assert got == pushed[: len(got)]  # in order, no duplicates
    assert len(got) + left == len(pushed)  # nothing lost
    assert waiting == 0 or left == 0  # never a waiting puller while messages sit queued


def test_broadcast_reaches_open_subscriptions_only():
    async def go():
        hub = MessageHub()
        a, b = hub.subscribe("t"), hub.subscribe("t")
        other = hub.subscribe("u")
        assert hub.broadcast("t", "one") == 2
        b.close()
        assert hub.broadcast("t", "two") == 1
        got_a = [await a.next(), await a.next()]
        nxt = other.next()
        await asyncio.sleep(0)
        return got_a, nxt.done()

    got_a, other_done = asyncio.run(go())
    assert got_a == ["one", "two"] and not other_done


def _zip(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, src in files.items():
            z.writestr(n, src)
    return buf.getvalue()


def test_python_program_layouts():
    files, entry = python_program(b"async def main(input): pass\n")
    assert files == [("main.py", b"async def main(input): pass\n")] and entry == ("main:main", "input")
    # zipped from a directory: the top folder is stripped
    files, entry = python_program(_zip({"demo/Pie.toml": "", "demo/app.py": "x = 1\n"}), "go",
                                  "kwargs")
    assert [n for n, _ in files] == ["app.py"] and entry == ("app:go", "kwargs")
    files, entry = python_program(_zip({"main.py": "", "util.py": ""}))
    assert entry == ("main:main", "input")
    _, entry = python_program(_zip({"a.py": "", "b.py": ""}), "b:run")
    assert entry == ("b:run", "input")
    with pytest.raises(SandboxError, match="module:function"):
        python_program(_zip({"a.py": "", "b.py": ""}))
    with pytest.raises(SandboxError, match="call"):
        python_program(b"", call="positional")
    with pytest.raises(SandboxError, match="zip"):
        python_program(b"PK\x03\x04 broken")
