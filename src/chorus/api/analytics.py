"""Analytics endpoints of the admin API (/api/analytics/*): the reports of `chorus attribution`, `chorus clv` and
`chorus report ...`, computed on DuckDB from the workspace's part of the lake ($CHORUS_LAKE_DIR).

They read the lake as the last `chorus lake export` left it; each request computes afresh (seconds on millions of
events), so a dashboard should cache what it shows. A part file of the lake that cannot be read (damaged, not
Parquet) is a 503 ``lake_unreadable`` naming the file (relative to the lake); the engine's own words go to the log.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from chorus.analytics import limits
from chorus.api.admin import SVC, WS
from chorus.api.common import JSON
from chorus.api.guard import AdminRoute
from chorus.errors import ChorusError

LAKE_UNREADABLE = (
    "`lake_unreadable`: a file of the lake cannot be read (damaged, truncated, not Parquet); the message names it "
    "relative to the lake, the engine's error is in the server's log. `lake_changing`: an export was replacing the "
    "lake's files during the read, after a few retries; try again"
)
router = APIRouter(
    prefix="/api/analytics", tags=["analytics"], route_class=AdminRoute,
    responses={"503": {"description": LAKE_UNREADABLE}},
)  # fmt: skip

# The bounds are analytics.limits', shared with the CLI (one definition each). The intervals' confidence level:
# z = inv_cdf(0.5 + c/2) needs 0.5 + c/2 < 1 in floating point, which 0.9999999999999999 is not.
CONFIDENCE_MAX = limits.CONFIDENCE.high
Confidence = Annotated[
    float,
    Query(
        **limits.CONFIDENCE.query(),
        allow_inf_nan=False,
        description=f"confidence level of the intervals, at most {CONFIDENCE_MAX}",
    ),
]
# Numbers of days: finite (NaN is no number of days), from a second (1e-320 days is no time at all) to 3660. The
# schema states both ends; the low one is checked by _days, in the CLI's words ("at least one second (0.0000116
# days)") rather than FastAPI's "at least 1.1574074074074073e-05"
Days = Annotated[
    float,
    Query(le=limits.WINDOW_DAYS.high, allow_inf_nan=False, json_schema_extra={"minimum": limits.WINDOW_DAYS.low},
          description=f"a number of days, {limits.WINDOW_DAYS.words()}"),
]  # fmt: skip
# A day of a period: the documented YYYY-MM-DD only, parsed by limits.day as the CLI's --since is (a plain `date`
# would also take epoch seconds and date-times at midnight). The schema says `format: date`.
Day = Annotated[
    str | None,
    Query(description=f"a day, YYYY-MM-DD (UTC), from {limits.DATE_MIN} to {limits.DATE_MAX}",
          json_schema_extra={"format": "date"}),
]  # fmt: skip
By = Annotated[Literal["channel", "campaign"], Query(description="channel or campaign")]


def _day(value: str | None, field: str):
    return limits.day(value, field, " (query parameter)")  # the CLI's parse too


def _days(value: float, field: str) -> timedelta:
    return limits.days(limits.WINDOW_DAYS, value, field, " (query parameter)")  # the CLI's rule too


@contextmanager
def _reading(svc) -> Iterator[None]:
    """A report's computing: a part file of the lake the engine cannot read is a 503 naming it (engine.readable)."""
    from chorus.analytics.engine import readable

    with readable(svc.settings.lake_dir):
        yield


def _lake(svc, ws):
    from chorus.analytics.engine import open_lake, workspace_ids

    if ws.id not in workspace_ids(svc.settings.lake_dir):
        # the lake's path is the server's business: an API client is told what to do, not where the files are
        raise ChorusError("the lake has no events of this workspace yet: run `chorus lake export`", field="lake")
    return open_lake(svc.settings.lake_dir, workspace_id=ws.id)


def _config(ws):
    """The workspace's touchpoint and conversion definition (setting ``attribution``), else the defaults. A stored
    setting the validator refuses (written past the API, or before a check was added) is a 400 naming it."""
    from chorus.analytics.touchpoints import Config, parse_config

    raw = ws.settings.get("attribution")
    try:
        return parse_config(raw) if raw else Config()
    except ChorusError as exc:
        field = f"settings.attribution.{exc.field}" if exc.field else "settings.attribution"
        raise ChorusError(
            f"the workspace's setting {field} {exc.message}: correct it with PATCH /api/workspace/settings",
            field=field,
        ) from None


