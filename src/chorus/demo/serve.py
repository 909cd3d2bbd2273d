"""`chorus demo --serve`: once the run is over, `chorus serve --no-worker` on the demo's store, in a child process,
with the event lake the demo exported (``CHORUS_LAKE_DIR``) so that /api/analytics/* answers, and its outbox
(``CHORUS_OUTBOX_DIR``) so that an erasure deletes the sink files of her messages; a guide to explore it
(the URL, the api key, curl lines) is printed once it answers. Ctrl-C (or SIGTERM) stops it.

A child process rather than the demo's own: the demo's process ran on a virtual clock and its worker, servers and
log handlers belong to that run (decision 0040: a process that used the clock must not serve real traffic). No
worker: it would carry on the journeys on the real clock, with the demo's mail and SMS servers gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from chorus.clitools import err

READY_SECONDS = 60  # migrations are done already: the server answers in a few seconds


def command(db: str, port: int) -> list[str]:
    return [sys.executable, "-m", "chorus.cli", "serve", "--no-worker", "--db", db, "--host", "127.0.0.1",
            "--port", str(port)]  # fmt: skip


def serve(db: str, lakedir: str, outdir: str, port: int, api_key: str, log_path: str) -> int:
    """Serve until Ctrl-C or SIGTERM (exit code 0) or until the server stops by itself (its exit code)."""
    # the demo's outbox: an erasure on this server deletes the sink files of her messages there (it looked in
    # ./chorus-outbox, found nothing, and the push and Messenger files of the people erased stayed)
    env = {**os.environ, "CHORUS_LAKE_DIR": lakedir, "CHORUS_OUTBOX_DIR": outdir}
    env.pop("CHORUS_PUBLIC_URL", None)  # links point at this server, not at the demo's loopback one
    base = f"http://127.0.0.1:{port}"
    # its own session: Ctrl-C in the terminal reaches the demo only, which stops the server once, gracefully (two
    # SIGINTs would make uvicorn skip its shutdown)
    proc = subprocess.Popen(command(db, port), env=env, start_new_session=True)
    stopping = False

    def stop(*_):  # SIGTERM: as Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        if not _ready(proc, base):
            code = proc.poll()
            err.print(f"[red]error:[/red] chorus serve did not answer on {base} (exit code {code}); see {log_path}")
            return code or 1
        err.print(guide(base, api_key, _a_profile(base, api_key), lakedir))
        # never one blocking wait: the kernel may hand Ctrl-C to another thread of this process (the demo's servers
        # and pools leave some), and then a blocked waitpid in the main thread is not interrupted, Python's handler
        # never runs, and the demo waits for a server that waits for it (the suite saw it hang twice under load)
        while True:
            try:
                return proc.wait(0.25)
            except subprocess.TimeoutExpired:
                continue
    except KeyboardInterrupt:
        stopping = True
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if stopping:
            err.print("Stopped.")


def _ready(proc: subprocess.Popen, base: str) -> bool:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def _a_profile(base: str, api_key: str) -> str | None:
    """One of the demo's customers to show: someone who shopped online and offline, else a newsletter reader."""
    for segment in ("omnichannel_shoppers", "newsletter"):
        try:
            r = httpx.get(f"{base}/api/segments/{segment}/members", params={"limit": 1}, timeout=10,
                          headers={"Authorization": f"Bearer {api_key}"})  # fmt: skip
            members = r.json().get("members") if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            members = None
        if members:
            return members[0]["profile_id"]
    return None


def guide(base: str, api_key: str, profile_id: str | None, lakedir: str) -> str:
    auth = f'-H "Authorization: Bearer {api_key}"'
    pid = profile_id or "PROFILE_ID"
    lines = [
        f"\n[bold]The demo's store is served on {base}[/bold] (no worker: nothing more is sent; the analytics read "
        f"the lake in {lakedir}).",
        f"API key (admin API, Authorization: Bearer): {api_key}",
        f"API reference: {base}/docs  ·  OpenAPI: {base}/openapi.json",
        "Try:",
        f"  curl {auth} {base}/api/profiles/{pid}",
        f"  curl {auth} '{base}/api/profiles/{pid}/events?limit=20'",
        f"  curl {auth} {base}/api/journeys/abandoned_cart/stats",
        f"  curl {auth} '{base}/api/messages?limit=10'",
        f"  curl {auth} {base}/api/analytics/omnichannel",
        f"  curl {auth} '{base}/api/analytics/attribution?models=last_touch,markov,shapley'",
        "Ctrl-C stops the server.",
    ]
    return "\n".join(lines)
