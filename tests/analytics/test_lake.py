"""The event lake: what `lake.export` writes, and that re-running it (even after a crash) adds only what is new."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow.dataset as ds
import pytest

from chorus import workspaces
from chorus.analytics import lake
from chorus.collect import ingest
from chorus.collect.messages import normalise
from chorus.identity.resolver import Resolver
from chorus.messaging import outbox
from chorus.messaging.delivery import Deliverer
from chorus.messaging.links import Links
from chorus.profiles import privacy, views

T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
NOW = datetime(2026, 6, 3, 12, 0, tzinfo=UTC)


def store(engine, w, *msgs, at=T0):
    with engine.begin() as conn:
        src = workspaces.source_by_write_key(conn, w["server_write_key"])
        evs = [normalise(m, received_at=at, source_kind="server") for m in msgs]
        ingest.store(conn, src, evs, [], at)


def read(root, name):
    path = root / name
    if not path.exists():
        return []
    return ds.dataset(path, format="parquet", partitioning="hive").to_table().to_pylist()


@pytest.fixture
def shop(engine):
    w = workspaces.create(engine, "lake")
    store(
        engine, w,
        {"type": "identify", "userId": "u1", "messageId": "i1", "timestamp": "2026-06-01T08:00:00Z",
         "traits": {"email": "ana@example.com"}},
        {"type": "track", "userId": "u1", "event": "Order Completed", "messageId": "o1",
         "timestamp": "2026-06-01T08:30:00Z",
         "properties": {"order_id": "A-1", "revenue": 42.5, "currency": "EUR"},
         "context": {"campaign": {"name": "spring", "source": "newsletter", "medium": "email"}}},
        {"type": "track", "anonymousId": "a9", "event": "Product Viewed", "messageId": "v1",
         "timestamp": "2026-06-02T10:00:00Z"},
    )  # fmt: skip
    Resolver(engine).drain()
    return w


def test_events_are_appended_once_partitioned_by_workspace_and_day(engine, shop, tmp_path):
    r = lake.export(engine, tmp_path, now=NOW)
    assert (r.events, r.event_files) == (3, 2) and r.workspaces == [shop["id"]]
    rows = {e["message_id"]: e for e in read(tmp_path, "events")}
    assert set(rows) == {"i1", "o1", "v1"}
    order = rows["o1"]
    assert order["workspace_id"] == shop["id"] and str(order["date"]) == "2026-06-01"
    assert (order["revenue"], order["currency"], order["order_id"]) == (42.5, "EUR", "A-1")
    assert (order["campaign_name"], order["campaign_source"], order["campaign_medium"]) == (
        "spring", "newsletter", "email")  # fmt: skip
    assert order["timestamp"] == datetime(2026, 6, 1, 8, 30, tzinfo=UTC) and order["profile_id"]
    assert str(rows["v1"]["date"]) == "2026-06-02"

    assert lake.export(engine, tmp_path, now=NOW).events == 0  # nothing new: nothing written
    assert len(read(tmp_path, "events")) == 3

    # a new event waits for identity resolution, and so does everything after it
    store(engine, shop, {"type": "track", "userId": "u1", "event": "Cart Viewed", "messageId": "c1",
                         "timestamp": "2026-06-03T09:00:00Z"}, at=NOW - timedelta(hours=1))  # fmt: skip
    assert lake.export(engine, tmp_path, now=NOW).events == 0
    Resolver(engine).drain()
    assert lake.export(engine, tmp_path, now=NOW, settle=timedelta(hours=2)).events == 0  # not settled yet
    assert lake.export(engine, tmp_path, now=NOW).events == 1
    seqs = [e["seq"] for e in read(tmp_path, "events")]
    assert len(seqs) == len(set(seqs)) == 4


def test_a_run_stopped_half_way_is_redone_without_duplicates(engine, shop, tmp_path, monkeypatch):
    def crash(root, state):
        raise OSError("disk full")

    monkeypatch.setattr(lake, "_save_state", crash)
    with pytest.raises(OSError):
        lake.export(engine, tmp_path, now=NOW)
    assert len(read(tmp_path, "events")) == 3  # written, but not recorded as exported
    monkeypatch.undo()
    r = lake.export(engine, tmp_path, now=NOW)
    assert r.removed_orphans == 2 and r.events == 3
    assert sorted(e["message_id"] for e in read(tmp_path, "events")) == ["i1", "o1", "v1"]
    (tmp_path / "_chorus_lake.json").write_text("{not json")
    with pytest.raises(ValueError, match="_chorus_lake.json is not valid JSON"):
        lake.export(engine, tmp_path, now=NOW)


def test_messages_days_are_rewritten_when_a_message_changes(engine, shop, tmp_path):
    # on the wall clock: a message's updated_at is when its row changed, whatever time its statuses carry
    now = dict(settle=timedelta(0))
    outbox.save_template(engine, shop["id"], "note", {"variants": {"in_app": {"title": "Hi", "body": "News"}}})
    with engine.connect() as conn:
        ws = workspaces.get(conn, shop["id"])
    req = outbox.parse_request({"to": {"user_id": "u1"}, "template": "note", "campaign_id": "spring"})
    m, _ = outbox.enqueue(engine, ws, req, "n1", Links("http://x", b"k" * 32))
    r = lake.export(engine, tmp_path, **now)
    assert (r.message_days, r.messages) == (1, 1)
    (row,) = read(tmp_path, "messages")
    assert (row["id"], row["status"], row["campaign_id"], row["channel"]) == (m["id"], "queued", "spring", "in_app")
    assert [s["status"] for s in read(tmp_path, "message_statuses")] == ["queued"]

    assert lake.export(engine, tmp_path, **now).message_days == 0  # unchanged: not rewritten
    d = Deliverer(engine)
    d.run_once()
    d.close()
    r = lake.export(engine, tmp_path, **now)
    assert r.message_days == 1
    (row,) = read(tmp_path, "messages")
    assert row["status"] == "sent" and row["sent_at"] is not None
    assert [s["status"] for s in read(tmp_path, "message_statuses")] == ["queued", "sent"]


def test_profiles_and_aliases_are_a_fresh_snapshot(engine, shop, tmp_path):
    lake.export(engine, tmp_path, now=NOW)
    profiles = read(tmp_path, "profiles")
    assert len(profiles) == 2 and read(tmp_path, "profile_aliases") == []
    # the anonymous visitor logs in: two profiles merge, and the old id becomes an alias of the survivor
    store(engine, shop, {"type": "identify", "userId": "u1", "anonymousId": "a9", "messageId": "i2",
                         "timestamp": "2026-06-02T11:00:00Z"}, at=NOW - timedelta(hours=2))  # fmt: skip
    Resolver(engine).drain()
    r = lake.export(engine, tmp_path, now=NOW)
    assert r.profiles == 1
    (alias,) = read(tmp_path, "profile_aliases")
    (profile,) = read(tmp_path, "profiles")
    assert alias["profile_id"] == profile["id"] and alias["alias_id"] in {p["id"] for p in profiles}
    events = read(tmp_path, "events")
    current = {e["message_id"]: {alias["alias_id"]: alias["profile_id"]}.get(e["profile_id"], e["profile_id"])
               for e in events}  # fmt: skip
    assert set(current.values()) == {profile["id"]}  # every event reaches today's profile through the aliases


def test_an_erased_person_leaves_the_lake_at_the_next_run(engine, shop, tmp_path):
    outbox.save_template(engine, shop["id"], "note", {"variants": {"in_app": {"title": "Hi", "body": "News"}}})
    with engine.connect() as conn:
        ws = workspaces.get(conn, shop["id"])
    for to, key in (({"user_id": "u1"}, "n1"), ({"anonymous_id": "a9"}, "n2")):
        req = outbox.parse_request({"to": to, "template": "note"})
        outbox.enqueue(engine, ws, req, key, Links("http://x", b"k" * 32))
    Resolver(engine).drain()
    lake.export(engine, tmp_path, settle=timedelta(0))
    people = {e["profile_id"] for e in read(tmp_path, "events")}
    assert len(people) == 2 and len(read(tmp_path, "messages")) == 2
    with engine.connect() as conn:
        ana = views.find_by_ident(conn, shop["id"], "user_id:u1")
    with engine.begin() as conn:
        privacy.erase(conn, shop["id"], ana)
    r = lake.export(engine, tmp_path, settle=timedelta(0))
    assert r.erased_profiles == 1 and r.files_rewritten_for_erasure >= 2
    assert {e["profile_id"] for e in read(tmp_path, "events")} == people - {ana}
    assert {e["message_id"] for e in read(tmp_path, "events")} >= {"v1"}  # the other person's events stay
    (left,) = read(tmp_path, "messages")
    assert left["profile_id"] != ana
    assert {s["message_id"] for s in read(tmp_path, "message_statuses")} == {left["id"]}
    assert ana not in {p["id"] for p in read(tmp_path, "profiles")}
    assert lake.export(engine, tmp_path, settle=timedelta(0)).erased_profiles == 0  # done once


def _cli(*args, db):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "chorus.cli", *args, "--db", db], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_export_says_what_it_holds_back_and_until_when(db_url, engine, tmp_path):
    """Events stored a moment ago are inside the settle window: the export says how many, the window, and when
    they can be exported, instead of silently writing fewer events; unresolved ones are counted apart."""
    import json

    from chorus.timeutil import utcnow

    w = workspaces.create(engine, "settle")
    old = utcnow() - timedelta(minutes=20)
    store(engine, w, {"type": "track", "userId": "u1", "event": "Order Completed", "messageId": "old",
                      "timestamp": "2026-06-01T08:30:00Z"}, at=old)  # fmt: skip
    Resolver(engine).drain()
    just_now = utcnow()
    store(engine, w, *({"type": "track", "userId": f"u{i}", "event": "Product Viewed", "messageId": f"new{i}",
                        "timestamp": "2026-06-01T09:00:00Z"} for i in range(3)), at=just_now)  # fmt: skip
    Resolver(engine).drain()
    out = tmp_path / "lake"
    r = _cli("lake", "export", "--out", str(out), "--settle", "1800", db=db_url)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{out}: 0 events") and "4 events stored in the last 1800 s" in r.stdout
    # the oldest can go 30 minutes after it was stored, the last 30 minutes after the newest
    when = f"from {(old + timedelta(seconds=1800)).strftime('%H:%M:%S')} to"
    assert when in r.stdout and (just_now + timedelta(seconds=1800)).strftime("%H:%M:%S") in r.stdout
    r = _cli("lake", "export", "--out", str(out), "--settle", "300", "--json", db=db_url)
    doc = json.loads(r.stdout)
    assert (doc["events"], doc["settling"], doc["held_back"], doc["settle_seconds"]) == (1, 3, 3, 300)
    first = datetime.fromisoformat(doc["settled_from"])
    assert abs((first - (just_now + timedelta(seconds=300))).total_seconds()) < 1
    r = _cli("lake", "export", "--out", str(out), "--settle", "300", db=db_url)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{out}: 0 events")
    said = r.stdout.split("Not exported yet:", 1)[1]
    assert "3 events stored in the last 300 s are held back" in said and "--settle 300" in said
    assert (just_now + timedelta(seconds=300)).strftime("%H:%M:%S") in said
    # pending identity resolution: counted and named, never exported early
    store(engine, w, {"type": "track", "userId": "u9", "event": "Order Completed", "messageId": "pending",
                      "timestamp": "2026-06-01T10:00:00Z"}, at=old)  # fmt: skip
    r = _cli("lake", "export", "--out", str(out), "--settle", "0", db=db_url)
    assert r.stdout.startswith(f"{out}: 3 events") and "1 events wait for identity resolution" in r.stdout
    Resolver(engine).drain()
    r = _cli("lake", "export", "--out", str(out), "--settle", "0", "--json", db=db_url)
    doc = json.loads(r.stdout)
    assert (doc["events"], doc["held_back"]) == (1, 0)
    r = _cli("lake", "export", "--out", str(out), "--settle", "0", db=db_url)
    assert "Not exported yet" not in r.stdout


def test_a_claimants_event_naming_the_erased_person_is_rewritten_in_the_lake(engine, shop, tmp_path):
    """Mallory's browser claimed Ana's email (the guards kept it off Ana's profile, but Mallory's event carried it).
    Erasing Ana rewrites that event in the store without her email; the lake's copy is rewritten too, so no row
    of the lake holds her address any more."""
    store(engine, shop, {"type": "identify", "userId": "mallory", "messageId": "mal0",
                         "timestamp": "2026-06-01T09:00:00Z"})  # fmt: skip
    with engine.begin() as conn:
        src = workspaces.source_by_write_key(conn, shop["write_key"])
        claim = {"type": "identify", "userId": "mallory", "messageId": "mal1", "timestamp": "2026-06-01T09:05:00Z",
                 "traits": {"email": "ana@example.com", "plan": "pro"}}  # fmt: skip
        ingest.store(conn, src, [normalise(claim, received_at=T0 + timedelta(minutes=6), source_kind="client")], [],
                     T0 + timedelta(minutes=6))  # fmt: skip
    Resolver(engine).drain()
    lake.export(engine, tmp_path, settle=timedelta(0))
    assert "ana@example.com" in str(read(tmp_path, "events"))  # her email, in Mallory's event
    with engine.connect() as conn:
        ana = views.find_by_ident(conn, shop["id"], "user_id:u1")
        mallory = views.find_by_ident(conn, shop["id"], "user_id:mallory")
    assert ana != mallory
    with engine.begin() as conn:
        privacy.erase(conn, shop["id"], ana)
    lake.export(engine, tmp_path, settle=timedelta(0))
    assert "ana@example.com" not in str(read(tmp_path, "events"))
    rows = {e["message_id"]: e for e in read(tmp_path, "events")}
    assert "mal1" in rows and '"plan":"pro"' in rows["mal1"]["payload"]  # Mallory's event stays, without Ana
    assert len([e for e in read(tmp_path, "events") if e["message_id"] == "mal1"]) == 1
    assert {"i1", "o1"}.isdisjoint(rows)
