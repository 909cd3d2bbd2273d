"""Hostile values for the analytics' settings and parameters, below the API (found by a probe): each is a
ChorusError naming the field, never an OverflowError, a StatisticsError, a DuckDB parser error or a library's text.
The same inputs through HTTP: tests/api/test_analytics_hostile.py."""

from __future__ import annotations

import logging
import math

import pytest

from chorus.analytics import touchpoints as tp
from chorus.errors import ChorusError
from tests.analytics.lakegen import LakeWriter


# -- the attribution setting: bounded windows, event names without control characters ---------------------------------
@pytest.mark.parametrize(
    "raw, field, words",
    [
        ({"lookback_days": 1e308}, "lookback_days", "at most 3650"),
        ({"lookback_days": 1e9}, "lookback_days", "at most 3650"),
        ({"lookback_days": 10**400}, "lookback_days", "at most 3650"),
        ({"lookback_days": 1e-320}, "lookback_days", "at least one second"),
        ({"lookback_days": math.nan}, "lookback_days", "finite"),
        ({"lookback_days": math.inf}, "lookback_days", "finite"),
        ({"touch_gap_minutes": 1e308}, "touch_gap_minutes", "at most 525600"),
        ({"touch_gap_minutes": math.nan}, "touch_gap_minutes", "finite"),
        ({"conversions": ["Order\u0000Completed"]}, "conversions[0]", "control character"),
        ({"conversions": "Order\u0000Completed"}, "conversions[0]", "control character"),
        ({"exclude_events": ["ok", "tab\tbed"]}, "exclude_events[1]", "control character"),
        ({"touchpoints": [{"name": "web", "events": ["a\u0085b"]}]}, "touchpoints[0].events[0]", "control"),
        ({"touchpoints": [{"name": "we\u0000b"}]}, "touchpoints[0].name", "control character"),
        ({"touchpoints": [{"name": "web", "channels": ["st\u0000re"]}]}, "touchpoints[0].channels[0]", "control"),
    ],
)
def test_parse_config_bounds_and_names(raw, field, words):
    with pytest.raises(ChorusError) as err:
        tp.parse_config(raw)
    assert err.value.field == field and words in err.value.message, (err.value.field, err.value.message)


def test_parse_config_keeps_the_largest_accepted_values():
    cfg = tp.parse_config({"lookback_days": 3650, "touch_gap_minutes": 525600, "conversions": ["Ordér ✓ 完了"]})
    assert cfg.lookback.days == 3650 and cfg.touch_gap.days == 365 and cfg.conversions == ("Ordér ✓ 完了",)


def test_the_settings_validator_names_the_setting():
    from chorus.analytics import _attribution

    cases = [
        ({"lookback_days": 1e308}, "lookback_days"),
        ({"touch_gap_minutes": 1e308}, "touch_gap_minutes"),
        ({"conversions": ["Order\u0000Completed"]}, "conversions[0]"),
    ]
    for value, field in cases:
        with pytest.raises(ValueError) as err:
            _attribution(value)
        assert str(err.value).startswith(f"settings.attribution.{field}: "), err.value


def test_a_config_built_in_code_cannot_carry_a_nul_to_the_engine():
    with pytest.raises(ChorusError):
        tp.Config(conversions=("Order\u0000Completed",))
    with pytest.raises(ChorusError):
        tp.Config(rules=(tp.TouchRule("x", events=("a\u0000",)),))


def test_quotes_in_event_names_reach_duckdb_escaped(tmp_path):
    """Ibis writes the names into DuckDB's SQL as literals with their quotes doubled: a quote is a character."""
    from chorus.analytics.engine import open_lake
    from chorus.analytics.paths import path_report

    w = LakeWriter(tmp_path)
    w.touch("p1", 0, "store").event("p1", 1, "Order 'Completed'", revenue=5.0)
    w.touch("p2", 0, "web").event("p2", 1, "x') OR ('1'='1", revenue=7.0)
    w.write()
    for name, converted in (("Order 'Completed'", 1), ("x') OR ('1'='1", 1), ("Order", 0)):
        cfg = tp.parse_config({"conversions": [name]})
        rep = path_report(open_lake(tmp_path), cfg)
        assert rep.totals["conversions"] == converted, (name, rep.totals)


# -- confidence: every accepted value gives an interval --------------------------------------------------------------
def test_confidence_is_bounded_where_inv_cdf_would_reach_1():
    from chorus.analytics import omnichannel, uplift

    assert 0.5 + 0.9999999999999999 / 2 == 1.0  # why: the normal quantile of 1 is infinite (StatisticsError)
    lo, hi = omnichannel.wilson_interval(5, 10, omnichannel.CONFIDENCE_MAX)
    assert 0 < lo < 0.5 < hi < 1
    for call in (
        lambda c: omnichannel.wilson_interval(5, 10, c),
        lambda c: uplift.diff_proportions(5, 10, 3, 10, c),
        lambda c: uplift.welch(1.0, 1.0, 5, 2.0, 1.0, 5, c),
        lambda c: omnichannel.omnichannel_value(None, confidence=c),  # refused before the lake is read
        lambda c: uplift.uplift(None, confidence=c),
    ):
        for bad in (0.9999999999999999, 0.9999999, 1, 0, math.nan):
            with pytest.raises(ChorusError) as err:
                call(bad)
            assert err.value.field == "confidence" and "at most 0.999999" in err.value.message


# -- CLV: the time unit and the penalizer named, bounded -------------------------------------------------------------
@pytest.mark.parametrize(
    "kw, field",
    [({"unit_days": 1e-320}, "unit_days"), ({"unit_days": 0.5}, "unit_days"), ({"unit_days": math.nan}, "unit_days"),
     ({"unit_days": 1e9}, "unit_days"), ({"penalizer": math.nan}, "penalizer"), ({"penalizer": math.inf}, "penalizer"),
     ({"penalizer": -1}, "penalizer"), ({"discount_rate": math.nan}, "discount_rate")],
)  # fmt: skip
def test_clv_parameters_are_named(kw, field):
    from chorus.analytics.clv import lifetime_values

    with pytest.raises(ChorusError) as err:
        lifetime_values(None, **kw)  # refused before the lake is read
    assert err.value.field == field, err.value


# -- an unreadable part file of the lake -----------------------------------------------------------------------------
def test_a_corrupt_part_file_is_lake_unreadable_naming_it(tmp_path, caplog):
    from chorus.analytics.engine import LakeUnreadable, open_lake, readable
    from chorus.analytics.paths import path_report

    w = LakeWriter(tmp_path)
    w.touch("p1", 0, "web").order("p1", 1, 10.0)
    w.write()
    bad = tmp_path / "events" / "workspace_id=ws_test" / "date=2026-03-02" / "part-9-9.parquet"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not parquet at all")
    with caplog.at_level(logging.ERROR, logger="chorus.analytics.engine"), pytest.raises(LakeUnreadable) as err:
        with readable(tmp_path):
            path_report(open_lake(tmp_path, workspace_id="ws_test"))
    exc = err.value
    assert exc.status == 503 and exc.code == "lake_unreadable" and exc.field == "lake"
    assert "events/workspace_id=ws_test/date=2026-03-02/part-9-9.parquet" in exc.message
    assert str(tmp_path) not in exc.message and "magic" not in exc.message.lower()
    assert "magic bytes" in caplog.text.lower()  # the engine's words: in the log


def test_readable_lets_other_errors_through(tmp_path):
    from chorus.analytics.engine import readable

    with pytest.raises(ZeroDivisionError), readable(tmp_path):
        1 / 0  # noqa: B018
