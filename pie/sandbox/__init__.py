"""The inferlet sandbox: wasmtime guests hosted on the controller's event loop.

* `abi`: pre-bound canonical-ABI converters, host-function registration, fiber driving.
* `host`: the host side of the `pie:inferlet` WIT world (`sdk/wit/inferlet.wit`).
* `sandbox`: the engine, limits and WASI policy, running one guest per process.
* `runner`: building and caching the generic Python runner component.
* `grammar`: host-side grammars and matchers for constrained decoding.
* `package`: checking and packing Python inferlets (`pie build`).
* `testing`: an in-process fake engine for tests and benchmarks.

`pie/processes.py` is the only caller outside this package.
"""
