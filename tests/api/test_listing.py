"""The admin API's lists over real HTTP: one convention (limit, cursor, next_cursor), keyset pages that neither
skip nor repeat rows (hypothesis, with ties in the sort key), filters, and cursors that cannot be forged."""

from __future__ import annotations

import base64
import json
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chorus.api import listing
from chorus.store.tables import imports

TEMPLATE = {"kind": "transactional", "topic": "orders", "variants": {"sms": {"text": "Your order {{ data.n }}"}}}


def bearer(ws):
    return {"Authorization": f"Bearer {ws['api_key']}"}


def pages(http, ws, path, key, limit, **params):
    """Every item of a list, walking next_cursor; also checks that no page is larger than limit."""
    out, cursor, seen = [], None, 0
    while True:
        r = http.get(path, params={**params, "limit": limit, **({"cursor": cursor} if cursor else {})},
                     headers=bearer(ws))  # fmt: skip
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body[key]) <= limit and set(body) >= {key, "next_cursor"}
        out += body[key]
        cursor, seen = body["next_cursor"], seen + 1
        if cursor is None:
            return out
        assert seen < 100


def test_templates_and_partials_by_name(http, workspace):
    names = [f"t{i}" for i in (3, 1, 4, 0, 2)]
    for n in names:
        assert http.put(f"/api/templates/{n}", json=TEMPLATE, headers=bearer(workspace)).status_code == 200
        assert http.put(f"/api/partials/p{n}", json={"source": "<b>x</b>"}, headers=bearer(workspace)).status_code
    listed = pages(http, workspace, "/api/templates", "templates", 2)
    assert [t["name"] for t in listed] == sorted(names)
    assert listed[0] | {"kind": "transactional", "topic": "orders", "channels": ["sms"], "version": 1} == listed[0]
    assert [p["name"] for p in pages(http, workspace, "/api/partials", "partials", 3)] == sorted(f"p{n}" for n in names)


def test_rejected_events_pages_and_old_before_parameter(http, workspace):
    batch = [{"type": "track", "event": f"No id {i}", "messageId": f"m{i}"} for i in range(5)]
    assert http.post("/v1/batch", json={"batch": batch}, auth=(workspace["write_key"], "")).status_code == 200
    listed = pages(http, workspace, "/api/events/rejected", "rejected", 2)
    assert [r["message_id"] for r in listed] == [f"m{i}" for i in reversed(range(5))]
    first = http.get("/api/events/rejected", params={"limit": 2}, headers=bearer(workspace)).json()
    older = http.get("/api/events/rejected", params={"limit": 2, "before": first["next_before"]},
                     headers=bearer(workspace)).json()  # fmt: skip
    assert [r["message_id"] for r in older["rejected"]] == ["m2", "m1"]


def test_cursor_of_another_list_or_forged_is_400(http, workspace):
    for n in ("a", "b"):
        http.put(f"/api/templates/{n}", json=TEMPLATE, headers=bearer(workspace))
    cursor = http.get("/api/templates", params={"limit": 1}, headers=bearer(workspace)).json()["next_cursor"]
    forged = base64.urlsafe_b64encode(json.dumps(["rejected", 2**70]).encode()).decode()
    for path, c in (("/api/events/rejected", cursor), ("/api/events/rejected", forged), ("/api/templates", "%%%"),
                    ("/api/messages", cursor), ("/api/imports", "x" * 40), ("/api/partials", forged)):  # fmt: skip
        r = http.get(path, params={"cursor": c}, headers=bearer(workspace))
        assert r.status_code == 400 and r.json()["field"] == "cursor", (path, r.text)
    for limit in (0, 1001, 2**70):
        r = http.get("/api/templates", params={"limit": limit}, headers=bearer(workspace))
        assert r.status_code == 400 and r.json()["field"] == "limit"


