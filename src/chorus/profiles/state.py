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

Activity (``activity``): per event type, and per type and name, how many events, the first and the last (their
timestamps), so that "ever ordered", "first order", "last visit" are read from the profile rather than from the
person's whole history (``segments.summary``, decision 0046). Counts add and times take min/max, so it folds and
merges like the channels. Names are kept per type up to :data:`MAX_NAMES` (a person who browses thousands of page
names must not make every write of her profile large): beyond it only the alphabetically smallest names are kept
and ``cut`` says the greatest kept one. That choice does not depend on the order of arrival (a name is kept iff it
is among the smallest of all the names ever seen, which only grows), so the fold stays commutative; a name past the
cut is not known here and a reader falls back to the events. A state stored before activity existed has no
``activity`` key and never gains a partial one: it gets one when the profile is folded again from its events (a
replay, or the worker's backfill: ``profiles.activity``).

Events are *vouched* (a trusted source, or a write-key event whose ``userId`` came with a valid ``userHash``:
decided once, when the event is stored, see :mod:`chorus.workspaces.verification`) or mere *claims* (anything else
sent with the public write key). A claim can narrow what may be sent but never undo an opt-out, and cannot
replace a vouched email or phone (decision 0014):
- consent: per slot the state keeps the newest vouched entry, the newest claimed denial and the newest claimed
  grant (or ``unknown``); the slot's status is the newest of them, except that the claimed grant takes part
  only while no denial stands (no claimed denial, and the newest vouched entry is not a denial) on that slot or
  on any slot that decides the same messages (:func:`overlap`: ``*:offers`` and ``email:offers``);
- ``email`` / ``phone`` traits: a claimed value shows only while no vouched value exists.
Each part is "newest by key", so the fold stays order independent and ``merge`` stays the union.
"""

from __future__ import annotations

from typing import Any

from chorus.collect.messages import own_record

POLICIES = ("newest", "first", "sum", "max", "min")
# Events that are a message the person sent on a channel (an inbound SMS, WhatsApp or Messenger message).
PERSON_MESSAGES = frozenset({"Message Received", "Message Replied"})
DEFAULT_POLICIES = {"created_at": "first", "createdAt": "first", "first_seen": "first"}
CONSENT_STATUSES = ("granted", "denied", "unknown")
# Traits a claim must not overwrite on a known person: they say where messages go (decision 0014).
PROTECTED_TRAITS = frozenset({"email", "phone"})
REFUSED_GRANT = (
    "{status} of {slot} ignored: an opt-out stands and the event is not verified (a write-key event needs "
    "userId with a valid userHash to undo an opt-out)"
)


# Distinct names kept per event type (see the module's doc): a few dozen kinds of track event is the norm; page and
# screen names are as many as the pages she views, of which a rule names few.
MAX_NAMES = {"track": 100}
MAX_NAMES_OTHER = 32
NAME_LENGTH = 200  # a rule names an event in at most this many characters (segments.rules.MAX_NAME)


def empty() -> dict[str, Any]:
    return {"traits": {}, "trait_at": {}, "sums": {}, "channels": {}, "consent": {}, "attrs": {},
            "activity": empty_activity()}  # fmt: skip


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


def _storable_sum(parts) -> int | float:
    """Each part fits in 64 bits (checked at the door), their sum may not: then a float, so that the profile can
    always be stored and no later event of the person is refused for a value somebody else sent."""
    total = sum(parts)
    return total if not isinstance(total, int) or -(2**63) <= total < 2**64 else float(total)


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
        state["traits"][name] = _storable_sum(v[1] for v in per.values())
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


def _log_of(state: dict) -> dict:
    """Per slot: ``vouched``, ``denied`` (claimed), ``claimed`` (claimed grant/unknown), each the newest entry.

    A state stored before the log existed has only the slot's status: it counts as vouched (what it was)."""
    log = state.get("consent_log") or {}
    return {**{slot: {"vouched": dict(e)} for slot, e in state["consent"].items() if slot not in log}, **log}


def _consent_log(state: dict) -> dict:
    state["consent_log"] = log = _log_of(state)
    return log


def _bucket(status: str, vouched: bool) -> str:
    if vouched:
        return "vouched"
    return "denied" if status == "denied" else "claimed"


def _opt_out_stands(parts: dict) -> bool:
    """Is the slot's newest word a claim cannot override (its vouched entry, or a claimed denial: withdrawals are
    the safe side) a denial? A claimed denial that a vouched grant came after no longer stands (the customer opted
    in again herself)."""
    words = [parts[b] for b in ("vouched", "denied") if parts.get(b)]
    if not words:
        return False
    newest = words[0]
    for w in words[1:]:  # an exact tie keeps the vouched entry (fixed order): deterministic
        if w["key"] > newest["key"]:
            newest = w
    return newest["status"] == "denied"


def overlap(a: str, b: str) -> bool:
    """Can slots ``a`` and ``b`` decide the same message? A marketing message on channel C about topic T is decided
    by the newest of ``C:T``, ``*:T``, ``C:marketing`` and ``*:marketing`` (``messaging.policy``), so a grant on
    one of these overrides a denial on another (an outside probe: a browser's ``*:offers`` grant undid her one-click
    ``email:offers`` unsubscribe). Slots of every topic (``C:*``, ``*:*``) block on their own denial alone."""
    ca, _, ta = a.partition(":")
    cb, _, tb = b.partition(":")
    if "*" in (ta, tb):
        return a == b
    return (ca == cb or "*" in (ca, cb)) and (ta == tb or "marketing" in (ta, tb))


class _Standing:
    """The slots where an opt-out stands, indexed so that "does one overlap this slot?" is a few lookups (review:
    every slot against every other was quadratic in a profile's slots, which the public write key can multiply)."""

    def __init__(self, log: dict):
        self.slots: set[str] = set()
        self.by_topic: set[str] = set()  # topics (not "*") with a standing opt-out on some channel
        self.by_channel: set[str] = set()  # channels with a standing opt-out on some topic (not "*")
        for slot, parts in log.items():
            if _opt_out_stands(parts):
                self.slots.add(slot)
                c, _, t = slot.partition(":")
                if t != "*":
                    self.by_topic.add(t)
                    self.by_channel.add(c)

    def overlaps(self, slot: str) -> bool:
        """:func:`overlap` of ``slot`` with any standing slot (the same answer, by cases)."""
        c, _, t = slot.partition(":")
        if t == "*":
            return slot in self.slots
        if c != "*" and t != "marketing":
            return not self.slots.isdisjoint((slot, f"*:{t}", f"{c}:marketing", "*:marketing"))
        if c == "*" and t != "marketing":
            return t in self.by_topic or "marketing" in self.by_topic
        if c != "*":  # C:marketing: a standing opt-out on C or * of any topic
            return c in self.by_channel or "*" in self.by_channel
        return bool(self.by_topic)  # *:marketing


def _grant_stands(log: dict, slot: str, standing: _Standing | None) -> bool:
    """May the slot's claimed grant (or unknown) count? Never while an opt-out stands on the slot itself. With
    ``standing`` (how a message is decided: :func:`settled_consent`), a claimed grant also not while one stands on
    a slot it could override (:func:`overlap`): a claim can narrow what may be sent, never undo an opt-out, whichever
    slot it names. A claimed ``unknown`` only narrows, so its own slot alone keeps it out (review: dropping it for a
    neighbour's denial brought an older grant back)."""
    parts = log[slot]
    if _opt_out_stands(parts):
        return False
    if standing is None or (parts.get("claimed") or {}).get("status") != "granted":
        return True
    return not standing.overlaps(slot)


def _settle_consent(state: dict, slot: str, standing: _Standing | None = None) -> None:
    parts = state["consent_log"][slot]
    cands = [parts[b] for b in ("vouched", "denied") if parts.get(b)]
    if parts.get("claimed") and _grant_stands(state["consent_log"], slot, standing):
        cands.append(parts["claimed"])
    if not cands:  # nothing but a claimed grant that does not count: the slot says nothing
        state["consent"].pop(slot, None)
        return
    best = cands[0]
    for c in cands[1:]:  # newest wins; an exact tie keeps the first (fixed order), so the result is deterministic
        if c["key"] > best["key"]:
            best = c
    state["consent"][slot] = dict(best)


def _set_consent(state: dict, channel: str, topic: str, status: str, key: list, source: str, vouched: bool) -> None:
    """Record one word on its slot; the stored status is the slot's own (one lookup a word, whatever the number of
    slots); what the other slots' words change is applied when she is read (:func:`settled_consent`)."""
    slot = f"{channel}:{topic}"
    parts = _consent_log(state).setdefault(slot, {})
    bucket = _bucket(status, vouched)
    cur = parts.get(bucket)
    if cur is None or key > cur["key"]:
        parts[bucket] = {"status": status, "key": key, "source": source}
    _settle_consent(state, slot)


def settled_consent(state: dict) -> dict:
    """The slots as messages are decided by them: each slot's own rule, and a claimed grant left out while an
    opt-out stands on a slot it could override. What every view of her shows (the API, delivery, segments); a
    state stored before this rule is read by it without a refold."""
    return _settled(state)[0]


def _settled(state: dict) -> tuple[dict, _Standing]:
    log = state.get("consent_log") or {}
    standing = _Standing(log)
    if not log:
        return state["consent"], standing
    now = {"consent": dict(state["consent"]), "consent_log": log}
    for slot in log:
        _settle_consent(now, slot, standing)
    return now["consent"], standing


def refused_grants(state: dict, settled: tuple[dict, _Standing] | None = None) -> list[dict]:
    """Claimed grants that would be the newest word on their slot but were not applied (an opt-out stands).
    ``settled``: :func:`_settled` of the state when the caller has it (a view reads it once).

    Derived from the state, not recorded while folding, so it does not depend on the order events arrived in."""
    out = []
    consent, standing = settled or _settled(state)
    log = state.get("consent_log") or {}
    for slot, parts in sorted(log.items()):
        c = parts.get("claimed")
        now = consent.get(slot)
        if c and not _grant_stands(log, slot, standing) and (now is None or c["key"] > now["key"]):
            out.append({"message_id": c["source"].removeprefix("event:"), "at": c["key"][0], "slot": slot,
                        "warning": REFUSED_GRANT.format(status=c["status"], slot=slot)})  # fmt: skip
    return out


def _consent_status(value) -> str | None:
    """``granted`` / ``denied`` / ``unknown`` from what consent managers send: the words in any case, a boolean, or
    ``true``/``false``/``1``/``0`` as text or number. Anything else is no statement (an outside probe: ``"Denied"``
    and ``granted: "false"`` were dropped, so the opt-out was lost)."""
    if isinstance(value, bool):
        return "granted" if value else "denied"
    if isinstance(value, int) and value in (0, 1):
        return "granted" if value else "denied"
    if isinstance(value, str):
        word = value.strip().lower()
        if word in CONSENT_STATUSES:
            return word
        return {"true": "granted", "false": "denied", "1": "granted", "0": "denied", "yes": "granted",
                "no": "denied"}.get(word)  # fmt: skip
    return None


def _consent_name(value) -> str:
    """A channel or topic as slots name them: trimmed, lower case (message channels and template topics are lower
    case, so ``Email:*`` or ``*:Offers`` was shown denied and never enforced)."""
    return str(value).strip().lower() or "*"


def consent_updates(msg: dict) -> list[tuple[str, str, str]]:
    """(channel, topic, status) from a message; channels and topics lower case (:func:`_consent_name`), statuses
    read leniently (:func:`_consent_status`).

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
            if (status := _consent_status(val)) in ("granted", "denied"):
                out.append(("*", _consent_name(topic), status))
    if msg.get("type") == "track" and msg.get("event") == "Consent Updated":
        props = msg.get("properties") or {}
        status = _consent_status(props.get("status"))
        if "granted" in props and (granted := _consent_status(props["granted"])) in ("granted", "denied"):
            status = granted
        if status is not None:
            out.append((_consent_name(props.get("channel") or "*"), _consent_name(props.get("topic") or "*"), status))
    traits = msg.get("traits") if msg.get("type") == "identify" else None
    if isinstance(traits, dict) and isinstance(traits.get("consent"), dict):
        for channel, topics in traits["consent"].items():
            if isinstance(topics, dict):
                for topic, val in topics.items():
                    if (status := _consent_status(val)) is not None:
                        out.append((_consent_name(channel), _consent_name(topic), status))
    return out


MAX_WARNINGS = 20


def _add_warnings(state: dict, items: dict) -> None:
    """Keep the newest few: which ones is decided by key, so arrival order does not matter."""
    merged = {**state.get("warnings", {}), **items}
    if len(merged) > MAX_WARNINGS:
        merged = dict(sorted(merged.items(), key=lambda kv: (kv[1][0], kv[0]))[-MAX_WARNINGS:])
    state["warnings"] = merged


def _claim_trait(state: dict, name: str, value, key: list) -> None:
    """An unvouched email/phone: kept aside, and shown only while no vouched value exists."""
    if _empty_value(value):
        return
    claimed = state.setdefault("claimed", {})
    cur = claimed.get(name)
    if cur is None or key > cur[0]:
        claimed[name] = [key, value]
    if name not in state["trait_at"] and name not in state["sums"]:
        state["traits"][name] = claimed[name][1]


def apply_event(
    state: dict, msg: dict, anchor: str, policies: dict[str, str] | None = None, warnings: list[str] | None = None,
    vouched: bool = True,
) -> dict:  # fmt: skip
    """Fold one normalised message into the state (in place) and return it.

    ``warnings`` (an email or phone that could not be used as an identifier) are kept on the profile so that
    the reason is visible through the API. ``vouched`` is False for a claim from the public write key that no
    user hash proved: it cannot undo an opt-out nor replace a vouched email or phone (see the module's doc).
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
    if "activity" in state:
        count_activity(state["activity"], msg)
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
            if not vouched and name in PROTECTED_TRAITS:
                _claim_trait(state, name, value, key)
                continue
            _set_trait(state, name, value, key, policies.get(name, "newest"), anchor)
    if isinstance(ctx.get("timezone"), str):
        _set_attr(state, "timezone", ctx["timezone"], key)
    if isinstance(ctx.get("locale"), str):
        _set_attr(state, "locale", ctx["locale"], key)
    apply_consent(state, msg, vouched)
    return state


def apply_consent(state: dict, msg: dict, vouched: bool = True) -> dict:
    """Only the consent part of :func:`apply_event` (used to apply an opt-out before the event is resolved).

    A statement is dated when it was made, and it cannot have been made after it reached Chorus: its time is the
    earlier of its ``timestamp`` and its ``receivedAt``. Otherwise a grant stamped ahead (a server clock off, local
    time sent as UTC; the door takes times up to two days ahead) would outrank the unsubscribe or STOP made after
    it, which Chorus dates as it happens (an outside probe: "You are unsubscribed", and the offers still sent)."""
    ts, received = msg["timestamp"], msg.get("receivedAt")
    # its own time breaks a tie between statements that arrived together (a batch from a clock ahead, "denied"
    # then "granted": both dated at their arrival, the later one stamped still wins; review)
    key = [received if isinstance(received, str) and received < ts else ts, ts, msg["messageId"]]
    source = "event:" + msg["messageId"]
    for c, topic, status in consent_updates(msg):
        _set_consent(state, c, topic, status, key, source, vouched)
    return state


def _tally(into: dict, key: str, n: int, first: str, last: str) -> None:
    cur = into.get(key)
    if cur is None:
        into[key] = [n, first, last]
    else:
        cur[0] += n
        if first < cur[1]:
            cur[1] = first
        if last > cur[2]:
            cur[2] = last


def _keep_names(act: dict, etype: str) -> None:
    """Keep a type's smallest names up to its limit; ``cut`` is then the greatest kept (names past it unknown)."""
    names = act["names"].get(etype)
    limit = MAX_NAMES.get(etype, MAX_NAMES_OTHER)
    cut = act["cut"].get(etype)
    if cut is not None:
        for name in [k for k in names if k > cut]:
            del names[name]
    if len(names) > limit:
        kept = sorted(names)[:limit]
        act["names"][etype] = {k: names[k] for k in kept}
        act["cut"][etype] = kept[-1]


def event_name(msg: dict) -> str | None:
    """The name a rule selects an event by (``segments.person.Event.name``): a track's event, another type's name;
    None when it is not a text or is empty (the door checks only a track's: a page's is stored as sent)."""
    name = msg.get("event") if (msg.get("type") or "track") == "track" else msg.get("name")
    return name if isinstance(name, str) and name else None


def latest(state: dict) -> str:
    """The latest event time of what the state holds that a reader at an earlier instant cannot tell apart
    (fixed-width ISO text; "" for none): its traits, sums, attributes, claimed traits, consent and warnings. A
    reader at an earlier instant must fold her events again (``identity.resolver.state_as_of``). Not the channels
    and the activity counts: every event moves them (a page view), and their readers already know when they are not
    exact at an instant and read her events instead (``segments.summary.Summary.settled``). Consent is dated by the
    statement's own timestamp here."""
    out = ""
    for key in (state.get("trait_at") or {}).values():
        out = max(out, key[0])
    for per in (state.get("sums") or {}).values():
        for key, _v in per.values():
            out = max(out, key[0])
    for _v, key in (state.get("attrs") or {}).values():
        out = max(out, key[0])
    for key, _v in (state.get("claimed") or {}).values():
        out = max(out, key[0])
    for parts in _log_of(state).values():
        for c in parts.values():
            key = c.get("key") or [""]
            out = max(out, key[1] if len(key) > 2 else key[0])
    for ts, _why in (state.get("warnings") or {}).values():
        out = max(out, ts)
    return out


def empty_activity() -> dict:
    return {"types": {}, "names": {}, "cut": {}}


def count_activity(act: dict, msg: dict) -> None:
    """One event into the activity tallies: every event, outbound ones included (a rule's selection reads them
    too; only channel activity leaves them out), except Chorus' own records (``collect.messages.own_record``). Those
    are stored already attributed and never reach the live fold; a replay of the profile's events does see them,
    and leaves them out too, so any path gives the same summary (a selection of their reserved names is never read
    from it)."""
    if own_record(msg):
        return
    etype, ts = msg.get("type") or "track", msg["timestamp"]
    _tally(act["types"], etype, 1, ts, ts)
    name = event_name(msg)
    if name is None or len(name) > NAME_LENGTH:
        return
    cut = act["cut"].get(etype)
    if cut is not None and name > cut:
        return
    _tally(act["names"].setdefault(etype, {}), name, 1, ts, ts)
    _keep_names(act, etype)


def _merge_activity(a: dict, b: dict) -> dict:
    out = empty_activity()
    for s in (a, b):
        for etype, (n, first, last) in s["types"].items():
            _tally(out["types"], etype, n, first, last)
        for etype, cut in s["cut"].items():
            out["cut"][etype] = min(cut, out["cut"].get(etype, cut))
    for s in (a, b):
        for etype, names in s["names"].items():
            mine = out["names"].setdefault(etype, {})
            for name, (n, first, last) in names.items():
                _tally(mine, name, n, first, last)
    for etype in out["names"]:
        _keep_names(out, etype)
    return out


def merge(a: dict, b: dict, policies: dict[str, str] | None = None) -> dict:
    """The state of the union of two event histories."""
    policies = {**DEFAULT_POLICIES, **(policies or {})}
    out = empty()
    if "activity" in a and "activity" in b:  # known only if known on both sides
        out["activity"] = _merge_activity(a["activity"], b["activity"])
    else:
        del out["activity"]
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
        out["traits"][name] = _storable_sum(v[1] for v in per.values())
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
        for slot, parts in _log_of(s).items():
            mine = out.setdefault("consent_log", {}).setdefault(slot, {})
            for bucket, c in parts.items():
                cur = mine.get(bucket)
                if cur is None or c["key"] > cur["key"]:
                    mine[bucket] = dict(c)
        for name, (key, value) in (s.get("claimed") or {}).items():
            cur = out.setdefault("claimed", {}).get(name)
            if cur is None or key > cur[0]:
                out["claimed"][name] = [key, value]
        if s.get("warnings"):
            _add_warnings(out, s["warnings"])
    for slot in out.get("consent_log", {}):
        _settle_consent(out, slot)
    for name, (_key, value) in (out.get("claimed") or {}).items():
        if name not in out["trait_at"] and name not in out["sums"]:
            out["traits"][name] = value
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
    settled = _settled(state)  # the consent and the refused grants both read it
    return {
        "traits": state["traits"],
        "channels": state["channels"],
        "channels_used": sorted(state["channels"]),
        "consent": {
            slot: {"status": c["status"], "at": c["key"][0], "source": c["source"]}
            for slot, c in settled[0].items()
        },
        "timezone": (state["attrs"].get("timezone") or [None])[0],
        "locale": (state["attrs"].get("locale") or [None])[0],
        "consent_warnings": refused_grants(state, settled),
        "identifier_warnings": [
            {"message_id": mid, "at": at, "warning": text}
            for mid, (at, text) in sorted(state.get("warnings", {}).items(), key=lambda kv: kv[1][0], reverse=True)
        ],
    }


__all__ = ["apply_event", "merge", "empty", "summary", "public_view", "refused_grants", "POLICIES"]
