"""Fixtures of the journey runtime's tests: one virtual clock for the runtime and the segment engine, a workspace
with in-app templates (the inbox needs no provider), the installed worker."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from chorus import registry as reg
from chorus import workspaces
from chorus.journeys import runtime
from chorus.messaging import outbox
from chorus.segments import engine as seg
from chorus.worker import Worker
from tests.segments.conftest import Clock

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday


@pytest.fixture
def clock(monkeypatch):
    c = Clock(T0)
    monkeypatch.setattr(runtime, "now", c)
    monkeypatch.setattr(seg, "now", c)
    return c


@pytest.fixture
def ws(engine):
    w = workspaces.create(engine, "jr-" + uuid.uuid4().hex[:6])["id"]
    for name in ("cart_reminder", "cart_reminder_2", "welcome", "offer", "receipt"):
        outbox.save_template(
            engine,
            w,
            name,
            {
                "kind": "marketing",
                "variants": {"in_app": {"title": name + " {{ event.cart_id }}", "body": "see you soon"}},
            },
        )
    return w


@pytest.fixture
def worker(engine):
    w = Worker(engine, registry=reg.installed())
    yield w
    w.stop()


def failing_sends(monkeypatch, fails, why: str = "a data error for this one person"):
    """Make the message effect raise ``ValueError(why)`` for the steps where ``fails(run, state)``; returns the call
    that puts the real effect back (the cause fixed)."""
    from chorus.journeys import interpreter as j

    real = runtime._EFFECTS[j.Send]

    def send_(run, s, c):
        if fails(run, s):
            raise ValueError(why)
        real(run, s, c)

    monkeypatch.setitem(runtime._EFFECTS, j.Send, send_)
    return lambda: monkeypatch.setitem(runtime._EFFECTS, j.Send, real)
