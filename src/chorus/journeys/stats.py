"""What a journey did, per version and node, read from its records and instances (never a query per node).

The interpreter's records (``interpreter.Record``) say everything that happened to a person at a node:

- **entered** (the journey, ``node`` is the start node): counted once per instance in the journey's totals;
- **waiting**: she began to wait at ``node`` (a delay, a wait, a holdout arm, the goal window after the end);
- **step**: she passed ``node``, leaving by ``branch`` (a condition's then/else, an arm, a wait's branch or its
  timeout, a delay's, or ``overflow`` past ``max_visits``);
- **converted** (at ``node``, on ``branch``, the last one taken), **exited** (at ``node``, ``detail`` the reason),
  and **error** (the runtime's: a side effect refused at ``node``).

A node's **entered** counts arrivals. An arrival writes exactly one record, a step (she passed at once) or a
waiting (she waits); the record that ends a wait is a step at the same node, and is a departure, not an arrival.
So, following each instance's step and waiting records in order (a window over the instance, partitioned by
version so a person a migration moved arrives at her new node): a step is an arrival unless the record before it
is a waiting at the same node; a waiting is an arrival unless the record before it is a step at the same node that
ended her path there (an exit node, or an ``overflow`` with nowhere to go: she then waits out the goal window,
``tracking``). A node she loops back to is a new arrival each time. ``passed`` counts steps (but a holdout arm's,
which ends her path at the split: :func:`_holdout`, and an exit node's, where she goes on nowhere), ``exited`` exits
and
``converted`` conversions at the node; **waiting now** is the instances at the node now (``active``, or
``tracking`` in the goal window). Rates are over the node's arrivals.

Split arms (holdout vs treatment) are measured per instance: entered the arm (a step or waiting at the split by that
arm), and converted after it. Broadcasts add their messages by status (``outbox.journey_message_counts``).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chorus.errors import ChorusError
from chorus.journeys import definition as d
from chorus.journeys import store
from chorus.store.tables import journey_instances, journey_records
from chorus.timeutil import iso

NOW = ("active", "tracking")  # an instance inside at its node; "new" ones (held while paused) are at no node yet


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _pairs(counts: dict) -> list[dict]:
    """{key: n} as a list sorted by key (None first): branches and reasons are not all JSON object keys."""
    return [{"key": k, "count": n} for k, n in sorted(counts.items(), key=lambda kv: (kv[0] is not None, kv[0] or ""))]


def _versions(conn: Connection, ws: str, jid: str, version: int | None) -> list[int]:
    known = [v["version"] for v in store.versions(conn, ws, jid)]
    if version is None:
        return known
    if version not in known:
        raise ChorusError(f"journey {jid} has no version {version}", field="version")
    return [version]


def _arrivals(conn: Connection, ws: str, jid: str, version: int | None) -> dict[tuple[int, str], dict[str, int]]:
    """(version, node) -> {"step": n, "waiting": n, "after_wait": n, "after_end": n, "after_step": n}: the step
    and waiting records at the node, by what the instance's previous step/waiting record was."""
    r = journey_records.c
    w = {"partition_by": [r.instance_id, r.version], "order_by": r.id}
    inner = sa.select(r.version, r.node, r.kind, sa.func.lag(r.kind).over(**w).label("pk"),
                      sa.func.lag(r.node).over(**w).label("pn"), sa.func.lag(r.branch).over(**w).label("pb")).where(
        r.workspace_id == ws, r.journey_id == jid, r.kind.in_(("step", "waiting")))  # fmt: skip
    if version is not None:
        inner = inner.where(r.version == version)
    q = inner.subquery()
    same = sa.and_(q.c.pn == q.c.node)
    prev = sa.case(
        (sa.and_(same, q.c.pk == "waiting"), "after_wait"),
        (sa.and_(same, q.c.pk == "step", q.c.pb == "overflow"), "after_end"),
        (sa.and_(same, q.c.pk == "step"), "after_step"),
        else_="",
    ).label("prev")
    rows = conn.execute(sa.select(q.c.version, q.c.node, q.c.kind, prev, sa.func.count())
                        .group_by(q.c.version, q.c.node, q.c.kind, prev)).all()  # fmt: skip
    out: dict[tuple[int, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for v, node, kind, p, n in rows:
        out[(v, node)][f"{kind}:{p}"] += n
    return out


def _events(conn: Connection, ws: str, jid: str, version: int | None) -> list:
    """(version, kind, node, branch, reason, count) of every record kind but waiting (an exit's reason; an error's
    detail is a message, not grouped by: the rows would be one per distinct text)."""
    r = journey_records.c
    reason = sa.case((r.kind == "exited", r.detail), else_=None)
    q = sa.select(r.version, r.kind, r.node, r.branch, reason, sa.func.count()).where(
        r.workspace_id == ws, r.journey_id == jid, r.kind.in_(("entered", "step", "converted", "exited", "error"))
    )
    if version is not None:
        q = q.where(r.version == version)
    return conn.execute(q.group_by(r.version, r.kind, r.node, r.branch, reason)).all()


def _inside(conn: Connection, ws: str, jid: str, version: int | None) -> list:
    t = journey_instances.c
    q = sa.select(t.version, t.node, t.status, sa.func.count()).where(
        t.workspace_id == ws, t.journey_id == jid, t.status != "exited"
    )
    if version is not None:
        q = q.where(t.version == version)
    return conn.execute(q.group_by(t.version, t.node, t.status)).all()


def _arms(conn: Connection, ws: str, jid: str, version: int | None, splits: dict[int, set[str]]) -> list:
    """(version, split node, arm, instances that entered it, those of them converted after entering it)."""
    if not any(splits.values()):
        return []
    a = journey_records.alias("a")
    c = journey_records.alias("c")
    converted = sa.and_(c.c.workspace_id == ws, c.c.journey_id == jid, c.c.version == a.c.version,
                        c.c.kind == "converted", c.c.instance_id == a.c.instance_id, c.c.id > a.c.id)  # fmt: skip
    nodes = sorted({n for ns in splits.values() for n in ns})
    q = sa.select(a.c.version, a.c.node, a.c.branch, sa.func.count(sa.distinct(a.c.instance_id)),
                  sa.func.count(sa.distinct(c.c.instance_id))).select_from(a.outerjoin(c, converted)).where(
        a.c.workspace_id == ws, a.c.journey_id == jid, a.c.kind.in_(("step", "waiting")), a.c.node.in_(nodes),
        a.c.branch.is_not(None))  # fmt: skip
    if version is not None:
        q = q.where(a.c.version == version)
    return conn.execute(q.group_by(a.c.version, a.c.node, a.c.branch)).all()


def stats(conn: Connection, ws: str, jid: str, version: int | None = None) -> dict:
    """The journey's statistics: totals, and per version (all, or ``version``) its nodes and split arms."""
    jr = store.get(conn, ws, jid)
    vs = _versions(conn, ws, jid, version)
    defs = {v: store.definition(conn, ws, jid, v) for v in vs}
    arrivals = _arrivals(conn, ws, jid, version)
    per: dict[tuple[int, str], dict] = defaultdict(lambda: {
        "passed": defaultdict(int), "exited": defaultdict(int), "converted": defaultdict(int), "errors": 0,
        "active": 0, "tracking": 0})  # fmt: skip
    totals = {v: {"entered": 0, "converted": 0, "exited": 0, "active": 0, "tracking": 0, "new": 0} for v in vs}
    for v, kind, node, branch, detail, n in _events(conn, ws, jid, version):
        if v not in totals:
            continue
        if kind == "entered":
            totals[v]["entered"] += n
            continue
        if kind in ("converted", "exited"):
            totals[v][kind] += n
        if node is None:
            continue
        cell = per[(v, node)]
        if kind == "step":
            if not _holdout(defs[v], node, branch) and not _ends(defs[v], node):
                cell["passed"][branch] += n
        elif kind == "exited":
            cell["exited"][detail] += n
        elif kind == "converted":
            cell["converted"][branch] += n
        else:
            cell["errors"] += n
    for v, node, status, n in _inside(conn, ws, jid, version):
        if v not in totals:
            continue
        totals[v][status if status in totals[v] else "active"] += n
        if node is not None and status in NOW:
            per[(v, node)][status] += n
    splits = {v: {n.id for n in defn.nodes if isinstance(n.body, d.Split)} for v, defn in defs.items()}
    arms: dict[int, list[dict]] = defaultdict(list)
    for v, node, arm, entered, conv in _arms(conn, ws, jid, version, splits):
        if node not in splits.get(v, ()):
            continue
        body = defs[v].node(node).body
        assert isinstance(body, d.Split)
        holdout = any(a.holdout for a in body.arms if a.name == arm)
        arms[v].append({"split": node, "arm": arm, "holdout": holdout, "entered": entered, "converted": conv,
                        "conversion_rate": _rate(conv, entered)})  # fmt: skip
    versions = []
    for v in vs:
        defn = defs[v]
        nodes = []
        for node in _flow_order(defn):
            cell, arr = per[(v, node.id)], arrivals.get((v, node.id), {})
            # after a step at an exit node she waits out the goal window there: not a new arrival
            ends_here = isinstance(node.body, d.ExitStep)
            entered = (arr.get("step:", 0) + arr.get("step:after_step", 0) + arr.get("step:after_end", 0)
                       + arr.get("waiting:", 0) + arr.get("waiting:after_wait", 0)
                       + (0 if ends_here else arr.get("waiting:after_step", 0)))  # fmt: skip
            passed, conv = sum(cell["passed"].values()), sum(cell["converted"].values())
            nodes.append({
                "node": node.id, "type": node.type, "entered": entered, "waiting_now": cell["active"],
                "tracking_now": cell["tracking"], "passed": passed, "passed_by_branch": _pairs(cell["passed"]),
                "exited": sum(cell["exited"].values()), "exited_by_reason": _pairs(cell["exited"]),
                "converted": conv, "converted_by_branch": _pairs(cell["converted"]), "errors": cell["errors"],
                "pass_rate": _rate(passed, entered), "conversion_rate": _rate(conv, entered),
            })  # fmt: skip
        t = totals[v]
        versions.append({"version": v, "totals": _totals(t), "nodes": nodes,
                         "arms": sorted(arms[v], key=lambda a: (a["split"], a["arm"]))})  # fmt: skip
    whole = {k: sum(totals[v][k] for v in vs) for k in ("entered", "converted", "exited", "active", "tracking", "new")}
    return {"journey_id": jid, "kind": jr.kind, "status": jr.status, "version": version, "totals": _totals(whole),
            "versions": versions}  # fmt: skip


def _holdout(defn: d.Definition, node: str, branch: str | None) -> bool:
    """Whether a step at ``node`` by ``branch`` is a holdout arm's: not a pass. A holdout's people stay at the split
    (a waiting record) and exit there when the goal window ends; one reaching it after the window already ended
    exits at once (a step by the arm, then the exit). Either way nobody leaves the split by a holdout arm, so it is
    never in ``passed_by_branch`` (the simulator's ``branches`` say the same)."""
    body = defn.by_id[node].body if node in defn.by_id else None
    return isinstance(body, d.Split) and any(a.holdout and a.name == branch for a in body.arms)


def _ends(defn: d.Definition, node: str) -> bool:
    """Whether ``node`` is an exit: the step she makes there is her arrival, and she goes on nowhere (it was
    counted as a pass: an exit node showed passed = exited = entered, pass rate 1.0; an outside probe)."""
    return node in defn.by_id and isinstance(defn.by_id[node].body, d.ExitStep)


def _flow_order(defn: d.Definition) -> list[d.Node]:
    """The nodes from the start on, breadth first along their edges in written order (a stored definition's JSON has
    its keys sorted: this is the order a person meets them); nodes reached from none last, by id."""
    seen, queue = [defn.start], [defn.start]
    while queue:
        for _, target in d.successors(defn.node(queue.pop(0))):
            if target not in seen:
                seen.append(target)
                queue.append(target)
    rest = sorted(n.id for n in defn.nodes if n.id not in seen)
    return [defn.node(n) for n in seen + rest]


def _totals(t: dict) -> dict:
    inside = t["active"] + t["tracking"] + t["new"]
    return {
        "entered": t["entered"],
        "inside": inside,
        "active": t["active"],
        "tracking": t["tracking"],
        "converted": t["converted"],
        "exited": t["exited"],
        "conversion_rate": _rate(t["converted"], t["entered"]),
    }


def people_at(conn: Connection, ws: str, jid: str, node: str, version: int | None = None, limit: int = 100,
              after: str | None = None) -> list[dict]:  # fmt: skip
    """Who is at ``node`` now (active there, or tracking in the goal window after it), by instance id, after
    ``after`` (keyset pages). With a version, the rows are one range of ``ix_journey_instances_node``; without,
    the journey's part of that index is read for the node, and sorted: fine for an admin page."""
    store.get(conn, ws, jid)
    if version is not None:
        _versions(conn, ws, jid, version)
    t = journey_instances.c
    q = sa.select(t.id, t.profile_id, t.version, t.status, t.entered_at, t.updated_at).where(
        t.workspace_id == ws, t.journey_id == jid, t.node == node, t.status.in_(NOW))  # fmt: skip
    if version is not None:
        q = q.where(t.version == version)
    if after is not None:
        q = q.where(t.id > after)
    rows = conn.execute(q.order_by(t.id).limit(limit)).all()
    return [{"instance_id": r.id, "profile_id": r.profile_id, "version": r.version, "status": r.status,
             "entered_at": iso(r.entered_at), "since": iso(r.updated_at)} for r in rows]  # fmt: skip


def person_journeys(conn: Connection, ws: str, pid: str, limit: int = 500) -> dict:
    """A person's instances (every journey she entered, newest first: merges moved those of the ids merged into her)
    and her records, oldest first (records keep the id they were written for: hers and the merged ids')."""
    from chorus.identity.erasure import aliases_of

    states = sorted(store.instances_of(conn, ws, [pid])[pid], key=lambda s: (s.entered_at, s.instance_id),
                    reverse=True)[:limit]  # fmt: skip
    inst = [{"instance_id": s.instance_id, "journey_id": s.journey_id, "version": s.version, "status": s.status,
             "node": s.node, "branch": s.branch, "key": s.key, "entered_at": iso(s.entered_at),
             "converted_at": _when(s.converted_at), "exited_at": _when(s.exited_at), "exit_reason": s.exit_reason,
             "arms": dict(s.arms)} for s in states]  # fmt: skip
    return {"profile_id": pid, "instances": inst,
            "records": store.records_of(conn, ws, [pid, *aliases_of(conn, pid)], limit)}  # fmt: skip


def _when(x: datetime | None) -> str | None:
    return iso(x) if x else None
