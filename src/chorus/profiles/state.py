"""Profile state as a commutative fold over events, and the merge of two states.

Because ``apply_event`` only ever keeps the newest/oldest/summed value by event key, and ``merge`` combines
two states with the same operations, a profile's state is the same whatever order its events arrived in and
however its history was split across profiles before a merge.

Per-trait merge policy (workspace setting ``trait_policies``, default ``newest``):
- ``newest``: the newest non-empty value wins (by event timestamp, then message id). Empty = null or "".
- ``first``: the oldest non-empty value wins (e.g. ``created_at``, ``signup_source``).
- ``sum``: a counter: each identity (the event's anchor identifier) reports its own running value, newest
  wins per identity, and the profile's value is the sum across identities — so merging two profiles adds them.
- ``max`` / ``min``: the largest / smallest number ever seen (values that are not numbers are ignored).
First seen = min, last seen = max, per-channel counts add.
"""

from __future__ import annotations

from typing import Any

POLICIES = ("newest", "first", "sum", "max", "min")
# Events that are a message the person sent on a channel (an inbound SMS, WhatsApp or Messenger message).
PERSON_MESSAGES = frozenset({"Message Received", "Message Replied"})
DEFAULT_POLICIES = {"created_at": "first", "createdAt": "first", "first_seen": "first"}
CONSENT_STATUSES = ("granted", "denied", "unknown")


def empty() -> dict[str, Any]:
    return {"traits": {}, "trait_at": {}, "sums": {}, "channels": {}, "consent": {}, "attrs": {}}


def _empty_value(v) -> bool:
    return v is None or v == ""


def _number(v):
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return v
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            try:
                return float(v)
            except ValueError:
                return None
    return None


def _set_trait(state: dict, name: str, value, key: list, policy: str, anchor: str) -> None:
    if _empty_value(value):
        return
    if policy == "sum":
        num = _number(value)
        if num is None:
            return
        per = state["sums"].setdefault(name, {})
        cur = per.get(anchor)
        if cur is None or key > cur[0]:
            per[anchor] = [key, num]
        state["traits"][name] = sum(v[1] for v in per.values())
        return
    cur_key = state["trait_at"].get(name)
    cur_val = state["traits"].get(name)
    if cur_key is None:
        win = policy not in ("max", "min") or _number(value) is not None
    elif policy == "newest":
        win = key > cur_key
    elif policy == "first":
        win = key < cur_key
    elif policy in ("max", "min"):
        a, b = _number(value), _number(cur_val)
        if a is None:  # only numbers take part, so the order of arrival never matters
            return
        win = b is None or (a > b if policy == "max" else a < b) or (a == b and key < cur_key)
    else:
        win = key > cur_key
    if win:
        state["traits"][name] = value
        state["trait_at"][name] = key


def _set_attr(state: dict, name: str, value, key: list) -> None:
    """timezone, locale, preferred channel...: newest non-empty wins."""
    if _empty_value(value):
        return
    cur = state["attrs"].get(name)
    if cur is None or key > cur[1]:
        state["attrs"][name] = [value, key]


def _set_consent(state: dict, channel: str, topic: str, status: str, key: list, source: str) -> None:
    slot = f"{channel}:{topic}"
    cur = state["consent"].get(slot)
    if cur is None or key > cur["key"]:
        state["consent"][slot] = {"status": status, "key": key, "source": source}


def consent_updates(msg: dict) -> list[tuple[str, str, str]]:
    """(channel, topic, status) from a message.

    - Segment's consent object: ``context.consent.categoryPreferences {topic: bool}`` applies to every channel.
    - Chorus: ``track "Consent Updated"`` with properties ``channel`` (default ``*``), ``topic`` (default ``*``)
      and ``status`` (granted/denied) or ``granted`` (bool); or ``traits.consent`` as
      ``{"email": {"newsletter": "granted"}}``.
    """
    out = []
    ctx = msg.get("context") or {}
    prefs = (ctx.get("consent") or {}).get("categoryPreferences") if isinstance(ctx.get("consent"), dict) else None
    if isinstance(prefs, dict):
        for topic, val in prefs.items():
            if isinstance(val, bool):
                out.append(("*", str(topic), "granted" if val else "denied"))
    if msg.get("type") == "track" and msg.get("event") == "Consent Updated":
        props = msg.get("properties") or {}
        status = props.get("status")
        if isinstance(props.get("granted"), bool):
            status = "granted" if props["granted"] else "denied"
        if status in CONSENT_STATUSES:
            out.append((str(props.get("channel") or "*"), str(props.get("topic") or "*"), status))
    traits = msg.get("traits") if msg.get("type") == "identify" else None
    if isinstance(traits, dict) and isinstance(traits.get("consent"), dict):
        for channel, topics in traits["consent"].items():
            if isinstance(topics, dict):
                for topic, status in topics.items():
                    if isinstance(status, bool):
                        status = "granted" if status else "denied"
                    if status in CONSENT_STATUSES:
                        out.append((str(channel), str(topic), status))
    return out


MAX_WARNINGS = 20


def _add_warnings(state: dict, items: dict) -> None:
    """Keep the newest few: which ones is decided by key, so arrival order does not matter."""
    merged = {**state.get("warnings", {}), **items}
    if len(merged) > MAX_WARNINGS:
        merged = dict(sorted(merged.items(), key=lambda kv: (kv[1][0], kv[0]))[-MAX_WARNINGS:])
    state["warnings"] = merged


