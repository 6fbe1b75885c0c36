"""`set_value` / `infer_value` (the engine of `pie config set`) and the TOML writer."""

from __future__ import annotations

import tomllib

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pie.config import (
    ConfigError,
    default_config,
    dump_config,
    dump_toml,
    infer_value,
    parse_config,
    set_value,
    toml_value,
)

FAST = settings(max_examples=60, deadline=None)


def base() -> dict:
    return msgspec.to_builtins(default_config(cuda=False))


# ----------------------------------------------------------------------------- inference


@FAST
@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_integers_infer_as_int(i: int) -> None:
    assert infer_value(str(i)) == i and type(infer_value(str(i))) is int


@FAST
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_floats_infer_as_float(f: float) -> None:
    text = repr(f)
    value = infer_value(text)
    assert type(value) is float and value == f


@FAST
@given(st.booleans(), st.sampled_from([str.lower, str.upper, str.title]))
def test_booleans_infer_case_insensitively(b: bool, case) -> None:
    assert infer_value(case(str(b))) is b


@FAST
@given(st.lists(st.integers(min_value=0, max_value=10**6), min_size=2, max_size=6))
def test_comma_lists_infer_item_types(items: list[int]) -> None:
    assert infer_value(",".join(map(str, items))) == items


WORD = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_characters=',[]"'),
    min_size=1,
    max_size=12,
)


def _is_plain(s: str) -> bool:
    if s.lower() in ("true", "false"):
        return False
    try:
        float(s)
        return False
    except ValueError:
        return True


@FAST
@given(WORD.filter(_is_plain))
def test_other_text_stays_a_string(s: str) -> None:
    assert infer_value(s) == s


def test_bracket_and_quote_forms() -> None:
    assert infer_value('["a", 1, true]') == ["a", 1, True]
    assert infer_value('"8080"') == "8080"
    assert infer_value("cuda:0,cuda:1") == ["cuda:0", "cuda:1"]
    assert infer_value("[not toml") == "[not toml"
    assert infer_value("inf") == "inf"


# ----------------------------------------------------------------------------- set_value


def test_set_is_schema_directed() -> None:
    data = set_value(base(), "model.0.hf_repo", "12345")
    assert data["model"][0]["hf_repo"] == "12345"  # a string field stays a string
    data = set_value(base(), "model.0.driver.device", "cuda:0,cuda:1")
    assert data["model"][0]["driver"]["device"] == ["cuda:0", "cuda:1"]
    data = set_value(base(), "model.0.driver.device", "cpu")
    assert data["model"][0]["driver"]["device"] == ["cpu"]
    data = set_value(base(), "runtime.network_allowed_hosts", "*")
    assert data["runtime"]["network_allowed_hosts"] == ["*"]
    data = set_value(base(), "model.0.scheduler.admission_oversubscription_factor", "3")
    value = data["model"][0]["scheduler"]["admission_oversubscription_factor"]
    assert value == 3.0 and type(value) is float
    data = set_value(base(), "auth.enabled", "true")
    assert data["auth"]["enabled"] is True


def test_set_creates_missing_tables_and_appends_models() -> None:
    data = {
        "model": [{"name": "a", "hf_repo": "r", "driver": {"type": "portable", "device": "cpu"}}]
    }
    data = set_value(data, "model.0.driver.options.num_threads", "2")
    assert data["model"][0]["driver"]["options"] == {"num_threads": 2}
    data = set_value(data, "server.port", "1234")
    data = set_value(data, "model.1.name", "b")
    data = set_value(data, "model.1.hf_repo", "r2")
    data = set_value(data, "model.1.driver.type", "dummy")
    data = set_value(data, "model.1.driver.device", "cuda:3")
    cfg = parse_config(data, "x")
    assert cfg.server.port == 1234 and [m.name for m in cfg.models] == ["a", "b"]
    assert cfg.models[0].driver.option("num_threads") == 2


