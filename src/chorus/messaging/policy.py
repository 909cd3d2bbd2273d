"""Who may be sent what, and on which channel: plain functions over a profile view and workspace settings.

Consent slots on a profile are ``channel:topic`` (``*`` for all channels or all topics). The rules, enforced here
for every send:

* A channel-wide denial (``sms:*`` after STOP, ``email:*`` after a hard bounce or a spam complaint) blocks every
  message on that channel, transactional ones included.
* Transactional messages ignore every other opt-out.
* Marketing messages are blocked by ``*:*``, by the topic (``email:offers`` or ``*:offers``) and by the
  ``marketing`` meta-topic (``email:marketing``: "no marketing on this channel"); between a topic-level grant and
  denial the newest wins. A topic in ``opt_in`` mode needs a grant; ``opt_out`` topics (the default) need no
  denial.

Social audiences (Meta Custom Audiences, Google Customer Match) follow the same rules on the consent channel ``ads``:
uploading a person to an ad platform is a marketing use of their data, so an ``ads:*``, ``*:*``, ``ads:<topic>``,
``*:<topic>``, ``ads:marketing`` or ``*:marketing`` denial keeps them out (see :func:`ads_decision`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from chorus.timeutil import parse_ts, zone

MESSAGE_CHANNELS = ("email", "sms", "push", "whatsapp", "messenger", "in_app", "webhook")
# A topic's name, wherever one is given (a template, a message's override, the workspace's topics): what consent
# slots are named by. Lower case and no spaces nor "*": "offers " or "*" as a message's topic slipped past an
# "email:offers" opt-out, and a "*" unsubscribe link denied the person's receipts too (an outside probe).
TOPIC_NAME = re.compile(r"[a-z0-9_.-]{1,64}")
TOPIC_RULE = "1 to 64 characters of a-z, 0-9, _, . and -"
DEFAULT_FALLBACK = ["email", "push", "sms", "whatsapp", "messenger", "in_app"]
# Activity on a touchpoint says which message channels the person is likely to see now.
ACTIVITY_IMPLIES = {
    "email": ("email",),
    "sms": ("sms",),
    "whatsapp": ("whatsapp",),
    "messenger": ("messenger",),
    "push": ("push",),
    "app": ("push", "in_app"),
    "web": ("in_app", "push"),
}
# WhatsApp and Messenger take free-form messages only within 24 hours of the person's last message to the brand
# (a WhatsApp template, or a tagged non-marketing Messenger update, may go out any time).
REPLY_WINDOW = timedelta(hours=24)
WINDOWED = {"whatsapp": "an approved WhatsApp template", "messenger": "a tagged update (not marketing)"}
ALWAYS_REACHABLE = ("in_app", "webhook")  # the inbox belongs to the profile; the webhook URL to the workspace


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


def _slot(consent: dict, channel: str, topic: str) -> dict | None:
    return consent.get(f"{channel}:{topic}")


def _newest_on_topic(consent: dict, channel: str, topic: str) -> tuple | None:
    """(at, slot, statement) of the newest word on the topic by the channel: its own slot, the topic everywhere, the
    channel's marketing, all marketing. Newest wins; at the same instant a denial wins (the preference page writes
    several slots at once)."""
    stated = [
        (c["at"], slot, c)
        for slot in (f"{channel}:{topic}", f"*:{topic}", f"{channel}:marketing", "*:marketing")
        if (c := consent.get(slot)) is not None and c["status"] in ("granted", "denied")
    ]
    return max(stated, key=lambda s: (s[0], s[2]["status"] == "denied", s[1])) if stated else None


def topic_denied(profile: dict, channel: str, topic: str) -> bool:
    """Whether her newest word on the topic by the channel is a denial (blocks of the whole channel aside: they come
    from bounces and complaints, and end without a word on the topic)."""
    newest = _newest_on_topic(profile.get("consent") or {}, channel.lower(), topic.lower())
    return newest is not None and newest[2]["status"] == "denied"


def consent_decision(profile: dict, channel: str, topic: str, kind: str, topics: dict | None = None) -> Decision:
    # slots are lower case (profiles.state reads consent in any case): a message's topic is compared as they are
    # (review: a message about "Offers" was allowed after her email:offers unsubscribe)
    channel, topic = channel.lower(), topic.lower()
    consent = profile.get("consent") or {}
    wide = _slot(consent, channel, "*")
    if wide and wide["status"] == "denied":
        return Decision(False, f"{channel} is blocked for this person ({channel}:* denied by {wide['source']})")
    if kind == "transactional":
        return Decision(True, "transactional message; only channel-wide blocks apply")
    every = _slot(consent, "*", "*")
    if every and every["status"] == "denied":
        return Decision(False, f"all marketing is denied (*:* by {every['source']})")
    newest = _newest_on_topic(consent, channel, topic)
    if newest and newest[2]["status"] == "denied":
        return Decision(False, f"{newest[1]} denied by {newest[2]['source']} at {newest[0]}")
    # a topic's mode by its name in any case, as its slots are read (review: "Offers" in the settings, opt-in, read
    # as opt-out once the message's topic was lower-cased)
    mode = next((v.get("mode", "opt_out") for k, v in (topics or {}).items()
                 if isinstance(k, str) and k.lower() == topic and isinstance(v, dict)), "opt_out")  # fmt: skip
    if mode == "opt_in" and not (newest and newest[2]["status"] == "granted" and newest[1].endswith(f":{topic}")):
        return Decision(False, f"topic {topic} is opt-in and {channel}:{topic} has not been granted")
    return Decision(True, f"{newest[1]} granted" if newest else f"topic {topic} is {mode} and nothing was denied")


ADS_CHANNEL = "ads"  # the consent channel of social audiences


def ads_decision(profile: dict, topic: str = "marketing", mode: str = "opt_out") -> Decision:
    """May the person be in an ad platform audience about ``topic``? The marketing rules of
    :func:`consent_decision` on channel ``ads``; in ``opt_in`` mode it needs a grant of ``ads:<topic>`` or
    ``*:<topic>``."""
    return consent_decision(profile, ADS_CHANNEL, topic, "marketing", {topic: {"mode": mode}})


def addresses_for(profile: dict, channel: str) -> list[str]:
    if channel in ALWAYS_REACHABLE:
        return [profile["id"]]
    return list((profile.get("addresses") or {}).get(channel) or [])


@dataclass(frozen=True)
class Choice:
    channel: str | None
    address: str | None
    reason: str
    considered: list[dict]

    def as_dict(self) -> dict:
        return {"channel": self.channel, "reason": self.reason, "considered": self.considered}


def _recency(profile: dict) -> dict[str, tuple[str, int]]:
    """Message channel -> (the latest activity that suggests the person sees it, minus the channel's place among
    the channels that activity implies). Compared as a pair: the later activity wins, and at the same instant the
    activity's own order (web: in-app before push; app: push before in-app)."""
    out: dict[str, tuple[str, int]] = {}
    for activity, stats in (profile.get("channels") or {}).items():
        seen = stats.get("last_seen")
        if not seen:
            continue
        for place, ch in enumerate(ACTIVITY_IMPLIES.get(activity, ())):
            if ch not in out or (seen, -place) > out[ch]:
                out[ch] = (seen, -place)
    return out


