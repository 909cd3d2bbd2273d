"""The consent and address rule for unvouched claims (decision 0014), as properties of the pure fold.

Events are vouched (a trusted source, or a user hash) or claims. Whatever the events and their arrival order:
the fold is order independent and a split history merged back equals the whole; a claimed grant never undoes an
opt-out (when the newest denial is newer than every vouched grant, the slot is denied) and counts once a vouched
grant came after the denial; without any denial, or with vouched events only, the newest word wins as before; a
vouched email or phone is never replaced by a claim.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from chorus.profiles import state as pstate

SLOTS = [("email", "*"), ("email", "news"), ("*", "news"), ("email", "marketing"), ("sms", "news")]
STATUSES = ["granted", "denied", "unknown"]


@st.composite
def history(draw):
    n = draw(st.integers(1, 10))
    out = []
    for i in range(n):
        channel, topic = draw(st.sampled_from(SLOTS))
        status = draw(st.sampled_from(STATUSES))
        msg = {"type": "identify", "messageId": f"m{i}", "channel": "web",
               "timestamp": f"2026-01-01T00:{draw(st.integers(0, 5)):02d}:00.000000Z",
               "traits": {"consent": {channel: {topic: status}}}}  # fmt: skip
        if draw(st.booleans()):
            msg["traits"]["email"] = draw(st.sampled_from(["a@x.com", "b@x.com", "c@x.com"]))
        out.append((msg, draw(st.booleans())))
    return out


def fold(items, start=None):
    st_ = start if start is not None else pstate.empty()
    for msg, vouched in items:
        pstate.apply_event(st_, msg, "anonymous_id:a", vouched=vouched)
    return st_


def key(msg):
    """Where a statement sorts: when it was made (never after it arrived), then its own time, then its id."""
    ts, received = msg["timestamp"], msg.get("receivedAt")
    return [received if isinstance(received, str) and received < ts else ts, ts, msg["messageId"]]


def newest(items):
    return max(items, key=lambda it: key(it[0])) if items else None


def slot_items(items, slot):
    c, t = slot
    return [(m, v) for m, v in items if (m["traits"]["consent"].get(c) or {}).get(t)]


def status(msg, slot):
    return msg["traits"]["consent"][slot[0]][slot[1]]


@settings(max_examples=400, deadline=None)
@given(history(), st.data())
def test_the_fold_is_order_independent_and_merges(items, data):
    whole = fold(items)
    shuffled = data.draw(st.permutations(items))
    assert fold(shuffled) == whole
    cut = data.draw(st.integers(0, len(items)))
    merged = pstate.merge(fold(shuffled[:cut]), fold(shuffled[cut:]))
    for part in ("traits", "consent", "consent_log", "claimed"):
        assert merged.get(part) == whole.get(part), part
    assert pstate.refused_grants(merged) == pstate.refused_grants(whole)


def overlapping(slot):
    """The slots that decide some message together with ``slot`` (itself included): a claimed grant on one would
    override a denial on another (the oracle of ``state.overlap``, written out: same or ``*`` channel, and same
    topic or the ``marketing`` meta-topic; slots of every topic only with themselves)."""
    c, t = slot
    if t == "*":
        return [slot]
    return [(c2, t2) for c2, t2 in SLOTS
            if t2 != "*" and (c2 == c or "*" in (c, c2)) and (t2 == t or "marketing" in (t, t2))]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(history())
def test_a_claim_never_undoes_an_opt_out(items):
    st_ = fold(items)
    settled = pstate.settled_consent(st_)  # as messages are decided by them (every view of her)

    def firm(slot):  # the words a claim cannot override: vouched ones, and denials
        return [it for it in slot_items(items, slot) if it[1] or status(it[0], slot) == "denied"]

    def opt_out_stands(slot):
        f = firm(slot)
        return bool(f) and status(newest(f)[0], slot) == "denied"

    for slot in SLOTS:
        name = f"{slot[0]}:{slot[1]}"
        mine = slot_items(items, slot)
        got = settled.get(name)
        denial = newest([it for it in mine if status(it[0], slot) == "denied"])
        vouched_yes = newest([it for it in mine if it[1] and status(it[0], slot) != "denied"])
        if denial and (vouched_yes is None or key(vouched_yes[0]) < key(denial[0])):
            assert got["status"] == "denied", (slot, got)
        if all(v for _m, v in mine) and mine:  # nothing but vouched events: the newest word wins, as before
            assert got["key"] == key(newest(mine)[0])
        # the whole rule: a claimed grant or unknown counts unless an opt-out stands on a slot it could override
        # (its own or one deciding the same messages); a denial a vouched grant came after does not stand
        claims = [it for it in mine if not it[1] and status(it[0], slot) != "denied"]
        # a claimed grant is kept out by an opt-out on any slot it could override; a claimed unknown (it only
        # narrows) by its own slot's
        grant = bool(claims) and status(newest(claims)[0], slot) == "granted"
        stands = any(opt_out_stands(o) for o in overlapping(slot)) if grant else opt_out_stands(slot)
        counted = firm(slot) + ([] if stands else claims)
        if not counted:
            assert got is None, (slot, got)
        else:
            assert got["key"] == key(newest(counted)[0]), (slot, got)
        # a refused grant is listed exactly when a claim was the newest word on the slot and did not count
        top = newest(mine)
        refused = [w for w in pstate.refused_grants(st_) if w["slot"] == name]
        assert bool(refused) == bool(top and not top[1] and status(top[0], slot) != "denied" and stands)


MESSAGE_SLOTS = [("email", "*"), ("*", "*"), ("email", "offers"), ("*", "offers"), ("email", "marketing"),
                 ("*", "marketing"), ("sms", "offers"), ("sms", "marketing")]  # fmt: skip


@st.composite
def consent_history(draw):
    out = []
    for i in range(draw(st.integers(1, 8))):
        channel, topic = draw(st.sampled_from(MESSAGE_SLOTS))
        msg = {"type": "identify", "messageId": f"m{i}", "channel": "web",
               "timestamp": f"2026-01-01T00:{draw(st.integers(0, 5)):02d}:00.000000Z",
               "traits": {"consent": {channel: {topic: draw(st.sampled_from(STATUSES))}}}}  # fmt: skip
        out.append((msg, draw(st.booleans())))
    return out


@settings(max_examples=500, deadline=None)
@given(consent_history())
def test_no_claim_lets_a_message_through_an_opt_out(items):
    """What is sent, not how slots read: whatever claims (write-key events without a valid user hash) say, on any
    slot, a marketing message that the vouched words and the denials alone block stays blocked (an outside probe:
    a browser's ``*:offers`` grant after her one-click ``email:offers`` unsubscribe let the next offer out)."""
    from chorus.messaging.policy import consent_decision

    whole = pstate.public_view(fold(items))
    firm = pstate.public_view(fold([(m, v) for m, v in items if v or next(iter(next(iter(
        m["traits"]["consent"].values())).values())) == "denied"]))  # fmt: skip
    for channel in ("email", "sms"):
        for topic in ("offers", "news"):
            if not consent_decision(firm, channel, topic, "marketing").allowed:
                assert not consent_decision(whole, channel, topic, "marketing").allowed, (channel, topic, whole)


@settings(max_examples=300, deadline=None)
@given(history())
def test_a_claim_never_replaces_a_vouched_email(items):
    st_ = fold(items)
    with_email = [(m, v) for m, v in items if "email" in m["traits"]]
    vouched = newest([it for it in with_email if it[1]])
    claimed = newest([it for it in with_email if not it[1]])
    expected = (vouched or claimed or (None,))[0]
    assert st_["traits"].get("email") == (expected["traits"]["email"] if expected else None)


def test_a_state_stored_before_the_rule_keeps_its_opt_out():
    """Profiles folded before this change have a status per slot and no log: it counts as vouched."""
    old = {**pstate.empty(), "consent": {"email:*": {"status": "denied", "key": ["2026-01-01", "x"],
                                                      "source": "event:x"}}}  # fmt: skip
    grant = {"type": "identify", "messageId": "y", "timestamp": "2026-02-01", "traits": {"consent": {"email": {
        "*": "granted"}}}}  # fmt: skip
    assert pstate.apply_event(old, dict(grant), "anonymous_id:a", vouched=False)["consent"]["email:*"]["status"] \
        == "denied"  # fmt: skip
    assert pstate.apply_event(old, dict(grant, messageId="z"), "user_id:u")["consent"]["email:*"]["status"] \
        == "granted"  # fmt: skip


def test_a_denial_she_undid_herself_no_longer_blocks_or_warns():
    """A browser's denial, then her own grant (vouched), then a browser's ``unknown``: no opt-out stands any more,
    so the claim counts and no warning says one does."""
    items = []
    for i, (status_, vouched) in enumerate([("denied", False), ("granted", True), ("unknown", False)]):
        items.append(({"type": "identify", "messageId": f"m{i}", "timestamp": f"2026-01-01T00:0{i}:00.000000Z",
                       "traits": {"consent": {"email": {"*": status_}}}}, vouched))  # fmt: skip
    st_ = fold(items)
    assert st_["consent"]["email:*"]["status"] == "unknown"
    assert pstate.refused_grants(st_) == []
    # while her opt-out stands, the same claim is refused and listed
    st_ = fold([items[1], (items[0][0] | {"timestamp": "2026-01-01T00:01:30.000000Z"}, False), items[2]])
    assert st_["consent"]["email:*"]["status"] == "denied"
    assert [w["message_id"] for w in pstate.refused_grants(st_)] == ["m2"]


def test_consent_names_and_words_are_read_as_consent_managers_send_them():
    """Channels and topics in any case are the lower-case slots messages are decided by (they were stored as
    ``Email:*`` or ``*:Offers``, shown denied and never enforced), and statuses in any case, or as true/false text
    or 0/1, are read (``"Denied"`` and ``granted: "false"`` were dropped: the opt-out was lost). Found by an outside
    probe."""
    def track(props):
        return {"type": "track", "event": "Consent Updated", "properties": props}

    assert pstate.consent_updates(track({"channel": "Email", "status": "denied"})) == [("email", "*", "denied")]
    assert pstate.consent_updates(track({"channel": "email", "topic": " Offers ", "status": "Denied"})) == [
        ("email", "offers", "denied")]
    for granted in ("false", "FALSE", 0, False):
        assert pstate.consent_updates(track({"channel": "sms", "granted": granted})) == [("sms", "*", "denied")]
    for granted in ("true", 1, True):
        assert pstate.consent_updates(track({"granted": granted})) == [("*", "*", "granted")]
    assert pstate.consent_updates(track({"channel": "email", "status": "maybe"})) == []
    assert pstate.consent_updates(track({"channel": "email", "granted": 2})) == []
    assert pstate.consent_updates({"type": "identify", "traits": {"consent": {"EMAIL": {"*": False}}}}) == [
        ("email", "*", "denied")]
    assert pstate.consent_updates({"type": "page", "context": {"consent": {"categoryPreferences": {
        "Offers": False, "News": "yes"}}}}) == [("*", "offers", "denied"), ("*", "news", "granted")]  # fmt: skip


def test_a_state_folded_before_the_overlap_rule_is_read_by_it():
    """A profile stored by the version before counted a browser's ``*:offers`` grant beside her ``email:offers``
    unsubscribe: its view (what every send and segment reads) applies the rule without a refold."""
    from chorus.messaging.policy import consent_decision

    old = {**pstate.empty(),
           "consent": {"email:offers": {"status": "denied", "key": ["2026-01-01T00:00:00Z", "a"], "source": "event:a"},
                       "*:offers": {"status": "granted", "key": ["2026-01-02T00:00:00Z", "b"], "source": "event:b"}},
           "consent_log": {"email:offers": {"vouched": {"status": "denied", "key": ["2026-01-01T00:00:00Z", "a"],
                                                        "source": "event:a"}},
                           "*:offers": {"claimed": {"status": "granted", "key": ["2026-01-02T00:00:00Z", "b"],
                                                    "source": "event:b"}}}}  # fmt: skip
    view = pstate.public_view(old)
    assert set(view["consent"]) == {"email:offers"}
    assert not consent_decision(view, "email", "offers", "marketing").allowed
    assert [w["slot"] for w in view["consent_warnings"]] == ["*:offers"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["email:offers", "*:offers", "email:marketing", "*:marketing", "sms:offers",
                                 "sms:news", "*:news", "email:*", "*:*", "sms:marketing"]), max_size=6),
       st.sampled_from(["email:offers", "*:offers", "email:marketing", "*:marketing", "sms:news", "*:news",
                        "email:*", "*:*", "push:marketing"]))  # fmt: skip
