"""Pie's configuration: the schema of `~/.pie/config.toml` as typed msgspec Structs.

Owns everything about the file: loading (`load_config`), validation (`parse_config`), the
built-in default (`default_config`), writing (`dump_config`, `write_config`), dot-path edits
(`set_value`, `infer_value`) and the migration error for files in the old schema. Called by
the CLI (`pie config`, `pie serve`, `pie doctor`) and by the controller at boot. Validation
happens once, here, at the edge: code that is handed a `PieConfig` trusts it.

Every user mistake surfaces as one `ConfigError` whose message is the single line to show:
it names the file, each offending key and what to do.
"""

from __future__ import annotations

import ast
import copy
import difflib
import functools
import inspect
import ipaddress
import itertools
import json
import math
import os
import re
import tempfile
import textwrap
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import msgspec

from pie import paths

__all__ = [
    "AuthConfig",
    "ConfigError",
    "CudaNativeOptions",
    "DriverConfig",
    "DummyOptions",
    "ModelConfig",
    "PieConfig",
    "PortableOptions",
    "RuntimeConfig",
    "SchedulerConfig",
    "ServerConfig",
    "TelemetryConfig",
    "default_config",
    "describe_keys",
    "dump_config",
    "infer_value",
    "load_config",
    "parse_config",
    "retarget_driver_options",
    "set_value",
    "unset_value",
    "write_config",
]

DEFAULT_MODEL_NAME = "default"
DEFAULT_HF_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"

BatchPolicy = Literal["adaptive", "eager", "greedy"]
DriverType = Literal["portable", "cuda_native", "dummy", "dev", "vllm", "sglang"]
ActivationDtype = Literal["float32", "float16", "bfloat16"]
OmpWaitPolicy = Literal["passive", "active"]
RuntimeQuant = Literal["", "int8", "bf16"]

EMBEDDED_DRIVERS = ("portable", "cuda_native", "dummy")
PYTHON_DRIVERS = ("dev", "vllm", "sglang")


class ConfigError(Exception):
    """A configuration the user must fix; `str(err)` is the one line to show them."""

    def __init__(self, message: str, issues: list[str] | None = None) -> None:
        super().__init__(message)
        self.issues: list[str] = list(issues or [message])


# --------------------------------------------------------------------------------------------
# Schema. Each field's docstring is its documentation: `pie config init` writes it as a
# comment above the key.


class ServerConfig(msgspec.Struct, kw_only=True):
    """[server]: the WebSocket front end."""

    host: str = "127.0.0.1"
    """Bind address for the WebSocket server."""
    port: int = 8080
    """TCP port for client connections."""
    verbose: bool = False
    """Enable engine diagnostics (also reachable via `pie serve --debug`)."""
    registry: str = "https://registry.pie-project.org/"
    """Inferlet registry fetched from when `pie run <name>` is used without a path."""
    python_snapshot: bool = True
    """Start Python inferlets from the pre-initialized runner snapshot (skips interpreter init)."""
    max_concurrent_processes: int | None = None
    """Cap on simultaneously running inferlets; extra launches wait for a slot. Unset: no cap."""


class AuthConfig(msgspec.Struct, kw_only=True):
    """[auth]: client authentication."""

    enabled: bool = True
    """Require client public-key auth on the WebSocket (keys: `pie auth add|remove|list`)."""


class TelemetryConfig(msgspec.Struct, kw_only=True):
    """[telemetry]: OpenTelemetry export."""

    enabled: bool = False
    """Emit OpenTelemetry traces and metrics."""
    endpoint: str = "http://localhost:4317"
    """OTLP gRPC endpoint."""
    service_name: str = "pie"
    """Service name reported in spans."""


def _cpu_count() -> int:
    return os.cpu_count() or 1


def _default_scratch_dir() -> str:
    return os.path.join(tempfile.gettempdir(), "pie")


class RuntimeConfig(msgspec.Struct, kw_only=True):
    """[runtime]: the inferlet sandbox: instance pool, security policy, upload limits."""

    worker_threads: int = msgspec.field(default_factory=_cpu_count)
    """Threads of the controller's worker pool (default: the number of CPUs)."""
    wasm_max_instances: int = 1000
    """Maximum number of concurrently instantiated inferlets."""
    wasm_max_memory_mb: int = 4096
    """Maximum linear memory per inferlet instance, in MiB."""
    wasm_warm_memory_mb: int = 0
    """Accepted for compatibility with existing configs; no effect (nothing is pre-mapped: idle
    instances are kept whole instead, see wasm_warm_slots)."""
    wasm_warm_slots: int = 100
    """Idle inferlet instances kept for reuse: a later launch of the same program by the same
    user runs on one (fresh program state, no instantiation); 0 gives every launch a fresh one."""
    allow_fs: bool = False
    """Give every inferlet a private /scratch directory under fs_scratch_dir."""
    fs_scratch_dir: str = msgspec.field(default_factory=_default_scratch_dir)
    """Host root for per-process /scratch directories (default: <tempdir>/pie)."""
    allow_network: bool = True
    """Allow inferlets to open sockets (filtered by network_allowed_hosts)."""
    network_allowed_hosts: list[str] = msgspec.field(default_factory=lambda: ["*"])
    """Hosts inferlet sockets may reach: names, CIDRs or host:port forms; "*" allows all."""
    max_upload_mb: int = 256
    """Largest single chunked upload the server accepts, in MiB."""
    controller_nice: int | None = None
    """Niceness added to the controller's event-loop thread (it runs the scheduler and every
    inferlet) once the workers are up, 0-19; unset: 10 when a model runs on the CPU, else 0."""


