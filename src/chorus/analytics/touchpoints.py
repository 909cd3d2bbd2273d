"""Touchpoints, conversions and the journeys between them, as Ibis expressions over the lake's events.

(Attribution's journeys: the paths a person took to a conversion, read from the lake. Not the journeys a marketer
defines and Chorus runs; hence the module's name.)

What counts is configuration (:class:`Config`, from a JSON file with ``--config``): conversions are named events
(default ``Order Completed``, valued by ``revenue``, de-duplicated by ``order_id``); touchpoints are the events
matched by an ordered list of rules (first match wins), each naming the touchpoint's channel from event columns.
Events of one rule and channel closer than ``touch_gap`` are one touchpoint (a web session, an email opened then
clicked, a store visit that produced several events); a page carrying a new UTM campaign starts a new one.

A journey is the touchpoints of one person up to and including the time of a conversion, after the previous one,
within ``lookback`` of it. What follows a person's last conversion is their open journey: it did not (yet)
convert, and feeds the Markov model's non-conversions. Conversions with no touchpoint in their lookback window are
counted but unattributed.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta

import ibis
import ibis.expr.types as ir

from chorus.analytics import limits
from chorus.errors import ChorusError

SEP = "\x1f"  # joins a path's channels: no channel or campaign name contains it
LABEL_COLUMNS = ("channel", "campaign_medium", "campaign_source", "campaign_name", "campaign_id", "journey_id")
CALL_TYPES = ("track", "page", "screen")
NEGATIVE_MESSAGE_EVENTS = (
    "Message Unsubscribed", "Message Complained", "Message Bounced", "Message Failed", "Message Skipped",
)  # fmt: skip
# the largest lookback window and touchpoint gap a config may set: ten years, one year (timedelta and the engines'
# date arithmetic overflow far beyond; nobody attributes further back)
MAX_LOOKBACK_DAYS = 3650
MAX_TOUCH_GAP_MINUTES = 365 * 24 * 60


@dataclass(frozen=True)
class TouchRule:
    """Events that are touchpoints: every non-empty criterion must match (empty = any)."""

    name: str
    events: tuple[str, ...] = ()
    types: tuple[str, ...] = CALL_TYPES
    channels: tuple[str, ...] = ()
    utm_only: bool = False  # only events that carry a campaign (UTM parameters, ``context.campaign``)
    label: tuple[str, ...] = ("channel",)  # the first of these columns that is set names the touchpoint's channel


DEFAULT_RULES = (
    # Chorus' own messages, as the person engaged with them (the sends themselves are outbound, never touchpoints)
    TouchRule("messages", events=("Message Opened", "Message Clicked", "Message Replied")),
    # web and app sessions, named by their UTM medium when they came from a campaign (cpc, social, affiliate...)
    TouchRule("sessions", channels=("web", "app"), label=("campaign_medium", "channel")),
    # offline and conversational channels: store visits, calls, catalog promo codes, chats, ads clicks
    TouchRule(
        "interactions",
        channels=(
            "store",
            "call_center",
            "catalog",
            "chat",
            "whatsapp",
            "messenger",
            "sms",
            "social",
            "ads",
            "marketplace",
            "in_app",
            "push",
            "email",
        ),
    ),  # fmt: skip
)


@dataclass(frozen=True)
class Config:
    conversions: tuple[str, ...] = ("Order Completed",)
    lookback: timedelta = timedelta(days=30)
    touch_gap: timedelta = timedelta(minutes=30)
    rules: tuple[TouchRule, ...] = DEFAULT_RULES
    exclude_events: tuple[str, ...] = NEGATIVE_MESSAGE_EVENTS

    def __post_init__(self):
        # Ibis writes these names into the SQL as quoted literals (quotes doubled: no injection), but DuckDB's parser
        # ends a query at a NUL: a config made in code, past parse_config, must not carry one to the engine
        names = [*self.conversions, *self.exclude_events]
        for r in self.rules:
            names += [r.name, *r.events, *r.types, *r.channels]
        if any("\x00" in n for n in names if isinstance(n, str)):
            raise ChorusError("an event, rule or channel name holds a NUL character", field="config")

    def as_dict(self) -> dict:
        return {
            "conversions": list(self.conversions),
            "lookback_days": self.lookback.total_seconds() / 86400,
            "touch_gap_minutes": self.touch_gap.total_seconds() / 60,
            "exclude_events": list(self.exclude_events),
            "touchpoints": [
                {f.name: (list(v) if isinstance(v := getattr(r, f.name), tuple) else v) for f in fields(r)}
                for r in self.rules
            ],
        }


def parse_config(raw: object) -> Config:
    """A config from its JSON form; each error names the field, e.g. ``touchpoints[1].label``."""
    if not isinstance(raw, dict):
        raise ChorusError("the attribution config must be a JSON object", field="config")
    known = {"conversions", "lookback_days", "touch_gap_minutes", "touchpoints", "exclude_events"}
    for key in raw:
        if key not in known:
            raise ChorusError(f"unknown setting {key!r}; known: {', '.join(sorted(known))}", field=key)
    kw: dict = {}
    if "conversions" in raw:
        kw["conversions"] = _names(raw["conversions"], "conversions", allow_empty=False)
    if "exclude_events" in raw:
        kw["exclude_events"] = _names(raw["exclude_events"], "exclude_events")
    if "lookback_days" in raw:
        days = _positive(raw["lookback_days"], "lookback_days", most=MAX_LOOKBACK_DAYS)
        kw["lookback"] = timedelta(days=days)
        if not kw["lookback"]:  # 1e-320 days: positive, yet no time at all
            raise ChorusError("must be at least one second (0.0000116 days)", field="lookback_days")
    if "touch_gap_minutes" in raw:
        minutes = _positive(raw["touch_gap_minutes"], "touch_gap_minutes", zero=True, most=MAX_TOUCH_GAP_MINUTES)
        kw["touch_gap"] = timedelta(minutes=minutes)
    if "touchpoints" in raw:
        rules = raw["touchpoints"]
        if not isinstance(rules, list) or not rules:
            raise ChorusError("touchpoints must be a non-empty list of rules", field="touchpoints")
        kw["rules"] = tuple(_rule(r, f"touchpoints[{i}]") for i, r in enumerate(rules))
    return Config(**kw)


def _rule(raw: object, where: str) -> TouchRule:
    if not isinstance(raw, dict):
        raise ChorusError("a touchpoint rule must be an object", field=where)
    allowed = {f.name for f in fields(TouchRule)}
    for key in raw:
        if key not in allowed:
            raise ChorusError(f"unknown rule setting {key!r}; known: {', '.join(sorted(allowed))}", field=where)
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ChorusError("a rule needs a name", field=f"{where}.name")
    _check_name(name, f"{where}.name")
    kw: dict = {"name": name}
    for key in ("events", "types", "channels", "label"):
        if key in raw:
            kw[key] = _names(raw[key], f"{where}.{key}", allow_empty=key != "label")
    for col in kw.get("label", ()):
        if col not in LABEL_COLUMNS:
            raise ChorusError(f"{col!r} is not a column: use {', '.join(LABEL_COLUMNS)}", field=f"{where}.label")
    if "utm_only" in raw:
        if not isinstance(raw["utm_only"], bool):
            raise ChorusError("utm_only must be true or false", field=f"{where}.utm_only")
        kw["utm_only"] = raw["utm_only"]
    return TouchRule(**kw)


def _names(value: object, where: str, *, allow_empty: bool = True) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ChorusError("must be a list of non-empty strings", field=where)
    if not value and not allow_empty:
        raise ChorusError("must name at least one", field=where)
    for i, v in enumerate(value):
        _check_name(v, f"{where}[{i}]")
    return tuple(value)


def _check_name(name: str, where: str) -> None:
    """Names are matched in the engines' SQL: no control character (a NUL ends DuckDB's SQL text)."""
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        raise ChorusError("must not hold a NUL or another control character", field=where)


def _positive(value: object, where: str, *, zero: bool = False, most: float) -> float:
    kind = "non-negative" if zero else "positive"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ChorusError(f"must be a {kind} number", field=where)
    if isinstance(value, float) and not math.isfinite(value):
        raise ChorusError(f"must be a finite {kind} number", field=where)
    if value < 0 or (value == 0 and not zero):
        raise ChorusError(f"must be a {kind} number", field=where)
    if value > most:
        raise ChorusError(f"must be at most {most}", field=where)
    return float(value)


@dataclass(frozen=True)
class Period:
    """Conversions from ``since`` (inclusive) to ``until`` (exclusive); open ends mean all of them."""

    since: datetime | None = None
    until: datetime | None = None


def resolved_events(lake, cfg: Config, period: Period = Period()) -> ir.Table:
    """Events of the lake with ``profile_id`` mapped through later merges, pruned by date partition to what the
    period and its lookback can use, and cut at the period's end: reports are "as of" ``until``."""
    ev = lake.table("events")
    if period.since is not None:
        ev = ev.filter(ev.date >= (period.since - cfg.lookback - timedelta(days=1)).date())
    if period.until is not None:
        # as of ``until``: what happened later is not seen (a journey that converts later is open at ``until``)
        ev = ev.filter(ev.date <= (period.until + timedelta(days=1)).date(), ev.timestamp < period.until)
    if lake.has("profile_aliases"):
        al = lake.table("profile_aliases").select(alias_id="alias_id", merged_into="profile_id")
        ev = ev.left_join(al, ev.profile_id == al.alias_id)
        ev = ev.mutate(profile_id=ibis.coalesce(ev.merged_into, ev.profile_id)).drop("alias_id", "merged_into")
    return ev.filter(ev.profile_id.notnull())


