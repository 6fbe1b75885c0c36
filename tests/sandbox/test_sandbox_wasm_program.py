"""Programs that are WebAssembly components (not Python source) run through the same path,
compiled once into the PIE_HOME component cache."""

import asyncio
import hashlib

import wasmtime

from pie.paths import cache_dir
from pie.processes import ProcessManager
from pie.programs import Program
from pie.sandbox.sandbox import Sandbox
from pie.sandbox.testing import FakeEngine

# A hand-written component exporting run(input) -> result<string, string> that always
# answers ok("hello from wasm") (the result record is written at address 0).
WAT = r"""
(component
  (core module $m
    (memory (export "memory") 1)
    (global $heap (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      global.get $heap local.set $p
      global.get $heap local.get 3 i32.add global.set $heap
      local.get $p)
    (data (i32.const 16) "hello from wasm")
    (func (export "run") (param i32 i32) (result i32)
      (i32.store (i32.const 0) (i32.const 0))
      (i32.store (i32.const 4) (i32.const 16))
      (i32.store (i32.const 8) (i32.const 15))
      i32.const 0))
  (core instance $i (instantiate $m))
  (func $run (param "input" string) (result (result string (error string)))
    (canon lift (core func $i "run") (memory (core memory $i "memory"))
                (realloc (core func $i "realloc"))))
  (export "run" (func $run)))
"""


def _program(payload: bytes) -> Program:
    return Program(name="hello", version="0.1.0", kind="wasm", payload=payload,
                   digest=hashlib.sha256(payload).hexdigest(), manifest={})


def _run(program: Program):
    async def go():
        pm = ProcessManager({"fake": FakeEngine()}, None, sandbox=Sandbox())
        pid = await pm.launch(program, "{}", "u", lambda *a: None)
        out = await pm.wait(pid)
        await pm.shutdown()
        return out

    return asyncio.run(go())


def test_component_program_runs_and_is_cached():
    payload = wasmtime.wat2wasm(WAT)
    prog = _program(payload)
    assert _run(prog) == ("return", "hello from wasm")
    cached = list((cache_dir() / "components").glob(prog.digest[:32] + "-*.cwasm"))
    assert len(cached) == 1
    assert _run(prog) == ("return", "hello from wasm")  # second time from the cache


def test_invalid_component_is_a_clear_error():
    kind, value = _run(_program(b"\0asm not really"))
    assert kind == "error" and "not a valid component" in value