def _window_closed(profile: dict, channel: str, now: datetime) -> str | None:
    """Why the channel's 24-hour reply window is closed for the person, or None if it is open."""
    last = ((profile.get("channels") or {}).get(channel) or {}).get("last_message")
    if last:
        try:
            if parse_ts(last) > now - REPLY_WINDOW:
                return None
        except ValueError:
            pass
    since = f"the person last wrote on {last}" if last else "the person never wrote on it"
    return f"outside the 24-hour window ({since}): only {WINDOWED[channel]} can be sent"


def choose_channel(
    profile: dict,
    variants: list[str],
    requested: str | list[str],
    *,
    topic: str,
    kind: str,
    topics: dict | None = None,
    fallback: list[str] | None = None,
    now: datetime | None = None,
    anytime: frozenset[str] | set[str] = frozenset(),
) -> Choice:
    """The channel to send on, and why.

    ``requested`` is ``"auto"`` or an explicit list (tried in order). With ``auto``, among the channels that have a
    variant, consent and an address: the profile's ``preferred_channel`` trait if usable, else the most recently
    active one (on a tie, the order in ``ACTIVITY_IMPLIES``, then the fallback order), else the workspace fallback
    order. With ``auto`` and ``now``, WhatsApp and Messenger are usable only within the 24-hour window of the
    person's last message on them, unless they are in ``anytime`` (the variant can be sent outside it).
    """
    considered: list[dict] = []
    usable: dict[str, str] = {}
    auto = not isinstance(requested, list)  # an explicit list is the caller's call, windows included
    order = list(requested) if isinstance(requested, list) else list(dict.fromkeys([*variants, *MESSAGE_CHANNELS]))
    for ch in order:
        if ch not in variants:
            considered.append({"channel": ch, "usable": False, "reason": "the message has no variant for it"})
            continue
        addrs = addresses_for(profile, ch)
        if not addrs:
            considered.append({"channel": ch, "usable": False, "reason": "no reachable address"})
            continue
        d = consent_decision(profile, ch, topic, kind, topics)
        if d.allowed and auto and now is not None and ch in WINDOWED and ch not in anytime:
            closed = _window_closed(profile, ch, now)
            if closed:
                considered.append({"channel": ch, "usable": False, "reason": closed})
                continue
        considered.append({"channel": ch, "usable": d.allowed, "reason": d.reason})
        if d.allowed:
            usable[ch] = addrs[0]
    if not usable:
        return Choice(None, None, "no channel has a variant, an address and consent", considered)
    if isinstance(requested, list):
        ch = next(c for c in requested if c in usable)
        return Choice(ch, usable[ch], f"first usable of the requested channels {requested}", considered)
    preferred = (profile.get("traits") or {}).get("preferred_channel")
    if isinstance(preferred, str) and preferred in usable:  # a trait any client sets: a list or an object is none
        return Choice(preferred, usable[preferred], "the profile's preferred channel", considered)
    recency = _recency(profile)
    active = [c for c in usable if c in recency]
    if active:
        # a tie left (two activities at the same instant implying different channels first): the fallback order
        order = list(dict.fromkeys([*(fallback or DEFAULT_FALLBACK), *MESSAGE_CHANNELS]))
        ch = max(active, key=lambda c: (recency[c], -(order.index(c) if c in order else len(order))))
        return Choice(ch, usable[ch], f"most recently active channel (last seen {recency[ch][0]})", considered)
    for ch in fallback or DEFAULT_FALLBACK:
        if ch in usable:
            return Choice(ch, usable[ch], "workspace fallback order", considered)
    ch = next(iter(usable))
    return Choice(ch, usable[ch], "the only usable channels are outside the fallback order", considered)