class SchedulerConfig(msgspec.Struct, kw_only=True):
    """[model.scheduler]: batch firing and the per-process page market."""

    batch_policy: BatchPolicy = "adaptive"
    """When to fire a batch: "adaptive", "eager" or "greedy"."""
    request_timeout_secs: float = 120.0
    """Maximum wall time of one inference request before it is failed."""
    default_token_limit: int | None = None
    """Per-process compute cap in tokens when the launch does not give one. Unset: no cap."""
    default_endowment_pages: int = 64
    """Per-process initial endowment in KV pages (its claim weight under contention)."""
    admission_oversubscription_factor: float = 4.0
    """Admit processes while the sum of endowments <= total_pages x this factor."""
    restore_pause_at_utilization: float = 0.85
    """Pause restoring suspended processes above this KV page utilization, in (0, 1]."""


class DriverConfig(msgspec.Struct, kw_only=True):
    """[model.driver]: which driver runs the model, on which devices, and its options."""

    type: DriverType
    """Driver: portable, cuda_native, dummy (embedded) or dev, vllm, sglang (subprocess)."""
    device: list[str]
    """Devices of this model, e.g. ["cuda:0", "cuda:1"] or ["cpu"]; disjoint across models."""
    tensor_parallel_size: int = 1
    """Tensor-parallel world size; devices form len(device) / this data-parallel groups."""
    activation_dtype: ActivationDtype = "bfloat16"
    """Activation dtype of forward passes: float32, float16 or bfloat16."""
    random_seed: int = 42
    """Seed of the samplers."""
    options: dict[str, Any] = {}
    """Driver-specific knobs in the driver's own vocabulary ([model.driver.options])."""

    @property
    def embedded(self) -> bool:
        """True for drivers that run inside Pie's own worker processes."""
        return self.type in EMBEDDED_DRIVERS

    def typed_options(self) -> PortableOptions | CudaNativeOptions | DummyOptions | None:
        """The options of an embedded driver as its typed struct (defaults filled in).

        None for subprocess drivers, whose options are passed through untouched.
        """
        cls = OPTIONS_BY_DRIVER.get(self.type)
        return None if cls is None else msgspec.convert(self.options, cls)

    def option(self, name: str, default: Any = None) -> Any:
        """One driver option: the configured value, else the driver's default, else `default`."""
        if name in self.options:
            return self.options[name]
        typed = self.typed_options()
        if typed is not None and name in typed.__struct_fields__:
            return getattr(typed, name)
        return default

    @property
    def groups(self) -> list[list[str]]:
        """The data-parallel device groups: consecutive runs of tensor_parallel_size devices.

        A lone "cpu" hosts every tensor-parallel rank itself: one group of that many ranks.
        """
        tp = self.tensor_parallel_size
        if self.device == ["cpu"]:
            return [["cpu"] * tp]
        return [self.device[i : i + tp] for i in range(0, len(self.device), tp)]


class ModelConfig(msgspec.Struct, kw_only=True):
    """One [[model]] block: a model served under a name."""

    name: str
    """Lookup key for Model.load("<name>"); unique. The first [[model]] is the default."""
    hf_repo: str
    """HuggingFace repo id, local snapshot directory or .gguf file to load."""
    scheduler: SchedulerConfig = msgspec.field(default_factory=SchedulerConfig)
    """Batch firing and per-process admission/market knobs."""
    driver: DriverConfig
    """The driver that runs this model and the devices it runs on."""


class PieConfig(msgspec.Struct, kw_only=True):
    """The whole configuration file."""

    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    telemetry: TelemetryConfig = msgspec.field(default_factory=TelemetryConfig)
    runtime: RuntimeConfig = msgspec.field(default_factory=RuntimeConfig)
    models: list[ModelConfig] = msgspec.field(name="model")
    """One or more models; the first is the implicit default."""

    @property
    def default_model(self) -> ModelConfig:
        return self.models[0]

    def model(self, name: str | None = None) -> ModelConfig:
        """The model called `name` (the default model when None)."""
        if name is None:
            return self.models[0]
        for m in self.models:
            if m.name == name:
                return m
        known = ", ".join(m.name for m in self.models)
        raise ConfigError(f"no model named {name!r} in the config (configured: {known}).")


# --------------------------------------------------------------------------------------------
# Options of the embedded drivers ([model.driver.options]); unknown keys are errors.


class _EmbeddedOptions(msgspec.Struct, kw_only=True):
    """[model.driver.options] knobs shared by every embedded driver (Pie's own workers)."""

    kv_page_size: int = 16
    """Tokens per KV cache page."""
    host_pages: int | None = None
    """Host-memory slots for suspended (swapped-out) pages; unset: total_pages / 4."""
    max_batch_tokens: int = 10240
    """Maximum tokens across all requests of one batch."""
    max_batch_size: int = 512
    """Maximum requests in one batch."""
    max_dist_size: int = 32
    """Largest top-k distribution a sampler may ask for."""
    max_model_len: int | None = None
    """Longest sequence a context may reach; unset: the model's context length."""
    num_threads: int = 1
    """Torch intra-op threads of each worker process."""
    omp_wait_policy: OmpWaitPolicy = "passive"
    """OpenMP wait policy of the worker: "passive" holds up under load, "active" spins."""
    spin_us: int = 100
    """Microseconds a ring wait spins before parking (0: park at once)."""
    ring_slots: int = 8
    """Slots per worker ring (batches in flight)."""
    ring_slot_bytes: int = 8 << 20
    """Bytes per ring slot: the largest batch descriptor or result."""


