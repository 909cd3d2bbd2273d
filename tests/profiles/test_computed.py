"""Computed traits: written per model, replaced whole, following merges, shown on profiles, usable in messages,
erased with the person."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from chorus import workspaces
from chorus.collect import ingest
from chorus.collect.messages import normalise
from chorus.identity.identifiers import IdentityConfig
from chorus.identity.resolver import Resolver
from chorus.messaging import outbox
from chorus.messaging.links import Links
from chorus.profiles import computed, privacy, views

T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
MODEL = "clv:test"


def send(engine, w, *msgs):
    with engine.begin() as conn:
        src = workspaces.source_by_write_key(conn, w["server_write_key"])
        ingest.store(conn, src, [normalise(m, received_at=T0, source_kind="server") for m in msgs], [], T0)
    Resolver(engine).drain()


def pid_of(engine, w, **ident):
    with engine.connect() as conn:
        return views.find_by_ident(conn, w["id"], views.lookup_ident(IdentityConfig(), **ident))


def profile(engine, w, pid):
    with engine.connect() as conn:
        return views.get_profile(conn, w["id"], pid, IdentityConfig())


def test_replace_follows_merges_skips_the_erased_and_drops_stale_rows(engine):
    w = workspaces.create(engine, "computed")
    send(engine, w,
         {"type": "identify", "userId": "ana", "traits": {"email": "ana@example.com"}},
         {"type": "track", "anonymousId": "dev-1", "event": "Viewed"},
         {"type": "identify", "userId": "bob", "traits": {"email": "bob@example.com"}},
         {"type": "identify", "userId": "cy", "traits": {"email": "cy@example.com"}})  # fmt: skip
    ana, anon, bob, cy = (pid_of(engine, w, user_id="ana"), pid_of(engine, w, anonymous_id="dev-1"),
                          pid_of(engine, w, user_id="bob"), pid_of(engine, w, user_id="cy"))  # fmt: skip
    with engine.begin() as conn:
        computed.replace(conn, w["id"], MODEL, {bob: {"clv_12m": 10.0}, cy: {"clv_12m": 5.0}}, T0)
    # the lake was exported before the anonymous visitor logged in as ana, and before cy was erased
    send(engine, w, {"type": "identify", "userId": "ana", "anonymousId": "dev-1"})
    with engine.begin() as conn:
        privacy.erase(conn, w["id"], cy)
    assert profile(engine, w, bob)["computed_traits"]["clv_12m"]["value"] == 10.0
    with engine.begin() as conn:
        out = computed.replace(conn, w["id"], MODEL, {anon: {"clv_12m": 99.5, "probability_alive": 0.8},
                                                      cy: {"clv_12m": 1.0}}, T0 + timedelta(days=1))  # fmt: skip
    assert out == {"profiles": 1, "skipped": 1, "merged": 0, "removed": 1}  # bob no longer a customer: row goes
    survivor = profile(engine, w, ana)
    clv = survivor["computed_traits"]["clv_12m"]
    assert (clv["value"], clv["model"]) == (99.5, MODEL) and clv["computed_at"].startswith("2026-06-02T09:00:00")
    assert survivor["computed_traits"]["probability_alive"]["value"] == 0.8
    assert profile(engine, w, bob)["computed_traits"] == {}
    # a message can use them
    outbox.save_template(engine, w["id"], "winback", {"variants": {"email": {
        "subject": "{% if computed.probability_alive < 0.9 %}We miss you{% else %}Hello{% endif %}",
        "html": "<p>Worth {{ computed.clv_12m }}</p>"}}})  # fmt: skip
    with engine.connect() as conn:
        ws = workspaces.get(conn, w["id"])
    body = outbox.parse_request({"to": {"email": "ana@example.com"}, "template": "winback", "channel": "email"})
    msg = outbox.enqueue(engine, ws, body, "k1", Links("http://chorus.test", b"k" * 32))[0]
    with engine.connect() as conn:
        rendered = outbox.get_message(conn, w["id"], msg["id"])
    assert rendered["status"] == "queued", rendered
    assert rendered["content"]["subject"] == "We miss you" and "Worth 99.5" in rendered["content"]["html"]
    # erasure deletes them with the person
    with engine.begin() as conn:
        counts = privacy.erase(conn, w["id"], ana)["deleted"]
    assert counts["computed_traits"] == 2


def test_two_scored_ids_merged_since_keep_the_survivors_values(engine):
    w = workspaces.create(engine, "computed-merge")
    send(engine, w,
         {"type": "identify", "userId": "ana", "traits": {"email": "ana@example.com"}},
         {"type": "track", "anonymousId": "dev-1", "event": "Viewed"})  # fmt: skip
    ana, anon = pid_of(engine, w, user_id="ana"), pid_of(engine, w, anonymous_id="dev-1")
    send(engine, w, {"type": "identify", "userId": "ana", "anonymousId": "dev-1"})
    survivor = pid_of(engine, w, user_id="ana")
    merged = anon if survivor == ana else ana
    for order in ([merged, survivor], [survivor, merged]):
        values = {pid: {"clv_12m": 1.0 if pid == survivor else 2.0} for pid in order}
        with engine.begin() as conn:
            out = computed.replace(conn, w["id"], MODEL, values, T0)
        assert (out["profiles"], out["merged"]) == (1, 1)
        assert profile(engine, w, survivor)["computed_traits"]["clv_12m"]["value"] == 1.0
