"""The incremental follow sync (docs/decisions/0049-incremental-follow-sync.md) against the full one, on SQLite and
PostgreSQL: random entries and exits, trait, consent and identifier changes, merges, replays, erasures, changes
of the audience's definition and failed uploads; after every sync an audience synced incrementally holds exactly
the rows, and reports exactly the counts and skips, of one following the same segment synced in full passes."""

from __future__ import annotations

import uuid
from datetime import timedelta

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chorus import workspaces
from chorus.messaging import consent
from chorus.messaging.audiences import store, sync
from chorus.messaging.audiences.base import Upload
from chorus.messaging.audiences.settings import validate_audience
from chorus.messaging.providers import ProviderError
from chorus.profiles import privacy
from chorus.segments import rules
from chorus.segments import store as segment_store
from chorus.store.tables import audience_members, audiences, profile_changes
from chorus.timeutil import utcnow
from tests.identity.helpers import resolve, send

KNOWN = 4  # people u0..u3 (a user id and an e-mail address)
ANONYMOUS = 2  # people a0, a1 (an anonymous id and an e-mail address): a known person's identify merges them
STEP = timedelta(seconds=200)  # between two syncs: more than store.MARGIN, so the third sync on is incremental


class Platform:
    """An AudienceClient holding whole rows; ``fail`` makes the next call fail, taking nothing; while ``refuse`` is
    set it rejects every removal (the rows stay held) and takes the adds."""

    name, type = "fake", "meta"

    def __init__(self):
        self.held: set[frozenset] = set()
        self.fail = False
        self.refuse = False

    def apply(self, destination, op, rows, done, options):
        if self.fail:
            self.fail = False
            raise ProviderError("the platform fell over")
        if op == "remove" and self.refuse:
            done([], {i: "removal rejected" for i in range(len(rows))})
            return Upload(received=len(rows), invalid=len(rows))
        for row in rows:
            (self.held.add if op == "add" else self.held.discard)(frozenset(row.items()))
        done(list(range(len(rows))), {})
        return Upload(received=len(rows))

    def close(self):
        pass


class World:
    def __init__(self, engine):
        self.engine = engine
        ws = workspaces.create(engine, f"aud-inc-{uuid.uuid4().hex[:6]}")
        self.n = 0
        self.at = utcnow() - timedelta(days=30)  # event times, in order (a "late" one goes back)
        self.clock = utcnow()  # the syncs' clock
        self.ws_id = ws["id"]
        people = [{"type": "identify", "userId": f"u{i}", "traits": {"email": f"e{i}@example.com",
                   "firstName": "Ana", "lastName": f"L{i}"}} for i in range(KNOWN)]  # fmt: skip
        people += [{"type": "identify", "anonymousId": f"a{j}", "traits": {"email": f"x{j}@example.com"}}
                   for j in range(ANONYMOUS)]  # fmt: skip
        self.send(people)
        with engine.begin() as conn:
            rule = rules.parse({"trait": {"name": "plan", "equals": "pro"}})  # membership is written below
            segment_store.save(conn, self.ws_id, "s", "S", rule, utcnow())
        for name in ("inc", "full"):
            body = {"name": name, "provider": "meta", "destination": "1", "identifiers": ["email", "phone"],
                    "source": {"segment": "s", "interval_seconds": 60}}  # fmt: skip
            w_settings = {"audiences": {"providers": [{"type": "meta", "access_token_env": "CHORUS_X"}]}}
            store.create(engine, self.ws_id, validate_audience(body, w_settings), utcnow())
        self.platforms = {"inc": Platform(), "full": Platform()}
        self.failed = False  # since the last comparison: then only the rows held are compared, not the counts
        self.passes: list[str] = []

    def ws(self):
        with self.engine.connect() as conn:
            return workspaces.get(conn, self.ws_id)

    def send(self, messages: list[dict], late: bool = False) -> None:
        out = []
        for m in messages:
            self.n += 1
            if not late:
                self.at += timedelta(minutes=1)
            when = self.at - timedelta(days=10) if late else self.at
            out.append({**m, "messageId": f"m{self.n}", "timestamp": when.isoformat()})
        # received now: the helper's default receipt time (2026-01-01) is before these event times, which would all
        # be taken as from the future and stamped with it (every change the same instant: later ones lost)
        send(self.engine, self.ws_id, out, received_at=utcnow())
        resolve(self.engine)

    def pid(self, who: str) -> str | None:
        ident = f"user_id:{who}" if who.startswith("u") else f"anonymous_id:{who}"
        with self.engine.connect() as conn:
            return store.owners(conn, self.ws_id, [ident]).get(ident)

    def members(self, who: str, change: str) -> None:
        pid = self.pid(who)
        if pid is None:
            return
        with self.engine.begin() as conn:
            (segment_store.enter if change == "enter" else segment_store.leave)(conn, self.ws_id, "s", [pid],
                                                                                utcnow(), "event")  # fmt: skip

    def rows(self, name: str) -> set[tuple[str, str]]:
        with self.engine.connect() as conn:
            aud = store.get(conn, self.ws_id, name)
            return set(conn.execute(sa.select(audience_members.c.profile_id, audience_members.c.row_hash)
                                    .where(audience_members.c.audience_id == aud.id)).all())  # fmt: skip

    def sync(self, fail: bool = False) -> None:
        self.clock += STEP
        w = self.ws()
        inc = self.platforms["inc"]
        inc.fail = fail
        try:
            got = sync.sync_followed(self.engine, w, "inc", client=inc, clock=lambda: self.clock, incremental=True)
        except sync.ProviderFailed:
            assert fail
            self.failed = True
            return
        if inc.fail:  # nothing was sent: the failure did not happen
            inc.fail = False
        want = sync.sync_followed(self.engine, w, "full", client=self.platforms["full"], clock=lambda: self.clock)
        self.passes.append(got["follow_pass"]["pass"])
        assert want["follow_pass"]["pass"] == "full"
        assert inc.held == self.platforms["full"].held
        assert self.rows("inc") == self.rows("full")
        if not self.failed:
            for key in ("added", "removed", "unchanged", "skipped", "removed_by_reason"):
                assert got[key] == want[key], key
            assert got["source"]["members"] == want["source"]["members"]
        self.failed = False