class PortableOptions(_EmbeddedOptions, kw_only=True):
    """[model.driver.options] of the portable (plain torch, CPU or GPU) driver."""

    total_pages: int | None = None
    """KV cache pages; unset: 1024 on CPU, sized from gpu_mem_utilization on a GPU."""
    gpu_mem_utilization: float = 0.85
    """On a GPU: fraction of device memory for weights plus KV cache, in (0, 1]."""
    runtime_quant: RuntimeQuant = ""
    """Weight quantization applied at load: "" keeps activation_dtype weights; "int8" (CPU with
    float32 activations only) runs the projections and LM head on int8 weights with per-token
    activation scales: about 4x less weight memory and a faster forward step; "bf16" (CPU with
    float32 activations only) runs them on prepacked bfloat16 weights (fast on CPUs with AMX,
    closer to float32 than int8)."""


class CudaNativeOptions(_EmbeddedOptions, kw_only=True):
    """[model.driver.options] of the cuda_native (Triton) driver."""

    total_pages: int | None = None
    """KV cache pages; unset: as many as gpu_mem_utilization leaves room for."""
    gpu_mem_utilization: float = 0.85
    """Fraction of device memory for weights plus KV cache, in (0, 1]."""


class DummyOptions(_EmbeddedOptions, kw_only=True):
    """[model.driver.options] of the dummy driver (random logits, no model)."""

    total_pages: int = 1024
    """KV cache pages the dummy worker pretends to have."""
    vocab_size: int = 49152
    """Vocabulary size of the random logits."""
    step_latency_us: int = 0
    """Simulated time of one forward step, in microseconds."""


OPTIONS_BY_DRIVER: dict[str, type[msgspec.Struct]] = {
    "portable": PortableOptions,
    "cuda_native": CudaNativeOptions,
    "dummy": DummyOptions,
}

# Options that must be >= 0 rather than > 0.
_NON_NEGATIVE_OPTIONS = {"spin_us", "step_latency_us"}


# --------------------------------------------------------------------------------------------
# Field documentation, read from the attribute docstrings above.


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a config Struct (and its bases): field name -> text."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not (isinstance(klass, type) and issubclass(klass, msgspec.Struct)):
            continue
        if klass is msgspec.Struct:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


# --------------------------------------------------------------------------------------------
# The old schema (reference: the previous configuration format) and where its keys went.

_SECTIONS = ("server", "auth", "telemetry", "runtime", "model")
_OPTION_KNOBS = (
    "kv_page_size",
    "max_batch_tokens",
    "max_batch_size",
    "gpu_mem_utilization",
    "max_dist_size",
    "max_num_embeds",
    "max_num_adapters",
    "max_adapter_rank",
    "adapter_path",
    "use_cuda_graphs",
)
_TOP_LEVEL_MOVES: dict[str, str] = {
    "host": "[server].host",
    "port": "[server].port",
    "verbose": "[server].verbose",
    "registry": "[server].registry",
    "enable_auth": "[auth].enabled",
    "primary_model": "nowhere: removed, the first [[model]] is the implicit default",
    "allow_filesystem": "[runtime].allow_fs",
    **{k: f"[model.driver.options].{k}" for k in _OPTION_KNOBS},
}
_SERVER_MOVES: dict[str, str] = {
    "primary_model": "nowhere: removed, the first [[model]] is the implicit default",
    "allow_filesystem": "[runtime].allow_fs",
    "enable_auth": "[auth].enabled",
}
_MODEL_MOVES: dict[str, str] = {
    "default_token_budget": "[model.scheduler].default_token_limit",
    "oversubscription_factor": "[model.scheduler].admission_oversubscription_factor",
    **{
        k: f"[model.scheduler].{k}"
        for k in (
            "default_token_limit",
            "default_endowment_pages",
            "admission_oversubscription_factor",
            "request_timeout_secs",
            "restore_pause_at_utilization",
            "batch_policy",
        )
    },
    **{
        k: f"[model.driver].{k}"
        for k in ("device", "tensor_parallel_size", "activation_dtype", "random_seed")
    },
    "weight_dtype": "nowhere: removed, weights are cast to [model.driver].activation_dtype",
    **{k: f"[model.driver.options].{k}" for k in _OPTION_KNOBS},
}


def _model_moves(entry: dict, label: str) -> list[str]:
    moves = [f"`{label}.{k}` -> {new}" for k, new in _MODEL_MOVES.items() if k in entry]
    sched = entry.get("scheduler")
    if isinstance(sched, dict) and "policy" in sched:
        moves.append(f"`{label}.scheduler.policy` -> [model.scheduler].batch_policy")
    driver = entry.get("driver")
    if isinstance(driver, dict):
        for k, v in driver.items():
            if k != "options" and isinstance(v, dict):
                moves.append(f"[{label}.driver.{k}] -> [model.driver.options]")
    return moves


