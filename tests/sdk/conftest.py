"""Builds (or loads from the PIE_HOME cache) the Python runner once per test session."""

import pytest

from pie.sandbox.testing import ensure_runner


@pytest.fixture(scope="session", autouse=True)
def runner_ready() -> None:
    ensure_runner()
