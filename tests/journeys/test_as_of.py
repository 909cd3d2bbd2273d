"""A condition reads the person as of its input's instant, live as in the simulator, however late the input is
handled: her traits folded from her events up to that instant (an outside probe rated it high: the runtime read
her traits as stored when it handled the input, so a backlog changed which branch she took, and a backtest did not
predict it). Memberships are read as stored (decision 0053)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from chorus import workspaces
from chorus.journeys import definition as d
from chorus.journeys import simulate as sm
from chorus.journeys.cli import backtest_subjects
from chorus.messaging import outbox
from chorus.store.tables import journey_records
from tests.journeys.test_runtime import publish, send, settle

T = datetime(2026, 3, 2, 9, tzinfo=UTC)


def journey(condition: dict) -> dict:
    return {
        "id": "vip", "name": "VIP welcome", "entry": {"event": {"event": "Signed Up"}}, "reentry": "never",
        "start": "check",
        "nodes": {
            "check": {"type": "condition", "if": condition, "then": "gold", "else": "std"},
            "gold": {"type": "message", "template": "gold", "channel": ["in_app"], "kind": "marketing", "next": "done"},
            "std": {"type": "message", "template": "std", "channel": ["in_app"], "kind": "marketing", "next": "done"},
            "done": {"type": "exit"},
        },
    }  # fmt: skip


def identify(user: str, at: datetime, **traits) -> dict:
    return {"type": "identify", "userId": user, "messageId": uuid.uuid4().hex, "timestamp": at.isoformat(),
            "traits": traits}  # fmt: skip


def signed_up(user: str, at: datetime) -> dict:
    return {"type": "track", "userId": user, "event": "Signed Up", "messageId": uuid.uuid4().hex,
            "timestamp": at.isoformat(), "context": {"channel": "web"}}  # fmt: skip


def branches(engine, ws: str) -> dict[str, str]:
    with engine.connect() as conn:
        r = journey_records.c
        rows = conn.execute(sa.select(r.instance_id, r.branch).where(r.workspace_id == ws, r.node == "check",
                                                                     r.kind == "step")).all()  # fmt: skip
    return dict(rows)


def run(engine, clock, worker, condition: dict) -> tuple[list[str], list[str]]:
    """Everyone starts silver; u1 and u2 sign up at T and turn gold five minutes later, u3 turns gold a minute
    before signing up. The worker is behind: it sees the sign-ups only after the upgrades. Returns the branches
    taken live, and those the backtest of the stored events predicts, by user."""
    ws = workspaces.create(engine, "asof-" + uuid.uuid4().hex[:6])["id"]
    for name in ("gold", "std"):
        outbox.save_template(engine, ws, name, {"kind": "marketing", "variants": {"in_app": {"body": name}}})
    doc = journey(condition)
    clock.at = T - timedelta(hours=1)
    publish(engine, ws, doc, at=T - timedelta(hours=1))
    send(engine, ws, [identify(u, T - timedelta(hours=1), plan="silver") for u in ("u1", "u2", "u3")],
         T - timedelta(hours=1))  # fmt: skip
    settle(worker)
    clock.at = T + timedelta(minutes=10)
    send(engine, ws, [signed_up("u1", T), identify("u1", T + timedelta(minutes=5), plan="gold"),
                      signed_up("u2", T), identify("u2", T + timedelta(minutes=5), plan="gold"),
                      identify("u3", T - timedelta(minutes=1), plan="gold"), signed_up("u3", T)],
         T + timedelta(minutes=10))  # fmt: skip
    settle(worker)
    live = sorted(branches(engine, ws).values())
    with engine.connect() as conn:
        wk = workspaces.find(conn, ws)
        subjects = backtest_subjects(conn, wk, T - timedelta(days=1), T + timedelta(hours=1))
    report = sm.simulate(d.parse(doc), subjects, since=T - timedelta(days=1), until=T + timedelta(hours=1),
                         trace=True)
    predicted = sorted(r.branch for _, _, r in report.trace if r.node == "check" and r.kind == "step")
    return live, predicted


def test_a_trait_condition_reads_her_traits_as_of_the_entry_however_late_it_is_handled(engine, clock, worker):
    live, predicted = run(engine, clock, worker, {"trait": {"name": "plan", "equals": "gold"}})
    assert live == predicted == ["else", "else", "then"]


def test_a_rule_read_from_her_summary_counts_only_what_she_did_before(engine, clock, worker):
    """"Identified twice" at her sign-up, with the identify that came after it handled in the same pass: counted up
    to the sign-up only, from her summary as from her events (this held before the refold too: the evaluation
    reads her events when her summary has anything later than its instant)."""
    live, predicted = run(engine, clock, worker, {"performed": {"type": "identify", "times": {"gte": 2}}})
    assert live == predicted == ["else", "else", "then"]


def test_her_trait_step_is_read_by_her_next_input_even_one_stamped_before_it_was_taken(engine, ws, clock, worker):
    """Two entries of one person handled in one pass, stamped 1 s apart and handled 2 s after the first: the first
    sets the trait (its identify stamped when the worker ran), the second is read as of its own instant, before
    that stamp: the step is hers at once all the same, as the simulator folds it (review of the refold)."""
    from tests.journeys.test_runtime import STAGE, ev

    publish(engine, ws, STAGE)
    clock.at = T + timedelta(seconds=2)
    send(engine, ws, [ev("Go", T, k="a"), ev("Go", T + timedelta(seconds=1), k="b")], clock.at)
    settle(worker)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(journey_records.c.branch).where(
            journey_records.c.workspace_id == ws, journey_records.c.node == "c0")).scalars().all()  # fmt: skip
    assert sorted(b for b in rows if b) == ["else", "then"], rows
