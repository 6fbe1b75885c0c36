"""`pie run` (what `make run` calls) on the default model, as a separate OS process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_engine import EXAMPLES

pytestmark = pytest.mark.e2e


def test_pie_run_text_completion_prints_one_sensible_answer(e2e_home: Path):
    pie = Path(sys.executable).with_name("pie")
    env = {**os.environ, "PIE_HOME": str(e2e_home)}
    prompt = "What is the capital of France? Answer in one sentence."
    proc = subprocess.run(
        [str(pie), "run", "-q", "--path", str(EXAMPLES / "text_completion"), "--",
         "--prompt", prompt, "--max-tokens", "32"],
        check=False, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout  # streamed once, not repeated as the result
    assert "Paris" in lines[0]
