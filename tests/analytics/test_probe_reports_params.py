"""Probe findings 8 and 9, the library and CLI side: one parse of the model list and of days, shared with the API
(tests/api/test_analytics_probe_reports.py). A model named twice counted every conversion twice; the API took an
empty list the CLI refused; the API took dates (epoch seconds, date-times at midnight) the CLI refused."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from chorus.analytics import attribution, limits
from chorus.analytics.engine import open_lake
from chorus.cli import app
from chorus.errors import ChorusError
from tests.analytics.lakegen import WS, LakeWriter

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def lake(tmp_path):
    w = LakeWriter(tmp_path / "lake")
    for i, ch in enumerate(("web", "store", "email")):
        w.touch(f"p{i}", 0, ch).order(f"p{i}", 1, 10.0 + i)
    return w.write()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("linear,linear, linear", "linear more than once"),
        ("markov,linear,markov,linear", "linear, markov more than once"),
        (",", "at least one model"),
        ("", "at least one model"),
        (" , ,", "at least one model"),
        ("linear,Linear", "unknown model 'Linear'"),
    ],
)
def test_a_bad_model_list_is_refused_naming_models(text, words):
    with pytest.raises(ChorusError) as err:
        attribution.parse_models(text)
    assert err.value.field == "models" and words in err.value.message, err.value.message


def test_a_good_model_list_keeps_its_order():
    assert attribution.parse_models(" markov , linear,") == ("markov", "linear")


def test_attribute_refuses_a_model_twice(lake):
    """The library too: one model's credit adds up to the conversions once."""
    lk = open_lake(str(lake), workspace_id=WS)
    with pytest.raises(ChorusError) as err:
        attribution.attribute(lk, models=("linear", "linear"))
    assert err.value.field == "models"
    with pytest.raises(ChorusError):
        attribution.attribute(lk, models=())


@pytest.mark.parametrize("models", ["linear,linear", ",", "linear, linear,markov"])
def test_the_cli_refuses_what_the_api_refuses(lake, models):
    r = CliRunner().invoke(app, ["attribution", "--lake", str(lake), "--models", models, "--format", "json"])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error") and "models" in r.output, r.output


def test_one_model_credit_adds_up_to_the_conversions(lake):
    r = CliRunner().invoke(app, ["attribution", "--lake", str(lake), "--models", "linear", "--format", "json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert sum(row["conversions"] for row in data["rows"]) == data["totals"]["attributed_conversions"] == 3


@pytest.mark.parametrize("value", ["0", "86400", "-86400", "2026-12-07T00:00:00Z", "20261207", "2026-W49-1",
                                   "٢٠٢٦-١٢-٠٧", "2026-12-7", " 2026-12-07"])  # fmt: skip
def test_a_day_is_yyyy_mm_dd_only(value):
    with pytest.raises(ChorusError) as err:
        limits.day(value, "since")
    assert err.value.field == "since" and "is not a date (YYYY-MM-DD)" in err.value.message


@pytest.mark.parametrize("value", ["20261207", "2026-W49-1"])
def test_the_cli_refuses_compact_dates_too(lake, value):
    """date.fromisoformat takes 20261207 and 2026-W49-1 on Python 3.11: the CLI took them, the API did not."""
    r = CliRunner().invoke(app, ["report", "paths", "--lake", str(lake), "--since", value])
    assert r.exit_code == 2, r.output
    assert "is not a date (YYYY-MM-DD)" in r.output, r.output


def test_days_and_their_bounds():
    assert limits.day("2026-12-07", "since").isoformat() == "2026-12-07"
    with pytest.raises(ChorusError, match="between 1000-01-01 and 9000-12-31"):
        limits.day("0999-12-31", "until")
    # a number of days: the schema's minimum (a second) is what is checked, in words
    assert limits.WINDOW_DAYS.schema() == {"minimum": 1 / 86400, "maximum": 3660}
    assert limits.days(limits.WINDOW_DAYS, 1 / 86400, "window_days").total_seconds() == 1
    with pytest.raises(ChorusError, match="at least one second"):
        limits.days(limits.HALF_LIFE_DAYS, 0.0000115, "half_life_days")
