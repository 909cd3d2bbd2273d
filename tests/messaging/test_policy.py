"""Consent rules and channel choice: properties over generated profiles (hypothesis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from chorus.messaging.policy import MESSAGE_CHANNELS, choose_channel, consent_decision

CHANNELS = ["email", "sms", "push", "whatsapp"]
TOPICS = ["offers", "newsletter"]
TIMES = [f"2026-03-0{d}T10:00:00.000000Z" for d in range(1, 10)]

slot = st.tuples(st.sampled_from([*CHANNELS, "*"]), st.sampled_from([*TOPICS, "marketing", "*"]))
consent_entry = st.fixed_dictionaries(
    {"status": st.sampled_from(["granted", "denied", "unknown"]), "at": st.sampled_from(TIMES), "source": st.just("t")}
)
consents = st.dictionaries(slot.map(lambda s: f"{s[0]}:{s[1]}"), consent_entry, max_size=8)
activity = st.dictionaries(
    st.sampled_from(["email", "sms", "web", "app", "whatsapp", "store"]),
    st.sampled_from(TIMES).map(lambda t: {"first_seen": t, "last_seen": t, "count": 1}),
    max_size=4,
)
addresses = st.dictionaries(st.sampled_from(CHANNELS), st.just(["addr"]), max_size=4)


@st.composite
def profiles(draw):
    traits = {}
    if draw(st.booleans()):
        # any JSON a client can send with the public write key: a list or an object is not a channel (an outside
        # probe: ["sms"] made channel choice raise, a 500 for the whole /api/messages/batch and a failed broadcast)
        traits["preferred_channel"] = draw(st.one_of(
            st.sampled_from([*CHANNELS, "fax"]), st.lists(st.sampled_from(CHANNELS), max_size=2),
            st.dictionaries(st.sampled_from(CHANNELS), st.integers(), max_size=1), st.integers(), st.none()))
    return {"id": "p1", "consent": draw(consents), "channels": draw(activity), "addresses": draw(addresses),
            "traits": traits}  # fmt: skip


topic_modes = st.dictionaries(
    st.sampled_from(TOPICS), st.sampled_from(["opt_in", "opt_out"]).map(lambda m: {"mode": m})
)


@given(profiles(), st.sampled_from(CHANNELS), st.sampled_from(TOPICS), topic_modes)
@settings(max_examples=400)
def test_consent_rules(profile, channel, topic, topics):
    c = profile["consent"]
    denied = {k for k, v in c.items() if v["status"] == "denied"}
    trans = consent_decision(profile, channel, topic, "transactional", topics)
    # transactional: only a channel-wide block stops it
    assert trans.allowed == (f"{channel}:*" not in denied)
    mkt = consent_decision(profile, channel, topic, "marketing", topics)
    if f"{channel}:*" in denied or "*:*" in denied:
        assert not mkt.allowed
    stated = [(c[s]["at"], s) for s in (f"{channel}:{topic}", f"*:{topic}", f"{channel}:marketing", "*:marketing")
              if s in c and c[s]["status"] != "unknown"]  # fmt: skip
    newest = max(stated, key=lambda s: (s[0], c[s[1]]["status"] == "denied", s[1]))[1] if stated else None
    if newest and c[newest]["status"] == "denied":
        assert not mkt.allowed
    if topics.get(topic, {}).get("mode") == "opt_in" and mkt.allowed:
        assert newest is not None and c[newest]["status"] == "granted" and newest.endswith(f":{topic}")
    if mkt.allowed:
        assert trans.allowed  # marketing is never allowed where transactional is not


@given(profiles(), st.sampled_from(CHANNELS), st.sampled_from(TOPICS), st.sampled_from(TIMES))
def test_a_new_denial_never_unblocks(profile, channel, topic, at):
    before = consent_decision(profile, channel, topic, "marketing").allowed
    later = "2026-03-10T00:00:00.000000Z"
    profile["consent"][f"{channel}:{topic}"] = {"status": "denied", "at": later, "source": "t"}
    assert not consent_decision(profile, channel, topic, "marketing").allowed
    assert before or not consent_decision(profile, channel, topic, "marketing").allowed


@given(
    profiles(),
    st.lists(st.sampled_from(CHANNELS), min_size=1, max_size=4, unique=True),
    st.one_of(st.just("auto"), st.lists(st.sampled_from(CHANNELS), min_size=1, max_size=4, unique=True)),
    st.sampled_from(["marketing", "transactional"]),
)
@settings(max_examples=400)
def test_channel_choice(profile, variants, requested, kind):
    choice = choose_channel(profile, variants, requested, topic="offers", kind=kind)
    candidates = requested if isinstance(requested, list) else MESSAGE_CHANNELS
    usable = [
        ch for ch in candidates
        if ch in variants and profile["addresses"].get(ch) and consent_decision(profile, ch, "offers", kind).allowed
    ]  # fmt: skip
    assert {c["channel"] for c in choice.considered} >= set(candidates)
    if not usable:
        assert choice.channel is None and choice.address is None
        return
    assert choice.channel in usable and choice.address == "addr"
    if isinstance(requested, list):
        assert choice.channel == usable[0]
        return
    pref = profile["traits"].get("preferred_channel")
    if isinstance(pref, str) and pref in usable:
        assert choice.channel == pref
        return
    implied = {"email": ["email"], "sms": ["sms"], "whatsapp": ["whatsapp"], "app": ["push"], "web": ["push"]}
    recency = {}
    for act, stats in profile["channels"].items():
        for ch in implied.get(act, []):
            recency[ch] = max(recency.get(ch, ""), stats["last_seen"])
    active = [c for c in usable if c in recency]
    if active:
        assert recency[choice.channel] == max(recency[c] for c in active)
    else:
        assert choice.reason == "workspace fallback order"


def test_choice_examples():
    p = {"id": "p", "consent": {}, "traits": {},
         "channels": {"email": {"last_seen": TIMES[0]}, "app": {"last_seen": TIMES[5]}},
         "addresses": {"email": ["ana@example.com"], "push": ["tok"], "sms": ["+14155550100"]}}  # fmt: skip
    c = choose_channel(p, ["email", "push", "sms"], "auto", topic="offers", kind="marketing")
    assert (c.channel, c.address) == ("push", "tok") and "most recently active" in c.reason
    p["traits"]["preferred_channel"] = "sms"
    assert choose_channel(p, ["email", "push", "sms"], "auto", topic="offers", kind="marketing").channel == "sms"
    p["consent"]["sms:*"] = {"status": "denied", "at": TIMES[6], "source": "event:STOP"}
    c = choose_channel(p, ["email", "push", "sms"], "auto", topic="offers", kind="transactional")
    assert c.channel == "push"
    assert any(x["channel"] == "sms" and "sms:* denied" in x["reason"] for x in c.considered)
    c = choose_channel(p, ["email", "push", "sms"], ["sms", "email"], topic="offers", kind="marketing")
    assert c.channel == "email" and "requested" in c.reason
    # the preference page writes "marketing on" and "deals off" at the same instant: the denial wins
    same = {"status": "granted", "at": TIMES[7], "source": "page"}
    p["consent"].update({"email:marketing": same, "email:deals": {**same, "status": "denied"}})
    assert not consent_decision(p, "email", "deals", "marketing").allowed
    assert consent_decision(p, "email", "offers", "marketing").allowed


NOW = datetime(2026, 3, 5, 10, 0, tzinfo=UTC)


@given(
    profiles(),
    st.one_of(st.none(), st.integers(min_value=-200, max_value=200)),  # minutes from 24 h before NOW
    st.booleans(),
    st.one_of(st.just("auto"), st.lists(st.sampled_from(CHANNELS), min_size=1, max_size=4, unique=True)),
)
@settings(max_examples=300)
def test_whatsapp_under_auto_only_within_the_reply_window(profile, offset, template, requested):
    addresses = {**profile["addresses"], "whatsapp": ["31612345678"]}
    profile = {**profile, "addresses": addresses, "channels": dict(profile["channels"])}
    if offset is not None:
        wrote = NOW - timedelta(hours=24) + timedelta(minutes=offset)
        profile["channels"]["whatsapp"] = {"first_seen": TIMES[0], "last_seen": TIMES[0], "count": 1,
                                           "last_message": wrote.isoformat().replace("+00:00", "Z")}  # fmt: skip
    anytime = {"whatsapp"} if template else set()
    kw = {"topic": "offers", "kind": "transactional"}
    without = choose_channel(profile, CHANNELS, requested, **kw)
    choice = choose_channel(profile, CHANNELS, requested, now=NOW, anytime=anytime, **kw)
    window_open = offset is not None and offset > 0
    if isinstance(requested, list) or template or window_open:
        assert (choice.channel, choice.reason) == (without.channel, without.reason)  # the rule does not apply
    else:
        assert choice.channel != "whatsapp"
        (wa,) = [c for c in choice.considered if c["channel"] == "whatsapp"]
        assert not wa["usable"]
        if consent_decision(profile, "whatsapp", "offers", "transactional").allowed:  # else consent is the reason
            assert "outside the 24-hour window" in wa["reason"]
        if without.channel != "whatsapp":
            assert choice.channel == without.channel


def test_window_examples():
    p = {"id": "p", "consent": {}, "traits": {"preferred_channel": "messenger"}, "channels": {},
         "addresses": {"messenger": ["2400000000000001"], "email": ["ana@example.com"]}}  # fmt: skip
    c = choose_channel(p, ["email", "messenger"], "auto", topic="offers", kind="marketing", now=NOW)
    assert c.channel == "email"
    (ms,) = [x for x in c.considered if x["channel"] == "messenger"]
    assert ms["reason"] == ("outside the 24-hour window (the person never wrote on it): only a tagged update (not"
                            " marketing) can be sent")  # fmt: skip
    wrote = "2026-03-05T08:00:00Z"  # two hours ago: the window is open
    p["channels"]["messenger"] = {"first_seen": wrote, "last_seen": wrote, "count": 1, "last_message": wrote}
    assert choose_channel(p, ["email", "messenger"], "auto", topic="offers", kind="marketing", now=NOW).channel == (
        "messenger"
    )


# -- the most recent activity, and its ties ---------------------------------------------------------------------
WEB_CHANNELS = ["email", "push", "in_app", "sms"]
IMPLIED_FIRST = {"web": ["in_app", "push"], "app": ["push", "in_app"]}  # docs/messaging.md, "Channel choice"


@st.composite
def active_profiles(draw):
    """Profiles whose activity often ties: few instants, web and app activity, in-app always reachable."""
    instants = TIMES[:3]
    acts = draw(st.dictionaries(st.sampled_from(["web", "app", "email", "sms"]), st.sampled_from(instants),
                                min_size=1, max_size=4))  # fmt: skip
    return {
        "id": "p1", "consent": {}, "traits": {},
        "channels": {a: {"first_seen": t, "last_seen": t, "count": 1} for a, t in acts.items()},
        "addresses": draw(st.dictionaries(st.sampled_from(["email", "push", "sms"]), st.just(["addr"]))),
    }  # fmt: skip


@given(
    active_profiles(),
    st.lists(st.sampled_from(WEB_CHANNELS), min_size=1, max_size=4, unique=True),
    st.permutations(["email", "push", "sms", "whatsapp", "messenger", "in_app"]),
    st.randoms(use_true_random=False),
)
@settings(max_examples=500, deadline=None)  # a shared CI machine must not fail it on time
def test_most_recent_activity_and_its_ties(profile, variants, fallback, rnd):
    choice = choose_channel(profile, variants, "auto", topic="offers", kind="marketing", fallback=fallback)
    implies = {"email": ["email"], "sms": ["sms"], **IMPLIED_FIRST}
    seen = {a: s["last_seen"] for a, s in profile["channels"].items()}
    usable = [c for c in variants if c == "in_app" or profile["addresses"].get(c)]
    active = [c for c in usable if any(c in implies[a] for a in seen)]
    if not active:
        assert choice.channel is None if not usable else choice.reason == "workspace fallback order"
        return
    last = {c: max(t for a, t in seen.items() if c in implies[a]) for c in active}
    # the channel of the latest activity
    assert last[choice.channel] == max(last.values())
    latest = [a for a, t in seen.items() if t == max(last.values()) and set(implies[a]) & set(active)]
    if len(latest) == 1:  # one activity at that instant: the first of its channels that can be used
        assert choice.channel == next(c for c in implies[latest[0]] if c in active)
    # ties are decided by rules, never by the order in which activity or variants happen to be listed
    shuffled = dict(rnd.sample(list(profile["channels"].items()), len(profile["channels"])))
    again = choose_channel({**profile, "channels": shuffled}, rnd.sample(variants, len(variants)), "auto",
                           topic="offers", kind="marketing", fallback=fallback)  # fmt: skip
    assert again.channel == choice.channel


def test_web_activity_prefers_in_app_and_app_activity_prefers_push():
    p = {"id": "p", "consent": {}, "traits": {}, "addresses": {"push": ["tok"]},
         "channels": {"web": {"last_seen": TIMES[1]}}}  # fmt: skip
    c = choose_channel(p, ["push", "in_app"], "auto", topic="offers", kind="marketing")
    assert c.channel == "in_app" and "most recently active" in c.reason
    p["channels"] = {"app": {"last_seen": TIMES[1]}}
    assert choose_channel(p, ["in_app", "push"], "auto", topic="offers", kind="marketing").channel == "push"
    # the web visit is older than the app session: push
    p["channels"] = {"web": {"last_seen": TIMES[0]}, "app": {"last_seen": TIMES[1]}}
    assert choose_channel(p, ["push", "in_app"], "auto", topic="offers", kind="marketing").channel == "push"
    # both at the same instant: each implies its own first; the workspace fallback order decides
    p["channels"] = {"web": {"last_seen": TIMES[1]}, "app": {"last_seen": TIMES[1]}}
    for fallback, expected in ((["in_app", "push"], "in_app"), (["push", "in_app"], "push")):
        c = choose_channel(p, ["push", "in_app"], "auto", topic="offers", kind="marketing", fallback=fallback)
        assert c.channel == expected
