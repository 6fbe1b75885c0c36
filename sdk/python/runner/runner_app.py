"""The generic runner: one CPython component that runs any Python inferlet given as source.

Built once by componentize-py (the `inferlet` SDK and the standard-library modules below are
imported here, at build time, so they are part of the pre-initialized snapshot); at launch the
host hands over the program's files (`runner.program-files`), the runner installs an importer
for them, imports the entry module and drives its async entry function on the SDK's guest
loop. The return value, JSON-encoded unless it is a string, is the process's return.

Called by the host (`pie/sandbox/`) through the exported `run` function, once per process; the
host may call `run` again on the same instance for a later launch of the same program by the
same user (each run gets a fresh guest loop and executes the program's modules afresh).
"""

# Standard-library modules inferlets may import: componentize-py only bundles what the app
# imports at build time, so a broad set is imported here on purpose.
import abc  # noqa: F401
import array  # noqa: F401
import asyncio
import base64  # noqa: F401
import bisect  # noqa: F401
import collections  # noqa: F401
import contextlib  # noqa: F401
import copy  # noqa: F401
import dataclasses  # noqa: F401
import datetime  # noqa: F401
import decimal  # noqa: F401
import enum  # noqa: F401
import fractions  # noqa: F401
import functools  # noqa: F401
import gc
import hashlib  # noqa: F401
import heapq  # noqa: F401
import html  # noqa: F401
import importlib
import importlib.abc
import importlib.util
import inspect  # noqa: F401
import io  # noqa: F401
import itertools  # noqa: F401
import json
import math  # noqa: F401
import operator  # noqa: F401
import os  # noqa: F401
import pathlib  # noqa: F401
import pprint  # noqa: F401
import random  # noqa: F401
import re  # noqa: F401
import statistics  # noqa: F401
import string  # noqa: F401
import struct  # noqa: F401
import sys
import textwrap  # noqa: F401
import time  # noqa: F401
import traceback
import types
import typing  # noqa: F401
import unicodedata  # noqa: F401
import uuid  # noqa: F401

import inferlet  # noqa: F401  (the SDK, pre-initialized in the snapshot)
import wit_world
from componentize_py_types import Err
from inferlet import _loop
from wit_world.imports import runner as _runner

_BAKED = {name: mod for name, mod in sys.modules.items() if name.split(".")[0] == "inferlet"}

# Compiled program modules by (path, source): a later run of this instance (the next launch
# of the same program) executes the same code objects without parsing and compiling again.
_CODE: dict[tuple[str, bytes], types.CodeType] = {}


def _compiled(path: str, data: bytes) -> types.CodeType:
    key = (path, data)
    code = _CODE.get(key)
    if code is None:
        if len(_CODE) >= 64:  # one program per instance: more means many files, keep it bounded
            _CODE.clear()
        code = _CODE[key] = compile(data, path, "exec")
    return code


class _SourceImporter(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports modules from in-memory source files: {"pkg/mod.py": b"..."}."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.modules: dict[str, tuple[str, bytes, bool]] = {}
        for path, data in files.items():
            if not path.endswith(".py"):
                continue
            parts = path[:-3].split("/")
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts = parts[:-1]
            if parts:
                self.modules[".".join(parts)] = (path, data, is_pkg)

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.modules:
            return None
        _, _, is_pkg = self.modules[fullname]
        return importlib.util.spec_from_loader(fullname, self, is_package=is_pkg)

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        path, data, is_pkg = self.modules[module.__name__]
        if is_pkg:
            module.__path__ = []
        module.__file__ = path
        exec(_compiled(path, data), module.__dict__)  # noqa: S102 - running it is the point


def _install(files: dict[str, bytes]) -> _SourceImporter:
    importer = _SourceImporter(files)
    sys.meta_path.insert(0, importer)
    return importer


class WitWorld(wit_world.WitWorld):
    def run(self, input: str) -> str:
        importer = None
        sdk_importer = None
        module_name = ""
        try:
            sdk = dict(_runner.sdk_files())
            if sdk:  # snapshot off: import the SDK afresh from source
                for name in list(sys.modules):
                    if name.split(".")[0] == "inferlet":
                        del sys.modules[name]
                sdk_importer = _install(sdk)
            files = dict(_runner.program_files())
            entry, style = _runner.program_entry()
            module_name, _, func_name = entry.partition(":")
            if len(files) == 1 and module_name + ".py" in files:
                # a single-file program: no import machinery needed
                module = types.ModuleType(module_name)
                module.__file__ = module_name + ".py"
                sys.modules[module_name] = module
                exec(_compiled(module.__file__, files[module.__file__]),  # noqa: S102
                     module.__dict__)
            else:
                importer = _install(files)
                module = importlib.import_module(module_name)
            fn = getattr(module, func_name or "main", None)
            if fn is None:
                raise Err(f"the inferlet has no entry function {func_name or 'main'!r} in "
                          f"{module_name!r}; define `async def main(input)` or set [runtime] entry")
            arg = json.loads(input) if input else {}
            if style == "kwargs":
                if not isinstance(arg, dict):
                    raise Err("call = \"kwargs\" needs a JSON object as input")
                result = _loop.run_main(fn, (), arg)
            else:
                result = _loop.run_main(fn, (arg,), {})
        except Err:
            raise
        except BaseException as e:  # noqa: BLE001 - every guest failure becomes an error event
            tb = traceback.format_exception(type(e), e, e.__traceback__)
            raise Err("".join(tb[-12:]).rstrip())
        finally:
            for imp in (importer, sdk_importer):
                if imp is not None and imp in sys.meta_path:
                    sys.meta_path.remove(imp)
            # the host may run this instance again for the next launch of the program: that
            # run executes the program's modules afresh
            names = list(importer.modules) if importer is not None else [module_name]
            for name in names:
                sys.modules.pop(name, None)
            sys.stdout.flush()
            sys.stderr.flush()
        if result is None:
            return ""
        return result if isinstance(result, str) else json.dumps(result)


def _warm_up() -> None:
    """Take, at build time, the pure-Python paths of every launch (compiling and executing
    a module, JSON, the guest loop running a coroutine), so the snapshot holds them already
    run once: caches filled, bytecode specialized, instead of each fresh instance doing it."""
    src = "import json\nasync def main(input):\n    return json.dumps(input)\n"
    for _ in range(3):
        module = types.ModuleType("_warm_up")
        exec(compile(src, "_warm_up.py", "exec"), module.__dict__)  # noqa: S102

        async def run(arg, fn=module.main):
            await asyncio.sleep(0)
            return await fn(arg)

        loop = _loop.GuestLoop()
        asyncio.set_event_loop(loop)
        try:
            result = loop.run_until_complete(run(json.loads('{"a": [1, 2.5, "x"]}')))
        finally:
            asyncio.set_event_loop(None)
            loop.close()
        traceback.format_exception(ValueError, ValueError(result), None)


_warm_up()

# Everything imported and built so far is in the pre-initialized snapshot. Freezing it keeps
# the guest's garbage collector from ever scanning (and so writing to) those objects again:
# each launch starts from a copy-on-write image, and collections walking the baked-in heap
# would copy most of its pages into the fresh instance, at every launch and during the run.
gc.collect()
gc.freeze()