OPS = ("enter", "leave", "name", "phone", "deny", "grant", "stop", "email", "late", "merge", "erase", "view",
       "kinds", "sync", "fail")  # fmt: skip
WHO = [f"u{i}" for i in range(KNOWN)] + [f"a{j}" for j in range(ANONYMOUS)]


def apply(world: World, op: str, i: int, v: int) -> None:
    who = WHO[i % len(WHO)]
    user = f"u{i % KNOWN}"
    ids = {"userId": who} if who.startswith("u") else {"anonymousId": who}
    if op in ("enter", "leave"):
        world.members(who, op)
    elif op == "name":
        world.send([{"type": "identify", **ids, "traits": {"firstName": f"N{v}", "lastName": f"L{v}"}}])
    elif op == "phone":  # an address: a new identifier of the person
        world.send([{"type": "identify", **ids, "traits": {"phone": f"+3161234{v:04d}"}}])
    elif op in ("deny", "grant"):  # a Consent Updated event, folded by the resolver
        status = "denied" if op == "deny" else "granted"
        world.send([{"type": "track", **ids, "event": "Consent Updated",
                     "properties": {"channel": "ads", "status": status}}])  # fmt: skip
    elif op == "stop":  # consent Chorus learns itself: written to the profile at once, resolved later
        world.clock += timedelta(seconds=1)
        with world.engine.begin() as conn:
            consent.record(conn, world.ws_id, {"userId": user}, channel="ads", topic="marketing",
                           status="denied" if v % 2 else "granted", reason="test", at=utcnow(), direction="inbound",
                           key=uuid.uuid4().hex)  # fmt: skip
    elif op == "email":
        world.send([{"type": "identify", **ids, "traits": {"email": f"{who}.{v}@example.com"}}])
    elif op == "late":  # an identifier linked out of order: the resolver replays the person's component
        world.send([{"type": "identify", **ids, "traits": {"email": f"{who}.late{v}@example.com"}}], late=True)
    elif op == "merge":  # a known person's identify with an anonymous id: the anonymous profile merges into hers
        world.send([{"type": "identify", "userId": user, "anonymousId": f"a{v % ANONYMOUS}"}])
    elif op == "erase":
        pid = world.pid(who)
        if pid is not None:
            with world.engine.begin() as conn:
                privacy.erase(conn, world.ws_id, pid)
    elif op == "view":  # activity only: no row changes
        world.send([{"type": "track", **ids, "event": "Product Viewed"}])
    elif op == "kinds":  # what the audiences send changes (both): every row changes without a profile changing
        kinds = [["email", "phone"], ["email", "phone", "name"], ["name", "external_id"]][v % 3]
        with world.engine.begin() as conn:
            conn.execute(audiences.update().where(audiences.c.workspace_id == world.ws_id).values(identifiers=kinds))
    elif op in ("sync", "fail"):
        world.sync(fail=op == "fail")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])  # fmt: skip
@given(st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 5), st.integers(0, 9)), min_size=1, max_size=30),
       st.sampled_from([0, store.PROBE_RATIO, 10**9]))
def test_an_incremental_follow_sync_is_the_full_sync(engine, steps, ratio):
    """``ratio``: the feed is read by the members' own changes (0), by its range (10**9), or as chosen."""
    kept, store.PROBE_RATIO = store.PROBE_RATIO, ratio
    try:
        world = World(engine)
        for who in WHO[:3]:
            world.members(who, "enter")
        world.sync()
        world.sync()
        for op, i, v in steps:
            apply(world, op, i, v)
        world.sync()
    finally:
        store.PROBE_RATIO = kept