def conversions(ev: ir.Table, cfg: Config) -> ir.Table:
    """One row per conversion: the same ``order_id`` reported twice (the shop and the server) counts once."""
    c = ev.filter((ev.type == "track") & ev.event.isin(cfg.conversions))
    # every window of the journeys partitions by person only, so that Spark shuffles the events once
    c = c.mutate(_key=ibis.coalesce(c.order_id, c.seq.cast("string")))
    w = ibis.window(group_by=c.profile_id, order_by=[c._key, c.timestamp, c.seq])
    c = c.mutate(_first=ibis.coalesce(c._key.lag().over(w) != c._key, True))
    c = c.filter(c._first)  # the first report of each order
    value, negative, oversized = order_value(c.revenue)
    return c.select(
        profile_id=c.profile_id,
        ts=c.timestamp,
        seq=c.seq,
        revenue=value,
        negative=negative,
        oversized=oversized,
        currency=c.currency,
        channel=c.channel,
        category=c.category,
        order_id=c.order_id,
    )


def order_value(revenue: ir.FloatingValue) -> tuple[ir.FloatingValue, ir.BooleanValue, ir.BooleanValue]:
    """An order's (or a refund's) value as every report sums it, with the flags of the values left out:
    ``(value, negative, oversized)``. A refund is not a negative order: a value below zero counts as 0 (and is
    reported); so does a value above ``limits.MAX_ORDER_VALUE`` (one hostile or broken event of 1.7e308 would
    otherwise turn every sum it is in into infinity); a missing one (or NaN) is 0."""
    bad = revenue.isnull() | revenue.isnan()
    negative = (revenue < 0).fill_null(False)
    # NaN sorts above every number on DuckDB: not "oversized", just missing
    oversized = (~bad & (revenue > limits.MAX_ORDER_VALUE)).fill_null(False)
    value = ibis.cases((bad | negative | oversized, 0.0), else_=revenue)
    return value, negative, oversized