def _period(since: str | None, until: str | None):
    from chorus.analytics.touchpoints import Period

    since, until = _day(since, "since"), _day(until, "until")
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
    by: By = "channel",
    models: Annotated[
        str,
        Query(description="comma-separated model names, each at most once: first_touch, last_touch, linear, "
                          "time_decay, position_based, markov, shapley"),
    ] = "first_touch,last_touch,linear,time_decay,position_based,markov,shapley",  # fmt: skip
    order: Annotated[int, Query(**limits.MARKOV_ORDER.query(), description="Markov order")] = 1,
    half_life_days: Days = 7.0,
    shapley: Annotated[
        Literal["auto", "exact", "simplified"], Query(description="auto, exact or simplified")
    ] = "auto",
    since: Day = None,
    until: Day = None,
):
    from chorus.analytics import attribution as attr

    names = attr.parse_models(models)  # the CLI's parse of --models
    half_life = _days(half_life_days, "half_life_days")
    period = _period(since, until)
    with _reading(svc):
        res = attr.attribute(
            _lake(svc, ws), _config(ws), period=period, by=by, models=names, half_life=half_life,
            markov_order=order, shapley=shapley,
        )  # fmt: skip
    return JSON(res.as_dict())


@router.get("/clv", summary="Lifetime value: BG/NBD + Gamma-Gamma fit and the customers with the highest CLV")
def clv(
    ws: WS,
    svc: SVC,
    end: Day = None,
    months: Annotated[int, Query(**limits.CLV_MONTHS.query())] = 12,
    discount_rate: Annotated[float, Query(**limits.DISCOUNT_RATE.query(), allow_inf_nan=False)] = 0.01,
    unit_days: Annotated[
        float,
        Query(
            **limits.UNIT_DAYS.query(),
            allow_inf_nan=False,
            description="time unit of the fit in days (7 = weeks); purchases are counted by day, so at least 1",
        ),
    ] = 7.0,
    penalizer: Annotated[float, Query(**limits.PENALIZER.query(), allow_inf_nan=False)] = 0.0,
    limit: Annotated[int, Query(**limits.CLV_LIMIT.query())] = 100,
):
    from chorus.analytics.clv import lifetime_values

    end = _day(end, "end")
    with _reading(svc):
        res = lifetime_values(
            _lake(svc, ws),
            _config(ws),
            end=end,
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
    by: By = "channel",
    top: Annotated[int, Query(**limits.PATHS_TOP.query())] = 20,
    since: Day = None,
    until: Day = None,
):
    from chorus.analytics.paths import path_report

    period = _period(since, until)
    with _reading(svc):
        return JSON(path_report(_lake(svc, ws), _config(ws), period=period, by=by, top=top).as_dict())


@router.get("/omnichannel", summary="Customers by number of channels and online/offline mix, with intervals")
def omnichannel(ws: WS, svc: SVC, since: Day = None, until: Day = None,
                confidence: Confidence = 0.95,
                bootstrap: Annotated[int, Query(**limits.BOOTSTRAP.query())] = 2000, clv: bool = True):  # fmt: skip
    from chorus.analytics.clv import clv_by_profile
    from chorus.analytics.omnichannel import omnichannel_value

    period = _period(since, until)
    end = (period.until - timedelta(days=1)).date() if period.until else None
    with _reading(svc):
        lake, cfg = _lake(svc, ws), _config(ws)
        clv_map, why = clv_by_profile(lake, cfg, end=end) if clv else (None, None)
        res = omnichannel_value(lake, cfg, period=period, confidence=confidence, bootstrap=bootstrap, clv=clv_map)
    if why:
        res.warnings.append(why)
    return JSON(res.as_dict())


@router.get("/showrooming", summary="Showrooming and webrooming by category")
def rooming(ws: WS, svc: SVC, since: Day = None, until: Day = None,
            window_days: Days = 7.0):  # fmt: skip
    from chorus.analytics.rooming import showrooming

    period, window = _period(since, until), _days(window_days, "window_days")
    with _reading(svc):
        return JSON(showrooming(_lake(svc, ws), _config(ws), period=period, window=window).as_dict())


@router.get("/uplift", summary="Uplift of journeys with a holdout")
def uplift(
    ws: WS,
    svc: SVC,
    since: Day = None,
    until: Day = None,
    window_days: Days = 30.0,
    confidence: Confidence = 0.95,
):
    from chorus.analytics.uplift import uplift as run

    period, window = _period(since, until), _days(window_days, "window_days")
    with _reading(svc):
        res = run(_lake(svc, ws), _config(ws), period=period, window=window, confidence=confidence)
    return JSON(res.as_dict())
