"""An opt-out applied before its event is resolved survives a replay that the resolver ran meanwhile (PostgreSQL,
where they can interleave; SQLite has one writer).

``messaging.consent.record`` (a STOP keyword, an unsubscribe link) stores its ``Consent Updated`` event and applies
the opt-out to the profile's state at once, under the identity lock, so that no message goes out before the event
is resolved. A resolver batch read before that event committed, and waiting for the lock meanwhile, must not
rebuild the profile's state (a merge's replay) from the events it knows and drop the opt-out. Nor may the opt-out
land on a profile that no longer owns the address: a webhook looks up the sender's profile before it takes the lock,
and a replay that moves the phone to another profile may commit in between; ``record`` applies it to the current
owner of the event's anchor identifier, which is where the resolver folds the event later."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chorus import workspaces
from chorus.api import webhooks
from chorus.identity.resolver import Resolver
from chorus.messaging import consent
from chorus.profiles import views
from chorus.store.tables import events, rejected_events
from tests.identity.helpers import T0, profile_of, resolve, send, states_by_group


def _waiting_on_an_advisory_lock(engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                                         "AND database = (SELECT oid FROM pg_database WHERE datname = "
                                         "current_database())")).scalar_one())  # fmt: skip


@pytest.fixture
def pg(engine):
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: SQLite has one writer at a time")
    return engine


def _two_profiles_and_a_pending_merge(engine) -> tuple[str, str]:
    """u1 (with a phone) and the anonymous a1 are two profiles; the identify that merges them is pending."""
    ws = workspaces.create(engine, "optout-race")["id"]
    send(engine, ws, [{"type": "identify", "userId": "u1", "messageId": "i1", "timestamp": T0.isoformat(),
                       "traits": {"phone": "+31612345678"}},
                      {"type": "track", "event": "Viewed", "anonymousId": "a1", "messageId": "v1",
                       "timestamp": T0.isoformat()}])  # fmt: skip
    resolve(engine)
    known = profile_of(engine, ws, "user_id:u1")
    assert known != profile_of(engine, ws, "anonymous_id:a1")
    # pending: the identify that merges the two (the resolver replays the component)
    send(engine, ws, [{"type": "identify", "userId": "u1", "anonymousId": "a1", "messageId": "i2",
                       "timestamp": T0.isoformat()}])  # fmt: skip
    return ws, known


def _whatsapp_consent(engine, ws: str) -> dict | None:
    survivor = profile_of(engine, ws, "user_id:u1")
    with engine.connect() as conn:
        view = views.get_profile(conn, ws, survivor, workspaces.get(conn, ws).identity)
    return view["consent"].get("whatsapp:*")


def _stop(conn, ws: str, profile_id: str, key: str = "wamid-1") -> None:
    consent.record(conn, ws, {"userId": "u1"}, channel="whatsapp", topic="*", status="denied", reason="STOP",
                   at=T0, direction="inbound", key=key, profile_id=profile_id, unique_key=True)  # fmt: skip


def _wait_for_a_waiter(engine, n: int = 1, unless=lambda: False) -> None:
    deadline = time.monotonic() + 20
    while _waiting_on_an_advisory_lock(engine) < n and not unless():
        assert time.monotonic() < deadline, f"fewer than {n} waited for the identity lock"
        time.sleep(0.02)


def test_an_opt_out_applied_while_a_replay_waits_for_the_lock_is_kept(pg):
    engine = pg
    ws, known = _two_profiles_and_a_pending_merge(engine)
    stop = engine.connect()
    stop.begin()
    done: list[int] = []
    resolver = threading.Thread(target=lambda: done.append(Resolver(engine).process_pending()), daemon=True)
    try:
        _stop(stop, ws, known)
        resolver.start()  # reads the merge (not the uncommitted STOP), then waits for the identity lock
        _wait_for_a_waiter(engine)
    finally:
        stop.commit()
        stop.close()
    resolver.join(30)
    assert done and done[0] >= 1
    assert (_whatsapp_consent(engine, ws) or {}).get("status") == "denied"


def test_an_opt_out_whose_event_another_worker_holds_survives_a_replay(pg):
    engine = pg
    ws, known = _two_profiles_and_a_pending_merge(engine)
    with engine.begin() as conn:
        _stop(conn, ws, known)
    assert _whatsapp_consent(engine, ws)["status"] == "denied"
    other = engine.connect()  # another worker's batch holds the STOP's row (it waits for the lock we will take)
    other.begin()
    try:
        held = other.execute(sa.text("SELECT seq FROM events WHERE profile_id IS NULL AND event = 'Consent Updated' "
                                     "FOR UPDATE")).all()  # fmt: skip
        assert len(held) == 1
        assert Resolver(engine).process_pending() >= 1  # the merge, replayed without the STOP in its batch
        assert (_whatsapp_consent(engine, ws) or {}).get("status") == "denied"
    finally:
        other.rollback()
        other.close()


def test_an_opt_out_for_a_profile_merged_away_while_it_waited_goes_to_the_survivor(pg):
    engine = pg
    ws, _known = _two_profiles_and_a_pending_merge(engine)
    anon = profile_of(engine, ws, "anonymous_id:a1")
    holder = engine.connect()
    holder.begin()
    holder.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": "identity:" + ws})
    resolver = threading.Thread(target=lambda: Resolver(engine).process_pending(), daemon=True)
    errors: list[Exception] = []

    def writer():
        try:
            with engine.begin() as conn:  # the STOP names the anonymous profile, which the merge retires
                consent.record(conn, ws, {"anonymousId": "a1"}, channel="whatsapp", topic="*", status="denied",
                               reason="STOP", at=T0, direction="inbound", key="wamid-2", profile_id=anon,
                               unique_key=True)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    stopper = threading.Thread(target=writer, daemon=True)
    try:
        resolver.start()
        _wait_for_a_waiter(engine)
        stopper.start()  # stores its event, then queues for the lock behind the resolver
        time.sleep(0.5)
    finally:
        holder.commit()
        holder.close()
    resolver.join(30)
    stopper.join(30)
    assert not errors, errors
    assert profile_of(engine, ws, "anonymous_id:a1") == profile_of(engine, ws, "user_id:u1")
    assert (_whatsapp_consent(engine, ws) or {}).get("status") == "denied"


def test_a_pending_grant_that_is_then_rejected_never_stands_over_an_opt_out(engine):
    """A replay re-applies only the opt-outs Chorus applied early (``record``'s own denials): a pending grant from
    anyone waits for its batch, which here rejects it (a stored timestamp the resolver refuses)."""
    ws = workspaces.create(engine, "grant-race")["id"]
    send(engine, ws, [{"type": "identify", "userId": "u1", "messageId": "i1", "timestamp": T0.isoformat()},
                      {"type": "track", "event": "Consent Updated", "userId": "u1", "messageId": "c0",
                       "timestamp": T0.isoformat(), "properties": {"channel": "whatsapp", "status": "denied"}},
                      {"type": "track", "event": "Viewed", "anonymousId": "a1", "messageId": "v1",
                       "timestamp": T0.isoformat()}])  # fmt: skip
    resolve(engine)
    send(engine, ws, [{"type": "identify", "userId": "u1", "anonymousId": "a1", "messageId": "i2",
                       "timestamp": T0.isoformat()}])  # fmt: skip
    grant = {"channel": "whatsapp", "status": "granted"}
    send(engine, ws, [{"type": "track", "event": "Consent Updated", "userId": "u1", "messageId": "bad",
                       "timestamp": T0.isoformat(), "properties": grant}])  # fmt: skip
    with engine.begin() as conn:
        row = conn.execute(sa.select(events.c.seq, events.c.payload).where(events.c.message_id == "bad")).one()
        conn.execute(events.update().where(events.c.seq == row.seq).values(payload={**row.payload,
                                                                                    "timestamp": "zzzz"}))  # fmt: skip
    Resolver(engine).process_pending(limit=1)  # the merge alone: a replay, the bad grant still pending
    resolve(engine)
    with engine.connect() as conn:
        rejected = {r.message_id for r in conn.execute(sa.select(rejected_events.c.message_id))}
    assert "bad" in rejected
    assert _whatsapp_consent(engine, ws)["status"] == "denied"


PHONE = "+31612345678"


def _a_pending_move_of_the_phone(engine) -> tuple[str, str, str]:
    """u2 (no phone) and u1 (with PHONE, seen later) are two profiles; pending: an identify of u2 with PHONE dated
    between them. Its replay gives PHONE to u2 (u1's later link to it would join two user ids: refused), so the
    phone moves from u1's profile to u2's, both keeping their ids."""
    ws = workspaces.create(engine, "phone-move")["id"]
    send(engine, ws, [{"type": "identify", "userId": "u2", "messageId": "m1", "timestamp": T0.isoformat()},
                      {"type": "identify", "userId": "u1", "messageId": "m2", "traits": {"phone": PHONE},
                       "timestamp": (T0 + timedelta(hours=2)).isoformat()}])  # fmt: skip
    resolve(engine)
    old, new = profile_of(engine, ws, "user_id:u1"), profile_of(engine, ws, "user_id:u2")
    assert profile_of(engine, ws, f"phone:{PHONE}") == old != new
    send(engine, ws, [{"type": "identify", "userId": "u2", "messageId": "m3", "traits": {"phone": PHONE},
                       "timestamp": (T0 + timedelta(hours=1)).isoformat()}])  # fmt: skip
    return ws, old, new


def _consent_of(engine, ws: str, pid: str, slot: str) -> str | None:
    with engine.connect() as conn:
        view = views.get_profile(conn, ws, pid, workspaces.get(conn, ws).identity)
    return (view["consent"].get(slot) or {}).get("status")


def _twilio_stop(engine, ws: str, errors: list[Exception]) -> None:
    """The Twilio inbound webhook's own handler: it looks up the phone's owner, then records the STOP."""
    try:
        with engine.connect() as conn:
            workspace = workspaces.get(conn, ws)
        webhooks._inbound(SimpleNamespace(engine=engine), workspace, {"From": PHONE, "Body": "STOP",
                                                                      "MessageSid": "SM-stop-1"})  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


def _resolver_waits_then_stop(engine, ws: str, stop_waits: bool, webhook_call=_twilio_stop) -> None:
    """The resolver reads its batch and queues for the identity lock (held here); then the webhook
    (``webhook_call(engine, ws, errors)``, the STOP by default) looks up the phone's owner and (if it takes the lock)
    queues behind it; then the lock is released."""
    holder = engine.connect()
    holder.begin()
    holder.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": "identity:" + ws})
    errors: list[Exception] = []
    resolver = threading.Thread(target=lambda: Resolver(engine).process_pending(), daemon=True)
    webhook = threading.Thread(target=webhook_call, args=(engine, ws, errors), daemon=True)
    try:
        resolver.start()
        _wait_for_a_waiter(engine)
        webhook.start()
        # the webhook has read the owner once it waits for the lock (or, if it takes none, once it is done)
        _wait_for_a_waiter(engine, 2, unless=lambda: not stop_waits and not webhook.is_alive())
    finally:
        holder.commit()
        holder.close()
    resolver.join(30)
    webhook.join(30)
    assert not resolver.is_alive() and not webhook.is_alive()
    assert not errors, errors


def test_a_stop_whose_phone_moves_to_another_profile_while_it_waits_goes_to_the_new_owner(pg):
    engine = pg
    ws, old, new = _a_pending_move_of_the_phone(engine)
    _resolver_waits_then_stop(engine, ws, stop_waits=True)
    assert profile_of(engine, ws, f"phone:{PHONE}") == new  # the replay moved it while the STOP waited
    assert _consent_of(engine, ws, new, "sms:*") == "denied"  # before the STOP's event is resolved
    assert _consent_of(engine, ws, old, "sms:*") is None  # u1 no longer has that phone and never said STOP
    resolve(engine)  # the STOP's own event is folded where it was applied early
    assert _consent_of(engine, ws, new, "sms:*") == "denied"
    assert _consent_of(engine, ws, old, "sms:*") is None


def test_a_stop_from_a_phone_whose_profile_is_created_while_it_waits_applies_to_it(pg):
    """The webhook finds nobody for the phone (its identify is pending): the STOP still takes the lock, then finds
    the profile the resolver made meanwhile; without it the profile existed without the opt-out until the STOP's
    own event was resolved."""
    engine = pg
    ws = workspaces.create(engine, "phone-new")["id"]
    send(engine, ws, [{"type": "identify", "userId": "u1", "messageId": "m1", "traits": {"phone": PHONE},
                       "timestamp": T0.isoformat()}])  # fmt: skip
    _resolver_waits_then_stop(engine, ws, stop_waits=False)
    owner = profile_of(engine, ws, f"phone:{PHONE}")
    assert owner == profile_of(engine, ws, "user_id:u1")
    assert _consent_of(engine, ws, owner, "sms:*") == "denied"
    resolve(engine)
    assert _consent_of(engine, ws, owner, "sms:*") == "denied"


def test_consent_applies_to_the_current_owner_of_its_anchor_not_the_profile_the_caller_read(engine):
    """The same contract without threads (both stores): a caller that read the phone's owner before a replay moved
    it, or found nobody, gets the consent applied where the resolver will fold its event."""
    ws, old, new = _a_pending_move_of_the_phone(engine)
    resolve(engine)  # the replay commits: ``old`` is what a caller read before it
    ident = {"context": {"traits": {"phone": PHONE}}}
    with engine.begin() as conn:
        consent.record(conn, ws, ident, channel="sms", topic="*", status="denied", reason="STOP", at=T0,
                       direction="inbound", key="SM-stale", profile_id=old, unique_key=True)  # fmt: skip
        consent.record(conn, ws, ident, channel="whatsapp", topic="*", status="denied", reason="STOP", at=T0,
                       direction="inbound", key="wamid-none", profile_id=None, unique_key=True)  # fmt: skip
    for slot in ("sms:*", "whatsapp:*"):
        assert _consent_of(engine, ws, new, slot) == "denied", slot
        assert _consent_of(engine, ws, old, slot) is None, slot
    resolve(engine)
    for slot in ("sms:*", "whatsapp:*"):
        assert _consent_of(engine, ws, new, slot) == "denied", slot
        assert _consent_of(engine, ws, old, slot) is None, slot


def test_consent_for_an_event_without_an_identifier_goes_to_the_profile_named(engine):
    """An event the resolver cannot attribute (it will be rejected) has no anchor to follow: the profile the caller
    names gets the opt-out, so it still applies at once."""
    ws, old, new = _a_pending_move_of_the_phone(engine)
    with engine.begin() as conn:
        consent.record(conn, ws, {}, channel="email", topic="*", status="denied", reason="hard bounce", at=T0,
                       direction="outbound", key="msg-1", profile_id=old)  # fmt: skip
    assert _consent_of(engine, ws, old, "email:*") == "denied"
    assert _consent_of(engine, ws, new, "email:*") is None


@st.composite
def _history(draw):
    """Trusted identifies of three users with two phones at random times, split into what the caller saw resolved
    when it looked up the STOP's phone and what the resolver did before the STOP took the lock."""
    evs = []
    for n in range(draw(st.integers(1, 7))):
        msg = {"type": "identify", "userId": draw(st.sampled_from(["u1", "u2", "u3"])), "messageId": f"m{n}",
               "timestamp": f"2026-01-01T10:{draw(st.integers(0, 20)):02d}:00Z"}  # fmt: skip
        phone = draw(st.sampled_from([None, PHONE, "+31612345679"]))
        if phone:
            msg["traits"] = {"phone": phone}
        evs.append(msg)
    cut = draw(st.integers(0, len(evs)))
    return evs[:cut], evs[cut:]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_history())
def test_an_early_opt_out_is_where_its_event_is_folded_whatever_the_caller_read(engine, history):
    seen, meanwhile = history
    ws = workspaces.create(engine, "early-optout-" + uuid.uuid4().hex[:8])["id"]
    if seen:
        send(engine, ws, seen)
        resolve(engine)
    with engine.connect() as conn:  # what the webhook found before the lock (maybe nobody)
        stale = views.find_by_idents(conn, ws, [f"phone:{PHONE}"]).get(f"phone:{PHONE}")
    if meanwhile:  # merges, replays that move the phone, its first profile
        send(engine, ws, meanwhile)
        resolve(engine)
    with engine.begin() as conn:
        consent.record(conn, ws, {"context": {"traits": {"phone": PHONE}}}, channel="sms", topic="*",
                       status="denied", reason="STOP", at=T0 + timedelta(days=1), direction="inbound", key="SM-p",
                       profile_id=stale, unique_key=True)  # fmt: skip
    early = {g: s["consent"] for g, s in states_by_group(engine, ws).items()}
    resolve(engine)  # the STOP's event, folded by the resolver
    folded = {g: s["consent"] for g, s in states_by_group(engine, ws).items()}
    owned = any(f"phone:{PHONE}" in g for g in early)
    # nobody owned the phone: the STOP's event makes her profile, with the opt-out; every other profile is as it was
    assert set(folded) - set(early) == (set() if owned else {frozenset({f"phone:{PHONE}"})})
    assert {g: folded[g] for g in early} == early
    owner = next(g for g in folded if f"phone:{PHONE}" in g)
    assert folded[owner]["sms:*"]["status"] == "denied"
