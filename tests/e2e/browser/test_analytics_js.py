"""Segment's analytics.js (``@segment/analytics-next``) in real headless Chromium talks to the real Chorus server.

A page served by ``SiteServer`` (the customer's website: the page and the analytics.js bundles from
``node_modules/@segment/analytics-next/dist/umd``) calls identify / track / page. The calls go cross-origin to the
live Chorus app (``server`` fixture, another loopback port), so Chorus's CORS handling is really exercised. After
``server.settle()`` the admin API must show one profile holding the browser's user id, email and anonymous id,
with the three events on its ``web`` timeline.

Nothing may leave 127.0.0.1. Chromium is launched with host-resolver rules and a dead proxy, and without any
Playwright route (see ``open_page``). Every request the page makes is recorded, and the tests assert that all of
them went to 127.0.0.1. ``test_guard_sees_and_stops_external_requests`` shows that the guard is not vacuous.

If Chromium, the npm packages or the ``playwright`` package are missing, the module is skipped. Under CI
(``CI=true``) the tests fail instead: CI runs ``bash scripts/install-browser-deps.sh`` first. See NOTES.md.
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

HERE = Path(__file__).resolve().parent
PKG_DIR = HERE / "node_modules" / "@segment" / "analytics-next"
DIST_UMD = PKG_DIR / "dist" / "umd"
CHROMIUM = os.environ.get("CHORUS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # nothing leaves the machine: no host name but 127.0.0.1 resolves ...
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    # ... and anything addressed by IP goes to a proxy port where nothing listens
    # (loopback is never proxied by Chromium, so 127.0.0.1 is unaffected)
    "--proxy-server=http://127.0.0.1:9",
]
# Read exactly as tests/conftest.py does.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

pytestmark = [pytest.mark.browser]


def _missing_deps() -> list[str]:
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"Chromium ({CHROMIUM})")
    if not (PKG_DIR / "package.json").is_file():
        missing.append(f"node_modules ({PKG_DIR.relative_to(HERE.parents[2])})")
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright Python package (pip install -e '.[test]')")
    return missing


MISSING = _missing_deps()
MISSING_WHY = f"browser deps missing: {', '.join(MISSING)}; run `bash scripts/install-browser-deps.sh` (as root)"
if MISSING and not IN_CI:
    pytest.skip(MISSING_WHY, allow_module_level=True)
# Under CI the `browser` fixture fails each test instead. That way one missing install step shows up as failed
# tests and does not abort the collection of the whole suite.


# --------------------------------------------------------------------------------------
# the customer's website
# --------------------------------------------------------------------------------------


class SiteHandler(BaseHTTPRequestHandler):
    """The 'customer website': its pages plus the analytics.js bundles, never from a CDN."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, status: int, body: bytes = b"", ctype: str | None = None):
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        site: SiteServer = self.server.owner  # type: ignore[attr-defined]
        path = urlsplit(self.path).path
        with site.lock:
            site.gets.append(path)
        if path == "/favicon.ico":
            self._send(204)
            return
        if path in site.pages:
            self._send(200, site.pages[path].encode(), "text/html; charset=utf-8")
            return
        # webpack public path of the UMD builds is `${_cdn}/analytics-next/bundles/`
        prefix = "/analytics-next/bundles/"
        if path.startswith(prefix):
            name = path[len(prefix) :]
            f = DIST_UMD / name
            if "/" not in name and f.is_file():
                self._send(200, f.read_bytes(), "application/javascript; charset=utf-8")
                return
        self._send(404, b"not found", "text/plain")


class SiteServer:
    def __init__(self):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), SiteHandler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.gets: list[str] = []
        self.pages: dict[str, str] = {}
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def cdn_settings(write_key: str) -> dict:
    """Minimal settings object (what Segment's CDN would return for the write key)."""
    return {
        # apiKey is where analytics.js takes the write key from (NOTES.md, gotcha 1)
        "integrations": {"Segment.io": {"apiKey": write_key}},  # only Segment.io -> no ajs-destination chunk
        "plan": {},
        "remotePlugins": [],
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0},  # no analytics_js.* metrics POSTs to <apiHost>/m
    }


# Records every fetch analytics.js makes, as the page's own JS sees it. The library looks up the global fetch on
# each call, so this wrapper sees every delivery. A status and a readable body prove the CORS exchange (preflight
# included, because of the Authorization header) succeeded.
FETCH_RECORDER_JS = """
  window.__posts = [];
  const _fetch = window.fetch.bind(window);
  window.fetch = async (input, init) => {
    const rec = {url: String(input && input.url || input), method: ((init && init.method) || 'GET').toUpperCase(),
                 body: init && typeof init.body === 'string' ? init.body : null};
    window.__posts.push(rec);
    try {
      const res = await _fetch(input, init);
      rec.status = res.status;
      rec.response = await res.clone().text();
      return res;
    } catch (e) {
      rec.error = String(e);
      throw e;
    }
  };
"""