def test_messages_filtered_by_profile_status_channel_template_and_time(http, server, workspace):
    http.post("/v1/batch", auth=(workspace["server_write_key"], ""), json={"batch": [
        {"type": "identify", "userId": f"u{i}", "traits": {"phone": f"+3161234567{i}"}} for i in range(2)]})
    server.settle()
    http.put("/api/templates/order", json=TEMPLATE, headers=bearer(workspace))
    http.put("/api/templates/other", json=TEMPLATE, headers=bearer(workspace))
    sent = {}
    for i, (user, tpl) in enumerate([("u0", "order"), ("u0", "other"), ("u1", "order"), ("u0", "order")]):
        r = http.post("/api/messages", json={"to": {"user_id": user}, "template": tpl, "data": {"n": i}},
                      headers={**bearer(workspace), "Idempotency-Key": f"k{i}"})  # fmt: skip
        assert r.status_code == 201, r.text
        sent[r.json()["id"]] = (user, tpl, r.json())
    everything = pages(http, workspace, "/api/messages", "messages", 3)
    assert {m["id"] for m in everything} == set(sent)
    assert [m["created_at"] for m in everything] == sorted((m["created_at"] for m in everything), reverse=True)
    pid = http.get("/api/profiles", params={"user_id": "u0"}, headers=bearer(workspace)).json()["id"]
    mine = pages(http, workspace, "/api/messages", "messages", 1, profile_id=pid, template="order")
    assert {m["id"] for m in mine} == {i for i, (u, t, _) in sent.items() if u == "u0" and t == "order"}
    status = everything[0]["status"]
    assert all(m["status"] == status for m in pages(http, workspace, "/api/messages", "messages", 5, status=status))
    assert pages(http, workspace, "/api/messages", "messages", 5, channel="no-such-channel") == []
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert pages(http, workspace, "/api/messages", "messages", 5, since=future) == []
    assert len(pages(http, workspace, "/api/messages", "messages", 5, until=future)) == 4
    r = http.get("/api/messages", params={"profile_id": "p_nobody"}, headers=bearer(workspace))
    assert r.status_code == 404
    r = http.get("/api/messages", params={"since": "0001-01-01T00:00:00+01:00"}, headers=bearer(workspace))
    assert r.status_code == 400 and r.json()["field"] == "since"


def test_profile_search_by_identifier_and_trait_prefix(http, server, workspace):
    people = [("u1", "ana@shop.example", "Ana"), ("u2", "anna@shop.example", "Anna"), ("u3", "bo@x.example", "Bo")]
    extra = {"u1": {"vip": True, 'odd "name\\': "yes", "score": 12.5}, "u2": {"vip": False}}
    http.post("/v1/batch", auth=(workspace["server_write_key"], ""), json={"batch": [
        {"type": "identify", "userId": u, "traits": {"email": e, "name": n, **extra.get(u, {})}}
        for u, e, n in people]})  # fmt: skip
    server.settle()

    def search(**params):
        return [p["identifiers"]["user_id"][0] for p in pages(http, workspace, "/api/profiles/search", "profiles", 1,
                                                              **params)]  # fmt: skip

    assert sorted(search(identifier="email", prefix="AN")) == ["u1", "u2"]  # emails are stored lower-cased
    assert search(identifier="email", prefix="ana@") == ["u1"]
    assert sorted(search(trait="name", prefix="An")) == ["u1", "u2"]
    assert search(trait="name", prefix="an") == []  # traits: exact case
    # both engines read a trait as the same text (an outside probe: `true` found it on PostgreSQL only, `1` on
    # SQLite only; a name with a quote or a backslash was refused on SQLite)
    assert search(trait="vip", prefix="true") == ["u1"] and search(trait="vip", prefix="false") == ["u2"]
    assert search(trait="vip", prefix="1") == []
    assert search(trait='odd "name\\', prefix="ye") == ["u1"] and search(trait="score", prefix="12.5") == ["u1"]
    assert search(identifier="user_id", prefix="u3") == ["u3"]
    assert search(identifier="email", prefix="%") == []  # no LIKE wildcards
    for params, field in (({"prefix": "a"}, "identifier"), ({"identifier": "shoe", "prefix": "a"}, "identifier"),
                          ({"identifier": "email", "trait": "name", "prefix": "a"}, "identifier"),
                          ({"identifier": "email", "prefix": ""}, "prefix")):  # fmt: skip
        r = http.get("/api/profiles/search", params=params, headers=bearer(workspace))
        assert r.status_code == 400 and r.json()["field"] == field, r.text


# --- keyset pages, as a property: any rows (with ties in the timestamp), any page size ----------------------------