def test_unchanged_members_keep_their_rows_unread(engine):
    """The third sync on reads and hashes only the members whose profile changed (and those with no row)."""
    world = World(engine)
    for who in WHO:
        world.members(who, "enter")
    world.sync()
    world.sync()
    apply(world, "name", 0, 1)
    world.send([{"type": "track", "userId": "u1", "event": "Product Viewed"}])
    world.clock += STEP
    got = sync.sync_followed(engine, world.ws(), "inc", client=world.platforms["inc"], clock=lambda: world.clock,
                             incremental=True)  # fmt: skip
    assert got["follow_pass"]["pass"] == "incremental"
    assert got["follow_pass"]["rows_built"] == 1 and got["follow_pass"]["rows_kept_unread"] == len(WHO) - 1
    assert (got["added"], got["removed"], got["unchanged"]) == (0, 0, len(WHO))  # a name is not sent: same row
    # the audience's definition changed: a full pass
    apply(world, "kinds", 0, 1)
    world.clock += STEP
    got = sync.sync_followed(engine, world.ws(), "inc", client=world.platforms["inc"], clock=lambda: world.clock,
                             incremental=True)  # fmt: skip
    assert got["follow_pass"]["pass"] == "full" and got["follow_pass"]["rows_built"] == len(WHO)
    # a manual sync (no ``incremental``) is always a full pass
    world.clock += STEP
    got = sync.sync_followed(engine, world.ws(), "inc", client=world.platforms["inc"], clock=lambda: world.clock)
    assert got["follow_pass"]["pass"] == "full"


def test_after_a_failed_sync_the_next_one_reads_what_changed_since_the_last_success(engine):
    """A failed sync may have left a removal undone: the member who opted out still has her row. The next syncs must
    not take a failed one as their base, or, after two failures, they would read the feed from after her change and
    keep that row."""
    world = World(engine)
    for who in WHO[:2]:
        world.members(who, "enter")
    world.sync()
    world.sync()
    world.sync()
    apply(world, "deny", 0, 0)
    world.sync(fail=True)
    world.sync(fail=True)
    world.sync()
    assert world.passes[-1] == "incremental"


def test_a_user_id_given_by_an_activity_event_rebuilds_an_external_id_row(engine):
    """An event that touched only activity (the resolver marks it ``profile: False``) may still give her a user id,
    which a row with ``external_id`` reads: when the audience sends it, such an event must make her row rebuilt."""
    world = World(engine)
    with engine.begin() as conn:
        conn.execute(audiences.update().where(audiences.c.workspace_id == world.ws_id)
                     .values(identifiers=["email", "external_id"]))  # fmt: skip
    world.members("a0", "enter")
    world.members("u1", "enter")
    world.sync()
    world.sync()
    world.sync()
    before = world.rows("inc")
    pid = world.pid("a0")
    # a login: a track with a new user id and her anonymous id, nothing but opaque ids
    world.send([{"type": "track", "event": "Product Viewed", "userId": "newuser", "anonymousId": "a0"}])
    with engine.connect() as conn:
        detail = conn.execute(sa.select(profile_changes.c.detail)
                              .where(profile_changes.c.profile_id == pid, profile_changes.c.cause == "event")
                              .order_by(profile_changes.c.seq.desc()).limit(1)).scalar_one()  # fmt: skip
    assert detail.get("profile") is False  # what the incremental sync must not skip here
    world.sync()  # the same rows as the full pass's
    assert world.passes[-1] == "incremental"
    assert world.rows("inc") != before  # her row changed: it was rebuilt, not kept


def readdress(world: World, v: int) -> None:
    """Every person a new e-mail address, received now: ``World.send``'s event times are ahead of the receipt time
    ``send`` gives by default, so they all take that time, and a later address may lose to the first one."""
    world.at += timedelta(minutes=1)
    messages = [{"type": "identify", **({"userId": who} if who.startswith("u") else {"anonymousId": who}),
                 "traits": {"email": f"{who}.{v}@example.com"}, "messageId": f"readdress-{v}-{who}",
                 "timestamp": world.at.isoformat()} for who in WHO]  # fmt: skip
    send(world.engine, world.ws_id, messages, received_at=utcnow())
    resolve(world.engine)


def test_a_member_holding_two_rows_keeps_only_her_current_one(engine):
    """The platform rejected the removal of a member's old row while it took the add of her new one (or two syncs
    overlapped after a claim's lease expired): she holds two rows under her own id. Once she has no change since the
    base, the incremental sync must still build her row and remove the old one, not keep whichever of the two comes
    first. Which comes first depends on the process's string hashing, so every member is put in that state, three
    times: a sync that kept one of the two unread would keep an old one with near certainty."""
    world = World(engine)
    for who in WHO:
        world.members(who, "enter")
    world.sync()
    world.sync()
    world.sync()
    pids = {world.pid(who) for who in WHO}
    for v in range(3):
        readdress(world, v)
        for platform in world.platforms.values():
            platform.refuse = True
        world.sync()  # her changed row is added, the removal of her old one rejected: she holds both
        world.sync()  # a change of hers is still after this sync's base: she is built, the removal rejected again
        for platform in world.platforms.values():
            platform.refuse = False
        assert sorted(pid for pid, _h in world.rows("inc")) == sorted([*pids, *pids])
        world.sync()  # no change of hers since the base: the same rows as the full pass's
        assert world.passes[-1] == "incremental"
        assert sorted(pid for pid, _h in world.rows("inc")) == sorted(pids)