def _old_schema_moves(data: dict) -> list[str]:
    """One 'old -> new' entry per key of the old schema found in `data`."""
    moves = [f"`{k}` -> {new}" for k, new in _TOP_LEVEL_MOVES.items() if k in data]
    server = data.get("server")
    if isinstance(server, dict):
        moves += [f"`server.{k}` -> {new}" for k, new in _SERVER_MOVES.items() if k in server]
    models = data.get("model")
    model_fields = set(ModelConfig.__struct_fields__)
    if isinstance(models, dict) and models and not (set(models) & model_fields):
        # [model.<name>] tables
        for name, entry in models.items():
            moves.append(f'[model.{name}] -> [[model]] with name = "{name}"')
            if isinstance(entry, dict):
                moves += _model_moves(entry, f"model.{name}")
    elif isinstance(models, list):
        for i, entry in enumerate(models):
            if isinstance(entry, dict):
                moves += _model_moves(entry, f"model.{i}")
    return moves


# --------------------------------------------------------------------------------------------
# Type checking against the schema, with messages that name the key.


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {json.dumps(value)}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _expected(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is bool:
        return "true or false"
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in typing.get_args(tp))
    if origin is list:
        return (
            f"a list of {_expected(typing.get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
        )
    if origin is dict or (isinstance(tp, type) and issubclass(tp, msgspec.Struct)):
        return "a table"
    return str(tp)


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _section_name(path: str) -> str:
    """`model.0.driver` -> `[model.driver]`; `` -> `the top level`."""
    if not path:
        return "the top level"
    return "[" + ".".join(p for p in path.split(".") if not p.isdigit()) + "]"


def _join(path: str, key: str | int) -> str:
    return f"{path}.{key}" if path else str(key)


def _check_value(value: Any, tp: Any, path: str, issues: list[str]) -> None:
    if value is None and _unwrap_optional(tp) is not tp:
        return  # an unset optional key (TOML cannot write it, builtins can)
    tp = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        if not isinstance(value, dict):
            issues.append(f"{path} must be a table, got {_describe(value)}")
            return
        _check_table(value, tp, path, issues)
        return
    ok: bool
    if tp is Any:
        ok = True
    elif tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif tp is str:
        ok = isinstance(value, str)
    elif origin is Literal:
        ok = isinstance(value, str) and value in typing.get_args(tp)
    elif origin is list:
        if not isinstance(value, list):
            ok = False
        else:
            (item_tp,) = typing.get_args(tp)
            for i, item in enumerate(value):
                _check_value(item, item_tp, _join(path, i), issues)
            return
    elif origin is dict:
        ok = isinstance(value, dict)
    else:  # pragma: no cover - schema uses only the types above
        raise AssertionError(f"unsupported schema type {tp!r}")
    if not ok:
        issues.append(f"{path} must be {_expected(tp)}, got {_describe(value)}")


def _check_table(table: dict, cls: type[msgspec.Struct], path: str, issues: list[str]) -> None:
    fields = {f.encode_name: f for f in msgspec.structs.fields(cls)}
    for key, value in table.items():
        f = fields.get(key)
        if f is None:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean `{close[0]}`?" if close else "known keys: " + ", ".join(fields)
            if cls is DriverConfig and key in _OPTION_KNOBS:
                hint = "driver knobs live in [model.driver.options]"
            issues.append(f"unknown key `{_join(path, key)}` in {_section_name(path)} ({hint})")
            continue
        _check_value(value, f.type, _join(path, key), issues)
    for key, f in fields.items():
        if f.required and key not in table:
            issues.append(f"`{_join(path, key)}` is required in {_section_name(path)}")
    if cls is DriverConfig and isinstance(table.get("options"), dict):
        opts_cls = OPTIONS_BY_DRIVER.get(table.get("type"))  # type: ignore[arg-type]
        if opts_cls is not None:
            opts_path = _join(path, "options")
            before = len(issues)
            _check_table(table["options"], opts_cls, opts_path, issues)
            # name the driver whose vocabulary the key is not in
            for i in range(before, len(issues)):
                if issues[i].startswith("unknown key"):
                    issues[i] = issues[i].replace(
                        f"in {_section_name(opts_path)}",
                        f"in {_section_name(opts_path)} for the {table['type']} driver",
                        1,
                    )
        elif table.get("type") in PYTHON_DRIVERS:
            for key in ("venv", "python"):
                if key in table["options"] and not isinstance(table["options"][key], str):
                    issues.append(
                        f"{_join(_join(path, 'options'), key)} must be a string, "
                        f"got {_describe(table['options'][key])}"
                    )


# --------------------------------------------------------------------------------------------
# Semantic validation of a typed config.

_DEVICE_RE = re.compile(r"^[a-z][a-z0-9_]*(:\d+)?$")


def _positive(
    issues: list[str], path: str, value: float | None, *, allow_zero: bool = False
) -> None:
    if value is None:
        return
    if allow_zero:
        if value < 0:
            issues.append(f"{path} must be >= 0, got {value}")
    elif not value > 0:
        issues.append(f"{path} must be > 0, got {value}")


def _host_pattern_problem(entry: str) -> str | None:
    """Why an allowed-host entry ("*", host, host:port, CIDR, CIDR:port) is malformed, or None."""
    if entry == "*":
        return None
    if not entry or any(c.isspace() for c in entry):
        return "must be a host, host:port, CIDR or CIDR:port without spaces"
    host, port = entry, None
    if entry.startswith("["):  # [v6]:port
        host, _, rest = entry[1:].partition("]")
        port = rest.removeprefix(":") or None
    elif entry.count(":") == 1:
        host, port = entry.split(":")
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        return f"has port {port!r}; use 1..65535"
    if "/" in host:
        try:
            ipaddress.ip_network(host, strict=False)
        except ValueError:
            return "is not a valid CIDR range (e.g. 10.0.0.0/8)"
    return None