def test_set_does_not_mutate_its_input() -> None:
    data = base()
    set_value(data, "server.port", "1")
    assert data["server"]["port"] == 8080


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("port", "not under a config section"),
        ("", "not a config key"),
        ("server..port", "not a config key"),
        ("model.5.name", "past the end"),
        ("model.x.name", "indexes a list"),
        ("server.port.x", "is a value, not a table"),
    ],
)
def test_set_rejects_bad_paths(key: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        set_value(base(), key, "1")


@FAST
@given(st.integers(min_value=-70000, max_value=140000))
def test_port_round_trip_through_set_and_toml(port: int) -> None:
    data = set_value(base(), "server.port", str(port))
    if 0 < port < 65536:
        cfg = parse_config(tomllib.loads(dump_toml(data)), "x")
        assert cfg.server.port == port
    else:
        with pytest.raises(ConfigError, match="server.port must be in 1..65535"):
            parse_config(data, "x")


@FAST
@given(st.floats(min_value=1e-6, max_value=1.0))
def test_utilization_round_trip(u: float) -> None:
    data = set_value(base(), "model.0.scheduler.restore_pause_at_utilization", repr(u))
    cfg = parse_config(tomllib.loads(dump_toml(data)), "x")
    assert cfg.models[0].scheduler.restore_pause_at_utilization == u


# ----------------------------------------------------------------------------- TOML writer

TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=20)
HOSTS = st.sampled_from(
    ["*", "127.0.0.1", "10.0.0.0/8", "10.0.0.0/8:443", "example.com:80", "[::1]:443", "::1"]
)
SCALAR = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    TEXT,
)


@FAST
@given(
    st.dictionaries(TEXT.filter(bool), st.one_of(SCALAR, st.lists(SCALAR, max_size=4)), max_size=5)
)
def test_toml_values_round_trip(table: dict) -> None:
    text = "\n".join(f"{toml_value(k)} = {toml_value(v)}" for k, v in table.items())
    assert tomllib.loads(text) == table


@FAST
@given(
    host=TEXT.filter(str.strip),
    hosts=st.lists(HOSTS, max_size=3),
    threads=st.integers(min_value=1, max_value=256),
    seed=st.integers(min_value=0, max_value=2**32),
    limit=st.one_of(st.none(), st.integers(min_value=1, max_value=10**9)),
    options=st.dictionaries(
        # `venv` and `python` are the subprocess drivers' typed interpreter overrides
        st.text(min_size=1, max_size=8).filter(lambda k: k not in ("venv", "python")),
        st.one_of(SCALAR, st.dictionaries(st.sampled_from(["a", "b c"]), SCALAR, max_size=2)),
        max_size=3,
    ),
)
def test_dump_config_round_trips(host, hosts, threads, seed, limit, options) -> None:
    cfg = default_config(cuda=False)
    cfg.server.host = host
    cfg.runtime.network_allowed_hosts = hosts
    cfg.runtime.worker_threads = threads
    m = cfg.models[0]
    m.scheduler.default_token_limit = limit
    m.driver.random_seed = seed
    m.driver.type = "dev"  # a subprocess driver: options pass through as written
    m.driver.options = options
    assert parse_config(tomllib.loads(dump_config(cfg)), "x") == cfg


def test_machine_defaults_are_written_as_comments() -> None:
    text = dump_config(default_config(cuda=False))
    assert "\n# worker_threads = " in text and "\n# fs_scratch_dir = " in text
    assert "\nwasm_max_instances = 1000" in text
    cfg = default_config(cuda=False)
    cfg.runtime.worker_threads = 12345
    assert "\nworker_threads = 12345" in dump_config(cfg)


def test_every_key_is_documented_in_the_dump() -> None:
    text = dump_config(default_config(cuda=False))
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if " = " in line and not line.startswith("#"):
            assert lines[i - 1].startswith("# "), f"undocumented key: {line}"
