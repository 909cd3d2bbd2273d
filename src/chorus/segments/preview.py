"""Who would be in a segment now, without saving anything: the count and a sample of the members of a rule, by the
set-based query of :mod:`chorus.segments.compile` (exact against the reference evaluator). The API's
``POST /api/segments/preview``, the ``estimate`` a save answers with, and ``chorus segments preview`` call it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError

from chorus import workspaces as ws_api
from chorus.errors import ChorusError
from chorus.profiles import views
from chorus.segments import compile, store
from chorus.segments import rules as r
from chorus.store.budget import time_budget

MAX_SAMPLE = 100
# SQLite's words for a statement past its compile-time limits (expression depth, compound terms, variables, joins)
_SQLITE_LIMITS = {"expression tree is too large": "its expressions nest too deep",
                  "too many terms in compound select": "too many alternatives",
                  "parser stack overflow": "its expressions nest too deep",
                  "too many sql variables": "too many values", "at most 64 tables in a join": "too many joins"}


def _too_large(exc: OperationalError) -> str | None:
    text = str(exc.orig).lower()
    return next((why for words, why in _SQLITE_LIMITS.items() if words in text), None)


def preview(conn: Connection, ws: ws_api.Workspace, rule: r.Node, now: datetime, *, sample: int = 10,
            segment_id: str | None = None, budget: float | None = None) -> dict:  # fmt: skip
    """``{"count", "sample": [{"profile_id", "identifiers"}], "computed_at"}`` for ``rule`` at ``now``. References
    to other segments read their current members. ``segment_id``: the segment the rule is for (its own references
    are checked from it). ``budget``: seconds the preview's statements may run, all together, before the one running
    is stopped (``store.budget.OverBudget``, field ``rule``); None for none."""
    if isinstance(sample, bool) or not isinstance(sample, int) or not 0 <= sample <= MAX_SAMPLE:
        raise ChorusError(f"sample must be a whole number from 0 to {MAX_SAMPLE}", field="sample")
    store.check_rule(conn, ws.id, segment_id, rule)
    topics = (ws.settings.get("messaging") or {}).get("topics")
    with time_budget(conn, budget, "the count of this rule", field="rule",
                     hint=" (CHORUS_SEGMENT_PREVIEW_SECONDS); save the segment and the worker computes it"):
        try:
            ids = sorted(compile.members(conn, ws.id, rule, now, topics))
        except OperationalError as exc:
            if (why := _too_large(exc)) is None:
                raise
            # a valid rule whose one query is past what the database compiles (an outside probe: an "or" of 499
            # sums was a 500 on SQLite); the worker still computes it once saved, person by person
            raise ChorusError(f"this rule is too large to count in one query on this store ({why}): save it and the "
                              "worker computes it, or split it into segments and refer to them", field="rule") from None
        picked = ids[:sample]  # the first profile ids: stable from one preview to the next
        found = views.get_profiles(conn, ws.id, picked, ws.identity) if picked else {}
    return {
        "count": len(ids),
        "sample": [{"profile_id": p, "identifiers": (found.get(p) or {}).get("identifiers") or {}} for p in picked],
        "computed_at": now,
    }