def test_the_standing_index_answers_as_overlap_does(standing, slot):
    """Each grant is checked against the standing opt-outs by a few lookups, not against every slot (review: a
    visitor's thousands of claimed slots made every view quadratic); the lookups give :func:`overlap`'s answer."""
    log = {s: {"vouched": {"status": "denied", "key": ["t", s], "source": "x"}} for s in standing}
    assert pstate._Standing(log).overlaps(slot) == any(pstate.overlap(slot, s) for s in standing)


def test_a_claimed_unknown_is_not_dropped_for_a_neighbours_denial():
    """Review: a claimed ``unknown`` only narrows what may be sent; dropping it because ``*:offers`` was denied
    brought her older ``email:offers`` grant back as the newest word, and an offer was allowed."""
    from chorus.messaging.policy import consent_decision

    s = pstate.empty()
    for i, (ts, props, vouched) in enumerate([
            ("2026-01-01T00:00:00Z", {"channel": "*", "topic": "offers", "status": "denied"}, True),
            ("2026-01-02T00:00:00Z", {"channel": "email", "topic": "offers", "status": "granted"}, True),
            ("2026-01-05T00:00:00Z", {"channel": "email", "topic": "offers", "status": "unknown"}, False)]):
        pstate.apply_event(s, {"type": "track", "event": "Consent Updated", "timestamp": ts, "messageId": f"m{i}",
                               "properties": props}, "a", vouched=vouched)  # fmt: skip
    view = pstate.public_view(s)
    assert view["consent"]["email:offers"]["status"] == "unknown" and view["consent_warnings"] == []
    assert not consent_decision(view, "email", "offers", "marketing").allowed
    # a message about "Offers" is decided by the lower-case slots (review: it was allowed after the unsubscribe)
    assert not consent_decision(view, "email", "Offers", "marketing").allowed


