"""Audience rules as plain functions: caller lists, modes, the diff with what a platform holds, rows, consent."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chorus.messaging.audiences import normalise as n
from chorus.messaging.audiences import rows as R
from chorus.messaging.audiences.membership import Entry, Skip, Synced, members_after, parse_entry, parse_lines, plan
from chorus.messaging.policy import ads_decision


# -- the caller's list --------------------------------------------------------------------------------------------
def test_entries_name_the_bad_item_and_keep_the_good_ones():
    items = ["p_1", {"email": "ana@example.com"}, {"email": "a", "phone": "b"}, {"shoe_size": "42"}, 7, {"phone": " "}]
    got = [parse_entry(item, f"profiles[{i}]", ("loyalty_id",)) for i, item in enumerate(items)]
    assert got[0] == Entry("profiles[0]", profile_id="p_1")
    assert got[1] == Entry("profiles[1]", kind="email", value="ana@example.com")
    assert [g.where for g in got if isinstance(g, Skip)] == ["profiles[2]", "profiles[3]", "profiles[4]", "profiles[5]"]
    assert "exactly one identifier" in got[2].detail and "shoe_size is not an identifier" in got[3].detail
    assert {g.reason for g in got if isinstance(g, Skip)} == {"invalid_input"}
    assert parse_entry({"loyalty_id": 1234}, "x", ("loyalty_id",)) == Entry("x", kind="loyalty_id", value="1234")


def test_lines():
    text = (
        "# customers of the spring sale\np_1\n\nemail:Ana@Example.com\nphone: +31 6 12345678\nloyalty_id:L-9\n"
        "weird:thing\n"
    )
    got = parse_lines(text, ("loyalty_id",))
    assert got == [
        Entry("line 2", profile_id="p_1"),
        Entry("line 4", kind="email", value="Ana@Example.com"),
        Entry("line 5", kind="phone", value="+31 6 12345678"),
        Entry("line 6", kind="loyalty_id", value="L-9"),
        Entry("line 7", profile_id="weird:thing"),  # not an identifier kind: a profile id (unknown, reported later)
    ]


@given(st.sets(st.integers(0, 20)), st.sets(st.integers(0, 20)))
def test_modes(previous, given_):
    assert members_after("replace", previous, given_) == given_
    assert members_after("add", previous, given_) == previous | given_
    assert members_after("remove", previous, given_) == previous - given_
    with pytest.raises(ValueError):
        members_after("merge", previous, given_)


# -- the diff -----------------------------------------------------------------------------------------------------
ROWS = st.sampled_from([f"r{i}" for i in range(8)])
PROFILES = st.sampled_from([f"p{i}" for i in range(8)])


@st.composite
def states(draw):
    """Rows the platform holds (members, some duplicated, and erasure removals) and the rows members have now."""
    members = draw(st.lists(st.tuples(PROFILES, ROWS), max_size=10))
    previous = [Synced(i + 1, pid, h, {"K": h}) for i, (pid, h) in enumerate(members)]
    previous += [Synced(None, None, h, {"K": h}) for h in draw(st.lists(ROWS, max_size=3))]
    current = {pid: (h, {"K": h}) for pid, h in draw(st.dictionaries(PROFILES, ROWS, max_size=8)).items()}
    return previous, current


def apply(held: set[str], p) -> set[str]:
    return (held - {s.row_hash for s in p.remove}) | {h for _pid, h, _row in p.add}


@settings(max_examples=400, deadline=None)
@given(states())
def test_plan_makes_the_platform_hold_exactly_the_current_rows(state):
    previous, current = state
    p = plan(previous, current)
    held = {s.row_hash for s in previous}
    wanted = {h for h, _row in current.values()}
    assert apply(held, p) == wanted
    # nothing already held is sent again; nothing is removed twice or removed while wanted
    assert not {h for _pid, h, _row in p.add} & {s.row_hash for s in previous if s.id is not None}
    removed = [s.row_hash for s in p.remove]
    assert len(removed) == len(set(removed)) and not set(removed) & wanted
    # every previous record is accounted for exactly once
    assert sorted(map(id, previous)) == sorted(map(id, [*p.remove, *(s for s, _ in p.keep), *p.drop]))
    # a kept row follows the profile that has it now
    assert all(current[pid][0] == s.row_hash for s, pid in p.keep)


@settings(max_examples=200, deadline=None)
@given(states())
def test_a_second_sync_sends_nothing(state):
    previous, current = state
    p = plan(previous, current)
    after = [Synced(s.id, pid, s.row_hash, s.keys) for s, pid in p.keep]
    after += [Synced(1000 + i, pid, h, row) for i, (pid, h, row) in enumerate(p.add)]
    again = plan(after, current)
    assert again.empty and not again.drop


# -- rows ---------------------------------------------------------------------------------------------------------
ANA = {
    "id": "p_ana",
    "identifiers": {"email": ["ana.b@gmail.com", "ana@work.example"], "phone": ["+31612345678"], "user_id": ["u-7"]},
    "traits": {"email": "ana@work.example", "firstName": "Ána", "last_name": "de Vries-Bakker", "gender": "female",
               "birthday": "1990-05-07", "address": {"city": "Den Haag", "postalCode": "2511 AB", "state": "ZH"}},
    "consent": {},
}  # fmt: skip


def test_meta_row_of_a_profile():
    row = R.build_row("meta", ANA, list(R.KINDS["meta"]), "NL")
    h = n.sha256_hex
    assert row == {
        "EMAIL": h("ana@work.example"), "PHONE": h("31612345678"), "FN": h("ána"), "LN": h("de vriesbakker"),
        "CT": h("denhaag"), "ST": h("zh"), "ZIP": h("2511ab"), "COUNTRY": h("nl"), "GEN": h("f"), "DOBY": h("1990"),
        "DOBM": h("05"), "DOBD": h("07"), "EXTERN_ID": "u-7",
    }  # fmt: skip
    assert R.build_row("meta", ANA, ["email"], "NL") == {"EMAIL": h("ana@work.example")}
    # the trait is not one of the identifiers: the first identifier is used
    other = {**ANA, "traits": {"email": "old@example.com"}}
    assert R.build_row("meta", other, ["email"], "NL") == {"EMAIL": h("ana.b@gmail.com")}


def test_google_row_of_a_profile():
    h = n.sha256_hex
    row = R.build_row(
        "google", {**ANA, "traits": {**ANA["traits"], "email": None}}, ["email", "phone", "address"], None
    )
    assert row == {
        "hashedEmail": h("anab@gmail.com"), "hashedPhoneNumber": h("+31612345678"), "hashedFirstName": h("ána"),
        "hashedLastName": h("de vriesbakker"), "countryCode": "NL", "postalCode": "2511 AB",
    }  # fmt: skip
    # an address without a postal code is no identifier for Google: it is left out, not sent half
    no_zip = {"id": "p", "identifiers": {"phone": ["+31612345678"]}, "traits": {"first_name": "A", "last_name": "B"}}
    assert R.build_row("google", no_zip, ["address"], None) is None
    assert R.build_row("google", no_zip, ["phone", "address"], None) == {"hashedPhoneNumber": h("+31612345678")}


def test_rows_without_identifiers_and_weak_keys():
    anon = {"id": "p", "identifiers": {"anonymous_id": ["a-1"]}, "traits": {"gender": "m"}}
    assert R.build_row("meta", anon, ["email", "phone", "gender"], None) is None
    named = {"id": "p", "identifiers": {}, "traits": {"name": "Jan Jansen", "zip": "1011 AA", "country": "NL"}}
    assert set(R.build_row("meta", named, ["name", "address"], None)) == {"FN", "LN", "ZIP", "COUNTRY"}
    assert R.build_row("meta", {**named, "traits": {"name": "Jan Jansen"}}, ["name"], None) is None


def test_fingerprint_changes_with_the_row():
    a = R.build_row("meta", ANA, ["email"], "NL")
    assert R.fingerprint(a) == R.fingerprint(dict(reversed(list(a.items()))))
    assert R.fingerprint(a) != R.fingerprint(R.build_row("meta", ANA, ["email", "phone"], "NL"))


def test_csv_columns_follow_the_identifier_kinds():
    assert [h for _k, h in R.csv_columns("meta", ["email", "phone", "name"])] == ["email", "phone", "fn", "ln"]
    assert [h for _k, h in R.csv_columns("google", ["email", "address"])] == [
        "Email", "First Name", "Last Name", "Country", "Zip",
    ]  # fmt: skip


# -- consent ------------------------------------------------------------------------------------------------------
def c(status, at="2026-01-01T00:00:00.000000Z"):
    return {"status": status, "at": at, "source": "event:m1"}


@pytest.mark.parametrize(
    "consent, topic, mode, allowed",
    [
        ({}, "marketing", "opt_out", True),
        ({"ads:*": c("denied")}, "marketing", "opt_out", False),
        ({"*:*": c("denied")}, "marketing", "opt_out", False),
        ({"ads:marketing": c("denied")}, "offers", "opt_out", False),
        ({"*:marketing": c("denied")}, "offers", "opt_out", False),
        ({"ads:offers": c("denied")}, "offers", "opt_out", False),
        ({"*:offers": c("denied")}, "offers", "opt_out", False),
        ({"email:*": c("denied"), "email:marketing": c("denied")}, "marketing", "opt_out", True),  # not about ads
        ({"ads:offers": c("denied", "2026-01-01T00:00:00.000000Z"),
          "ads:offers ": c("granted")}, "offers", "opt_out", False),
        ({"ads:offers": c("denied", "2026-01-01T00:00:00.000000Z"),
          "*:offers": c("granted", "2026-02-01T00:00:00.000000Z")}, "offers", "opt_out", True),  # newest wins
        ({}, "offers", "opt_in", False),
        ({"ads:offers": c("granted")}, "offers", "opt_in", True),
        ({"ads:offers": c("granted"), "ads:*": c("denied")}, "offers", "opt_in", False),
    ],
)  # fmt: skip
def test_ads_consent(consent, topic, mode, allowed):
    assert ads_decision({"consent": consent}, topic, mode).allowed is allowed