MAX_NAMED = 5  # the orders a warning names, at most


def oversized_orders(conv: ir.Table) -> tuple[int, list[str]]:
    """The conversions (rows of :func:`conversions`, or of anything with its ``oversized``, ``order_id`` and ``seq``
    columns) whose value was left out of the sums for being above ``limits.MAX_ORDER_VALUE``: how many, and the
    first few by ``order_id`` (else ``seq N``), for the report's warning."""
    bad = conv.filter(conv.oversized)
    n = int(bad.count().to_pyarrow().as_py() or 0)
    if not n:
        return 0, []
    named = bad.select(key=ibis.coalesce("order " + bad.order_id, "seq " + bad.seq.cast("string")), seq=bad.seq)
    keys = named.order_by("seq").limit(MAX_NAMED).to_pyarrow().column("key").to_pylist()
    return n, keys


def oversized_warning(n: int, named: list[str], what: str = "conversions") -> str | None:
    """The warning of the values left out for being above ``limits.MAX_ORDER_VALUE``; None when there are none."""
    if not n:
        return None
    bound = f"{limits.MAX_ORDER_VALUE:.0e}".replace("e+", "e")
    listed = ", ".join(named) + (f" and {n - len(named)} more" if n > len(named) else "") if named else ""
    return (f"{n} {what} have a revenue above {bound} (the largest order value a report adds up): counted with "
            f"revenue 0{f' ({listed})' if listed else ''}; correct or erase them at the source")