def test_a_topics_mode_is_found_by_its_name_in_any_case():
    """Review: with the message's topic compared in lower case, a workspace topic named "Offers" in opt-in mode was
    not found and read as opt-out: a message went to people who never opted in."""
    from chorus.messaging.policy import consent_decision

    view = pstate.public_view(pstate.empty())
    topics = {"Offers": {"mode": "opt_in"}}
    assert not consent_decision(view, "email", "Offers", "marketing", topics).allowed
    assert not consent_decision(view, "email", "offers", "marketing", topics).allowed
    assert consent_decision(view, "email", "news", "marketing", topics).allowed  # opt-out, nothing denied


def test_a_grant_stamped_ahead_of_its_arrival_does_not_outrank_a_later_opt_out():
    """A statement is dated at the earlier of its timestamp and its arrival: a server's grant stamped three hours
    ahead (a clock off, local time sent as UTC) arrived before the person's unsubscribe, which Chorus dates as it
    happens; the unsubscribe wins, in either arrival order of the fold. Found by an outside probe: "You are
    unsubscribed", and the next offer was sent."""
    from chorus.messaging.policy import consent_decision

    grant = {"type": "track", "event": "Consent Updated", "messageId": "g", "channel": "server",
             "properties": {"channel": "email", "topic": "offers", "status": "granted"},
             "timestamp": "2026-01-01T13:00:00.000000Z", "receivedAt": "2026-01-01T10:00:00.000000Z"}  # fmt: skip
    stop = {"type": "track", "event": "Consent Updated", "messageId": "chorus-consent-u", "channel": "email",
            "properties": {"channel": "email", "topic": "offers", "status": "denied"},
            "timestamp": "2026-01-01T10:05:00.000000Z", "receivedAt": "2026-01-01T10:05:00.000000Z"}  # fmt: skip
    for order in ([grant, stop], [stop, grant]):
        st_ = fold([(m, True) for m in order])
        assert not consent_decision(pstate.public_view(st_), "email", "offers", "marketing").allowed, st_["consent"]
    # an honest grant after the opt-out still counts: stamped when it was made, before it arrived
    regrant = {**grant, "messageId": "g2", "timestamp": "2026-01-01T10:06:00.000000Z",
               "receivedAt": "2026-01-01T10:06:01.000000Z"}  # fmt: skip
    st_ = fold([(m, True) for m in (grant, stop, regrant)])
    assert consent_decision(pstate.public_view(st_), "email", "offers", "marketing").allowed


def test_statements_stamped_ahead_that_arrive_together_keep_their_order():
    """Review: both dated at their arrival, their order fell to their random message ids; their own times order
    them (she unsubscribed, then subscribed again 5 s later: granted)."""
    from chorus.messaging.policy import consent_decision

    def said(mid, status, ts):
        return {"type": "track", "event": "Consent Updated", "messageId": mid, "channel": "server",
                "properties": {"channel": "email", "topic": "offers", "status": status},
                "timestamp": ts, "receivedAt": "2026-01-01T10:00:06.000000Z"}  # fmt: skip

    batch = [said("m-2", "denied", "2026-01-01T13:00:00.000000Z"),
             said("m-1", "granted", "2026-01-01T13:00:05.000000Z")]
    for order in (batch, batch[::-1]):
        st_ = fold([(m, True) for m in order])
        assert consent_decision(pstate.public_view(st_), "email", "offers", "marketing").allowed, st_["consent"]