def _validate(cfg: PieConfig) -> list[str]:
    issues: list[str] = []
    s = cfg.server
    if not 0 < s.port < 65536:
        issues.append(f"server.port must be in 1..65535, got {s.port}")
    _positive(issues, "server.max_concurrent_processes", s.max_concurrent_processes)
    r = cfg.runtime
    for key in ("worker_threads", "wasm_max_instances", "wasm_max_memory_mb", "max_upload_mb"):
        _positive(issues, f"runtime.{key}", getattr(r, key))
    for key in ("wasm_warm_memory_mb", "wasm_warm_slots"):
        _positive(issues, f"runtime.{key}", getattr(r, key), allow_zero=True)
    if r.controller_nice is not None and not 0 <= r.controller_nice <= 19:
        issues.append(f"runtime.controller_nice must be in 0..19 (0 leaves the controller's "
                      f"priority alone), got {r.controller_nice}")
    if not r.fs_scratch_dir:
        issues.append("runtime.fs_scratch_dir must not be empty")
    for i, entry in enumerate(r.network_allowed_hosts):
        problem = _host_pattern_problem(entry)
        if problem:
            issues.append(f"runtime.network_allowed_hosts.{i} {json.dumps(entry)} {problem}")
    if not s.host.strip():
        issues.append("server.host must not be empty")

    if not cfg.models:
        issues.append("at least one [[model]] block is required")
    seen_names: dict[str, int] = {}
    device_owner: dict[str, str] = {}
    for i, m in enumerate(cfg.models):
        p = f"model.{i}"
        if not m.name.strip():
            issues.append(f"{p}.name must not be empty")
        elif m.name in seen_names:
            issues.append(
                f"{p}.name {json.dumps(m.name)} is already used by model.{seen_names[m.name]}; "
                "model names must be unique"
            )
        else:
            seen_names[m.name] = i
        if not m.hf_repo.strip():
            issues.append(f"{p}.hf_repo must not be empty")

        sc = m.scheduler
        _positive(issues, f"{p}.scheduler.request_timeout_secs", sc.request_timeout_secs)
        _positive(issues, f"{p}.scheduler.default_token_limit", sc.default_token_limit)
        _positive(issues, f"{p}.scheduler.default_endowment_pages", sc.default_endowment_pages)
        f = sc.admission_oversubscription_factor
        if not (math.isfinite(f) and f > 0):
            issues.append(
                f"{p}.scheduler.admission_oversubscription_factor must be a finite number > 0, "
                f"got {f}"
            )
        u = sc.restore_pause_at_utilization
        if not 0 < u <= 1:
            issues.append(f"{p}.scheduler.restore_pause_at_utilization must be in (0, 1], got {u}")

        d = m.driver
        if not d.device:
            issues.append(f"{p}.driver.device must list at least one device")
        for dev in d.device:
            if not _DEVICE_RE.match(dev):
                issues.append(
                    f"{p}.driver.device has {json.dumps(dev)}, which is not a device name "
                    'like "cpu" or "cuda:0"'
                )
                continue
            key = "cuda:0" if dev == "cuda" else dev
            owner = device_owner.get(key)
            if owner == m.name:
                issues.append(f"{p}.driver.device lists {json.dumps(dev)} twice")
            elif owner is not None:
                issues.append(
                    f"{p}.driver.device {json.dumps(dev)} is already used by model "
                    f"{json.dumps(owner)}; device lists must be disjoint across models"
                )
            else:
                device_owner[key] = m.name
        tp = d.tensor_parallel_size
        if tp <= 0:
            issues.append(f"{p}.driver.tensor_parallel_size must be > 0, got {tp}")
        elif d.device and d.device != ["cpu"] and len(d.device) % tp:
            issues.append(
                f"{p}.driver.tensor_parallel_size {tp} does not divide the {len(d.device)} "
                "devices of driver.device"
            )
        if d.random_seed < 0:
            issues.append(f"{p}.driver.random_seed must be >= 0, got {d.random_seed}")
        typed = d.typed_options()
        if typed is not None:
            for name in typed.__struct_fields__:
                value = getattr(typed, name)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    _positive(
                        issues,
                        f"{p}.driver.options.{name}",
                        value,
                        allow_zero=name in _NON_NEGATIVE_OPTIONS,
                    )
            quant = getattr(typed, "runtime_quant", "")
            if quant in ("int8", "bf16"):
                if d.activation_dtype != "float32":
                    issues.append(
                        f'{p}.driver.options.runtime_quant "{quant}" needs '
                        f'{p}.driver.activation_dtype "float32", got '
                        f"{json.dumps(d.activation_dtype)}; set one of the two differently "
                        '(runtime_quant = "" keeps the weights in activation_dtype)'
                    )
                if any(_DEVICE_RE.match(dev) and dev.split(":")[0] != "cpu" for dev in d.device):
                    issues.append(
                        f'{p}.driver.options.runtime_quant "{quant}" runs on CPU only; set it to '
                        f'"" for {p}.driver.device {json.dumps(d.device)}'
                    )
            util = getattr(typed, "gpu_mem_utilization", None)
            if util is not None and not 0 < util <= 1:
                issues.append(
                    f"{p}.driver.options.gpu_mem_utilization must be in (0, 1], got {util}"
                )
    return issues


# --------------------------------------------------------------------------------------------
# Parse, load, default.


