"""The analytics commands' text output (what a person reads in a terminal; the other tests read --format json):
each report prints without failing (review: every one but `chorus clv` called the CLV result's fit notes on its own
result, and crashed after printing its tables)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from chorus.cli import app
from tests.analytics.lakegen import LakeWriter
from tests.analytics.test_omnichannel import shop

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.mark.parametrize(
    ("command", "shows"),
    [
        (["attribution"], "conversions"),
        (["report", "omnichannel", "--bootstrap", "200", "--no-clv"], "net revenue 330.00"),
        (["report", "showrooming"], "Showrooming and webrooming"),
        (["report", "uplift"], "Uplift"),
    ],
)
def test_the_text_reports_print(tmp_path, command, shows):
    lake = shop(LakeWriter(tmp_path)).event("a", 48, "Order Refunded", revenue=120.0, order_id="A1").write()
    r = CliRunner().invoke(app, [*command, "--lake", str(lake)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, (r.output[-2000:], r.exception)
    assert shows in r.output, r.output[-2000:]
