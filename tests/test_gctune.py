"""The collector settings of a long-running process (decision 0041): the startup heap frozen, passes spaced, the
opt-out honoured, a wrong value refused; and that `chorus serve` applies them in its own process."""

from __future__ import annotations

import gc

import httpx
import pytest

from chorus import gctune
from tests.conftest import ServeProcess


@pytest.fixture
def restore_gc():
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_tune_freezes_the_startup_heap_and_spaces_the_passes(restore_gc, monkeypatch):
    monkeypatch.delenv("CHORUS_GC", raising=False)
    gc.unfreeze()
    assert gctune.tune() is True
    assert gc.get_threshold() == (gctune.GEN0, gctune.GEN1, gctune.GEN2)
    assert gc.get_freeze_count() > 10_000  # this test process's modules, classes and functions, at the least


def test_default_keeps_cpythons_settings(restore_gc, monkeypatch):
    monkeypatch.setenv("CHORUS_GC", "default")
    gc.unfreeze()
    before = gc.get_threshold()
    assert gctune.tune() is False
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_a_wrong_value_is_refused_with_its_name(restore_gc, monkeypatch):
    monkeypatch.setenv("CHORUS_GC", "off")
    with pytest.raises(SystemExit, match="CHORUS_GC must be tuned or default, got 'off'"):
        gctune.tune()


def _young_passes_while_storing_events(srv) -> float:
    """Young-generation passes of the server's process (its Prometheus metrics) while it stores 2,000 events."""

    def young_passes() -> float:
        text = httpx.get(srv.base_url + "/metrics", timeout=5).text
        line = next(x for x in text.splitlines() if x.startswith('python_gc_collections_total{generation="0"}'))
        return float(line.split()[-1])

    first = young_passes()
    for b in range(10):
        batch = [{"type": "track", "event": "Product Viewed", "userId": f"u{i}", "messageId": f"m-{b}-{i}",
                  "properties": {"sku": f"sku-{i}", "price": i}} for i in range(200)]  # fmt: skip
        r = httpx.post(srv.base_url + "/v1/batch", json={"batch": batch}, auth=(srv.keys["write_key"], ""), timeout=30)
        assert r.status_code == 200, r.text
    return young_passes() - first


def test_chorus_serve_runs_with_the_tuned_collector(tmp_path):
    """The setting is applied in the server's own process: with the threshold raised, storing 2,000 events
    takes at most a pass or two of the collector; CPython's default takes one a batch (below)."""
    with ServeProcess(f"sqlite:///{tmp_path}/c.db", tmp_path, "--no-worker", CHORUS_GC="tuned") as srv:
        assert _young_passes_while_storing_events(srv) <= 2


def test_chorus_serve_with_the_default_collector_collects_often(tmp_path):
    """The same measure with CHORUS_GC=default: the assertion above can fail."""
    with ServeProcess(f"sqlite:///{tmp_path}/c.db", tmp_path, "--no-worker", CHORUS_GC="default") as srv:
        assert _young_passes_while_storing_events(srv) >= 5  # one a batch, seen


def test_a_wrong_value_stops_chorus_serve_before_it_creates_anything(tmp_path):
    """Refused before the first run's workspace is made and its keys printed (review)."""
    import subprocess
    import sys

    db = tmp_path / "c.db"
    out = subprocess.run([sys.executable, "-m", "chorus.cli", "serve", "--db", f"sqlite:///{db}"],
                         env={**__import__("os").environ, "CHORUS_GC": "off"}, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert out.returncode != 0 and "CHORUS_GC must be tuned or default, got 'off'" in out.stderr
    assert "api_key" not in out.stderr + out.stdout and not db.exists()