# -- frequency caps and quiet hours -------------------------------------------------------------------------------
WINDOWS = {"day": timedelta(days=1), "week": timedelta(days=7)}


@dataclass(frozen=True)
class Pace:
    at: datetime | None  # when the message may go out; None = dropped
    reason: str | None  # why it is not now (None when it is)


def _hm(text: str) -> time:
    h, m = text.split(":")
    return time(int(h), int(m))


def in_quiet_hours(at: datetime, tz: ZoneInfo, start: str, end: str) -> bool:
    """Does the person's wall clock at ``at`` read inside local ``start``–``end`` (which may wrap midnight; an
    empty window, ``start == end``, is never quiet)? Only the clock's reading counts, so a repeated hour is quiet
    both times it is read and a skipped one never is."""
    s, e, t = _hm(start), _hm(end), at.astimezone(tz).time()
    return (s <= t < e) if s < e else (s > e and (t >= s or t < e))


# A zone's UTC offset is looked up at least this often when looking for its next change: real zones never change
# offset twice within an hour.
_OFFSET_STEP = 3600


def _offset(ts: int, tz: ZoneInfo) -> timedelta | None:
    return datetime.fromtimestamp(ts, tz).utcoffset()


def _next_change(at: datetime, until: datetime, tz: ZoneInfo) -> datetime | None:
    """The first instant after ``at``, up to about ``until``, at which ``tz``'s UTC offset differs from the offset
    at ``at``, else None. Zone transitions fall on whole seconds, so they are found to the second."""
    off = at.astimezone(tz).utcoffset()
    lo, last = math.floor(at.timestamp()), math.ceil(until.timestamp())
    while lo < last:
        hi = min(lo + _OFFSET_STEP, last)
        if _offset(hi, tz) != off:
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if _offset(mid, tz) == off else (lo, mid)
            return datetime.fromtimestamp(hi, UTC)
        lo = hi
    return None


