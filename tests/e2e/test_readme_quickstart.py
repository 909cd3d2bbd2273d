"""The README's quick start, run as written: `chorus serve` on a fresh SQLite store, then every shell command of
the quick start's examples through bash and curl, with the keys the server printed. If the README and the
product drift apart, this fails."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="the README's examples use curl")


def quickstart_blocks(dev: bool = False) -> list[str]:
    """The ```sh blocks of the quick start that talk to the server (not the install or test commands); those for a
    server started with ``--dev`` (they say so in their first line) when ``dev``, else the others
    (tests/e2e/test_dev_outbox.py runs the dev ones)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    return [b for b in blocks if "curl" in b and ("--dev" in b.split("\n", 1)[0]) == dev]


def expected_answers(block: str) -> list[str]:
    """The `# {...}` comment lines that show what a command answers."""
    return [line.strip()[2:] for line in block.splitlines() if line.strip().startswith("# {")]


def test_the_quick_start_works_as_written(tmp_path):
    blocks = quickstart_blocks()
    assert len(blocks) >= 2, "the quick start lost its examples"
    port = free_port()
    env = {**os.environ, "CHORUS_DATABASE_URL": f"sqlite:///{tmp_path / 'chorus.db'}"}
    env.pop("CHORUS_PUBLIC_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "chorus.cli", "serve", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while not any("Chorus on http://" in line for line in lines):
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "chorus serve stopped:\n" + "".join(lines)
            lines.append(line)
            assert time.monotonic() < deadline, "chorus serve did not start:\n" + "".join(lines)
        keys = dict(re.findall(r"^\s+(write_key|server_write_key|api_key): (\S+)$", "".join(lines), re.M))
        assert set(keys) == {"write_key", "server_write_key", "api_key"}, "".join(lines)

        for block in blocks:
            script = block.replace("http://127.0.0.1:8000", f"http://127.0.0.1:{port}")
            # one shell session in the README: the keys set in the first block are there in the next ones
            script = re.sub(r"^(WRITE_KEY|API_KEY)=.*$", "", script, flags=re.M)
            script = f"WRITE_KEY={keys['write_key']}\nAPI_KEY={keys['api_key']}\n{script}"
            # identity resolution runs a moment after an event is stored (the README says to retry the lookup), and
            # a message reaches the inbox a moment after it is queued: a block is re-run until its answers are the
            # README's (its writes are idempotent: identical events, PUT, POST with an Idempotency-Key)
            for _ in range(20):
                run = subprocess.run(
                    ["bash", "-euo", "pipefail", "-c", script.replace("curl ", "curl -sS --fail-with-body ") + "\n"],
                    capture_output=True, text=True, timeout=60, cwd=tmp_path,
                )  # fmt: skip
                if run.returncode != 0:
                    missing = [f"exit {run.returncode}: {run.stdout} {run.stderr}"]
                    time.sleep(0.5)
                    continue
                answers = [json.loads(x) for x in re.findall(r"^\{.*\}$", run.stdout.replace("}{", "}\n{"), re.M)]
                missing = [shown for shown in expected_answers(block) if not any(_shows(a, shown) for a in answers)]
                if not missing:
                    break
                time.sleep(0.5)
            assert not missing, f"{script}\nno answer matches the README's {missing}: {run.stdout}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _shows(answer: dict, shown: str) -> bool:
    """Whether ``answer`` holds every key of the README's abbreviated answer whose value is written out (values
    with … and nested objects stand for anything), at any depth."""
    literal = re.findall(r'"(\w+)":(true|false|null|"[^"…]*"|\d+)(?=[,}\]])', shown)
    pairs: set[tuple[str, str]] = set()
    stack: list[object] = [answer]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for k, v in item.items():
                pairs.add((k, json.dumps(v, separators=(",", ":"), ensure_ascii=False)))
                stack.append(v)
        elif isinstance(item, list):
            stack.extend(item)
    return all(pair in pairs for pair in literal)
