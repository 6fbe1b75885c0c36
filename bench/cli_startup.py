"""CLI responsiveness: how long `pie` takes to start, against a bare interpreter baseline.

Runs each command N times in a fresh process (interleaved, so machine noise hits all rows
alike) and prints one table of medians and ratios to the `python -c pass` baseline.

    .venv/bin/python bench/cli_startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def commands(home: Path) -> list[tuple[str, list[str]]]:
    py = sys.executable
    return [
        ("python -c pass (baseline)", [py, "-c", "pass"]),
        ("python -c 'import typer'", [py, "-c", "import typer"]),
        ("python -c 'import pie.config'", [py, "-c", "import pie.config"]),
        ("pie --version", [str(BIN / "pie"), "--version"]),
        (
            "pie config show (valid file)",
            [str(BIN / "pie"), "config", "show", "--path", str(home / "config.toml")],
        ),
        (
            "pie config set server.port",
            [
                str(BIN / "pie"),
                "config",
                "set",
                "server.port",
                "9090",
                "--path",
                str(home / "config.toml"),
            ],
        ),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        env = {**os.environ, "PIE_HOME": str(home)}
        subprocess.run(
            [str(BIN / "pie"), "config", "init", "--no-cuda", "--path", str(home / "config.toml")],
            check=True,
            env=env,
            capture_output=True,
        )
        cmds = commands(home)
        times: dict[str, list[float]] = {name: [] for name, _ in cmds}
        for _ in range(args.runs):
            for name, argv in cmds:
                t0 = time.perf_counter()
                subprocess.run(argv, check=True, env=env, capture_output=True)
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times[cmds[0][0]])
    print(f"{'command':34} {'median ms':>10} {'p90 ms':>8} {'x baseline':>10}")
    for name, _ in cmds:
        ts = sorted(times[name])
        med = statistics.median(ts)
        p90 = ts[int(0.9 * (len(ts) - 1))]
        print(f"{name:34} {med * 1e3:10.0f} {p90 * 1e3:8.0f} {med / base:10.1f}")


if __name__ == "__main__":
    main()
