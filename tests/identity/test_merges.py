"""Identity resolution scenarios on both engines: merges, guards, survivors, aliases, trait policies."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from chorus import workspaces
from chorus.store.tables import events, merges, profile_aliases, profiles
from tests.identity.helpers import partition, profile_of, resolve, send, states_by_group


def ts(minute: int) -> str:
    return f"2026-01-01T10:{minute:02d}:00Z"


def test_anonymous_browsing_then_identify_is_one_profile(engine, workspace):
    ws = workspace["id"]
    send(engine, ws, [{"type": "page", "anonymousId": "a1", "messageId": "1", "timestamp": ts(1)}], trusted=False)
    resolve(engine)
    anon_pid = profile_of(engine, ws, "anonymous_id:a1")
    send(engine, ws, [
        {"type": "identify", "anonymousId": "a1", "userId": "u1", "messageId": "2", "timestamp": ts(2),
         "traits": {"email": " Ana@Example.COM ", "phone": "+44 20 7946 0958"}},
    ], trusted=False)  # fmt: skip
    resolve(engine)
    assert partition(engine, ws) == {frozenset({"anonymous_id:a1", "user_id:u1", "email:ana@example.com",
                                                "phone:+442079460958"})}  # fmt: skip
    assert profile_of(engine, ws, "user_id:u1") == anon_pid  # the anonymous profile simply became known


def test_two_existing_profiles_merge_known_survives_and_alias_resolves(engine, workspace):
    ws = workspace["id"]
    send(engine, ws, [
        {"type": "identify", "userId": "u1", "messageId": "k", "timestamp": ts(5), "traits": {"name": "Ana"}},
        {"type": "page", "anonymousId": "a1", "messageId": "p", "timestamp": ts(1)},
    ])  # fmt: skip
    resolve(engine)
    known, anon = profile_of(engine, ws, "user_id:u1"), profile_of(engine, ws, "anonymous_id:a1")
    assert known != anon
    send(engine, ws, [{"type": "track", "userId": "u1", "anonymousId": "a1", "event": "Login", "messageId": "l",
                       "timestamp": ts(9)}])  # fmt: skip
    resolve(engine)
    assert profile_of(engine, ws, "anonymous_id:a1") == known  # known beats anonymous even though created later
    with engine.connect() as conn:
        assert (
            conn.execute(sa.select(profile_aliases.c.profile_id).where(profile_aliases.c.alias_id == anon)).scalar_one()
            == known
        )
        assert (
            conn.execute(sa.select(sa.func.count()).select_from(profiles).where(profiles.c.id == anon)).scalar_one()
            == 0
        )
        m = conn.execute(sa.select(merges)).one()
        assert (m.survivor_id, m.merged_id, m.message_id) == (known, anon, "l")
        # history moved
        assert set(conn.execute(sa.select(events.c.profile_id)).scalars()) == {known}


def test_shared_device_never_merges_two_user_ids(engine, workspace):
    ws = workspace["id"]
    send(engine, ws, [
        {"type": "identify", "userId": "alice", "anonymousId": "tablet", "messageId": "1", "timestamp": ts(1),
         "traits": {"email": "alice@example.com"}},
        {"type": "identify", "userId": "bob", "anonymousId": "tablet", "messageId": "2", "timestamp": ts(2),
         "traits": {"email": "bob@example.com"}},
        {"type": "page", "anonymousId": "tablet", "messageId": "3", "timestamp": ts(3)},
    ])  # fmt: skip
    resolve(engine)
    assert partition(engine, ws) == {
        frozenset({"user_id:alice", "anonymous_id:tablet", "email:alice@example.com"}),
        frozenset({"user_id:bob", "email:bob@example.com"}),
    }
    states = states_by_group(engine, ws)
    bob = states[frozenset({"user_id:bob", "email:bob@example.com"})]
    assert bob["traits"]["email"] == "bob@example.com"  # nothing of alice's moved to bob or the reverse
    alice = states[frozenset({"user_id:alice", "anonymous_id:tablet", "email:alice@example.com"})]
    assert alice["traits"]["email"] == "alice@example.com"


def test_untrusted_source_cannot_merge_two_known_profiles(engine, workspace):
    ws = workspace["id"]
    send(engine, ws, [
        {"type": "identify", "userId": "u1", "messageId": "1", "timestamp": ts(1)},
        {"type": "identify", "userId": "u2", "messageId": "2", "timestamp": ts(2),
         "traits": {"email": "x@example.com"}},
    ])  # fmt: skip
    resolve(engine)
    # A browser claims u1 owns u2's email: refused.
    send(engine, ws, [{"type": "identify", "userId": "u1", "messageId": "3", "timestamp": ts(3),
                       "traits": {"email": "x@example.com"}}], trusted=False)  # fmt: skip
    resolve(engine)
    assert len(partition(engine, ws)) == 2
    # The same link from the server (trusted) may merge them — but u1 and u2 are two user ids: still refused.
    send(engine, ws, [{"type": "identify", "userId": "u1", "messageId": "4", "timestamp": ts(4),
                       "traits": {"email": "x@example.com"}}])  # fmt: skip
    resolve(engine)
    assert len(partition(engine, ws)) == 2


def test_trusted_source_merges_two_known_profiles_earliest_survives(engine, workspace):
    ws = workspace["id"]
    send(engine, ws, [
        {"type": "identify", "anonymousId": "x", "messageId": "1", "timestamp": ts(1),
         "traits": {"email": "a@example.com"}},
        {"type": "identify", "userId": "u9", "messageId": "2", "timestamp": ts(2), "traits": {"loyalty_id": "L-1"}},
    ])  # fmt: skip
    resolve(engine)
    early, late = profile_of(engine, ws, "email:a@example.com"), profile_of(engine, ws, "user_id:u9")
    send(engine, ws, [{"type": "identify", "userId": "u9", "messageId": "3", "timestamp": ts(3),
                       "traits": {"email": "a@example.com"}}], trusted=False)  # fmt: skip
    resolve(engine)
    assert profile_of(engine, ws, "user_id:u9") != profile_of(engine, ws, "email:a@example.com")
    send(engine, ws, [{"type": "identify", "userId": "u9", "messageId": "4", "timestamp": ts(4),
                       "traits": {"email": "a@example.com"}}], trusted=True)  # fmt: skip
    resolve(engine)
    assert profile_of(engine, ws, "user_id:u9") == profile_of(engine, ws, "email:a@example.com") == early
    assert late != early


def test_trait_policies_on_merge(engine, workspace):
    ws = workspace["id"]
    workspaces.update_settings(engine, ws, {"trait_policies": {"cart_items": "sum", "signup_source": "first"}})
    send(engine, ws, [
        {"type": "identify", "anonymousId": "a", "messageId": "1", "timestamp": ts(1),
         "traits": {"cart_items": 2, "signup_source": "instagram", "name": "anon"}},
        {"type": "identify", "userId": "u", "messageId": "2", "timestamp": ts(2),
         "traits": {"cart_items": 3, "signup_source": "store", "name": ""}},
        {"type": "identify", "userId": "u", "messageId": "3", "timestamp": ts(3), "traits": {"name": "Ana"}},
    ])  # fmt: skip
    resolve(engine)
    send(engine, ws, [{"type": "track", "userId": "u", "anonymousId": "a", "event": "Login", "messageId": "4",
                       "timestamp": ts(4), "context": {"channel": "app"}}])  # fmt: skip
    resolve(engine)
    (st,) = states_by_group(engine, ws).values()
    assert st["traits"]["cart_items"] == 5  # counters add
    assert st["traits"]["signup_source"] == "instagram"  # first wins
    assert st["traits"]["name"] == "Ana"  # newest non-empty wins
    assert st["channels"]["app"]["count"] == 1 and sum(c["count"] for c in st["channels"].values()) == 4


def test_alias_links_previous_anonymous_id(engine, workspace):
    ws = workspace["id"]
    send(engine, ws, [{"type": "page", "anonymousId": "old-device", "messageId": "1", "timestamp": ts(1)},
                      {"type": "identify", "userId": "u1", "messageId": "2", "timestamp": ts(2)}])  # fmt: skip
    resolve(engine)
    send(engine, ws, [{"type": "alias", "userId": "u1", "previousId": "old-device", "messageId": "3",
                       "timestamp": ts(3)}], trusted=False)  # fmt: skip
    resolve(engine)
    assert partition(engine, ws) == {frozenset({"anonymous_id:old-device", "user_id:u1"})}


@pytest.mark.parametrize(("new", "old"), [("zzz-new", "aaa-old"), ("aaa-new", "zzz-old")])
@pytest.mark.parametrize("same_batch", [False, True])
def test_trusted_alias_renames_a_user_whatever_the_ids_or_batching(engine, workspace, new, old, same_batch):
    ws = workspace["id"]
    first = [{"type": "identify", "userId": old, "messageId": "1", "timestamp": ts(1), "traits": {"plan": "gold"}}]
    alias = [{"type": "alias", "userId": new, "previousId": old, "messageId": "2", "timestamp": ts(2)}]
    if same_batch:
        send(engine, ws, first + alias)
    else:
        send(engine, ws, first)
        resolve(engine)
        send(engine, ws, alias)
    resolve(engine)
    assert partition(engine, ws) == {frozenset({f"user_id:{old}", f"user_id:{new}", f"anonymous_id:{old}"})}


def test_untrusted_alias_cannot_join_two_user_ids(engine, workspace):
    ws = workspace["id"]
    send(engine, ws, [{"type": "identify", "userId": "victim", "messageId": "1", "timestamp": ts(1)}])
    resolve(engine)
    send(engine, ws, [{"type": "alias", "userId": "attacker", "previousId": "victim", "messageId": "2",
                       "timestamp": ts(2)}], trusted=False)  # fmt: skip
    resolve(engine)
    assert profile_of(engine, ws, "user_id:victim") != profile_of(engine, ws, "user_id:attacker")


def test_trusted_alias_still_respects_other_unique_identifiers(engine, workspace):
    ws = workspace["id"]
    send(engine, ws, [
        {"type": "identify", "userId": "a", "messageId": "1", "timestamp": ts(1), "traits": {"loyalty_id": "L1"}},
        {"type": "identify", "userId": "b", "messageId": "2", "timestamp": ts(2), "traits": {"loyalty_id": "L2"}},
        {"type": "alias", "userId": "b", "previousId": "a", "messageId": "3", "timestamp": ts(3)},
    ])  # fmt: skip
    resolve(engine)
    assert profile_of(engine, ws, "user_id:a") != profile_of(engine, ws, "user_id:b")


def test_declared_identifiers_and_consent(engine, workspace):
    ws = workspace["id"]
    send(engine, ws, [
        {"type": "identify", "userId": "u1", "messageId": "1", "timestamp": ts(1),
         "context": {"externalIds": [{"type": "messenger_psid", "id": "PSID-9", "collection": "users"}],
                     "device": {"token": "tok-1"}, "timezone": "Europe/Paris", "locale": "fr-FR"},
         "traits": {"loyalty_id": "LC-1", "consent": {"email": {"newsletter": "granted"}}}},
        {"type": "track", "userId": "u1", "event": "Consent Updated", "messageId": "2", "timestamp": ts(2),
         "properties": {"channel": "sms", "topic": "offers", "status": "denied"}},
    ])  # fmt: skip
    resolve(engine)
    ((group, st),) = states_by_group(engine, ws).items()
    assert group == {"user_id:u1", "messenger_psid:PSID-9", "device_token:tok-1", "loyalty_id:LC-1"}
    assert st["consent"]["email:newsletter"]["status"] == "granted"
    assert st["consent"]["sms:offers"]["status"] == "denied"


def test_invalid_email_is_kept_as_trait_not_identifier(engine, workspace):
    ws = workspace["id"]
    send(engine, ws, [{"type": "identify", "userId": "u1", "messageId": "1", "timestamp": ts(1),
                       "traits": {"email": "not-an-email", "phone": "12"}}])  # fmt: skip
    resolve(engine)
    ((group, st),) = states_by_group(engine, ws).items()
    assert group == {"user_id:u1"} and st["traits"]["email"] == "not-an-email"


def test_phone_default_region(engine, workspace):
    ws = workspace["id"]
    workspaces.update_settings(engine, ws, {"default_region": "fr"})
    send(engine, ws, [{"type": "identify", "userId": "u1", "messageId": "1", "timestamp": ts(1),
                       "traits": {"phone": "06 12 34 56 78"}}])  # fmt: skip
    resolve(engine)
    assert partition(engine, ws) == {frozenset({"user_id:u1", "phone:+33612345678"})}
