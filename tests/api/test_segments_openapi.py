"""Every segment and static list operation answers what /openapi.json says it answers, over real HTTP on both
engines: each answer (successes, the errors a caller meets, the CSV export and the 204 of a deletion) is checked
against the documented status, media type and schema, and every operation tagged ``segments`` is exercised."""

from __future__ import annotations

import httpx
import pytest

from tests.api.openapi_check import Documented
from tests.conftest import wait_until

BUYERS = {"performed": {"event": "Order Completed", "window": "30d"}}


def _people(http, workspace, server) -> dict[str, str]:
    """Ana (a buyer, with an email) and Bo: their profile ids by user id."""
    batch = [{"type": "identify", "userId": "ana", "traits": {"email": "ana@example.com"}},
             {"type": "track", "userId": "ana", "event": "Order Completed", "properties": {"total": 30}},
             {"type": "identify", "userId": "bo", "traits": {"email": "bo@example.com"}}]  # fmt: skip
    assert http.post("/v1/batch", json={"batch": batch}, auth=(workspace["server_write_key"], "")).status_code == 200
    server.settle()
    h = {"Authorization": f"Bearer {workspace['api_key']}"}
    return {u: http.get("/api/profiles", params={"user_id": u}, headers=h).json()["id"] for u in ("ana", "bo")}