def analytics_page(site: SiteServer, api_host: str, write_key: str, batching: bool) -> str:
    """UMD build (``dist/umd/index.js`` -> ``window.AnalyticsNext``) + ``AnalyticsBrowser.load``."""
    delivery = "deliveryStrategy: {strategy: 'batching', config: {size: 10, timeout: 300}}," if batching else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Chorus analytics.js e2e</title>
<script>
  // Read by dist/umd/index.js when it loads: webpack public path for lazy chunks becomes
  // `${{_cdn}}/analytics-next/bundles/` (otherwise it is the Segment CDN).
  window.analytics = {{_cdn: {json.dumps(site.origin)}}};
{FETCH_RECORDER_JS}
</script>
<script src="/analytics-next/bundles/index.js"></script>
</head><body><a id="lnk" href="#x">link</a>
<script>
  (async () => {{
    try {{
      const [analytics] = await AnalyticsNext.AnalyticsBrowser.load(
        {{
          writeKey: {json.dumps(write_key)},
          cdnURL: {json.dumps(site.origin)},                  // never ask the Segment CDN for anything
          cdnSettings: {json.dumps(cdn_settings(write_key))},  // no settings fetch at all
        }},
        {{
          integrations: {{
            'Segment.io': {{
              apiHost: {json.dumps(api_host)},  // scheme-less, includes /v1
              protocol: 'http',
              {delivery}
            }},
          }},
        }}
      );
      window.__ajs = analytics;
      // lazily loads the "auto-track" chunk: proves chunks come from our server
      analytics.trackLink(document.getElementById('lnk'), 'Link Clicked');
      await analytics.identify('u-1', {{email: 'a@example.com'}});
      await analytics.track('Product Viewed', {{sku: 'x'}});
      await analytics.page();
      window.__chorusDone = 'ok';
    }} catch (e) {{
      window.__chorusDone = 'error: ' + (e && e.stack || e);
    }}
  }})();
