"""The demo's HTTP clients: the operator (admin API with the api key), the brand's web shop, app and back end
(tracking API with the write keys), the till export (imports), and the people and providers who call back (the
public link endpoints). Every call is real HTTP over loopback to the running Chorus app."""

from __future__ import annotations

import httpx
import orjson

BATCH = 400  # tracking messages per /v1/batch request (the API takes up to 2,500 and 500 KB)


class DemoError(RuntimeError):
    """Chorus answered something the demo did not expect: a bug to report, not a state to go on from."""


class Chorus:
    def __init__(self, base_url: str, keys: dict):
        self.base_url = base_url
        self.keys = keys
        self.admin = httpx.Client(base_url=base_url, timeout=120,
                                  headers={"Authorization": f"Bearer {keys['api_key']}"})  # fmt: skip
        self.public = httpx.Client(base_url=base_url, timeout=120)
        self.sent_events = 0

    def close(self) -> None:
        self.admin.close()
        self.public.close()

    @staticmethod
    def ok(r: httpx.Response, *status: int) -> dict:
        if r.status_code not in (status or (200,)):
            raise DemoError(f"{r.request.method} {r.request.url.path} answered {r.status_code}: {r.text[:500]}")
        return r.json() if r.content and r.headers.get("content-type", "").startswith("application/json") else {}

    # -- the operator ------------------------------------------------------------------------------------------
    def get(self, path: str, **params) -> dict:
        return self.ok(self.admin.get(path, params=params))

    def put(self, path: str, body: dict, *status: int) -> dict:
        return self.ok(self.admin.put(path, json=body), *(status or (200, 201)))

    def post(self, path: str, body: dict, *status: int) -> dict:
        return self.ok(self.admin.post(path, json=body), *(status or (200, 201)))

    def patch(self, path: str, body: dict) -> dict:
        return self.ok(self.admin.patch(path, json=body))

    def pages(self, path: str, key: str, **params) -> list[dict]:
        """Every item of a keyset-paginated list."""
        out, cursor = [], None
        while True:
            got = self.get(path, limit=1000, **params, **({"cursor": cursor} if cursor else {}))
            out.extend(got[key])
            cursor = got.get("next_cursor")
            if not cursor:
                return out

    def import_rows(self, source: str, rows: list[dict], name: str, mapping: dict | None = None) -> dict:
        body = b"".join(orjson.dumps(r) + b"\n" for r in rows)
        form = {"source": source, **({"mapping": orjson.dumps(mapping).decode()} if mapping else {})}
        r = self.admin.post("/api/imports", files={"file": (f"{name}.jsonl", body, "application/x-ndjson")},
                            data=form)  # fmt: skip
        report = self.ok(r, 200, 201)
        if report.get("failed"):
            raise DemoError(f"the {source} import {name} refused rows: {report.get('errors')}")
        self.sent_events += report.get("imported", 0)
        return report

    # -- tracking ----------------------------------------------------------------------------------------------
    def track(self, messages: list[dict], server: bool = False) -> None:
        key = self.keys["server_write_key" if server else "write_key"]
        for i in range(0, len(messages), BATCH):
            chunk = messages[i:i + BATCH]
            got = self.ok(self.public.post("/v1/batch", auth=(key, ""), content=orjson.dumps({"batch": chunk}),
                                           headers={"Content-Type": "application/json"}))  # fmt: skip
            if got.get("rejected"):
                raise DemoError(f"the tracking API rejected events: {got['rejected'][:3]}")
            self.sent_events += len(chunk)

    # -- people and providers calling back ----------------------------------------------------------------------
    def follow(self, url: str) -> int:
        """A person's mail client or browser fetching a link of a message (open pixel, tracked click): the
        redirect is not followed, the shop is not ours to call."""
        return self.public.get(_local(url, self.base_url), follow_redirects=False).status_code

    def one_click_unsubscribe(self, url: str) -> int:
        """What a mailbox provider's unsubscribe button does (RFC 8058)."""
        r = self.public.post(_local(url, self.base_url), data={"List-Unsubscribe": "One-Click"})
        return r.status_code

    def feedback_report(self, raw: bytes) -> tuple[int, dict]:
        """A mailbox provider's spam-complaint report (ARF, RFC 5965), as the brand's abuse mailbox forwards it: the
        raw email to the feedback webhook. No key: the report names its message by the original's signed link."""
        r = self.public.post("/webhooks/email/feedback", content=raw, headers={"Content-Type": "message/rfc822"})
        return r.status_code, r.json() if r.headers.get("content-type", "").startswith("application/json") else {}

    def provider_callback(self, url: str, form: dict[str, str], headers: dict[str, str]) -> int:
        """A provider's request to Chorus (Twilio's status report or an inbound SMS), signed as the provider does."""
        return self.public.post(_local(url, self.base_url), data=form, headers=headers).status_code


def _local(url: str, base: str) -> str:
    if not url.startswith(base + "/"):
        raise DemoError(f"a link in a message points outside this Chorus server: {url[:120]}")
    return url[len(base):]