T0 = datetime(2026, 3, 1, tzinfo=UTC)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offsets=st.lists(st.integers(0, 3), min_size=0, max_size=12), limit=st.integers(1, 5))
def test_keyset_pages_neither_skip_nor_repeat(engine, offsets, limit):
    ws = "ws_" + uuid.uuid4().hex[:12]
    common = dict(workspace_id=ws, source="store", filename="f.csv", rows=1, imported=1, duplicates=0, errors=[])
    rows = [dict(common, id=f"imp_{uuid.uuid4().hex[:8]}", created_at=T0 + timedelta(seconds=o)) for o in offsets]
    with engine.begin() as conn:
        if rows:
            conn.execute(imports.insert(), rows)
    got, cursor = [], None
    with engine.connect() as conn:
        while True:
            page = listing.list_imports(conn, ws, limit, cursor)
            assert len(page["imports"]) <= limit
            got += [i["id"] for i in page["imports"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
    want = [r["id"] for r in sorted(rows, key=lambda r: (r["created_at"], r["id"]), reverse=True)]
    assert got == want


@pytest.mark.parametrize("bad", ["", "e30", base64.urlsafe_b64encode(b'["imports", "x", "y"]').decode(), "!!"])
def test_decode_cursor_refuses_what_it_did_not_make(bad):
    from chorus.errors import ChorusError

    with pytest.raises(ChorusError) as exc:
        listing.decode_cursor(bad, "imports", (datetime, str))
    assert exc.value.field == "cursor"


# --- pages read in index order (SQLite's plans: structure, not timings) ------------------------------------------


def _plans(engine, call) -> list[tuple[str, str]]:
    """(statement, SQLite's plan) of each SELECT ``call(conn)`` runs."""
    from tests.plans import plans

    return plans(engine, call, selects=True)


@pytest.mark.parametrize("kind", ["messages", "imports"])
def test_a_page_of_messages_or_imports_is_read_in_index_order_not_sorted(tmp_path, kind):
    """GET /api/messages and /api/imports, newest first (and messages since an instant): each page sorted every
    message of the workspace (every import of every workspace) before the index on (workspace, created_at, id),
    40 ms a page at 21,000 messages in the demo and seconds at a million."""
    from chorus.store.db import create_engine, upgrade

    url = f"sqlite:///{tmp_path / 'c.db'}"
    upgrade(url)
    engine = create_engine(url)
    since = T0 + timedelta(days=1)
    # a page after a cursor (a deep page): its range starts at the cursor in the index, not at the newest row
    cursor = listing.encode_cursor(kind, ["2026-03-01T00:00:00Z", f"{kind[:3]}_x"])
    if kind == "messages":
        def call(conn):
            listing.list_messages(conn, "ws_a", 50, None)
            listing.list_messages(conn, "ws_a", 50, None, since=since)
            page = listing.list_messages(conn, "ws_a", 1, cursor)
            assert page["next_cursor"] is None  # nothing stored: the plans are what is checked
    else:
        def call(conn):
            listing.list_imports(conn, "ws_a", 50, None)
            listing.list_imports(conn, "ws_a", 50, cursor)
    found = [(s, plan) for s, plan in _plans(engine, call) if f"FROM {kind}" in s]
    assert len(found) >= 2
    for statement, plan in found:
        assert f"ix_{kind}_created" in plan and "TEMP B-TREE" not in plan, (statement, plan)
        if "(created_at, id) <" in statement.replace(f"{kind}.", ""):  # the cursor's bound is in the index search
            assert re.search(r"\(created_at,id\)<", plan.replace(" ", "")), (statement, plan)
    assert any("(created_at, id) <" in s.replace(f"{kind}.", "") for s, _ in found), found
    engine.dispose()


def test_a_profiles_timeline_pages_through_tied_instants_in_its_index(engine):
    """``views.timeline`` pages on (timestamp, seq) newest first: events at the same instant neither skipped nor
    repeated on both engines; on SQLite a page after a cursor is bounded in the timeline index (the OR form read
    her whole timeline from the newest event); a forged cursor is a 400, not the driver's overflow."""
    from chorus import workspaces
    from chorus.errors import ChorusError
    from chorus.profiles import views
    from tests.identity.helpers import send

    ws = workspaces.create(engine, "tl-" + uuid.uuid4().hex[:6])["id"]
    instants = [T0 + timedelta(minutes=i // 4) for i in range(13)]  # four events an instant
    send(engine, ws, [{"type": "track", "event": "Viewed", "userId": "u1", "messageId": f"t{i}",
                       "timestamp": at.isoformat()} for i, at in enumerate(instants)],
         received_at=T0 + timedelta(hours=1))  # fmt: skip
    from tests.identity.helpers import resolve

    resolve(engine)
    with engine.connect() as conn:
        pid = views.find_by_ident(conn, ws, "user_id:u1")
        whole = [e["messageId"] for e in views.timeline(conn, ws, pid, limit=100)["events"]]
        for limit in (1, 3, 5):
            got, cursor = [], None
            while True:
                page = views.timeline(conn, ws, pid, limit=limit, cursor=cursor)
                got += [e["messageId"] for e in page["events"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert got == whole and len(set(got)) == 13, (limit, got)
        forged = base64.urlsafe_b64encode(json.dumps([instants[0].isoformat(), 2**63]).encode()).decode()
        with pytest.raises(ChorusError) as bad:
            views.timeline(conn, ws, pid, cursor=forged)
        assert bad.value.field == "cursor"
    if engine.dialect.name == "sqlite":
        cursor = views._cursor_encode(instants[6], 10**6)
        plans = _plans(engine, lambda conn: views.timeline(conn, ws, pid, limit=2, cursor=cursor))
        found = [plan for s, plan in plans if "FROM events" in s and "ORDER BY" in s]
        assert found and all("timestamp<?" in p.replace(" ", "") for p in found), found