def test_every_segment_and_list_answer_matches_the_document(http, server, workspace):
    doc = Documented(http.get("/openapi.json").json())
    h = {"Authorization": f"Bearer {workspace['api_key']}"}
    ids = _people(http, workspace, server)

    def call(method: str, template: str, path: str, status: int, **kw):
        r = http.request(method, path, headers={**h, **kw.pop("headers", {})}, **kw)
        assert r.status_code == status, (method, path, r.status_code, r.text)
        return doc.check(r, template).json() if r.content and "json" in r.headers["content-type"] else r

    # static lists: create, rename, fill from JSON and from a CSV
    call("PUT", "/api/lists/{list_id}", "/api/lists/vip", 201, json={"name": "VIP"})
    assert call("PUT", "/api/lists/{list_id}", "/api/lists/vip", 200, json={"name": "VIP guests"})["members"] == 0
    got = call("POST", "/api/lists/{list_id}/members", "/api/lists/vip/members", 200,
               json={"add": [ids["ana"], {"email": "nobody@example.com"}]})  # fmt: skip
    assert (got["added"], got["not_found"]) == (1, [{"email": "nobody@example.com"}])
    got = call("POST", "/api/lists/{list_id}/members", "/api/lists/vip/members", 200,
               content="profile_id\nnot-a-profile\n", headers={"Content-Type": "text/csv"})  # fmt: skip
    assert got["not_found"] == ["not-a-profile"] and got["not_found_count"] == 1
    assert call("GET", "/api/lists", "/api/lists", 200)["lists"][0]["members"] == 1

    # segments: create (with its estimate), change without one, preview, read, page, export, recompute
    saved = call("PUT", "/api/segments/{segment_id}", "/api/segments/buyers", 201, json={"rule": BUYERS})
    assert saved["estimate"]["count"] == 1
    changed = call("PUT", "/api/segments/{segment_id}", "/api/segments/buyers", 200, params={"estimate": "false"},
                   json={"name": "Buyers", "rule": BUYERS})  # fmt: skip
    assert "estimate" not in changed and changed["name"] == "Buyers"
    call("PUT", "/api/segments/{segment_id}", "/api/segments/known", 201, json={"yaml": "list: vip"})
    call("PUT", "/api/segments/{segment_id}", "/api/segments/everyone", 201,
         json={"rule": {"or": [{"segment": "buyers"}, {"bucket": {"from": 0, "to": 100}}]}})  # fmt: skip
    got = call("POST", "/api/segments/preview", "/api/segments/preview", 200, json={"rule": BUYERS, "sample": 5})
    assert got["sample"] == [{"profile_id": ids["ana"], "identifiers": {"email": ["ana@example.com"],
                                                                        "user_id": ["ana"]}}]  # fmt: skip

    def ready():
        segs = call("GET", "/api/segments", "/api/segments", 200)["segments"]
        return all(s["status"] == "ready" for s in segs) and {s["id"]: s["members"] for s in segs}

    assert wait_until(ready) == {"buyers": 1, "everyone": 2, "known": 1}
    assert call("GET", "/api/segments/{segment_id}", "/api/segments/buyers", 200)["version"] == 1
    first = call("GET", "/api/segments/{segment_id}/members", "/api/segments/everyone/members", 200,
                 params={"limit": 1})  # fmt: skip
    assert first["next_cursor"] is not None
    rest = call("GET", "/api/segments/{segment_id}/members", "/api/segments/everyone/members", 200,
                params={"limit": 1, "cursor": first["next_cursor"]})  # fmt: skip
    assert sorted(m["profile_id"] for m in first["members"] + rest["members"]) == sorted(ids.values())
    csv_text = call("GET", "/api/segments/{segment_id}/export", "/api/segments/buyers/export", 200).text
    assert csv_text.splitlines()[1].startswith(f"{ids['ana']},ana,ana@example.com,,")
    got = call("POST", "/api/segments/{segment_id}/recompute", "/api/segments/buyers/recompute", 200)
    assert got == {"segment_id": "buyers", "entered": 0, "exited": 0}
    got = call("GET", "/api/profiles/{profile_id}/segments", f"/api/profiles/{ids['ana']}/segments", 200)
    assert [s["id"] for s in got["segments"]] == ["buyers", "everyone", "known"]
    assert {c["change"] for c in got["history"]} == {"entered"}

    # the errors a caller meets are in the documented shape too
    call("GET", "/api/segments/{segment_id}", "/api/segments/nope", 404)
    call("GET", "/api/segments/{segment_id}/export", "/api/segments/nope/export", 404)
    call("PUT", "/api/segments/{segment_id}", "/api/segments/bad", 400, json={"rule": {"performed": {}}})
    call("POST", "/api/segments/preview", "/api/segments/preview", 400, json={"rule": BUYERS, "sample": 101})
    call("GET", "/api/profiles/{profile_id}/segments", "/api/profiles/nobody/segments", 404)
    call("POST", "/api/lists/{list_id}/members", "/api/lists/nope/members", 404, json={"add": [ids["bo"]]})
    call("DELETE", "/api/segments/{segment_id}", "/api/segments/buyers", 409)  # "everyone" refers to it
    call("DELETE", "/api/segments/{segment_id}", "/api/segments/everyone", 204)
    call("DELETE", "/api/segments/{segment_id}", "/api/segments/buyers", 204)

    assert doc.operations("segments") <= doc.checked, doc.operations("segments") - doc.checked


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the document is the same on both engines
def test_the_document_describes_each_answer(http):
    """Not only a status: each success has its schema or media type, and the preview documents its budget."""
    spec = http.get("/openapi.json").json()
    ops = Documented(spec).operations("segments")
    assert len(ops) == 12
    for method, path in ops:
        responses = spec["paths"][path][method]["responses"]
        ok = [s for s in responses if s.startswith("2")]
        for status in ok:
            if status == "204":
                assert "content" not in responses[status], (method, path)
                continue
            (media,) = responses[status]["content"]
            schema = responses[status]["content"][media]["schema"]
            assert media == "text/csv" or schema.get("$ref", "").startswith("#/components/schemas/"), (method, path)
    preview = spec["paths"]["/api/segments/preview"]["post"]["responses"]["503"]
    assert "CHORUS_SEGMENT_PREVIEW_SECONDS" in preview["description"]
    assert preview["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_check_refuses_an_answer_the_document_does_not_describe(http):
    """The check above can fail: an undocumented field, a time without its offset, an undocumented status."""
    doc = Documented(http.get("/openapi.json").json())
    req = httpx.Request("GET", "http://chorus/api/segments/buyers/members")
    good = {"members": [{"profile_id": "p1", "since": "2026-03-02T09:00:00+00:00"}], "next_cursor": None}
    doc.check(httpx.Response(200, json=good, request=req), "/api/segments/{segment_id}/members")
    for bad, status in (({**good, "total": 1}, 200), ({**good, "members": [{"profile_id": "p1",
                        "since": "2026-03-02T09:00:00"}]}, 200), (good, 202)):  # fmt: skip
        with pytest.raises(AssertionError):
            doc.check(httpx.Response(status, json=bad, request=req), "/api/segments/{segment_id}/members")
