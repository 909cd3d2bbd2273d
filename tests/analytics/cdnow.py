"""The CDNOW data that ships with the ``lifetimes`` package (MIT), used as test data only: located on disk, never
imported (``import lifetimes`` breaks on recent pandas). Missing locally it skips; under CI it fails."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest


def cdnow_file(name: str) -> Path:
    spec = importlib.util.find_spec("lifetimes")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / name
        if path.exists():
            return path
    if os.environ.get("CI") == "true":
        pytest.fail(f"the CDNOW file {name} (package lifetimes, a test dependency) is missing")
    pytest.skip(f"the CDNOW file {name} needs the lifetimes package (pip install '.[test]')")