def touchpoints(ev: ir.Table, cfg: Config) -> ir.Table:
    """One row per touchpoint: ``profile_id, ts, seq, rule, channel, campaign``."""
    has_utm = _has_utm(ev)
    rule_case = ibis.cases(*[(_matches(ev, r, has_utm), r.name) for r in cfg.rules], else_=None)
    label_case = ibis.cases(
        *[(_matches(ev, r, has_utm), ibis.coalesce(*[ev[c] for c in r.label])) for r in cfg.rules], else_=None
    )
    t = _candidates(ev, cfg)
    utm_key = ibis.coalesce(ev.campaign_name, ev.campaign_source, ev.campaign_medium, "")
    t = t.mutate(rule=rule_case, label=label_case, utm=has_utm, utm_key=utm_key)
    t = t.filter(t.rule.notnull() & t.label.notnull())
    t = t.mutate(campaign=ibis.coalesce(t.campaign_name, t.campaign_id, t.journey_id))
    # a touchpoint = a run of events of one rule and channel with no gap over touch_gap; an event carrying another
    # campaign than the event before (a new UTM landing) starts a new one, as analytics tools start a new session
    t = t.mutate(_stream=t.rule + "\x1f" + ibis.coalesce(t.channel, ""))  # one run per rule and channel
    w = ibis.window(group_by=t.profile_id, order_by=[t._stream, t.timestamp, t.seq])
    gap = seconds(t.timestamp) - seconds(t.timestamp.lag().over(w))
    starts = (
        ibis.coalesce(t._stream.lag().over(w) != t._stream, True)
        | (gap > cfg.touch_gap.total_seconds())
        | (t.utm & (t.utm_key != ibis.coalesce(t.utm_key.lag().over(w), "")))
    )
    t = t.mutate(_start=starts.cast("int64"))
    t = t.filter(t._start == 1).select(
        profile_id="profile_id", ts="timestamp", seq="seq", rule="rule", channel="label", campaign="campaign"
    )
    return t


def touch_events(ev: ir.Table, cfg: Config) -> ir.Table:
    """The events :func:`touchpoints` makes touchpoints of (a rule matches; not a conversion, an excluded event or
    an outbound message; with a channel), before they are merged into sessions. ``ts`` is the event's time."""
    has_utm = _has_utm(ev)
    matches = ibis.literal(False)
    for rule in cfg.rules:
        matches |= _matches(ev, rule, has_utm)
    t = _candidates(ev, cfg).filter(ev.channel.notnull(), matches)
    return t.mutate(ts=t.timestamp)


def _candidates(ev: ir.Table, cfg: Config) -> ir.Table:
    """Events that may be touchpoints: not a conversion or an excluded event, not a message Chorus sent."""
    return ev.filter(
        ~ev.event.isin(cfg.conversions + cfg.exclude_events) | ev.event.isnull(),
        ev.direction.isnull() | (ev.direction != "outbound"),
    )


def _has_utm(ev: ir.Table) -> ir.BooleanValue:
    return ev.campaign_name.notnull() | ev.campaign_source.notnull() | ev.campaign_medium.notnull()


def seconds(ts: ir.TimestampValue) -> ir.IntegerValue:
    """Whole seconds since the epoch: DuckDB's epoch is fractional and Spark's whole; both engines agree on this."""
    return ts.epoch_seconds().floor()


def _matches(ev: ir.Table, rule: TouchRule, has_utm: ir.BooleanValue) -> ir.BooleanValue:
    cond = ibis.literal(True)
    if rule.events:
        cond &= ev.event.isin(rule.events)
    if rule.types:
        cond &= ev.type.isin(rule.types)
    if rule.channels:
        cond &= ev.channel.isin(rule.channels)
    if rule.utm_only:
        cond &= has_utm
    return cond


@dataclass
class Journeys:
    """``touches``: one row per touchpoint of a journey (``profile_id, journey, converted, ts, channel, campaign,
    position`` (1-based)``, n`` (touchpoints in the journey)``, conv_ts, revenue``); ``conversions``: every
    conversion of the period, with ``touched`` telling whether it has a journey."""

    touches: ir.Table
    conversions: ir.Table
    config: Config
    period: Period = field(default_factory=Period)


