"""CSV cells written for people to open never run as spreadsheet formulas (an outside probe identified a user whose
id was ``=HYPERLINK(...)`` with the public write key, then exported a segment: the cell was written verbatim)."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chorus.analytics.output import to_csv
from chorus.safecsv import cell


@pytest.mark.parametrize("text", ['=HYPERLINK("http://x.test","click")', "+cmd|' /C calc'!A0", "-2+3+cmd|' /C calc'!A0",
                                  "@SUM(1+1)", "\t=1+1", "\r=1+1", "=1", "+", "-", "+31 6 1234 5678"])  # fmt: skip
def test_a_formula_is_quoted(text):
    assert cell(text) == "'" + text


@pytest.mark.parametrize("value", ["ana@example.com", "u_42", "+31612345678", "-3.5", "1e-3", "", 7, None, 2.5])
def test_text_and_numbers_stay_as_they_are(value):
    assert cell(value) == value


@given(st.text())
def test_no_cell_starts_a_formula_unless_it_is_a_number(text):
    out = cell(text)
    assert not out.startswith(("=", "@", "\t", "\r"))
    if out.startswith(("+", "-")):
        float(out)  # a number, read as one


def test_analytics_tables_quote_formulas_from_campaign_names():
    text = to_csv([{"campaign": "=cmd|' /C calc'!A0", "revenue": 12.5}], ["campaign", "revenue"])
    assert list(csv.reader(io.StringIO(text))) == [["campaign", "revenue"], ["'=cmd|' /C calc'!A0", "12.5"]]