</script>
</body></html>"""


# --------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if MISSING:  # only reached under CI: skipping would hide a broken install step
        pytest.fail(MISSING_WHY)
    from playwright import sync_api

    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def site():
    with SiteServer() as s:
        yield s


def _is_local(url: str) -> bool:
    u = urlsplit(url)
    return (u.scheme in ("http", "ws") and u.hostname == "127.0.0.1") or u.scheme in ("data", "blob")


def open_page(browser, url: str):
    """New context+page, recording every request the page makes and the console.

    Deliberately NO ``page.route``/``context.route``: as soon as any route is installed,
    Playwright answers every CORS preflight itself (204 + permissive headers, see
    ``isInterceptedOptionsPreflight`` in its crNetworkManager), so the server's real CORS
    handling would go untested; with the sync API, routed requests also stall while Python
    is in ``time.sleep``.  External requests are instead made impossible by the launch args
    (host resolver maps every name but 127.0.0.1 to NOTFOUND; a dead proxy catches IP
    literals) and recorded here, so the test can assert there were none.
    """
    ctx = browser.new_context()
    seen: list[str] = []
    failed: list[str] = []
    console: list[str] = []
    ctx.on("request", lambda r: seen.append(r.url))
    ctx.on("requestfailed", lambda r: failed.append(f"{r.url} {r.failure}"))
    page = ctx.new_page()
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    page.goto(url, wait_until="load", timeout=5000)
    return ctx, page, seen, failed, console


def wait_js(page, expr: str, console: list[str], failed: list[str], timeout_ms: int = 8000) -> None:
    """``page.wait_for_function`` that, on timeout, says what the page got to (status, fetches, console)."""
    from playwright.sync_api import TimeoutError as PWTimeout

    try:
        page.wait_for_function(expr, timeout=timeout_ms)
    except PWTimeout:
        state = page.evaluate("({done: window.__chorusDone, posts: window.__posts})")
        raise AssertionError(f"timed out waiting for {expr}: {state=} {console=} {failed=}") from None


def bearer(ws: dict) -> dict:
    return {"Authorization": f"Bearer {ws['api_key']}"}


def profile_by(http, ws: dict, **ident) -> dict:
    r = http.get("/api/profiles", params=ident, headers=bearer(ws))
    assert r.status_code == 200, (ident, r.status_code, r.text)
    return r.json()


# --------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("batching", [False, True], ids=["standard", "batching"])
def test_analytics_js_to_chorus(browser, site, server, http, workspace, batching):
    write_key = workspace["write_key"]
    api_host = f"127.0.0.1:{server.port}/v1"
    assert urlsplit(site.origin).port != server.port  # different origins: the calls are cross-origin
    site.pages["/index.html"] = analytics_page(site, api_host, write_key, batching)
    page_url = f"{site.origin}/index.html"
    n_posts = 1 if batching else 3

    ctx, page, seen, failed, console = open_page(browser, page_url)
    try:
        wait_js(page, "window.__chorusDone", console, failed)
        assert page.evaluate("window.__chorusDone") == "ok", console
        # the calls resolve before delivery (always so when batching): wait until every POST has an outcome
        wait_js(
            page,
            f"window.__posts.filter(p => p.method === 'POST' && ('status' in p || 'error' in p)).length >= {n_posts}",
            console,
            failed,
        )
        anonymous_id = page.evaluate("window.__ajs.user().anonymousId()")
        posts = page.evaluate("window.__posts")
    finally:
        ctx.close()

    # --- what the browser sent, and what Chorus answered (readable cross-origin, so CORS passed) ---
    assert [p["method"] for p in posts] == ["POST"] * n_posts, posts
    expected_paths = ["/v1/b"] if batching else ["/v1/i", "/v1/t", "/v1/p"]
    assert [p["url"] for p in posts] == [f"{server.base_url}{path}" for path in expected_paths]
    for p in posts:
        assert "error" not in p, p
        assert p["status"] == 200, p
        assert json.loads(p["response"]) == {"success": True}, p  # no `rejected` entries
    bodies = [json.loads(p["body"]) for p in posts]
    sent = [e for b in bodies for e in b["batch"]] if batching else bodies
    assert [e["type"] for e in sent] == ["identify", "track", "page"]
    assert isinstance(anonymous_id, str) and anonymous_id
    assert {e["anonymousId"] for e in sent} == {anonymous_id}
    sent_ids = {e["messageId"] for e in sent}
    assert len(sent_ids) == 3

    # --- nothing left the machine, nothing failed, the bundles came from the site ---
    assert [u for u in seen if not _is_local(u)] == []
    assert failed == [], failed
    assert not [c for c in console if c.startswith(("error", "pageerror"))], console
    assert any(g.startswith("/analytics-next/bundles/auto-track.bundle.") for g in site.gets), site.gets

    # --- what Chorus made of it ---
    server.settle(timeout=8)
    profile = profile_by(http, workspace, user_id="u-1")
    pid = profile["id"]
    assert profile["requested_id"] == pid
    assert profile["identifiers"] == {
        "anonymous_id": [anonymous_id],
        "email": ["a@example.com"],
        "user_id": ["u-1"],
    }, profile
    assert profile["traits"].get("email") == "a@example.com", profile["traits"]
    assert profile["last_channel"] == "web"
    assert set(profile["channels"]) == {"web"} and profile["channels"]["web"]["count"] == 3, profile["channels"]
    # ONE profile: every identifier leads to it, and the workspace holds no other
    assert profile_by(http, workspace, anonymous_id=anonymous_id)["id"] == pid
    assert profile_by(http, workspace, email="a@example.com")["id"] == pid
    from chorus.store.tables import profiles

    with server.engine.connect() as conn:
        ids = conn.execute(sa.select(profiles.c.id).where(profiles.c.workspace_id == workspace["id"])).scalars()
        assert list(ids) == [pid]

    r = http.get(f"/api/profiles/{pid}/events", headers=bearer(workspace))
    assert r.status_code == 200, r.text
    timeline = r.json()
    assert timeline["next_cursor"] is None
    events = timeline["events"]
    assert sorted(e["type"] for e in events) == ["identify", "page", "track"], events
    assert {e["messageId"] for e in events} == sent_ids
    assert {e["channel"] for e in events} == {"web"}
    by_type = {e["type"]: e for e in events}
    for e in events:
        assert e["userId"] == "u-1" and e["anonymousId"] == anonymous_id, e
        assert e["context"]["library"]["name"] == "analytics.js", e["context"]
    assert by_type["identify"]["traits"] == {"email": "a@example.com"}
    assert by_type["track"]["event"] == "Product Viewed"
    assert by_type["track"]["properties"] == {"sku": "x"}
    assert by_type["page"]["properties"]["url"] == page_url
    assert by_type["page"]["context"]["page"]["url"] == page_url


def test_guard_sees_and_stops_external_requests(browser, site):
    """The no-external-traffic assertion above is not vacuous: such a request is seen and fails."""
    site.pages["/ext.html"] = """<!doctype html><script>
      window.__r = Promise.allSettled([
        fetch('https://cdn.segment.com/v1/projects/x/settings'),
        fetch('https://api.segment.io/v1/t', {method: 'POST', body: '{}'}),
      ]).then(rs => rs.map(r => r.status));
    </script>"""
    ctx, page, seen, failed, console = open_page(browser, f"{site.origin}/ext.html")
    try:
        assert page.evaluate("window.__r") == ["rejected", "rejected"]
    finally:
        ctx.close()
    assert "https://cdn.segment.com/v1/projects/x/settings" in seen
    assert any(f.startswith("https://cdn.segment.com/") for f in failed), failed
    assert any(f.startswith("https://api.segment.io/") for f in failed), failed