def build(lake, cfg: Config = Config(), period: Period = Period(), *, by: str = "channel") -> Journeys:
    """Journeys of the period. ``by="campaign"`` names touchpoints by campaign (or journey) instead of channel; a
    touchpoint without one is ``(<channel>)``."""
    if by not in ("channel", "campaign"):
        raise ChorusError("by must be channel or campaign", field="by")
    ev = resolved_events(lake, cfg, period)
    conv = conversions(ev, cfg)
    tp = touchpoints(ev, cfg)
    if by == "campaign":
        tp = tp.mutate(channel=ibis.coalesce(tp.campaign, "(" + tp.channel + ")"))
    stream = tp.select(
        "profile_id", "ts", "seq", "channel", "campaign", is_conv=ibis.literal(0, "int64"), revenue=ibis.literal(0.0)
    ).union(
        conv.select(
            "profile_id", "ts", "seq", "channel", campaign=ibis.null("string"), is_conv=ibis.literal(1, "int64"),
            revenue="revenue",
        )
    )  # fmt: skip
    # touchpoints sort before a conversion at the same instant: they happened "up to" it. k = conversions so far;
    # a touchpoint belongs to journey k + 1, which the (k + 1)-th conversion ends
    w = ibis.window(group_by="profile_id", order_by=["ts", "is_conv", "seq"], rows=(None, 0))
    stream = stream.mutate(k=stream.is_conv.sum().over(w))
    stream = stream.mutate(journey=stream.k + 1 - stream.is_conv)
    jw = [stream.profile_id, stream.journey]
    is_conv = stream.is_conv == 1
    stream = stream.mutate(
        conv_ts=ibis.cases((is_conv, stream.ts), else_=ibis.null(stream.ts.type())).max().over(group_by=jw),
        conv_revenue=ibis.cases((is_conv, stream.revenue), else_=ibis.null("float64")).max().over(group_by=jw),
        last_ts=stream.ts.max().over(group_by=jw),
    )
    j = stream.filter(stream.is_conv == 0)
    j = j.mutate(converted=j.conv_ts.notnull())
    # an open journey's window ends at its last touchpoint; a converting one's at the conversion
    j = j.mutate(end_ts=ibis.coalesce(j.conv_ts, j.last_ts))
    j = j.filter(seconds(j.end_ts) - seconds(j.ts) <= cfg.lookback.total_seconds())
    if period.since is not None:
        j = j.filter(j.end_ts >= period.since)
    if period.until is not None:
        j = j.filter(j.end_ts < period.until)
    jw = ibis.window(group_by=[j.profile_id, j.journey], order_by=[j.ts, j.seq])
    j = j.mutate(position=ibis.row_number().over(jw) + 1, n=j.seq.count().over(group_by=[j.profile_id, j.journey]))
    touches = j.select(
        "profile_id", "journey", "converted", "ts", "seq", "channel", "campaign", "position", "n", "end_ts",
        revenue=ibis.coalesce(j.conv_revenue, 0.0), conv_ts=j.conv_ts,
    )  # fmt: skip

    cperiod = conv
    if period.since is not None:
        cperiod = cperiod.filter(cperiod.ts >= period.since)
    if period.until is not None:
        cperiod = cperiod.filter(cperiod.ts < period.until)
    return Journeys(touches=touches, conversions=cperiod, config=cfg, period=period)


def path_counts(journeys: Journeys) -> tuple[list[tuple[str, ...]], list[int], list[float], list[int]]:
    """Distinct paths (channels in time order) with their conversions, value and non-conversions, counted by the
    engine: the input of the Markov and Shapley models."""
    t = journeys.touches
    arr = ibis.struct({"ts": t.ts, "seq": t.seq, "channel": t.channel}).collect()
    per = t.group_by(["profile_id", "journey"]).agg(
        arr=arr, converted=t.converted.max(), revenue=t.revenue.max()
    )  # fmt: skip
    per = per.mutate(path=per.arr.sort().map(lambda s: s.channel).join(SEP))
    agg = per.group_by("path").agg(
        conversions=per.converted.cast("int64").sum(),
        value=per.revenue.sum(),
        nulls=(1 - per.converted.cast("int64")).sum(),
    )
    tab = agg.to_pyarrow()
    paths = [tuple(p.split(SEP)) for p in tab.column("path").to_pylist()]
    return (
        paths,
        tab.column("conversions").to_pylist(),
        [float(v or 0.0) for v in tab.column("value").to_pylist()],
        tab.column("nulls").to_pylist(),
    )