def _normalize(data: dict) -> dict:
    """Accepted shorthands, applied before type checking: a single device string -> list."""
    data = copy.deepcopy(data)
    models = data.get("model")
    if isinstance(models, list):
        for entry in models:
            driver = entry.get("driver") if isinstance(entry, dict) else None
            if isinstance(driver, dict) and isinstance(driver.get("device"), str):
                driver["device"] = [driver["device"]]
    return data


def parse_config(data: dict, source: str = "<config>") -> PieConfig:
    """Validate a parsed TOML document and build the typed config.

    `source` names the file in error messages. Raises `ConfigError` with one line naming every
    offending key: keys of the old schema (with their new location), unknown keys, wrong
    types, and values out of range.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a TOML table, got {_describe(data)}.")
    moves = _old_schema_moves(data)
    if moves:
        raise ConfigError(
            f"{source} uses the old config schema: "
            + "; ".join(moves)
            + ". Move each key to its new location, or run `pie config init --force` to write a "
            "fresh file in the new shape.",
            moves,
        )
    data = _normalize(data)
    issues: list[str] = []
    models = data.get("model")
    if "model" not in data:
        issues.append("at least one [[model]] block is required")
    elif isinstance(models, dict):
        issues.append("[model] must be an array of tables: write [[model]] instead of [model]")
        data = {k: v for k, v in data.items() if k != "model"}
    if "model" not in data:
        data = {**data, "model": []}
    _check_table(data, PieConfig, "", issues)
    if not issues:
        cfg = msgspec.convert(data, PieConfig)
        issues = _validate(cfg)
    if issues:
        raise ConfigError(
            f"Invalid config {source}: "
            + "; ".join(issues)
            + ". Edit the file or use `pie config set KEY VALUE`.",
            issues,
        )
    return cfg


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def controller_nice(cfg: PieConfig) -> int:
    """The niceness the controller adds to its event-loop thread (`runtime.controller_nice`).

    Unset, it is 10 when a worker runs on the CPU: the worker's forward pass then shares the
    controller's cores, and a controller that takes a core the moment it wakes stalls every
    thread of the pass (they meet at each barrier). Lowered, the controller's work (inferlet
    steps, launches) fills the gaps where the pass runs on one thread, while its replies stay
    prompt whenever a core is idle.
    """
    if cfg.runtime.controller_nice is not None:
        return cfg.runtime.controller_nice
    on_cpu = any(d.split(":")[0] == "cpu" for m in cfg.models for d in m.driver.device)
    return 10 if on_cpu else 0


def default_config(cuda: bool | None = None) -> PieConfig:
    """What `pie config init` writes: the bundled default model on this machine's device.

    With CUDA: `cuda:0`, the cuda_native driver, bfloat16. Without: `cpu`, the portable
    driver, float32 activations (bf16 is slower and less exact on CPUs without AMX) and int8
    weights (`runtime_quant = "int8"`). Auth is off.
    """
    if cuda is None:
        cuda = _cuda_available()
    if cuda:
        driver = DriverConfig(
            type="cuda_native",
            device=["cuda:0"],
            activation_dtype="bfloat16",
            options={"gpu_mem_utilization": 0.85, "max_batch_tokens": 10240, "max_batch_size": 512},
        )
    else:
        driver = DriverConfig(
            type="portable",
            device=["cpu"],
            activation_dtype="float32",
            options={
                "kv_page_size": 16,
                "total_pages": 1024,
                "max_batch_tokens": 10240,
                "max_batch_size": 512,
                # measured best end to end on 2 cores (bench/RESULTS.md); passive keeps two
                # threads from collapsing when other jobs load the machine
                "num_threads": 2,
                "omp_wait_policy": "passive",
                # int8 projections and LM head: decode 1.5-1.85x the float32 speed at 32-64
                # sequences, top-1 agreement with float32 ~88% (bench/RESULTS.md, "int8 weights")
                "runtime_quant": "int8",
            },
        )
    return PieConfig(
        auth=AuthConfig(enabled=False),
        models=[ModelConfig(name=DEFAULT_MODEL_NAME, hf_repo=DEFAULT_HF_REPO, driver=driver)],
    )


def read_toml(path: str | Path) -> dict:
    """The raw TOML document at `path`; a missing or malformed file is a `ConfigError`."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist; create it with `pie config init --path {path}`."
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}.") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(
            f"{path} is not valid TOML ({e}); fix the syntax or run `pie config init --force`."
        ) from None


def load_config(path: str | Path | None = None) -> PieConfig:
    """Load and validate a config file (default `<PIE_HOME>/config.toml`).

    When no path is given and the default file does not exist, the built-in default (what
    `pie config init` would write) is returned. An explicit path must exist.
    """
    if path is None:
        path = paths.config_path()
        if not path.exists():
            return default_config()
    path = Path(path).expanduser()
    return parse_config(read_toml(path), str(path))


# --------------------------------------------------------------------------------------------
# Writing TOML. `tomllib` only reads; the config needs scalars, lists, tables, arrays of
# tables and (for driver options) inline tables, which this small emitter covers.

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _toml_string(key)