def quiet_end(at: datetime, tz: ZoneInfo, start: str, end: str) -> datetime:
    """The first instant at or after ``at`` at which the wall clock in ``tz`` reads outside the quiet hours
    ``start``–``end``: ``at`` itself when it is not quiet, else when the clock next reads ``end``, or a DST jump
    lands it outside them first (an end in a skipped hour is reached at the jump; on a fall-back night the clock
    going back out of the window ends it, and the second reading of a repeated end time is what ends quiet hours
    entered in the repeated hour). In UTC.
    """
    x = at.astimezone(UTC)
    if not in_quiet_hours(x, tz, start, end):
        return x
    e = _hm(end)
    # Walk the stretches of constant UTC offset from `at`: within one, the wall clock runs with UTC, so it reads
    # `end` at `target - offset`, unless the offset changes first (a local date and time is not enough on a DST
    # night: 01:30 is two instants on a fall-back night and none on a spring-forward one).
    while True:
        off = x.astimezone(tz).utcoffset() or timedelta(0)
        wall = (x + off).replace(tzinfo=None)
        target = datetime.combine(wall.date(), e)
        if target <= wall:
            target += timedelta(days=1)
        reads_end = target.replace(tzinfo=UTC) - off
        jump = _next_change(x, reads_end, tz)
        if jump is None or jump > reads_end:
            return reads_end
        if not in_quiet_hours(jump, tz, start, end):
            return jump
        x = jump  # the jump lands inside the window again (a repeated stretch of it, or past a skipped end)


def quiet_until(at: datetime, tz: ZoneInfo, start: str, end: str) -> datetime | None:
    """The end of the quiet period ``at`` falls in (local ``start``–``end``, may wrap midnight), else None; see
    :func:`quiet_end`."""
    if not in_quiet_hours(at, tz, start, end):
        return None
    return quiet_end(at, tz, start, end)


def cap_until(at: datetime, sends: list[datetime], limit: int, window: timedelta) -> datetime | None:
    """The first instant from ``at`` when fewer than ``limit`` of ``sends`` fall in the trailing ``window``
    (None when that is ``at`` itself). Scheduled sends count once their time comes; the delivery re-check
    applies the same rule to each of them at its own time.
    """
    t = at
    while True:
        recent = sorted(s for s in sends if t - window < s <= t)
        if len(recent) < limit:
            return None if t == at else t
        t = recent[len(recent) - limit] + window  # when enough of them have left the window


def pace(
    now: datetime,
    *,
    channel: str,
    kind: str,
    timezone_name: str | None,
    history: list[tuple[str, datetime]],
    settings: dict,
) -> Pace:
    """When a message may go out given frequency caps and quiet hours (transactional messages are exempt).

    ``history`` holds (channel, send time) of the person's other marketing messages, sent or scheduled.
    ``settings`` is the workspace's ``messaging`` setting: ``caps`` ``{channel|"total": {"day": n, "week": n}}``,
    ``quiet_hours`` ``{"start": "21:00", "end": "08:00", "channels": [...]}``, and ``pacing_action``
    ``defer`` (default) or ``drop``.
    """
    if kind == "transactional":
        return Pace(now, None)
    caps = settings.get("caps") or {}
    quiet = settings.get("quiet_hours") or {}
    tz = zone(timezone_name, settings.get("timezone"))
    t, reasons = now, []
    for _ in range(20):  # each rule can only push t later; a few rounds settle it
        moved = False
        if quiet and channel in quiet.get("channels", MESSAGE_CHANNELS):
            q = quiet_until(t, tz, quiet["start"], quiet["end"])
            if q is not None:
                reasons.append(f"quiet hours {quiet['start']}–{quiet['end']} ({tz.key}) until {q.isoformat()}")
                t, moved = q, True
        for scope, limits in caps.items():
            if scope not in ("total", channel):
                continue
            sends = [at for ch, at in history if scope == "total" or ch == channel]
            for window, limit in limits.items():
                c = cap_until(t, sends, int(limit), WINDOWS[window])
                if c is not None:
                    reasons.append(f"{scope} cap of {limit} a {window} reached until {c.isoformat()}")
                    t, moved = c, True
        if not moved:
            break
    if t == now:
        return Pace(now, None)
    reason = "; ".join(dict.fromkeys(reasons))
    if settings.get("pacing_action") == "drop":
        return Pace(None, f"dropped: {reason}")
    return Pace(t, f"deferred: {reason}")
