"""Migrations: the schema they build is the one the code declares, and data survives them as documented."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from chorus.store.db import alembic_config, upgrade
from chorus.store.tables import metadata
from tests.conftest import PG_URL, _pg_admin_engine


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request, tmp_path):
    """A database with no schema at all (the shared test databases are already at head)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    request.getfixturevalue("pg_base_url")  # fails under CI, skips elsewhere, when PostgreSQL is unreachable
    name = f"chorus_mig_{uuid.uuid4().hex[:10]}"
    admin = _pg_admin_engine()
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield sa.make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_the_migrated_schema_is_the_declared_one(empty_url):
    upgrade(empty_url)
    eng = sa.create_engine(empty_url)
    with eng.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    eng.dispose()
    assert diff == []


T = "2026-01-01 10:00:00"


def test_link_trust_levels_are_recovered_from_the_events_that_stored_them(empty_url):
    """0006: a link recorded as trusted by a write-key event was vouched (decision 0022)."""
    upgrade(empty_url, "0005")
    eng = sa.create_engine(empty_url)
    with eng.begin() as conn:
        evs = [("m-server", True), ("m-hash", False), ("m-browser", False), ("m-backdated", False)]
        for seq, (msg, trusted) in enumerate(evs, 1):
            conn.execute(sa.text(
                "INSERT INTO events (seq, workspace_id, message_id, type, channel, timestamp, received_at, trusted, "
                "payload) VALUES (:seq, 'w', :msg, 'identify', 'web', :t, :t, :trusted, '{}')"
            ), {"seq": seq, "msg": msg, "t": T, "trusted": trusted})  # fmt: skip
        for a, b, trusted, msg in [("user_id:s", "email:s@x.io", True, "m-server"),
                                   ("user_id:h", "phone:+447911000111", True, "m-hash"),
                                   ("anonymous_id:b", "email:b@x.io", False, "m-browser"),
                                   ("anonymous_id:old", "email:b@x.io", False, "m-backdated"),
                                   ("user_id:h", "phone:+447911000111", False, "m-browser")]:  # fmt: skip
            conn.execute(sa.text(
                "INSERT INTO identity_links (workspace_id, a, b, trusted, at, msg) VALUES ('w', :a, :b, :t, :at, :msg)"
            ), {"a": a, "b": b, "t": trusted, "at": "2000-01-02 00:00:00" if msg == "m-backdated" else T,
                "msg": msg})  # fmt: skip
    eng.dispose()

    upgrade(empty_url)
    eng = sa.create_engine(empty_url)
    with eng.connect() as conn:
        rows = conn.execute(sa.text("SELECT a, b, trust, msg FROM identity_links ORDER BY a, trust")).all()
        moved = conn.execute(sa.text("SELECT at FROM identity_links WHERE msg = 'm-backdated'")).scalar_one()
    eng.dispose()
    assert str(moved).startswith("2026-01-01 10:00:00")  # the backdated claim now sorts at its arrival
    assert [tuple(r) for r in rows] == [
        ("anonymous_id:b", "email:b@x.io", 0, "m-browser"),
        ("anonymous_id:old", "email:b@x.io", 0, "m-backdated"),
        ("user_id:h", "phone:+447911000111", 0, "m-browser"),
        ("user_id:h", "phone:+447911000111", 1, "m-hash"),
        ("user_id:s", "email:s@x.io", 2, "m-server"),
    ]

    command.downgrade(alembic_config(empty_url), "0005")
    eng = sa.create_engine(empty_url)
    with eng.connect() as conn:
        rows = conn.execute(sa.text("SELECT a, trusted, msg FROM identity_links ORDER BY a, trusted")).all()
    eng.dispose()
    assert [(a, bool(t), m) for a, t, m in rows] == [
        ("anonymous_id:b", False, "m-browser"), ("anonymous_id:old", False, "m-backdated"),
        ("user_id:h", False, "m-browser"), ("user_id:h", True, "m-hash"),
        ("user_id:s", True, "m-server"),
    ]  # fmt: skip
