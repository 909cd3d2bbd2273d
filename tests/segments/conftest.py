"""Fixtures of the segment engine's tests: a virtual clock for the engine, a workspace, the installed worker."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from chorus import registry as reg
from chorus import workspaces
from chorus.segments import engine as seg
from chorus.worker import Worker

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday


class Clock:
    def __init__(self, at: datetime):
        self.at = at

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
def clock(monkeypatch):
    c = Clock(T0)
    monkeypatch.setattr(seg, "now", c)
    return c


@pytest.fixture
def ws(engine):
    return workspaces.create(engine, "seg-" + uuid.uuid4().hex[:6])["id"]


@pytest.fixture
def worker(engine):
    w = Worker(engine, registry=reg.installed())
    yield w
    w.stop()


