"""`chorus segments create/preview --rule FILE` and `chorus journeys publish FILE` read the file bounded by the
HTTP API's limit for such a body (10 MB: `--rule /dev/zero` grew to gigabytes) and say what is wrong with it in
Chorus' words naming the file, not Python's ("'utf-8' codec can't decode byte 0xff", "[Errno 21] Is a directory").
Found by a probe. The command runs on the code under test (PYTHONPATH from the imported package)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import chorus
from chorus.api.guard import MAX_JSON_BODY

SRC = str(Path(chorus.__file__).parents[1])
PYTHON_WORDS = ("codec", "Errno", "Traceback", "decode byte", "UnicodeDecodeError")


def _run(tmp_path, *args: str) -> subprocess.CompletedProcess:
    db = f"sqlite:///{tmp_path / 'c.db'}"
    return subprocess.run([sys.executable, "-m", "chorus.cli", *args, "-w", "probe", "--db", db], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": SRC})  # fmt: skip


@pytest.fixture
def files(tmp_path):
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe{}")
    (tmp_path / "dir.json").mkdir()
    with open(tmp_path / "big.json", "wb") as fh:  # one byte past the limit, sparse: nothing written
        fh.truncate(MAX_JSON_BODY + 1)
    return tmp_path


@pytest.mark.parametrize("command", [("segments", "create", "s", "--rule"), ("segments", "preview", "--rule")])
def test_rule_files_are_refused_in_chorus_words(files, command):
    cases = {"bin.json": "is not UTF-8 text",
             "dir.json": "is a directory, not a file",
             "none.json": "does not exist",
             "big.json": "is larger than 10 MB (the API's limit for a definition)"}  # fmt: skip
    for name, words in cases.items():
        path = files / name
        r = _run(files, *command, str(path))
        assert r.returncode == 2, (name, r.stdout, r.stderr)
        assert r.stderr.strip() == f"error: --rule {path} {words}", r.stderr
        assert not any(w in r.stderr for w in PYTHON_WORDS), r.stderr


def test_journey_files_are_read_bounded(files):
    path = files / "big.json"
    r = _run(files, "journeys", "publish", str(path))
    assert r.returncode == 2 and r.stderr.strip() == f"error: {path} is larger than 10 MB (the API's limit for a " \
        "definition)", r.stderr  # fmt: skip
    r = _run(files, "journeys", "publish", str(files / "dir.json"))
    assert r.returncode == 2 and r.stderr.strip() == f"error: {files / 'dir.json'} is a directory, not a file"
