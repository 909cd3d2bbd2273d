"""Two writers and two `chorus worker` processes on PostgreSQL never create two profiles for one identifier."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from collections import defaultdict

import httpx
import pytest
import sqlalchemy as sa

from chorus.store.tables import events, identifiers, profiles
from tests.conftest import LiveServer, pending, wait_until


@pytest.fixture
def pg_url(request):
    url = request.getfixturevalue("pg_base_url")
    from tests.conftest import _truncate_pg

    _truncate_pg(url)
    return url


def test_concurrent_ingest_and_workers_keep_one_profile_per_identifier(pg_url):
    from chorus import workspaces
    from chorus.store.db import create_engine

    engine = create_engine(pg_url)
    ws = workspaces.create(engine, "busy-shop")
    rng = random.Random(7)
    people = 150
    # Each person: anonymous browsing on two devices, then identify on both devices, sent by two writers at once.
    streams: list[list[dict]] = [[], []]
    for p in range(people):
        for dev in (0, 1):
            anon = f"dev-{p}-{dev}"
            streams[dev].append({"type": "page", "anonymousId": anon, "messageId": f"pg-{p}-{dev}"})
            streams[dev].append({"type": "identify", "anonymousId": anon, "userId": f"user-{p}",
                                 "messageId": f"id-{p}-{dev}",
                                 "traits": {"email": f"person{p}@example.com"}})  # fmt: skip
    for s in streams:
        rng.shuffle(s)
    env = {**os.environ, "CHORUS_WORKER_POLL_SECONDS": "0.02"}
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "chorus.cli", "worker", "--db", pg_url, "--batch", "50"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for _ in range(2)
    ]
    try:
        with LiveServer(pg_url, engine, run_worker=False) as srv:
            errors = []

            def writer(stream):
                with httpx.Client(base_url=srv.base_url, auth=(ws["server_write_key"], "")) as c:
                    for i in range(0, len(stream), 20):
                        r = c.post("/v1/batch", json={"batch": stream[i : i + 20]})
                        if r.status_code != 200:
                            errors.append(r.text)

            threads = [threading.Thread(target=writer, args=(s,)) for s in streams]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert errors == []
            wait_until(lambda: pending(engine) == 0, timeout=120)
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            w.wait(20)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(events)).scalar_one() == people * 4
        owners = conn.execute(sa.select(identifiers.c.ident, identifiers.c.profile_id)).all()
        live = set(conn.execute(sa.select(profiles.c.id)).scalars())
    groups = defaultdict(set)
    for ident, pid in owners:
        groups[pid].add(ident)
    assert set(groups) == live  # no orphan profile, no identifier pointing at a merged-away profile
    assert len(live) == people
    for g in groups.values():
        users = [i for i in g if i.startswith("user_id:")]
        assert len(users) == 1
        p = users[0].split("-")[1]
        assert g == {
            f"user_id:user-{p}",
            f"anonymous_id:dev-{p}-0",
            f"anonymous_id:dev-{p}-1",
            f"email:person{p}@example.com",
        }
    engine.dispose()


def test_many_processes_upgrading_a_fresh_database_at_once(pg_url):
    import sqlalchemy as sa

    from chorus.store.db import create_engine

    eng = create_engine(pg_url)
    with eng.begin() as conn:  # a fresh database: drop the schema the fixture made
        conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    procs = [subprocess.Popen([sys.executable, "-m", "chorus.cli", "db", "upgrade", "--db", pg_url],
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]  # fmt: skip
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errs
    from alembic.script import ScriptDirectory

    from chorus.store.db import alembic_config

    head = ScriptDirectory.from_config(alembic_config(pg_url)).get_current_head()
    with eng.connect() as conn:
        assert conn.execute(sa.text("select version_num from alembic_version")).scalar_one() == head
    eng.dispose()
