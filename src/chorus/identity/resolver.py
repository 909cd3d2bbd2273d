"""Identity resolution over the store: turns pending events into profile updates.

The worker claims pending events (``profile_id IS NULL``), extracts their identifiers, applies their links to the
slice of the identity graph they touch (:mod:`chorus.identity.graph`), folds them into profile state
(:mod:`chorus.profiles.state`) and writes everything back in one transaction. A link older than what the
involved profiles have already seen is stored and its connected component replayed from the stored links, so
the result is the same whatever order events arrive in.

On PostgreSQL, workers claim rows with ``FOR UPDATE SKIP LOCKED`` and serialise graph changes per workspace
with a transaction-scoped advisory lock; the primary key of ``identifiers`` is the last line of defence against
two profiles for one identifier.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from chorus import metrics
from chorus import workspaces as ws_api
from chorus.identity.graph import TRUSTED, UNTRUSTED, VOUCHED, Graph, Key, Link, Node, links_of, new_profile_id, replay
from chorus.identity.identifiers import (
    OPAQUE_KINDS,
    Extracted,
    IdentityConfig,
    extract,
    kind_of,
    without_identifiers,
)
from chorus.profiles import feed
from chorus.profiles import state as pstate
from chorus.store import bulk
from chorus.store.db import FreshStatistics, read_only, transient
from chorus.store.tables import (
    events,
    identifiers,
    identity_links,
    merges,
    profile_aliases,
    profiles,
)
from chorus.timeutil import iso, parse_ts, utcnow
from chorus.workspaces.verification import vouched

log = logging.getLogger("chorus.identity")
CHUNK = 5000  # SQLite allows 32,766 bound variables; PostgreSQL gets one array parameter
CLAIM_HEADROOM = 2  # claim links stored per anchor and limited kind: this many times the kind's limit


def _chunks(seq: list, n: int = CHUNK) -> Iterable[list]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


@dataclass(slots=True)
class Pending:
    seq: int
    payload: dict
    trusted: bool
    ext: Extracted | None = None

    @property
    def key(self) -> Key:
        return (self.payload["timestamp"], self.payload["messageId"])

    @property
    def trust(self) -> int:
        return trust_of(self.payload, self.trusted)

    @property
    def link_key(self) -> Key:
        return link_key(self.payload, self.trusted)


def trust_of(payload: dict, trusted: bool) -> int:
    """The trust of a stored event's links: its source's, or VOUCHED for a write-key event whose userHash proved its
    userId (sealed by the tracking API, chorus.workspaces.verification)."""
    if trusted:
        return TRUSTED
    return VOUCHED if vouched(payload, False) else UNTRUSTED


def link_key(payload: dict, trusted: bool) -> Key:
    """Where an event's links sort in the identity graph. A trusted event's at its own time; a claim (the public
    write key, hash or not) at the time Chorus received it when its ``timestamp`` is earlier: its sender chooses
    ``timestamp`` (back to 2000-01-01, decision 0013), and a claim dated before a customer first appeared would
    otherwise be applied as if she did not exist yet, out of reach of every guard (decision 0022). Browsers and
    apps send as things happen, so this moves their links by the seconds of the trip."""
    ts, msg = payload["timestamp"], payload["messageId"]
    received = payload.get("receivedAt")
    if not trusted and isinstance(received, str) and received > ts:  # both iso(): fixed width, sort as instants
        return (received, msg)
    return (ts, msg)


class Poisoned(Exception):
    """Events whose own data made resolution fail (seq -> error): the batch is retried without them."""

    def __init__(self, failures: dict[int, Exception]):
        super().__init__(f"{len(failures)} event(s) cannot be resolved")
        self.failures = failures


def _checked(p: Pending, cfg: IdentityConfig) -> None:
    """Everything resolution needs from one event's own payload, before the batch changes anything."""
    p.ext = extract(p.payload, cfg, p.trusted)
    ts, msg = p.key
    if not isinstance(ts, str) or not isinstance(msg, str) or not 0 < len(msg) <= 200:
        raise ValueError("the stored event has no valid timestamp or messageId")
    parse_ts(ts)
    if not p.trusted:
        parse_ts(p.link_key[0])




