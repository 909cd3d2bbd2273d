"""The person a rule is evaluated for, read from the store: what an engine hands :func:`evaluate`.

One query per kind of data, however many people: profile states, computed traits, addresses (derived from
identifiers as profile views derive them: ``views.addresses_of``), events (``Event.from_payload`` of the stored
payloads), the status history of their messages, their memberships and their static lists. A message keeps the
profile id it was sent to, and a list entry the id it was made for; a person's messages and list entries are
those of her profile id or of an id merged into it.

The SQL compiler (``segments.compile``) gives exactly the members ``evaluate`` gives for these people; the tests
check one against the other through this loader.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chorus.identity.identifiers import IdentityConfig, anchor_of
from chorus.profiles import views
from chorus.segments.needs import ALL, NAMED_TYPES, Needs
from chorus.segments.person import Event, MessageRecord, Person
from chorus.segments.summary import Summary
from chorus.store import bulk
from chorus.store.tables import (
    computed_traits,
    events,
    list_members,
    message_status,
    messages,
    profile_aliases,
    profiles,
    segment_members,
)

KINDS = ("computed", "addresses", "events", "messages", "segments", "lists")


def person(conn: Connection, ws: str, profile_id: str, cfg: IdentityConfig,
           zone_default: str | None = None) -> Person | None:  # fmt: skip
    """The person whose profile id is ``profile_id`` (not an alias), or None when it is not a profile."""
    return people(conn, ws, [profile_id], cfg, zone_default=zone_default).get(profile_id)


def people(
    conn: Connection, ws: str, ids: Iterable[str], cfg: IdentityConfig, *, parts: Iterable[str] = KINDS,
    needs: Needs | None = None, zone_default: str | None = None,
) -> dict[str, Person]:
    """Profile id -> Person for the ids that are profiles of ``ws``. ``parts`` leaves out what a caller does not
    need (an engine evaluating rules without behaviour conditions need not read the events); ``needs`` (what a set
    of rules can read at an instant, ``segments.needs``) reads only those parts, events and messages: the person
    is then ``needs.restrict(full person, needs)`` (a person whose activity summary, ``segments.summary``, does not
    cover the needs' summarised reads is read with ``needs.whole()``). ``zone_default`` is the workspace's
    ``messaging.timezone`` (``Workspace.timezone``): the zone of those who have none (``Person.zone``)."""
    ids = list(dict.fromkeys(ids))
    parts = set(parts) if needs is None else set(parts) & set(needs.parts())
    if not ids:
        return {}
    d = conn.dialect.name

    def among(col, values=ids):
        # one person (the incremental engine's case): a plain equality, cheaper to build than an array or a JSON
        # list, and planned on the per-profile indexes by SQLite too
        return col == values[0] if len(values) == 1 else bulk.in_(col, values, d)

    states = dict(conn.execute(sa.select(profiles.c.id, profiles.c.state).where(
        profiles.c.workspace_id == ws, among(profiles.c.id))).all())  # fmt: skip
    found = list(states)
    if not found:
        return {}
    computed: dict[str, dict] = {}
    if "computed" in parts:
        for pid, name, value in conn.execute(sa.select(computed_traits.c.profile_id, computed_traits.c.name,
                                                       computed_traits.c.value).where(
                computed_traits.c.workspace_id == ws, among(computed_traits.c.profile_id, found))):  # fmt: skip
            computed.setdefault(pid, {})[name] = value
    idents = views.idents_of(conn, ws, found) if "addresses" in parts else {}
    addresses = {pid: views.addresses_from(i, cfg) for pid, i in idents.items()}
    summaries = {pid: Summary.of(states[pid]) for pid in found}
    evs: dict[str, list[Event]] = {}
    if "events" in parts:
        # who is read with the needs as they are, and who without her summary (it does not cover them)
        by_need: dict[bool, list[str]] = {}
        for pid in found:
            covered = needs is None or needs.covered(summaries[pid])
            by_need.setdefault(covered, []).append(pid)
        for covered, pids in sorted(by_need.items()):
            need = needs if covered or needs is None else needs.whole()
            if need is not None and not need.events:
                continue
            rows = conn.execute(
                sa.select(events.c.profile_id, events.c.payload)
                .where(events.c.workspace_id == ws, among(events.c.profile_id, pids), *_events_needed(need))
                .order_by(events.c.profile_id, events.c.timestamp, events.c.seq)
            )
            for pid, payload in rows:
                evs.setdefault(pid, []).append(Event.from_payload(payload))
    msgs: dict[str, list[MessageRecord]] = {}
    owner = {pid: pid for pid in found}  # a profile id or an id merged into it -> the profile
    if "messages" in parts or "lists" in parts:
        for alias, pid in conn.execute(sa.select(profile_aliases.c.alias_id, profile_aliases.c.profile_id).where(
                profile_aliases.c.workspace_id == ws, among(profile_aliases.c.profile_id, found))):  # fmt: skip
            owner[alias] = pid
    if "messages" in parts:
        m, s = messages.c, message_status.c
        rows = conn.execute(
            sa.select(m.profile_id, m.id, s.status, s.at, m.channel, m.template, m.journey_id, m.campaign_id, m.topic)
            .select_from(message_status.join(messages, m.id == s.message_id))
            .where(m.workspace_id == ws, s.workspace_id == ws, among(m.profile_id, list(owner)),
                   *([s.at >= needs.messages] if needs is not None and needs.messages is not None
                     and needs.messages > ALL else []))
            .order_by(s.at, s.id)
        )
        for row in rows:
            msgs.setdefault(owner[row.profile_id], []).append(MessageRecord(
                row.id, row.status, row.at, row.channel, row.template, row.journey_id, row.campaign_id, row.topic))
    segs: dict[str, set[str]] = {}
    if "segments" in parts:
        sm = segment_members.c
        for pid, sid in conn.execute(sa.select(sm.profile_id, sm.segment_id).where(
                sm.workspace_id == ws, among(sm.profile_id, found))):  # fmt: skip
            segs.setdefault(pid, set()).add(sid)
    lists: dict[str, set[str]] = {}
    if "lists" in parts:
        lm = list_members.c
        for pid, lid in conn.execute(sa.select(lm.profile_id, lm.list_id).where(
                lm.workspace_id == ws, among(lm.profile_id, list(owner)))):  # fmt: skip
            lists.setdefault(owner[pid], set()).add(lid)
    return {
        pid: Person(
            pid, state=states[pid], computed=computed.get(pid, {}),
            addresses={ch: tuple(a) for ch, a in addresses.get(pid, {}).items()},
            events=tuple(evs.get(pid, ())), messages=tuple(msgs.get(pid, ())),
            segments=frozenset(segs.get(pid, ())), lists=frozenset(lists.get(pid, ())), zone_default=zone_default,
            summary=summaries[pid], anchor=anchor_of(idents.get(pid, ()), cfg),
        )  # fmt: skip
        for pid in found
    }


def events_where(needs: Needs | None) -> list:
    """The WHERE terms on ``events`` that keep only the events ``needs`` reads (all of them for None): for a caller
    that counts what ``people`` would read (``journeys.runtime.claims``)."""
    return _events_needed(needs)


def _events_needed(needs: Needs | None) -> list:
    """The WHERE terms that read only the events ``needs`` keeps (``Needs.wants`` is the same test in Python): by
    the indexed name and type columns and the time, never the payload."""
    if needs is None:
        return []
    e = events.c

    def since(h):
        return [e.timestamp >= h] if h > ALL else []

    if needs.any_event == ALL:
        return []
    terms = since(needs.any_event) if needs.any_event is not None else []
    # one term per horizon, so a name read since the same instant as another shares an IN list
    by_horizon: dict = {}
    for name, h in needs.names.items():
        by_horizon.setdefault(h, []).append(name)
    for h, names in sorted(by_horizon.items()):
        terms.append(sa.and_(e.type.in_(NAMED_TYPES), e.event.in_(sorted(names)), *since(h)))
    if needs.names:  # an identify's or group's name is only in its payload: read those of any name
        terms.append(sa.and_(e.type.notin_(NAMED_TYPES), *since(min(needs.names.values()))))
    for etype, h in sorted(needs.types.items()):
        terms.append(sa.and_(e.type == etype, *since(h)))
    if not terms:
        return [sa.false()]
    # the earliest horizon of all, alone, is a range on the timeline index (workspace, profile, timestamp): the
    # names and types are then filtered within it rather than over the whole history
    earliest = min([*needs.names.values(), *needs.types.values(),
                    *([needs.any_event] if needs.any_event is not None else [])])  # fmt: skip
    return [*since(earliest), sa.or_(*terms)]
