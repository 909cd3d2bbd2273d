"""``/docs`` works offline: Swagger UI (vendored in ``chorus/api/static``) renders every operation of
``/openapi.json`` in real headless Chromium, and no request leaves 127.0.0.1.

Chromium is launched as in ``tests/e2e/browser``: every host name but 127.0.0.1 fails to resolve and anything
addressed by IP goes to a dead proxy, so a page that needs a CDN stays blank (as FastAPI's default /docs did).
Skipped when Chromium or playwright is missing, failed instead under CI (``scripts/install-browser-deps.sh``).
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = os.environ.get("CHORUS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--proxy-server=http://127.0.0.1:9",
]  # fmt: skip
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
HAVE = {"Chromium": Path(CHROMIUM).exists(), "playwright": importlib.util.find_spec("playwright") is not None}
MISSING = [what for what, ok in HAVE.items() if not ok]
if MISSING and not IN_CI:
    pytest.skip(f"missing {', '.join(MISSING)}: run `bash scripts/install-browser-deps.sh`", allow_module_level=True)

pytestmark = [pytest.mark.browser]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the page does not touch the store
def test_docs_render_every_operation_offline(server, http):
    if MISSING:
        pytest.fail(f"missing {', '.join(MISSING)} under CI")
    from playwright.sync_api import sync_playwright

    doc = http.get("/openapi.json").json()
    summaries = {op["summary"] for item in doc["paths"].values() for op in item.values() if "summary" in op}
    html = http.get("/docs").text
    assert not [u for u in re.findall(r"https?://[^\s\"'<>]+", html) if "127.0.0.1" not in u], html

    requests, failed, errors = [], [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(f"{server.base_url}/docs", wait_until="networkidle")
            page.wait_for_selector(".opblock-summary", timeout=20_000)
            shown = page.locator(".opblock-summary-description").all_inner_texts()
            paths = page.locator(".opblock-summary-path").all_inner_texts()
        finally:
            browser.close()
    assert set(shown) == summaries  # every documented operation is on the page
    assert any("/api/keys/api/rotate" in p.replace("\u200b", "") for p in paths)
    assert all(urlsplit(u).hostname == "127.0.0.1" or urlsplit(u).scheme in ("data", "blob") for u in requests), (
        requests
    )
    assert not failed and not errors, (failed, errors)