def _toml_string(s: str) -> str:
    # JSON string escapes are a subset of TOML basic-string escapes; DEL must be escaped too.
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value: Any) -> str:
    """One value as TOML text (inline form for lists and tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return (
            "{ " + ", ".join(f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
        )
    raise ConfigError(f"cannot write a value of type {type(value).__name__} to TOML.")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _child_schema(cls: type | None, key: str, table: dict) -> type | None:
    if cls is None:
        return None
    if cls is DriverConfig and key == "options":
        return OPTIONS_BY_DRIVER.get(table.get("type"))  # type: ignore[arg-type]
    for f in msgspec.structs.fields(cls):
        if f.encode_name == key:
            tp = _unwrap_optional(f.type)
            if typing.get_origin(tp) is list:
                tp = typing.get_args(tp)[0]
            return tp if isinstance(tp, type) and issubclass(tp, msgspec.Struct) else None
    return None


_MACHINE_DEFAULTS: dict[tuple[type, str], Any] = {
    (RuntimeConfig, "worker_threads"): _cpu_count,
    (RuntimeConfig, "fs_scratch_dir"): _default_scratch_dir,
}


def _emit_table(
    lines: list[str], path: list[str], table: dict, header: str | None, schema: type | None
) -> None:
    docs = field_docs(schema) if schema is not None else {}
    if header is not None:
        if lines:
            lines.append("")
        lines.append(header)
    nested = [(k, v) for k, v in table.items() if isinstance(v, dict) and schema is not None]
    nested_keys = {k for k, _ in nested}
    arrays = [(k, v) for k, v in table.items() if _is_table_array(v) and k not in nested_keys]
    array_keys = {k for k, _ in arrays}
    for key, value in table.items():
        if key in nested_keys or key in array_keys:
            continue
        doc = docs.get(key)
        if doc:
            lines.extend("# " + line for line in textwrap.wrap(doc, 96))
        if value is None:
            lines.append(f"# {_toml_key(key)} is unset")
            continue
        machine_default = _MACHINE_DEFAULTS.get((schema, key)) if schema is not None else None
        text = f"{_toml_key(key)} = {toml_value(value)}"
        lines.append("# " + text if machine_default and value == machine_default() else text)
    for key, value in nested:
        sub = path + [key]
        _emit_table(
            lines,
            sub,
            value,
            f"[{'.'.join(map(_toml_key, sub))}]",
            _child_schema(schema, key, table),
        )
    for key, items in arrays:
        sub = path + [key]
        for item in items:
            _emit_table(
                lines,
                sub,
                item,
                f"[[{'.'.join(map(_toml_key, sub))}]]",
                _child_schema(schema, key, table),
            )


def dump_toml(data: dict, schema: type | None = PieConfig) -> str:
    """A config-shaped TOML document as text, with each known key's documentation as a comment."""
    lines: list[str] = []
    _emit_table(lines, [], data, None, schema)
    return "\n".join(lines) + "\n"


def dump_config(cfg: PieConfig) -> str:
    """The config as TOML text that `parse_config` reads back to an equal config.

    Keys whose default depends on the machine (worker_threads, fs_scratch_dir) are written as
    comments while they hold that default, so the file stays portable.
    """
    return dump_toml(msgspec.to_builtins(cfg))


def write_config(cfg: PieConfig | str, path: str | Path) -> Path:
    """Write a config (or its TOML text) to `path` atomically; returns the path."""
    path = Path(path).expanduser()
    text = cfg if isinstance(cfg, str) else dump_config(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------------
# `pie config set KEY VALUE`: dot paths and value inference.

_INT_RE = re.compile(r"^[+-]?\d+$")
_FLOAT_RE = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$")


def infer_value(raw: str) -> Any:
    """A command-line value as TOML would type it.

    `true`/`false` -> bool, integers -> int, decimals/exponents -> float, `[...]` -> a TOML
    array, `{...}` -> a TOML inline table, a double-quoted string -> that string, `a,b` -> a
    list of inferred items, anything else -> the string itself.
    """
    text = raw.strip()
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if _INT_RE.match(text):
        return int(text)
    if _FLOAT_RE.match(text):
        return float(text)
    if (
        (text.startswith("[") and text.endswith("]"))
        or (text.startswith("{") and text.endswith("}"))
        or (len(text) >= 2 and text.startswith('"') and text.endswith('"'))
    ):
        try:
            return tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            return raw
    if "," in text:
        return [infer_value(part) for part in text.split(",")]
    return raw


def _schema_type_at(data: dict, segments: list[str]) -> Any:
    """The schema type of the key at `segments` in a config document, or None if unknown."""
    cls: Any = PieConfig
    node: Any = data
    tp: Any = None
    for seg in segments:
        if isinstance(cls, type) and issubclass(cls, msgspec.Struct):
            if cls is DriverConfig and seg == "options":
                tp = OPTIONS_BY_DRIVER.get(node.get("type") if isinstance(node, dict) else None)
            else:
                fields = {f.encode_name: f for f in msgspec.structs.fields(cls)}
                if seg not in fields:
                    return None
                tp = _unwrap_optional(fields[seg].type)
        elif typing.get_origin(cls) is list and seg.isdigit():
            tp = typing.get_args(cls)[0]
        else:
            return None
        cls = tp
        node = (
            node.get(seg)
            if isinstance(node, dict)
            else (
                node[int(seg)]
                if isinstance(node, list) and seg.isdigit() and int(seg) < len(node)
                else None
            )
        )
        if cls is None:
            return None
    return tp


def _coerce(raw: str, tp: Any) -> Any:
    if tp is str or typing.get_origin(tp) is Literal:
        return raw
    if typing.get_origin(tp) is list:
        (item_tp,) = typing.get_args(tp)
        text = raw.strip()
        if text.startswith("["):
            return infer_value(text)
        if not text:
            return []
        return [_coerce(part.strip(), item_tp) for part in text.split(",")]
    value = infer_value(raw)
    if tp is float and isinstance(value, int):
        return float(value)
    if tp is float and raw.strip().lower() in ("inf", "-inf", "+inf", "nan"):
        return float(raw)
    return value


def set_value(data: dict, key: str, raw: str) -> dict:
    """A copy of the config document `data` with the dot-path `key` set from the string `raw`.

    Numeric segments index arrays (`model.0.hf_repo`); the value is typed by the schema where
    the key is known (strings stay strings, list keys split on commas) and by `infer_value`
    elsewhere. The result is not validated: pass it to `parse_config`.
    """
    segments = key.split(".")
    if not key or any(not s for s in segments):
        raise ConfigError(f"{key!r} is not a config key; use a dot path such as server.port.")
    if segments[0] not in _SECTIONS:
        raise ConfigError(
            f"{key!r} is not under a config section; keys start with one of "
            f"{', '.join(_SECTIONS)} (e.g. server.{segments[0]})."
        )
    data = copy.deepcopy(data)
    value = _coerce(raw, _schema_type_at(data, segments))
    node: Any = data
    for i, seg in enumerate(segments[:-1]):
        nxt_is_index = segments[i + 1].isdigit()
        where = ".".join(segments[: i + 1])
        if isinstance(node, list):
            if not seg.isdigit():
                raise ConfigError(f"{where} indexes a list; use a number, e.g. model.0.")
            idx = int(seg)
            if idx > len(node):
                raise ConfigError(
                    f"{where}: index {idx} is past the end of the list ({len(node)} entries)."
                )
            if idx == len(node):
                node.append({})
            node = node[idx]
        elif isinstance(node, dict):
            if seg not in node or node[seg] is None:
                node[seg] = [] if nxt_is_index else {}
            node = node[seg]
        else:
            raise ConfigError(f"{where} is a value, not a table; cannot set {key}.")
    last = segments[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) > len(node):
            raise ConfigError(f"{key}: not a valid index into a list of {len(node)} entries.")
        if int(last) == len(node):
            node.append(value)
        else:
            node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"{'.'.join(segments[:-1])} is a value, not a table; cannot set {key}.")
    return data


