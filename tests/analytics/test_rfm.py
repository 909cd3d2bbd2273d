"""The RFM summary the engine computes from raw transactions matches the published CDNOW summary."""

from __future__ import annotations

import csv
from datetime import UTC, date, datetime

import ibis
import pyarrow as pa
import pytest

from chorus.analytics.clv import rfm_summary
from tests.analytics.cdnow import cdnow_file


def _transactions() -> pa.Table:
    ids, ts, values = [], [], []
    for line in cdnow_file("CDNOW_sample.txt").read_text().splitlines():
        _master, sample_id, day, _cds, dollars = line.split()
        ids.append(str(int(sample_id)))
        ts.append(datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC))
        values.append(float(dollars))
    return pa.table({"profile_id": ids, "ts": pa.array(ts, pa.timestamp("us", tz="UTC")), "revenue": values})


def test_summary_from_cdnow_transactions_matches_the_published_summary():
    con = ibis.duckdb.connect()
    tx = con.create_table("tx", _transactions())
    got = {r["customer"]: r for r in rfm_summary(tx, end=date(1997, 9, 30), unit_days=7).to_pyarrow().to_pylist()}
    with cdnow_file("cdnow_customers_summary_with_transactions.csv").open() as f:
        published = list(csv.DictReader(f))
    assert len(published) == 2357 and len(got) == 2357
    for row in published:
        mine = got[row["ID"]]
        assert mine["frequency"] == int(row["x"]), row
        assert mine["recency"] == pytest.approx(float(row["t_x"]), abs=0.006), row
        assert mine["T"] == pytest.approx(float(row["T"]), abs=0.006), row
        assert mine["monetary_value"] == pytest.approx(float(row["zbar"]), abs=0.006), row
    assert sum(1 for r in got.values() if r["frequency"] > 0) == 946


def test_same_day_purchases_are_one_and_later_ones_are_not_observed():
    con = ibis.duckdb.connect()
    d = lambda s: datetime.fromisoformat(s).replace(tzinfo=UTC)  # noqa: E731
    tx = con.create_table("tx", pa.table({
        "profile_id": ["a", "a", "a", "a", "b"],
        "ts": pa.array([d("2026-01-01T10:00"), d("2026-01-01T18:00"), d("2026-01-08T09:00"),
                        d("2026-02-01T09:00"), d("2026-01-15T00:00")], pa.timestamp("us", tz="UTC")),
        "revenue": [10.0, 5.0, 30.0, 999.0, 7.0],
    }))  # fmt: skip
    got = {r["customer"]: r for r in rfm_summary(tx, end=date(2026, 1, 29), unit_days=1).to_pyarrow().to_pylist()}
    assert (got["a"]["frequency"], got["a"]["recency"], got["a"]["T"]) == (1, 7.0, 28.0)
    assert got["a"]["monetary_value"] == 30.0 and got["a"]["orders"] == 3 and got["a"]["revenue"] == 45.0
    assert (got["b"]["frequency"], got["b"]["T"], got["b"]["monetary_value"]) == (0, 14.0, 0.0)
