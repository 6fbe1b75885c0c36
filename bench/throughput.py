"""End-to-end throughput: N concurrent text completions through inferlets, against baselines.

    .venv/bin/python bench/throughput.py                 # = pie bench throughput --direct
    .venv/bin/python bench/throughput.py --baseline transformers --baseline llama-cpp
    .venv/bin/python bench/throughput.py -n 32,64 --num-threads 2 --omp-wait-policy active

Prints one table (rows per N: pie, direct, and each baseline; `pie / system` is the ratio of
throughputs in the same run). The workload and the measurement are `pie_cli.bench`; this
script always adds `--direct`, so the programmability tax is in every table.
"""

from __future__ import annotations

import sys

from pie_cli.main import app

if __name__ == "__main__":
    args = sys.argv[1:]
    app(["bench", "throughput", *([] if "--direct" in args else ["--direct"]), *args])