def unset_value(data: dict, key: str) -> dict:
    """A copy of the config document `data` without the key at dot-path `key`.

    The key falls back to its default (an optional key becomes unset); removing a list entry
    (`model.1`) removes that whole block. Raises `ConfigError` if the key is not in `data`.
    """
    segments = key.split(".")
    data = copy.deepcopy(data)
    node: Any = data
    for seg in segments[:-1]:
        if isinstance(node, list) and seg.isdigit() and int(seg) < len(node):
            node = node[int(seg)]
        elif isinstance(node, dict) and seg in node:
            node = node[seg]
        else:
            raise ConfigError(f"{key} is not set in the config; nothing to unset.")
    last = segments[-1]
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        del node[int(last)]
    elif isinstance(node, dict) and last in node:
        del node[last]
    else:
        raise ConfigError(f"{key} is not set in the config; nothing to unset.")
    return data


def retarget_driver_options(data: dict, model_index: int) -> list[str]:
    """Drop the options of model `model_index` that its (new) embedded driver does not know.

    Used after changing `driver.type`, so that switching portable -> cuda_native does not
    leave the old driver's knobs behind as unknown keys. Edits `data` in place; returns the
    dropped keys.
    """
    driver = data["model"][model_index].get("driver", {})
    cls = OPTIONS_BY_DRIVER.get(driver.get("type"))
    options = driver.get("options")
    if cls is None or not isinstance(options, dict):
        return []
    dropped = [k for k in options if k not in cls.__struct_fields__]
    for k in dropped:
        del options[k]
    return dropped


def _default_text(f: msgspec.structs.FieldInfo) -> str | None:
    """A field's default as TOML-ish text; None for nested tables."""
    if f.required:
        return "required"
    if f.default_factory is not msgspec.NODEFAULT:
        if (f.encode_name, f.default_factory) == ("worker_threads", _cpu_count):
            return "number of CPUs"
        if f.default_factory is _default_scratch_dir:
            return '"<tempdir>/pie"'
        value = f.default_factory()
        if isinstance(value, msgspec.Struct):
            return None
    else:
        value = f.default
    return "unset" if value is None else toml_value(value)


def describe_keys() -> list[tuple[str, str, str]]:
    """Every config key as (dot path, default, description), generated from the schema.

    Model keys are shown under `model.0`; driver options per embedded driver under
    `model.0.driver.options (<driver>)`.
    """
    sections: list[tuple[str, type]] = [
        ("server", ServerConfig),
        ("auth", AuthConfig),
        ("telemetry", TelemetryConfig),
        ("runtime", RuntimeConfig),
        ("model.0", ModelConfig),
        ("model.0.scheduler", SchedulerConfig),
        ("model.0.driver", DriverConfig),
    ]
    rows = []
    for prefix, cls in sections:
        docs = field_docs(cls)
        for f in msgspec.structs.fields(cls):
            default = _default_text(f)
            if default is not None and f.encode_name != "options":
                rows.append((f"{prefix}.{f.encode_name}", default, docs.get(f.name, "")))
    for driver, cls in OPTIONS_BY_DRIVER.items():
        docs = field_docs(cls)
        for f in msgspec.structs.fields(cls):
            rows.append(
                (
                    f"model.0.driver.options.{f.encode_name} ({driver})",
                    _default_text(f) or "",
                    docs.get(f.name, ""),
                )
            )
    return rows
