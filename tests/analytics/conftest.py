"""Fixtures of the analytics tests: one local Spark session for the whole run (it takes 20-60 s to start).

The Spark tests skip when PySpark or a Java runtime is missing on this machine, and fail instead under CI
(CI=true), where both must be installed.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing() -> str | None:
    if importlib.util.find_spec("pyspark") is None:
        return "PySpark is not installed"
    from chorus.analytics import engine

    java_home = os.environ.get("JAVA_HOME")
    if java_home and Path(java_home, "bin", "java").exists():
        return None
    if any(Path(c, "bin", "java").exists() for c in engine._JAVA_CANDIDATES) or shutil.which("java"):
        return None
    return "no Java runtime (Spark needs Java 17 or 21)"


@pytest.fixture(scope="session")
def spark_session():
    """A local SparkSession shared by every test of the run (stopped at the end)."""
    missing = _missing()
    if missing:
        if IN_CI:
            pytest.fail(f"the Spark engine is required under CI: {missing}")
        pytest.skip(f"Spark engine not available: {missing}")
    from chorus.analytics.engine import local_spark_session

    session = local_spark_session()
    yield session
    session.stop()


@pytest.fixture
def same_result():
    """``same_result(a, b)``: two results (nested dicts, lists, numbers) are equal, floats to a relative 1e-9
    (engines add up in different orders)."""

    def check(a, b, path="result"):
        if isinstance(a, dict) and isinstance(b, dict):
            assert sorted(a) == sorted(b), f"{path}: keys differ"
            for k in a:
                check(a[k], b[k], f"{path}.{k}")
        elif isinstance(a, list | tuple) and isinstance(b, list | tuple):
            assert len(a) == len(b), f"{path}: lengths differ ({len(a)} vs {len(b)})"
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                check(x, y, f"{path}[{i}]")
        elif isinstance(a, float) and isinstance(b, float | int) and not isinstance(b, bool):
            assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9), f"{path}: {a} != {b}"
        else:
            assert a == b, f"{path}: {a!r} != {b!r}"

    return check
