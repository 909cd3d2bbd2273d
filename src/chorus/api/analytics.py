"""Analytics endpoints of the admin API (/api/analytics/*): the reports of `chorus attribution`, `chorus clv` and
`chorus report ...`, computed on DuckDB from the workspace's part of the lake ($CHORUS_LAKE_DIR).

They read the lake as the last `chorus lake export` left it; each request computes afresh (seconds on millions of
events), so a dashboard should cache what it shows.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from chorus.api.admin import SVC, WS
from chorus.api.common import JSON
from chorus.api.guard import AdminRoute
from chorus.errors import ChorusError

router = APIRouter(prefix="/api/analytics", tags=["analytics"], route_class=AdminRoute)


def _lake(svc, ws):
    from chorus.analytics.engine import open_lake, workspace_ids

    if ws.id not in workspace_ids(svc.settings.lake_dir):
        raise ChorusError(
            f"the lake at {svc.settings.lake_dir} has no events of this workspace yet: run `chorus lake export`",
            field="lake",
        )
    return open_lake(svc.settings.lake_dir, workspace_id=ws.id)


def _config(ws):
    """The workspace's touchpoint and conversion definition (setting ``attribution``), else the defaults."""
    from chorus.analytics.touchpoints import Config, parse_config

    raw = ws.settings.get("attribution")
    return parse_config(raw) if raw else Config()


# Reports reach back from `since` by the lookback window and forward from `until` by a day; dates near year 1 or
# 9999 overflow Python's date arithmetic. Nobody's data is from before 1000 or after 9000.
DATE_MIN, DATE_MAX = date(1000, 1, 1), date(9000, 12, 31)


def _bounded(value: date | None, field: str) -> date | None:
    if value is not None and not DATE_MIN <= value <= DATE_MAX:
        raise ChorusError(f"{field} must be between {DATE_MIN} and {DATE_MAX}", field=field)
    return value


def _period(since: date | None, until: date | None):
    from chorus.analytics.touchpoints import Period

    since, until = _bounded(since, "since"), _bounded(until, "until")
    if since and until and until < since:
        raise ChorusError("until is before since", field="until")
    return Period(
        datetime(since.year, since.month, since.day, tzinfo=UTC) if since else None,
        datetime(until.year, until.month, until.day, tzinfo=UTC) + timedelta(days=1) if until else None,
    )


@router.get("/attribution", summary="Credit per channel or campaign under rule-based, Markov and Shapley models")
def attribution(
    ws: WS,
    svc: SVC,
    by: Annotated[str, Query(description="channel or campaign")] = "channel",
    models: Annotated[str, Query(description="comma-separated model names")] = (
        "first_touch,last_touch,linear,time_decay,position_based,markov,shapley"
    ),
    order: Annotated[int, Query(ge=1, le=3, description="Markov order")] = 1,
    half_life_days: Annotated[float, Query(gt=0, le=3660)] = 7.0,
    shapley: Annotated[str, Query(description="auto, exact or simplified")] = "auto",
    since: date | None = None,
    until: date | None = None,
):
    from chorus.analytics import attribution as attr

    res = attr.attribute(
        _lake(svc, ws), _config(ws), period=_period(since, until), by=by,
        models=tuple(m.strip() for m in models.split(",") if m.strip()), half_life=timedelta(days=half_life_days),
        markov_order=order, shapley=shapley,
    )  # fmt: skip
    return JSON(res.as_dict())


@router.get("/clv", summary="Lifetime value: BG/NBD + Gamma-Gamma fit and the customers with the highest CLV")
def clv(
    ws: WS,
    svc: SVC,
    end: date | None = None,
    months: Annotated[int, Query(ge=1, le=120)] = 12,
    discount_rate: Annotated[float, Query(ge=0, lt=1)] = 0.01,
    unit_days: Annotated[float, Query(gt=0, le=366)] = 7.0,
    penalizer: Annotated[float, Query(ge=0, le=10)] = 0.0,
    limit: Annotated[int, Query(ge=0, le=10_000)] = 100,
):
    from chorus.analytics.clv import lifetime_values

    res = lifetime_values(
        _lake(svc, ws),
        _config(ws),
        end=_bounded(end, "end"),
        months=months,
        discount_rate=discount_rate,
        unit_days=unit_days,
        penalizer=penalizer,
    )
    return JSON({"summary": res.summary(), "customers": res.rows(limit=limit)})


@router.get("/paths", summary="Top paths to conversion and the channel transition matrix (Sankey data)")
def paths(
    ws: WS,
    svc: SVC,
    by: Annotated[str, Query(description="channel or campaign")] = "channel",
    top: Annotated[int, Query(ge=1, le=1000)] = 20,
    since: date | None = None,
    until: date | None = None,
):
    from chorus.analytics.paths import path_report

    return JSON(path_report(_lake(svc, ws), _config(ws), period=_period(since, until), by=by, top=top).as_dict())


@router.get("/omnichannel", summary="Customers by number of channels and online/offline mix, with intervals")
def omnichannel(ws: WS, svc: SVC, since: date | None = None, until: date | None = None,
                confidence: Annotated[float, Query(gt=0, lt=1)] = 0.95,
                bootstrap: Annotated[int, Query(ge=100, le=20_000)] = 2000, clv: bool = True):  # fmt: skip
    from chorus.analytics.clv import clv_by_profile
    from chorus.analytics.omnichannel import omnichannel_value

    lake, period = _lake(svc, ws), _period(since, until)
    end = (period.until - timedelta(days=1)).date() if period.until else None
    clv_map, why = clv_by_profile(lake, _config(ws), end=end) if clv else (None, None)
    res = omnichannel_value(lake, _config(ws), period=period, confidence=confidence, bootstrap=bootstrap, clv=clv_map)
    if why:
        res.warnings.append(why)
    return JSON(res.as_dict())


@router.get("/showrooming", summary="Showrooming and webrooming by category")
def rooming(ws: WS, svc: SVC, since: date | None = None, until: date | None = None,
            window_days: Annotated[float, Query(gt=0, le=3660)] = 7.0):  # fmt: skip
    from chorus.analytics.rooming import showrooming

    return JSON(
        showrooming(
            _lake(svc, ws), _config(ws), period=_period(since, until), window=timedelta(days=window_days)
        ).as_dict()
    )


@router.get("/uplift", summary="Uplift of journeys with a holdout")
def uplift(
    ws: WS,
    svc: SVC,
    since: date | None = None,
    until: date | None = None,
    window_days: Annotated[float, Query(gt=0, le=3660)] = 30.0,
    confidence: Annotated[float, Query(gt=0, lt=1)] = 0.95,
):
    from chorus.analytics.uplift import uplift as run

    res = run(
        _lake(svc, ws),
        _config(ws),
        period=_period(since, until),
        window=timedelta(days=window_days),
        confidence=confidence,
    )
    return JSON(res.as_dict())
