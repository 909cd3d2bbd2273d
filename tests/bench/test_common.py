"""bench/common.py's temp dirs: every benchmark run made one under /tmp and left it there, with its databases
and logs; they are removed when the script exits, unless asked to keep them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPT = """
import sys
from common import make_tmpdir
p = make_tmpdir(keep=sys.argv[1] == "keep")
(p / "chorus.db").write_bytes(b"x" * 1000)
(p / "logs").mkdir()
(p / "logs" / "serve.log").write_text("a log")
print(p, flush=True)
if sys.argv[2] == "fail":
    raise SystemExit("the benchmark failed")
"""


@pytest.mark.parametrize("ending", ["ok", "fail"])
def test_a_benchmark_temp_dir_is_removed_when_the_script_exits(ending):
    out = _run("drop", ending, {})
    assert out.name.startswith("chorus-bench-") and not out.exists()


@pytest.mark.parametrize(("keep", "env"), [("keep", {}), ("drop", {"CHORUS_BENCH_KEEP_TMP": "1"})])
def test_a_temp_dir_asked_for_is_kept(keep, env):
    out = _run(keep, "ok", env)
    try:
        assert (out / "logs" / "serve.log").read_text() == "a log"
    finally:
        for f in sorted(out.rglob("*"), reverse=True):
            f.rmdir() if f.is_dir() else f.unlink()
        out.rmdir()


def _run(keep: str, ending: str, env: dict) -> Path:
    done = subprocess.run([sys.executable, "-c", SCRIPT, keep, ending], cwd=BENCH, capture_output=True, text=True,
                          env={**os.environ, "CHORUS_BENCH_KEEP_TMP": "", **env}, timeout=60)  # fmt: skip
    assert done.returncode == (0 if ending == "ok" else 1), done.stderr
    return Path(done.stdout.strip())
