"""The journeys under SIGKILL (issue 13, Reliability), small: 60 people through the abandoned cart on PostgreSQL
with two ``chorus worker`` processes, three SIGKILLs at random moments (each worker restarted), then every person's
messages in the outbox compared with the simulator's prediction over the same stored events. The full-size run is
``bench/journeys_reliability.py``; this test runs its :func:`run`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import journeys_reliability as rel  # noqa: E402


def test_sixty_people_two_workers_three_sigkills_get_exactly_the_predicted_messages(db_url, tmp_path):
    if not db_url.startswith("postgresql"):
        pytest.skip("several workers claiming rows with SKIP LOCKED: PostgreSQL only")
    res = rel.run(db_url, people=60, workers=2, kills=3, seed=7, speed=10, rate=6,
                  logdir=tmp_path, timeout=120)  # fmt: skip
    assert res.kills == 3 and res.restarts == 3
    assert res.missing == [] and res.extra == [] and res.parked == 0
    # the seed plan has buyers within the wait, late buyers and people who never buy: reminders were predicted,
    # and not for everybody (a run where nothing or everything is sent would prove little)
    assert 0 < res.predicted == res.sent < 2 * res.people
