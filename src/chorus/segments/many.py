"""Many segment rules answered together: one pass over the events (and one over the messages) for all of them.

``members_many(conn, ws, {id: rule}, now)`` returns, for every id, exactly what :func:`compile.members` returns for
that rule alone, except that a reference to another segment **of the same call** reads that segment's answer at
``now`` from this call (not its stored members): the rules are taken in dependency order and a reference is the
referred rule's own SQL formula. A reference to a segment not in the call reads ``segment_members`` as usual.

Why (decision 0030): each rule compiled alone reads the workspace's events once; twenty rules read them twenty
times. Here the rules share one :class:`compile._Compiler`, so every behaviour, channel and message leaf of every
rule becomes one aggregate column of the same grouped pass, and the outer query returns, per profile, one bit per
rule (packed into integers). Identical leaves (the same node in two rules, or twice in one) are compiled once.

When the rules have more distinct leaves than ``max_leaves``, they are split into groups (in dependency order)
answered one after the other; a reference to a rule of an earlier group binds that group's answer as a parameter.
On PostgreSQL the queries run with JIT off (``SET LOCAL``): measured, JIT compilation of these wide aggregate
queries cost more than it saved (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chorus.identity.identifiers import IdentityConfig
from chorus.segments import rules as r
from chorus.segments.compile import _Compiler, _encode_ids, decide_hybrids, needs_zones, zones_of

__all__ = ["members_many", "MAX_LEAVES"]

MAX_LEAVES = 200  # distinct leaves of one pass: a leaf is one to three aggregate columns (PostgreSQL: 1664 at most)
BITS = 60  # rules per mask column (a signed 64-bit integer on both engines)
_LOGIC = (r.And, r.Or, r.Not)


def members_many(
    conn: Connection, ws: str, rules: Mapping[str, r.Node | Mapping], now: datetime, topics: Mapping | None = None,
    *, zones: Iterable[str | None] | None = None, max_leaves: int = MAX_LEAVES, jit: bool = False,
    span: tuple[str | None, str] | None = None, zone_default: str | None = None,
) -> dict[str, set[str]]:  # fmt: skip
    """The members of every rule at ``now`` (aware), by id: as many rules as fit in one pass at a time.
    ``span`` ``(after, last)``: only the profiles whose id is in ``(after, last]``, every pass restricted to them
    (``compile.members_query``'s span: the engine's batch computes a chunk of ids for all its pending segments).
    ``jit``: leave PostgreSQL's JIT setting as it is (for the benchmark's side-by-side figure). ``zones`` and
    ``zone_default``: as for ``compile.members_query``; without ``zones``, both are read."""
    from chorus import workspaces as ws_api

    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    parsed = {sid: r.parse(dict(rule), f"rules.{sid}") if isinstance(rule, Mapping) else rule
              for sid, rule in rules.items()}  # fmt: skip
    order = _order(parsed)
    if zones is None:
        zones = []
        if any(needs_zones(rule) for rule in parsed.values()):
            zones, zone_default = zones_of(conn, ws), ws_api.get(conn, ws).timezone
    zones = list(zones)  # every group reads them (a generator would be spent by the first)
    identity = None
    if any(isinstance(n, r.Reachable) for rule in parsed.values() for n, _ in r.walk(rule)):
        identity = ws_api.get(conn, ws).identity
    if conn.dialect.name == "postgresql" and not jit:
        # JIT compiles the wide aggregate expressions for seconds on a large pass; it ends with the transaction
        conn.exec_driver_sql("SET LOCAL jit = off")
    found: dict[str, set[str]] = {}
    for group in _groups(order, parsed, max_leaves):
        c = _Many(ws, now.astimezone(UTC), conn.dialect.name, topics, zones, identity or IdentityConfig({}),
                  zone_default, earlier=found)  # fmt: skip
        c.span = span
        found.update(c.answer(conn, {sid: parsed[sid] for sid in group}))
    return {sid: found[sid] for sid in rules}


def _order(parsed: Mapping[str, r.Node]) -> list[str]:
    """The ids in dependency order; a cycle among them is the :func:`rules.check_references` error. Segments outside
    the call stand in as leaves (their stored members are read)."""
    outside = {t for rule in parsed.values() for _, t in r.references(rule) if t not in parsed}
    order = r.check_references({**parsed, **{t: r.InList("-") for t in outside}})
    return [sid for sid in order if sid in parsed]


def leaf_key(n: r.Node) -> bytes:
    """A leaf's identity as the evaluator sees it: its JSON form, type-strict. Not the node itself: frozen nodes
    compare with Python's equality, where ``True == 1`` and ``2**62 == 2.0**62``, but the evaluator tells those
    apart (``evaluate.same``), so two such leaves must not share a predicate."""
    return orjson.dumps(r.to_json(n), option=orjson.OPT_SORT_KEYS)


def _leaves(rule: r.Node) -> set:
    return {leaf_key(n) for n, _ in r.walk(rule) if not isinstance(n, (*_LOGIC, r.SegmentRef))}


def _groups(order: list[str], parsed: Mapping[str, r.Node], max_leaves: int) -> list[list[str]]:
    """Consecutive runs of ``order`` with at most ``max_leaves`` distinct leaves each (a rule wider than that alone
    is a group of its own). A reference inlines the referred formula: it adds no leaf."""
    groups: list[list[str]] = []
    seen: set = set()
    for sid in order:
        mine = _leaves(parsed[sid])
        if groups and len(seen | mine) <= max_leaves:
            groups[-1].append(sid)
            seen |= mine
        else:
            groups.append([sid])
            seen = set(mine)
    return groups


class _Many(_Compiler):
    """The compiler with one formula per rule over shared passes."""

    def __init__(self, *args, earlier: Mapping[str, set[str]]):
        super().__init__(*args)
        self.earlier = earlier  # answers of earlier groups, bound by reference
        self.bound: dict[str, set[str]] = {}  # parameter -> ids
        self.formulas: dict[str, object] = {}  # rule id -> its SQL formula, in this group
        self.cache: dict[bytes, object] = {}  # leaf_key -> its SQL predicate

    def node(self, n: r.Node):
        if isinstance(n, r.SegmentRef):
            if n.segment in self.formulas:
                return self.formulas[n.segment]
            if n.segment in self.earlier:
                key = f"ref{len(self.bound)}"
                self.bound[key] = self.earlier[n.segment]
                return self.in_ids(self.p.c.id, key)
            return super().node(n)
        if isinstance(n, _LOGIC):
            return super().node(n)  # its children come back here
        key = leaf_key(n)
        hit = self.cache.get(key)
        if hit is None:
            hit = self.cache[key] = super().node(n)
        return hit

    def answer(self, conn: Connection, group: Mapping[str, r.Node]) -> dict[str, set[str]]:
        ids = list(group)
        for sid in ids:
            self.formulas[sid] = self.node(group[sid])
        select = self._masks([self.formulas[sid] for sid in ids])
        if self.zt_cols:
            select = select.add_cte(self._zt_cte())
            for h in self.hybrids:
                h.candidates = h.candidates.add_cte(self._zt_cte())
        decided = decide_hybrids(conn, self.hybrids, self.dialect)
        params = {h.key: _encode_ids(decided[h.key], self.dialect) for h in self.hybrids}
        params.update({k: _encode_ids(v, self.dialect) for k, v in self.bound.items()})
        return _unpack(ids, conn.execute(select, params).all())

    def _masks(self, formulas: list):
        """``(id, mask0, mask1, ...)`` of the profiles in at least one rule: bit ``i % BITS`` of mask ``i // BITS``
        is rule ``i``. OFFSET 0 keeps both engines from copying the formulas into the outer WHERE."""
        p = self.p
        masks = []
        for start in range(0, len(formulas), BITS):
            terms = [sa.case((f, sa.literal(1 << k, sa.BigInteger)), else_=sa.literal(0, sa.BigInteger))
                     for k, f in enumerate(formulas[start:start + BITS])]  # fmt: skip
            masks.append(sa.func.coalesce(sum(terms[1:], terms[0]), 0).label(f"m{len(masks)}"))
        inner = (sa.select(p.c.id.label("id"), *masks).select_from(self.outer_from())
                 .where(p.c.workspace_id == self.ws, self.in_span(p.c.id)).offset(0).subquery("many"))  # fmt: skip
        cols = [inner.c[f"m{k}"] for k in range(len(masks))]
        return sa.select(inner.c.id, *cols).where(sa.or_(*(m != 0 for m in cols)))


def _unpack(ids: list[str], rows) -> dict[str, set[str]]:
    """Sets per rule from ``(id, masks...)`` rows: grouped by mask first, so the per-bit work is per distinct mask,
    not per profile."""
    by_mask: dict[tuple, list[str]] = {}
    for pid, *masks in rows:
        by_mask.setdefault(tuple(masks), []).append(pid)
    out: dict[str, set[str]] = {sid: set() for sid in ids}
    for masks, pids in by_mask.items():
        for k, mask in enumerate(masks):
            bit = 0
            while mask:
                if mask & 1:
                    out[ids[k * BITS + bit]].update(pids)
                mask >>= 1
                bit += 1
    return out
