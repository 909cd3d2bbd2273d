"""`chorus serve` stops promptly on SIGINT (Ctrl+C) and SIGTERM, as a subprocess: with its worker busy resolving a
backlog and a browser holding an in-app inbox stream open (a server-sent events response that never ends by itself,
which uvicorn waits for before it shuts the app down). The stream is for a visitor not seen yet: it waits for her
(it used to fail after its headers, a traceback in the log)."""

from __future__ import annotations

import signal
import socket
import subprocess
import time

import httpx
import pytest

from tests.conftest import ServeProcess

PROMPT = 5.0  # seconds from the signal to the exit: one worker transaction and one inbox poll, with margin


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_stops_promptly_with_a_busy_worker_and_an_open_inbox_stream(db_url, tmp_path, sig):
    with ServeProcess(db_url, tmp_path) as serve:
        keys = serve.keys
        batch = [{"type": "identify", "userId": f"u{i}", "anonymousId": f"a{i}", "messageId": f"m{i}",
                  "traits": {"email": f"p{i % 700}@example.com"}} for i in range(2000)]  # fmt: skip
        for _ in range(3):  # a backlog the worker is still resolving when the signal comes
            r = httpx.post(serve.base_url + "/v1/batch", json={"batch": batch}, auth=(keys["server_write_key"], ""),
                           timeout=60)  # fmt: skip
            assert r.status_code == 200, r.text
            batch = [{**m, "messageId": m["messageId"] + "x"} for m in batch]
        with socket.create_connection(("127.0.0.1", serve.port), timeout=10) as stream:
            stream.sendall(f"GET /v1/inbox/stream?writeKey={keys['write_key']}&anonymousId=not-seen-yet HTTP/1.1\r\n"
                           f"Host: 127.0.0.1\r\n\r\n".encode())  # fmt: skip
            assert b": connected" in _read_until(stream, b": connected")
            started = time.monotonic()
            serve.proc.send_signal(sig)
            try:
                serve.proc.wait(30)
            except subprocess.TimeoutExpired:
                pytest.fail("chorus serve was still running 30 s after the signal")
            took = time.monotonic() - started
    output = serve.output()
    assert took < PROMPT, f"stopped {took:.1f} s after the signal\n{output}"
    # uvicorn re-raises the signal it caught once it is done: SIGINT is then a KeyboardInterrupt, exit status 130
    assert serve.proc.returncode in (0, -sig, 128 + sig), output
    assert "Traceback" not in output and " ERROR " not in output, output


def _read_until(sock: socket.socket, needle: bytes) -> bytes:
    got = b""
    deadline = time.monotonic() + 10
    while needle not in got and time.monotonic() < deadline:
        got += sock.recv(4096)
    return got