class Resolver:
    # Bulk loads grow the graph tables faster than autovacuum re-analyses them, and with stale statistics
    # PostgreSQL filters `ident = ANY(...)` row by row instead of probing the index: keep statistics fresh.
    ANALYZE_EVERY = 20_000

    def __init__(self, engine: Engine, clock=utcnow):
        self.engine = engine
        self.clock = clock
        self._stats = FreshStatistics("identifiers, identity_links, profiles, events", self.ANALYZE_EVERY)
        self.passes = 0  # write transactions run, failed ones included (what a poisoned event costs is counted)

    # -- public -----------------------------------------------------------------------------------------------
    def process_pending(self, limit: int = 2000) -> int:
        """Resolve up to ``limit`` pending events; returns how many were processed (0 when idle).

        One bad event never blocks the queue nor costs the window: an event whose own identifiers or state
        cannot be processed is moved to the rejected events (with the error as its reason) in the batch's own
        transaction when found before any change, else by one retry of the batch without it (:class:`Poisoned`);
        a failure that names no event (the database refusing a write) is narrowed down by bisection, so a
        window of n events with one such event costs O(log n) transactions, not n.
        """
        started = time.perf_counter()
        try:
            n = self._process(limit)
        except Exception as exc:  # noqa: BLE001 - narrowed down below, never dropped
            if transient(exc):
                raise  # the database, not an event: everything stays pending for the next pass
            if not isinstance(exc, Poisoned):
                log.exception("identity resolution batch failed; isolating the failing event")
            n = self._settle(self._window(limit), exc)
        if n:  # idle polls are not batches
            metrics.resolve_seconds.observe(time.perf_counter() - started)
        self._stats.note(self.engine, n)
        return n

    def _window(self, limit: int) -> list[int]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    sa.select(events.c.seq).where(events.c.profile_id.is_(None)).order_by(events.c.seq).limit(limit)
                ).scalars()
            )

    def _settle(self, seqs: list[int], failed: Exception) -> int:
        """Process ``seqs``, which failed together with ``failed``: reject what a :class:`Poisoned` names and retry
        the rest; bisect a failure that names no event until it is one event, and reject that one."""
        done = 0
        todo: list[tuple[list[int], Exception | None]] = [(seqs, failed)]
        while todo:
            part, err = todo.pop()
            if err is None:
                try:
                    done += self._process(len(part), seqs=part)
                    continue
                except Exception as exc:  # noqa: BLE001
                    if transient(exc):
                        raise  # rejected nothing for it; what is left stays pending for the next pass
                    err = exc
            if isinstance(err, Poisoned):
                done += self._reject(err.failures)
                rest = [s for s in part if s not in err.failures]
                if rest:
                    todo.append((rest, None))
            elif len(part) == 1:
                log.error("event %s cannot be resolved: %s: %s", part[0], type(err).__name__, err)
                done += self._reject({part[0]: err})
            elif part:
                mid = len(part) // 2
                todo.extend([(part[mid:], None), (part[:mid], None)])
        return done

    def _reject(self, failures: dict[int, Exception]) -> int:
        """Move still-pending events to the rejected events with their error; returns how many were moved."""
        from chorus.collect.ingest import reject_stored

        self.passes += 1
        with self.engine.begin() as conn:
            n = reject_stored(conn, failures)
        metrics.events_failed.inc(n)
        return n

    def _process(self, limit: int, seqs: list[int] | None = None) -> int:
        if seqs is None:  # an idle poll takes no write lock (SQLite has one for the whole store)
            with read_only(self.engine) as conn:
                # ordered by seq so that SQLite reads the partial index of pending events (a few entries): without
                # the ORDER BY it scanned the timeline index for a NULL, the whole store once nothing was pending
                # (40 ms an idle pass at 290,000 events, growing with the store)
                pending = sa.select(events.c.seq).where(events.c.profile_id.is_(None)).order_by(events.c.seq)
                if conn.execute(pending.limit(1)).first() is None:
                    return 0
        self.passes += 1
        with self.engine.begin() as conn:
            q = (
                sa.select(events.c.seq, events.c.workspace_id, events.c.payload, events.c.trusted)
                .where(events.c.profile_id.is_(None))
                .order_by(events.c.seq)
                .limit(limit)
            )
            if seqs is not None:
                q = q.where(bulk.in_(events.c.seq, seqs, conn.dialect.name))
            if conn.dialect.name == "postgresql":
                q = q.with_for_update(skip_locked=True, of=events)
            rows = conn.execute(q).all()
            if not rows:
                return 0
            by_ws: dict[str, list[Pending]] = defaultdict(list)
            for r in rows:
                by_ws[r.workspace_id].append(Pending(r.seq, r.payload, r.trusted))
            for ws_id in sorted(by_ws):
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": "identity:" + ws_id})
                workspace = ws_api.get(conn, ws_id)
                _WorkspaceBatch(conn, workspace, self.clock).run(by_ws[ws_id])
            n = len(rows)
            metrics.after_commit(conn, lambda: metrics.events_resolved.inc(n))
            return n

    def drain(self, limit: int = 2000) -> int:
        total = 0
        while n := self.process_pending(limit):
            total += n
        return total


