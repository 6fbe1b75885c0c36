"""`pie bench throughput`: its measurements on the shared real engine, its table, its errors."""

from __future__ import annotations

import sys

import pytest
import typer
from pie_cli.bench import (
    BENCH_INFERLET,
    BENCH_MANIFEST,
    RunResult,
    _from_stamps,
    format_table,
    register,
    run_direct,
    run_pie,
    workload_prompts,
)
from pie_cli.errors import UserError
from typer.testing import CliRunner

from pie.client import PieClient


def test_stamps_reduce_to_throughput_ttft_and_tpot():
    # two sequences launched at t=10: tokens at 11, 12, 13 and 12, 14
    r = _from_stamps("pie", 10.0, [[11.0, 12.0, 13.0], [12.0, 14.0]], 1.5)
    assert r.tokens == 5 and r.wall_s == pytest.approx(4.0)
    assert r.tok_per_s == pytest.approx(1.25)
    assert sorted(r.ttft_s) == [1.0, 2.0]
    assert sorted(r.tpot_s) == [1.0, 2.0]
    other = RunResult("transformers", 2, 5, 2.0, [0.5], [0.1], 2.0)
    table = format_table([other, r], 3)
    rows = [line for line in table.splitlines() if line.startswith("| 2 ")]
    assert rows[0].startswith("| 2 | pie | 1.2 | 1.00 |")  # pie first, ratio to itself
    assert rows[1].startswith("| 2 | transformers | 2.5 | 0.50 |")  # pie is half as fast
    assert "tax" not in table  # no direct runs, no tax line


def test_the_tax_is_the_median_over_pairs_of_runs_made_back_to_back():
    # the machine slowed down between the pairs: the ratio of the median runs (0.9 / 1.0 here)
    # would report 10 %, each pair says 2-5 %
    pie = RunResult("pie", 8, 90, 1.0, [0.1], [0.01], 8.0, paired_tax=[0.02, 0.05, 0.03])
    direct = RunResult("direct", 8, 100, 1.0, [0.1], [0.01], 8.0)
    table = format_table([pie, direct], 32)
    assert table.splitlines()[-1] == (
        "Programmability tax, 1 - pie / direct over each pair of runs made back to back "
        "(median of 3 pairs, lowest..highest): N = 8: 3.0 % (2.0..5.0)."
    )
    assert pie.row()["tax_paired_median"] == pytest.approx(0.03)


@pytest.fixture
def cli():
    app = typer.Typer()
    register(app)
    runner = CliRunner()

    def invoke(*args: str):
        try:
            return runner.invoke(app, ["bench", *args], catch_exceptions=False)
        except UserError as e:
            return e

    return invoke


def test_user_mistakes_are_one_clear_line(cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if not installed
    e = cli("throughput", "--baseline", "llama-cpp")
    assert isinstance(e, UserError) and "pip install llama-cpp-python" in str(e)
    e = cli("throughput", "--baseline", "vllm")
    assert isinstance(e, UserError) and "transformers" in str(e)
    e = cli("throughput", "-n", "8,x")
    assert isinstance(e, UserError) and "comma" in str(e)
    e = cli("throughput", "--output-tokens", "1")
    assert isinstance(e, UserError) and "at least 2" in str(e)
    e = cli("throughput", "--burst", "0")
    assert isinstance(e, UserError) and "--burst" in str(e)


@pytest.mark.e2e
def test_pie_and_direct_runs_on_the_real_engine(engine):
    n, tokens = 4, 5

    async def body():
        async with PieClient(engine.url) as client:
            await client.auth_by_token(engine.token)
            await client.install_program(BENCH_MANIFEST, BENCH_INFERLET.encode(), True)
            pie = await run_pie(engine.engine, client, workload_prompts(n), tokens)
            burst = await run_pie(engine.engine, client, workload_prompts(n), tokens, 3)
        direct = await run_direct(
            engine.engine.engines["default"], workload_prompts(n), tokens, "test"
        )
        return pie, burst, direct

    pie, burst, direct = engine.on_engine_loop(body(), timeout=120)
    for r in (pie, burst, direct):
        assert r.n == n and r.tokens == n * tokens  # exactly `tokens` each: EOS is ignored
        assert len(r.ttft_s) == n and len(r.tpot_s) == n
        assert all(t > 0 for t in r.ttft_s + r.tpot_s)
    # the batch-size figure is read from the scheduler: the sequences shared batches
    for r in (pie, direct):
        assert r.mean_batch is not None and r.mean_batch > 2, r
    stats = engine.stats()
    assert stats["processes"] == 0 and stats["contexts"] == 0  # both paths cleaned up


def _baseline_ok(hf_repo, ns, output_tokens, threads, say):
    return [RunResult("fake", n, output_tokens * n, 1.0, [0.1] * n, [0.01] * n) for n in ns]


def _baseline_crash(hf_repo, ns, output_tokens, threads, say):
    import ctypes

    ctypes.string_at(0)  # a native library's crash: the process dies of SIGSEGV


def _baseline_raises(hf_repo, ns, output_tokens, threads, say):
    raise UserError("no such model for this baseline")


def test_a_baseline_runs_in_its_own_process_and_its_crash_costs_only_its_rows():
    from pie_cli.bench import _isolated

    rows, err = _isolated(_baseline_ok, "m", [1, 4], 8, 1, True)
    assert err is None and [(r.system, r.n, r.tokens) for r in rows] == [("fake", 1, 8), ("fake", 4, 32)]
    rows, err = _isolated(_baseline_crash, "m", [1], 8, 1, True)
    assert rows == [] and "the process died (signal 11)" in err
    rows, err = _isolated(_baseline_raises, "m", [1], 8, 1, True)
    assert rows == [] and err == "no such model for this baseline"
