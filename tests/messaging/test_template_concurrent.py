"""Saving a template (or a partial) while another save of the same name is in flight (PostgreSQL: SQLite has one
writer at a time, so its saves never overlap)."""

from __future__ import annotations

import threading
import uuid

import pytest
import sqlalchemy as sa

from chorus import workspaces
from chorus.messaging import outbox
from chorus.store.tables import partials, templates
from chorus.timeutil import utcnow

DOC = {"kind": "marketing", "variants": {"in_app": {"title": "Hello", "body": "again"}}}


def _while_held(engine, hold, save):
    """``hold(conn)`` in an open transaction (another save's writes, not committed yet); ``save()`` in a thread
    meanwhile; then the transaction commits. Returns what ``save`` returned or raised."""
    out: list = [None]

    def run():
        try:
            out[0] = save()
        except Exception as exc:  # noqa: BLE001 - the test reads what it was
            out[0] = exc

    with engine.begin() as conn:
        hold(conn)
        t = threading.Thread(target=run)
        t.start()
        t.join(1.0)  # the save waits on the held rows
    t.join(30)
    return out[0]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_new_template_saved_twice_at_once_makes_versions_1_and_2(engine):
    """The save read no row, inserted, and failed on the key when the other save committed first (a 500)."""
    ws = workspaces.create(engine, "tc-" + uuid.uuid4().hex[:6])["id"]

    def other_save(conn):
        conn.execute(templates.insert().values(workspace_id=ws, name="t", definition={**DOC, "name": "t"},
                                               version=1, updated_at=utcnow()))  # fmt: skip

    got = _while_held(engine, other_save, lambda: outbox.save_template(engine, ws, "t", DOC))
    assert not isinstance(got, Exception), got
    assert got["version"] == 2
    with engine.connect() as conn:
        assert conn.execute(sa.select(templates.c.version).where(templates.c.workspace_id == ws)).scalar_one() == 2


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_two_saves_of_one_template_at_once_make_two_versions(engine):
    """Both read version n and wrote n + 1: one version was lost and both answered alike."""
    ws = workspaces.create(engine, "tc-" + uuid.uuid4().hex[:6])["id"]
    assert outbox.save_template(engine, ws, "t", DOC)["version"] == 1

    def other_save(conn):  # what a save of version 2 writes, not committed yet
        conn.execute(templates.update().where(templates.c.workspace_id == ws, templates.c.name == "t")
                     .values(version=2, updated_at=utcnow()))  # fmt: skip

    got = _while_held(engine, other_save, lambda: outbox.save_template(engine, ws, "t", DOC))
    assert not isinstance(got, Exception), got
    assert got["version"] == 3


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_new_partial_saved_twice_at_once_keeps_the_last(engine):
    ws = workspaces.create(engine, "tc-" + uuid.uuid4().hex[:6])["id"]

    def other_save(conn):
        conn.execute(partials.insert().values(workspace_id=ws, name="footer", source="first", updated_at=utcnow()))

    got = _while_held(engine, other_save, lambda: outbox.save_partial(engine, ws, "footer", "second"))
    assert not isinstance(got, Exception), got
    with engine.connect() as conn:
        assert conn.execute(sa.select(partials.c.source).where(partials.c.workspace_id == ws)).scalar_one() == "second"
