"""Channels without accounts: `chorus serve --dev` as a subprocess, the README's email example run as written
against it (bash and curl), and the message found as an .eml file in the dev outbox, sent from a reserved domain;
the server said at startup where messages go and that they are not sent."""

from __future__ import annotations

import email
import email.policy
import re
import shutil
import subprocess

import httpx
import pytest

from tests.conftest import ServeProcess, wait_until
from tests.e2e.test_readme_quickstart import quickstart_blocks

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="the README's examples use curl")


def test_serve_dev_writes_the_readme_email_to_the_outbox(db_url, tmp_path, monkeypatch):
    blocks = quickstart_blocks(dev=True)
    assert len(blocks) == 1, "the README lost its --dev email example"
    monkeypatch.delenv("CHORUS_OUTBOX_DIR", raising=False)  # the default, ./chorus-outbox, as the README says
    with ServeProcess(db_url, tmp_path, "--dev", CHORUS_WORKER_POLL_SECONDS="0.05") as serve:
        keys, api = serve.keys, {"Authorization": f"Bearer {serve.keys['api_key']}"}
        r = httpx.post(serve.base_url + "/v1/identify", auth=(keys["server_write_key"], ""),
                       json={"userId": "u-42", "traits": {"email": "Ada@Example.com", "name": "Ada"}})  # fmt: skip
        assert r.status_code == 200, r.text
        wait_until(lambda: httpx.get(serve.base_url + "/api/profiles?user_id=u-42", headers=api).status_code == 200)

        script = blocks[0].replace("http://127.0.0.1:8000", serve.base_url)
        script = f"API_KEY={keys['api_key']}\n" + "\n".join(
            line for line in script.splitlines() if not line.startswith("ls ")
        )  # the listing is what this test checks, once the worker had its moment
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", script.replace("curl ", "curl -sS --fail-with-body ")],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
        mid = re.search(r'"id":"(msg_[^"]+)"', run.stdout).group(1)

        eml = tmp_path / "chorus-outbox" / "email" / f"{mid}.eml"
        # the file is written before the outcome is recorded (outcomes are recorded together, within a second)
        msg = wait_until(
            lambda: (
                (m := httpx.get(f"{serve.base_url}/api/messages/{mid}", headers=api).json())["status"]
                not in ("queued", "sending")
                and m
            ),
            timeout=30,
        )
        output = serve.output()

    assert msg["status"] == "sent" and msg["provider"] == "file" and msg["provider_message_id"] == f"file:{mid}", msg
    kept = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert kept["To"] == "ada@example.com" and kept["Subject"] == "Welcome, Ada"
    assert kept["From"] == "Chorus dev outbox <outbox@chorus.invalid>"
    assert "Hi Ada!" in kept.get_body(("html",)).get_content()
    ls = subprocess.run(["bash", "-c", blocks[0].splitlines()[-1].split("#")[0]], capture_output=True, text=True,
                        cwd=tmp_path)  # fmt: skip
    assert ls.stdout.split() == [f"{mid}.eml"]
    # said loudly, once, at startup: where messages go, and that they are not sent
    outbox = str(tmp_path / "chorus-outbox")
    assert f"Dev mode: messages to a channel without a provider are written to {outbox}" in output
    assert output.count("WARNING chorus.messaging dev mode:") == 1 and f"under {outbox}, not sent" in output
    assert f"[sink] email {mid} to ada@example.com: 'Welcome, Ada' -> " in output