class _WorkspaceBatch:
    def __init__(self, conn: Connection, workspace: ws_api.Workspace, clock):
        self.conn = conn
        self.ws = workspace.id
        self.cfg: IdentityConfig = workspace.identity
        self.policies: dict = workspace.settings.get("trait_policies", {})
        self.clock = clock

    # -- loading ---------------------------------------------------------------------------------------------
    def _owners(self, idents: Iterable[str]) -> dict[str, str]:
        out = {}
        for part in _chunks(sorted(set(idents))):
            q = sa.select(identifiers.c.ident, identifiers.c.profile_id).where(
                identifiers.c.workspace_id == self.ws, bulk.in_(identifiers.c.ident, part, self.conn.dialect.name)
            )
            out.update(self.conn.execute(q).all())
        return out

    def _nodes(self, profile_ids: Iterable[str]) -> dict[str, tuple[Node, dict]]:
        out: dict[str, tuple[Node, dict]] = {}
        ids = sorted(set(profile_ids))
        for part in _chunks(ids):
            for r in self.conn.execute(
                sa.select(profiles).where(bulk.in_(profiles.c.id, part, self.conn.dialect.name))
            ):
                node = Node(r.id, (iso(r.created_at), r.created_msg), (iso(r.links_max_at), r.links_max_msg))
                out[r.id] = (node, r.state)
            q = sa.select(identifiers.c.ident, identifiers.c.profile_id).where(
                identifiers.c.workspace_id == self.ws, bulk.in_(identifiers.c.profile_id, part, self.conn.dialect.name)
            )
            for ident, pid in self.conn.execute(q):
                if pid in out:
                    out[pid][0].idents.add(ident)
        return out

    def _existing_links(self, wanted: Iterable[tuple[str, str, int]]) -> dict[tuple[str, str, int], Key]:
        """The stored sightings of these links. Read by pair, not by anchor: an anchor has a link for every
        identifier ever sent with it, and each event of hers would read them all."""
        wanted = set(wanted)
        by_a: dict[str, set[str]] = defaultdict(set)
        for a, b, _t in wanted:
            by_a[a].add(b)
        out = {}
        dialect = self.conn.dialect.name
        for part in _chunks(sorted(by_a)):
            for bpart in _chunks(sorted(set().union(*(by_a[a] for a in part)))):
                q = sa.select(identity_links).where(
                    identity_links.c.workspace_id == self.ws,
                    bulk.in_(identity_links.c.a, part, dialect),
                    bulk.in_(identity_links.c.b, bpart, dialect),
                )
                for r in self.conn.execute(q):
                    if (r.a, r.b, r.trust) in wanted:
                        out[(r.a, r.b, r.trust)] = (iso(r.at), r.msg)
        return out

    def _claims_stored(self, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """How many untrusted claim links to other identifiers of each kind each anchor has stored:
        ``(anchor, kind) -> n``. The primary key's ``(workspace_id, a)`` finds the anchor's links; the kind is
        compared as text, not as a range, which a database's collation may order otherwise."""
        out: dict[tuple[str, str], int] = {}
        by_kind: dict[str, set[str]] = defaultdict(set)
        for a, k in pairs:
            by_kind[k].add(a)
        il = identity_links.c
        for k, anchors in sorted(by_kind.items()):
            for part in _chunks(sorted(anchors)):
                q = (
                    sa.select(il.a, sa.func.count())
                    .where(il.workspace_id == self.ws, bulk.in_(il.a, part, self.conn.dialect.name))
                    .where(sa.func.substr(il.b, 1, len(k) + 1) == f"{k}:", il.b != il.a, il.trust == UNTRUSTED)
                    .group_by(il.a)
                )
                for a, n in self.conn.execute(q):
                    out[(a, k)] = n
        return out

    def _claim_caps(self, new_links: list[Link], g: Graph) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
        """For the untrusted claims of this batch that may be dropped (``run``): how many claim links each anchor
        has stored per kind (counted on as the batch stores more), and each kind's cap, ``CLAIM_HEADROOM`` times its
        limit. Only anonymous kinds that are no address (an anonymous id): their values are in no trait and reach
        nobody, so a dropped one loses nothing but the link. A refused claim of an email or a phone gives it a
        profile of its own, which keeps it out of the claimant's traits (``own_part``): those are still stored."""
        caps = {k: CLAIM_HEADROOM * n for k, n in self.cfg.limits.items() if k not in self.cfg.unique_kinds}
        wanted = {
            (ln.a, kind_of(ln.b))
            for ln in new_links
            if ln.trust == UNTRUSTED and ln.a != ln.b and kind_of(ln.b) in caps and not g.claimed(ln.b)
        }
        return (self._claims_stored(wanted) if wanted else {}), caps

    # -- the batch -------------------------------------------------------------------------------------------
    def run(self, batch: list[Pending]) -> None:
        failures: dict[int, Exception] = {}
        for p in batch:
            try:
                _checked(p, self.cfg)
            except Exception as exc:  # noqa: BLE001 - the event is rejected with its reason, the rest go on
                failures[p.seq] = exc
        if failures:
            from chorus.collect.ingest import reject_stored

            log.warning("%d event(s) cannot be resolved; moved to the rejected events", len(failures))
            moved = reject_stored(self.conn, failures)
            metrics.after_commit(self.conn, lambda: metrics.events_failed.inc(moved))
            batch = [p for p in batch if p.seq not in failures]
        wanted = set()
        for p in batch:
            wanted.add(p.ext.anchor)
            wanted.update(p.ext.others)
        owners = self._owners(wanted)
        # Earliest sighting of each distinct link in this batch, minus links already stored with an earlier key.
        batch_links: dict[tuple[str, str, int], Key] = {}
        for p in batch:
            # A valid userHash makes the links VOUCHED: its customer may add her own new phone, but it proves
            # nothing about the other identifiers of the event (graph.claim_guard); ``extract`` keeps the
            # source's trust for alias renames.
            for ln in links_of(p.ext.anchor, p.ext.others, p.link_key, p.trust):
                k = (ln.a, ln.b, ln.trust)
                if k not in batch_links or ln.key < batch_links[k]:
                    batch_links[k] = ln.key
        existing = self._existing_links(batch_links)
        new_links = sorted(
            Link(key, a, b, t)
            for (a, b, t), key in batch_links.items()
            if (a, b, t) not in existing or key < existing[(a, b, t)]
        )

        loaded = self._nodes(owners.values())
        g = Graph(self.cfg)
        states: dict[str, dict] = {}
        before_owner = dict(owners)
        for pid, (node, st) in loaded.items():
            g.add_node(node)
            states[pid] = st
        before_nodes = {pid: (n.links_max, set(n.idents)) for pid, (n, _) in loaded.items()}

        dirty_profiles: set[str] = set()
        dirty_idents: set[str] = set()
        stored, caps = self._claim_caps(new_links, g)
        dropped: set[Link] = set()
        for ln in new_links:
            involved = {x for x in (g.owner.get(ln.a), g.owner.get(ln.b)) if x}
            if (
                involved & dirty_profiles
                or ln.a in dirty_idents
                or ln.b in dirty_idents
                or any(ln.key < g.nodes[x].links_max for x in involved)
            ):
                dirty_profiles |= involved
                dirty_idents |= {ln.a, ln.b}
                continue
            kind = kind_of(ln.b)
            if ln.trust != UNTRUSTED or ln.a == ln.b or kind not in caps or g.claimed(ln.b):
                g.apply(ln)
                continue
            # An untrusted claim of an anonymous id: past twice the limit of claims from its anchor, one the graph
            # refuses is dropped (not stored, and the anonymous id gets no profile from it), or a flood of them
            # would grow the anchor's component, which a replay reads whole. One the graph takes is stored: her
            # profile holds at most the limit, so those stay bounded (decision 0052).
            owned, refusals = ln.b in g.owner, len(g.refusals)
            g.apply(ln)
            if (ln.a, ln.b, ln.trust) in existing:  # stored already (this is an earlier sighting): counted
                continue
            n = stored.get((ln.a, kind), 0)
            if len(g.refusals) == refusals or n < caps[kind]:
                stored[(ln.a, kind)] = n + 1
                continue
            dropped.add(ln)
            if not owned:  # take back the profile the refusal made for it: a newcomer's, holding it alone
                nid = g.owner.pop(ln.b)
                assert g.nodes[nid].idents == {ln.b}, "a refused newcomer's profile holds it alone"
                del g.nodes[nid]
        if dropped:
            new_links = [ln for ln in new_links if ln not in dropped]
            log.info("%d claims past the limit of anonymous ids dropped", len(dropped))

        if g.refusals:
            refused = len(g.refusals)
            metrics.after_commit(self.conn, lambda: metrics.merges_refused.inc(refused))
            log.info("%d merges refused by the identity guards", len(g.refusals))
        # Merges: aliases, history and state move to the survivor.
        final: dict[str, str] = {}
        for m in g.merges:
            final[m.merged] = m.survivor

        def resolve(pid: str) -> str:
            while pid in final:
                pid = final[pid]
            return pid

        now = self.clock()
        changes: list[feed.Change] = []  # recorded in this transaction, in this order (chorus.profiles.feed)
        for m in g.merges:
            survivor = resolve(m.survivor)
            loser_state = states.pop(m.merged, None)
            if loser_state is not None:
                states[survivor] = pstate.merge(states.get(survivor) or pstate.empty(), loser_state, self.policies)
            if m.merged in loaded:
                self.conn.execute(
                    events.update()
                    .where(events.c.workspace_id == self.ws, events.c.profile_id == m.merged)
                    .values(profile_id=survivor)
                )
                self.conn.execute(
                    profile_aliases.update().where(profile_aliases.c.profile_id == m.merged).values(profile_id=survivor)
                )
                self.conn.execute(profiles.delete().where(profiles.c.id == m.merged))
                self.conn.execute(
                    profile_aliases.insert().values(alias_id=m.merged, workspace_id=self.ws, profile_id=survivor)
                )
            self.conn.execute(
                merges.insert().values(
                    workspace_id=self.ws, survivor_id=survivor, merged_id=m.merged, reason=m.reason,
                    message_id=m.key[1], at=now,
                )
            )  # fmt: skip
            metrics.after_commit(self.conn, metrics.merges.inc)
            log.info("merged profile %s into %s", m.merged, survivor)
            # consumers of the merged profile are pointed at the survivor, and the survivor has changed; what they
            # had not handled of the merged one is handled in the survivor's order
            feed.repoint(self.conn, self.ws, m.merged, survivor)
            changes.append(feed.Change(m.merged, "merge", target_id=survivor))
            changes.append(feed.Change(survivor, "merge", target_id=survivor, detail={"merged": m.merged}))

        # Identifier ownership changes.
        changed = [
            {"workspace_id": self.ws, "ident": i, "profile_id": pid}
            for i, pid in g.owner.items()
            if before_owner.get(i) != pid
        ]
        bulk.insert_rows(self.conn, identifiers, changed, conflict=["workspace_id", "ident"], update=["profile_id"])

        # Fold the clean events into their profiles; dirty ones wait for the replay below.
        ev_updates = []
        dirty_events = []
        for p in batch:
            if p.ext.anchor in dirty_idents or g.owner.get(p.ext.anchor) in dirty_profiles:
                dirty_events.append(p)
                continue
            pid = g.owner[p.ext.anchor]
            st = states.get(pid)
            if st is None:
                st = states[pid] = pstate.empty()
            _fold(st, p, own_part(p.payload, p.ext, pid, g.owner, self.cfg), self.policies)
            ev_updates.append({"seq": p.seq, "profile_id": pid})
            # a profile made by this batch is new in every respect (a segment true of an empty profile, "not pro",
            # takes her in now), whatever her first events carry
            changes.append(event_change(pid, p, new=pid not in loaded))
        bulk.update_rows(self.conn, events, "seq", ev_updates)

        # Profile rows.
        inserts, updates = [], []
        for pid, node in g.nodes.items():
            if pid not in states and pid not in before_nodes:
                states[pid] = pstate.empty()
            if pid not in states:
                continue
            row = profile_row(self.ws, pid, node, states[pid], g.known(node), now)
            if pid in loaded:
                updates.append({k: v for k, v in row.items() if k != "workspace_id"})
            else:
                inserts.append(row)
        bulk.insert_rows(self.conn, profiles, inserts)
        bulk.update_rows(self.conn, profiles, "id", updates)
        # a profile made without an event of its own (the identifier a guard refused to move) is a change too
        told = {c.profile_id for c in changes}
        changes += [feed.Change(r["id"], "created") for r in inserts if r["id"] not in told]

        # Links, then replay the components that saw a link out of order.
        link_rows = [
            {
                "workspace_id": self.ws,
                "a": ln.a,
                "b": ln.b,
                "trust": ln.trust,
                "at": parse_ts(ln.key[0]),
                "msg": ln.key[1],
            }
            for ln in new_links
        ]
        bulk.insert_rows(
            self.conn, identity_links, link_rows, conflict=["workspace_id", "a", "b", "trust"], update=["at", "msg"]
        )
        if dirty_idents:
            changes += Rebuild(self.conn, self.ws, self.cfg, self.policies, now).run(dirty_idents, dirty_events)
        feed.record(self.conn, self.ws, changes, now)


def event_change(pid: str, p: Pending, new: bool = False) -> feed.Change:
    """The feed's record of an event folded into a profile: what a consumer needs to tell whether it matters.

    ``event`` is the name of a track (a page's or screen's name, as the events table's ``event`` column keeps
    it); ``profile`` says whether folding the event may have changed more than the person's activity: her traits,
    attributes (time zone), consent or identifiers (addresses); always for a profile made by this batch, which the
    record also says (``new``: everything about her is news, and every segment true of an empty profile must take
    her in, not in a list or a bucket as well as not pro). Most events of a steady stream (views, pages) do not,
    and a consumer that reads only those (segments on traits, consent, reachability) can skip them."""
    pl = p.payload
    etype = pl.get("type")
    detail = {"type": etype, "channel": pl.get("channel")}
    name = pstate.event_name(pl) if etype in ("track", "page", "screen") else None
    if name is not None:
        detail["event"] = name[:NAME_COLUMN]
    detail["profile"] = new or touches_profile(pl, p.ext)
    if new:
        detail["new"] = True
    return feed.Change(pid, "event", event_seq=p.seq, detail=detail)


NAME_COLUMN = events.c.event.type.length  # the events table's ``event`` column keeps this much of a name


def touches_profile(payload: dict, ext: Extracted | None) -> bool:
    """Whether folding ``payload`` (``pstate.apply_event``) may change anything but channel activity: an identify,
    group or alias; traits, a time zone or a locale in the context; consent; or an identifier other than the
    opaque user and anonymous ids (an email, a phone, a device token: the person's addresses). Conservative: a
    False here means those parts of the profile are as they were."""
    if payload.get("type") not in ("track", "page", "screen"):
        return True
    ctx = payload.get("context")
    if isinstance(ctx, dict) and any(ctx.get(k) is not None for k in ("traits", "timezone", "locale", "consent")):
        return True
    if pstate.consent_updates(payload):
        return True
    if ext is None:
        return True
    return any(kind_of(i) not in OPAQUE_KINDS for i in (ext.anchor, *ext.others) if i)


def _fold(st: dict, p: Pending, payload: dict, policies: dict) -> None:
    """Fold a pending event (``payload``: the part its profile may keep) into a profile state; a failure names
    the event (its state change is half done, so the transaction is abandoned and retried without it)."""
    try:
        pstate.apply_event(st, payload, p.ext.anchor, policies, p.ext.warnings, vouched(p.payload, p.trusted))
    except Exception as exc:
        raise Poisoned({p.seq: exc}) from exc


def own_part(payload: dict, ext: Extracted, pid: str, owner: dict[str, str], cfg: IdentityConfig) -> dict:
    """The event as its profile may keep it: without the identifiers that belong to another profile (a merge the
    guards refused, an erased person) or to none, so a claimant never keeps someone else's email as a trait."""
    foreign = {i for i in ext.others if owner.get(i) != pid}
    return without_identifiers(payload, cfg, foreign) if foreign else payload


def state_as_of(conn: Connection, workspace: ws_api.Workspace, pid: str, until: datetime) -> dict:
    """Her profile state as it was at ``until``: her events stamped then or before, folded as a replay folds them
    (without the identifiers other profiles own). For a reader at an instant before the latest her stored state
    holds (``profiles.state.latest``): a journey input handled after her later events were resolved."""
    cfg, policies = workspace.identity, workspace.settings.get("trait_policies", {})
    rows = conn.execute(sa.select(events.c.payload, events.c.trusted).where(
        events.c.workspace_id == workspace.id, events.c.profile_id == pid, events.c.timestamp <= until,
    ).order_by(events.c.seq)).all()  # fmt: skip
    parsed = [(payload, trusted, extract(payload, cfg, trusted)) for payload, trusted in rows]
    others = sorted({i for _, _, ext in parsed for i in ext.others})
    owner: dict[str, str] = {}
    for part in _chunks(others):
        owner.update(conn.execute(sa.select(identifiers.c.ident, identifiers.c.profile_id).where(
            identifiers.c.workspace_id == workspace.id, bulk.in_(identifiers.c.ident, part, conn.dialect.name),
        )).all())  # fmt: skip
    state = pstate.empty()
    for payload, trusted, ext in parsed:
        own = own_part(payload, ext, pid, owner, cfg)
        pstate.apply_event(state, own, ext.anchor, policies, ext.warnings, vouched(own, trusted))
    return state


def profile_row(ws: str, pid: str, node: Node, st: dict, known: bool, now) -> dict:
    """The profile table row: graph bookkeeping, the state, and the columns derived from it for queries."""
    summ = pstate.summary(st)
    return {
        "id": pid,
        "workspace_id": ws,
        "created_at": parse_ts(node.created[0]),
        "created_msg": node.created[1],
        "links_max_at": parse_ts(node.links_max[0]),
        "links_max_msg": node.links_max[1],
        "known": known,
        "first_seen": parse_ts(summ["first_seen"]) if summ["first_seen"] else None,
        "last_seen": parse_ts(summ["last_seen"]) if summ["last_seen"] else None,
        "last_channel": summ["last_channel"],
        "state": st,
        "updated_at": now,
    }


class Rebuild:
    """Replay the stored links of the components around ``seeds`` and rewrite their profiles."""

    def __init__(self, conn: Connection, ws: str, cfg: IdentityConfig, policies: dict, now):
        self.conn, self.ws, self.cfg, self.policies, self.now = conn, ws, cfg, policies, now

    def _component(self, seeds: set[str]) -> tuple[set[str], list[Link], dict[str, str]]:
        seen: set[str] = set()
        links: dict[tuple[str, str, int], Link] = {}
        owners: dict[str, str] = {}
        frontier = set(seeds)
        while frontier:
            seen |= frontier
            nxt: set[str] = set()
            part_list = sorted(frontier)
            for part in _chunks(part_list):
                # two queries, not one with OR: each side then probes its own index
                for side in (identity_links.c.a, identity_links.c.b):
                    q = sa.select(identity_links).where(
                        identity_links.c.workspace_id == self.ws, bulk.in_(side, part, self.conn.dialect.name)
                    )
                    for r in self.conn.execute(q):
                        links[(r.a, r.b, r.trust)] = Link((iso(r.at), r.msg), r.a, r.b, r.trust)
                        nxt.update((r.a, r.b))
                q2 = sa.select(identifiers.c.ident, identifiers.c.profile_id).where(
                    identifiers.c.workspace_id == self.ws, bulk.in_(identifiers.c.ident, part, self.conn.dialect.name)
                )
                owned = dict(self.conn.execute(q2).all())
                owners.update(owned)
                pids = sorted(set(owned.values()))
                for pp in _chunks(pids):
                    q3 = sa.select(identifiers.c.ident, identifiers.c.profile_id).where(
                        identifiers.c.workspace_id == self.ws,
                        bulk.in_(identifiers.c.profile_id, pp, self.conn.dialect.name),
                    )
                    for ident, pid in self.conn.execute(q3):
                        owners[ident] = pid
                        nxt.add(ident)
            frontier = nxt - seen
        return seen, list(links.values()), owners

    def _keep_early_consent(self, states: dict[str, dict], new_owner: dict[str, str], batch: set[int]) -> None:
        """Consent applied to a profile before its event is resolved (``messaging.consent.record``: STOP, an
        unsubscribe, a bounce, under this lock) is in no event the refold above read: its ``Consent Updated`` event
        is still pending, maybe in another worker's batch or committed after this one was read. Without this the
        rebuilt state would drop the opt-out until that event is resolved, and a message could go out meanwhile.
        A plain read (it sees rows another worker holds); the events stay pending, and folding them later is
        idempotent (consent is keyed by the event's time and id).

        Only what ``record`` applies early, and only withdrawals: its events (their ids begin ``chorus-consent-``)
        that deny. A pending grant, or anybody else's event, waits for its own batch, which may reject it: applied
        here, a rejected grant would stand over an opt-out. A denial is the safe direction whoever sent it."""
        q = sa.select(events.c.seq, events.c.payload, events.c.trusted).where(
            events.c.workspace_id == self.ws, events.c.profile_id.is_(None), events.c.type == "track",
            events.c.event == "Consent Updated", events.c.message_id.like("chorus-consent-%"),
        )  # fmt: skip
        for seq, payload, trusted in self.conn.execute(q):
            props = payload.get("properties") if isinstance(payload, dict) else None
            if seq in batch or not isinstance(props, dict) or props.get("status") != "denied":
                continue
            try:
                ext = extract(payload, self.cfg, trusted)
                pid = new_owner.get(ext.anchor)
                if pid is not None:
                    pstate.apply_consent(states[pid], payload, vouched(payload, trusted))
            except Exception:  # noqa: BLE001 - its own batch will reject it with the reason; never this batch
                continue

    def run(self, seeds: set[str], extra: list[Pending]) -> list[feed.Change]:
        """Rewrite the component; returns the changes to record (the caller records them with its own)."""
        idents, links, old_owner = self._component(seeds)
        old_ids = sorted(set(old_owner.values()))
        g = replay(links, self.cfg)
        # Keep ids stable: a new profile takes the id of the old profile that held its best identifier.
        rank = self.cfg.rank
        taken: dict[str, str] = {}
        for node in sorted(g.nodes.values(), key=lambda n: n.created):
            for ident in sorted(node.idents, key=lambda i: (rank(kind_of(i)), i)):
                old = old_owner.get(ident)
                if old and old not in taken.values():
                    taken[node.id] = old
                    break
        rename = {nid: taken.get(nid, new_profile_id()) for nid in g.nodes}
        new_owner = {i: rename[pid] for i, pid in g.owner.items()}
        dropped = {}
        for old in old_ids:
            if old in rename.values():
                continue
            kept = [i for i, p in old_owner.items() if p == old and i in new_owner]
            if not kept:  # every identifier of it lost its links: only an erasure deletes links, and it takes such
                # profiles out before rebuilding (identity.erasure); the id alone, never an identifier, in the error
                raise RuntimeError(f"replaying the identity graph left profile {old} without an identifier")
            dropped[old] = new_owner[min(kept, key=lambda i: (rank(kind_of(i)), i))]

        # Every event of the old profiles, plus the pending ones, is re-attributed and re-folded.
        evs: list[tuple[int, dict, bool]] = []
        for part in _chunks(old_ids):
            q = sa.select(events.c.seq, events.c.payload, events.c.trusted).where(
                events.c.workspace_id == self.ws, bulk.in_(events.c.profile_id, part, self.conn.dialect.name)
            )
            evs.extend(self.conn.execute(q).all())
        states: dict[str, dict] = {pid: pstate.empty() for pid in rename.values()}
        ev_updates = []
        for seq, payload, _trusted in evs:
            ext = extract(payload, self.cfg, _trusted)
            pid = new_owner[ext.anchor]
            payload = own_part(payload, ext, pid, new_owner, self.cfg)
            by = vouched(payload, _trusted)
            pstate.apply_event(states[pid], payload, ext.anchor, self.policies, ext.warnings, by)
            ev_updates.append({"seq": seq, "profile_id": pid})
        changes = [feed.Change(pid, "replay") for pid in sorted(states)]
        for p in extra:  # pending events: checked already; a failure folding one names it
            pid = new_owner[p.ext.anchor]
            _fold(states[pid], p, own_part(p.payload, p.ext, pid, new_owner, self.cfg), self.policies)
            ev_updates.append({"seq": p.seq, "profile_id": pid})
            changes.append(event_change(pid, p))
        self._keep_early_consent(states, new_owner, {p.seq for p in extra})
        bulk.update_rows(self.conn, events, "seq", ev_updates)

        for part in _chunks(sorted(idents)):
            self.conn.execute(
                identifiers.delete().where(
                    identifiers.c.workspace_id == self.ws, bulk.in_(identifiers.c.ident, part, self.conn.dialect.name)
                )
            )
        bulk.insert_rows(
            self.conn,
            identifiers,
            [{"workspace_id": self.ws, "ident": i, "profile_id": p} for i, p in new_owner.items()],
        )
        rows = [
            profile_row(self.ws, rename[nid], node, states[rename[nid]], g.known(node), self.now)
            for nid, node in g.nodes.items()
        ]
        # the profiles kept are rewritten in place, the others deleted: deleted and inserted again, a kept row was a
        # new row, and a transaction waiting to lock the old one (views.lock_people: a consumer, a timer) found it
        # deleted and went on without her, as if she had been merged away (review: her journey inputs were lost)
        kept = {r["id"] for r in rows} & set(old_ids)
        for part in _chunks(sorted(set(old_ids) - kept)):
            self.conn.execute(profiles.delete().where(bulk.in_(profiles.c.id, part, self.conn.dialect.name)))
        bulk.update_rows(self.conn, profiles, "id", sorted((r for r in rows if r["id"] in kept), key=lambda r: r["id"]))
        bulk.insert_rows(self.conn, profiles, [r for r in rows if r["id"] not in kept])
        for old, target in dropped.items():
            self.conn.execute(
                profile_aliases.update().where(profile_aliases.c.profile_id == old).values(profile_id=target)
            )
            bulk.insert_rows(
                self.conn, profile_aliases, [{"alias_id": old, "workspace_id": self.ws, "profile_id": target}],
                conflict=["alias_id"], update=["profile_id"],
            )  # fmt: skip
            self.conn.execute(
                merges.insert().values(
                    workspace_id=self.ws, survivor_id=target, merged_id=old,
                    reason="identity graph replayed after an out-of-order event", message_id=None, at=self.now,
                )
            )  # fmt: skip
            feed.repoint(self.conn, self.ws, old, target)
            changes.append(feed.Change(old, "merge", target_id=target))
        # A reused id must not stay an alias of something else.
        reused = [pid for pid in rename.values() if pid in old_ids]
        for part in _chunks(reused):
            self.conn.execute(profile_aliases.delete().where(profile_aliases.c.alias_id.in_(part)))
        log.info("replayed identity component of %d identifiers, %d links", len(idents), len(links))
        return changes