def apply_event(
    state: dict, msg: dict, anchor: str, policies: dict[str, str] | None = None, warnings: list[str] | None = None
) -> dict:
    """Fold one normalised message into the state (in place) and return it.

    ``warnings`` (an email or phone that could not be used as an identifier) are kept on the profile so that
    the reason is visible through the API.
    """
    if warnings:
        _add_warnings(state, {msg["messageId"]: [msg["timestamp"], "; ".join(warnings)]})
    policies = {**DEFAULT_POLICIES, **(policies or {})}
    ts = msg["timestamp"]
    key = [ts, msg["messageId"]]
    ctx = msg.get("context") or {}
    # A message Chorus sent (queued, sent, delivered...) is on the timeline, but it is not the person's activity.
    if ctx.get("direction") != "outbound":
        channel = msg.get("channel", "unknown")
        ch = state["channels"].get(channel)
        if ch is None:
            ch = state["channels"][channel] = {"first_seen": ts, "last_seen": ts, "count": 1}
        else:
            ch["count"] += 1
            if ts < ch["first_seen"]:
                ch["first_seen"] = ts
            if ts > ch["last_seen"]:
                ch["last_seen"] = ts
        # the person wrote to the brand: what opens WhatsApp's and Messenger's 24-hour reply window
        wrote = ctx.get("direction") == "inbound" and msg.get("event") in PERSON_MESSAGES
        if wrote and ts > ch.get("last_message", ""):
            ch["last_message"] = ts
    trait_maps = []
    # context.traits of Chorus' own outbound records only names the person (outbox.set_statuses); not a trait update
    if isinstance(ctx.get("traits"), dict) and ctx.get("direction") != "outbound":
        trait_maps.append(ctx["traits"])
    if msg["type"] == "identify" and isinstance(msg.get("traits"), dict):
        trait_maps.append(msg["traits"])
    for traits in trait_maps:
        for name, value in traits.items():
            if name == "consent":
                continue
            _set_trait(state, name, value, key, policies.get(name, "newest"), anchor)
    if isinstance(ctx.get("timezone"), str):
        _set_attr(state, "timezone", ctx["timezone"], key)
    if isinstance(ctx.get("locale"), str):
        _set_attr(state, "locale", ctx["locale"], key)
    apply_consent(state, msg)
    return state


def apply_consent(state: dict, msg: dict) -> dict:
    """Only the consent part of :func:`apply_event` (used to apply an opt-out before the event is resolved)."""
    key = [msg["timestamp"], msg["messageId"]]
    source = "event:" + msg["messageId"]
    for c, topic, status in consent_updates(msg):
        _set_consent(state, c, topic, status, key, source)
    return state


def merge(a: dict, b: dict, policies: dict[str, str] | None = None) -> dict:
    """The state of the union of two event histories."""
    policies = {**DEFAULT_POLICIES, **(policies or {})}
    out = empty()
    for name in sorted(set(a["trait_at"]) | set(b["trait_at"])):
        for s in (a, b):
            if name in s["trait_at"]:
                _set_trait(out, name, s["traits"][name], s["trait_at"][name], policies.get(name, "newest"), "")
    for name in sorted(set(a["sums"]) | set(b["sums"])):
        per: dict = {}
        for s in (a, b):
            for anchor, (k, v) in s["sums"].get(name, {}).items():
                if anchor not in per or k > per[anchor][0]:
                    per[anchor] = [k, v]
        out["sums"][name] = per
        out["traits"][name] = sum(v[1] for v in per.values())
    for s in (a, b):
        for channel, c in s["channels"].items():
            cur = out["channels"].get(channel)
            if cur is None:
                out["channels"][channel] = dict(c)
            else:
                cur["count"] += c["count"]
                cur["first_seen"] = min(cur["first_seen"], c["first_seen"])
                cur["last_seen"] = max(cur["last_seen"], c["last_seen"])
                if c.get("last_message", "") > cur.get("last_message", ""):
                    cur["last_message"] = c["last_message"]
        for name, (value, key) in s["attrs"].items():
            _set_attr(out, name, value, key)
        for slot, c in s["consent"].items():
            cur = out["consent"].get(slot)
            if cur is None or c["key"] > cur["key"]:
                out["consent"][slot] = dict(c)
        if s.get("warnings"):
            _add_warnings(out, s["warnings"])
    return out


def summary(state: dict) -> dict:
    """Columns derived from the state, kept on the profile row for queries."""
    chans = state["channels"]
    if not chans:
        return {"first_seen": None, "last_seen": None, "last_channel": None}
    last_channel = max(chans, key=lambda c: (chans[c]["last_seen"], c))
    return {
        "first_seen": min(c["first_seen"] for c in chans.values()),
        "last_seen": max(c["last_seen"] for c in chans.values()),
        "last_channel": last_channel,
    }


def public_view(state: dict) -> dict:
    """What the API shows: traits, channel activity, consent, timezone/locale (no bookkeeping)."""
    return {
        "traits": state["traits"],
        "channels": state["channels"],
        "channels_used": sorted(state["channels"]),
        "consent": {
            slot: {"status": c["status"], "at": c["key"][0], "source": c["source"]}
            for slot, c in state["consent"].items()
        },
        "timezone": (state["attrs"].get("timezone") or [None])[0],
        "locale": (state["attrs"].get("locale") or [None])[0],
        "identifier_warnings": [
            {"message_id": mid, "at": at, "warning": text}
            for mid, (at, text) in sorted(state.get("warnings", {}).items(), key=lambda kv: kv[1][0], reverse=True)
        ],
    }


__all__ = ["apply_event", "merge", "empty", "summary", "public_view", "POLICIES"]
