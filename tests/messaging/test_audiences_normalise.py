"""Normalising and hashing for Meta and Google: the platforms' published examples, and properties (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chorus.messaging.audiences import normalise as n

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
EMAIL = st.builds(
    lambda local, domain, pad_l, pad_r, upper: (" " * pad_l + f"{local}@{domain}" + " " * pad_r).upper()
    if upper else " " * pad_l + f"{local}@{domain}" + " " * pad_r,
    st.from_regex(r"[a-zA-Z0-9][a-zA-Z0-9._+-]{0,15}", fullmatch=True),
    st.sampled_from(["example.com", "Example.COM", "gmail.com", "googlemail.com", "shop.example.nl"]),
    st.integers(0, 3), st.integers(0, 3), st.booleans(),
)  # fmt: skip
NL_MOBILE = st.from_regex(r"6[1-5][0-9]{7}", fullmatch=True)


# -- the platforms' own examples ----------------------------------------------------------------------------------
def test_meta_published_examples():
    # https://developers.facebook.com/docs/marketing-api/conversions-api/parameters/customer-information-parameters
    assert n.sha256_hex(n.meta_email("John_Smith@gmail.com")) == (
        "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"
    )
    assert n.meta_phone("(650)555-1212", "US") == "16505551212"
    assert n.sha256_hex("16505551212") == "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"
    assert n.sha256_hex(n.meta_name("Mary")) == "6915771be1c5aa0c886870b6951b03d7eafc121fea0e80a5ea83beb7c449f4ec"
    assert n.meta_name("Valéry") == "valéry"
    assert n.sha256_hex(n.meta_name("Valéry")) == "08e1996b5dd49e62a4b4c010d44e4345592a863bb9f8e3976219bac29417149c"
    assert n.sha256_hex(n.meta_name("정")) == "8fa8cd9c440be61d0151429310034083132b35975c4bea67fdd74158eb51db14"


@pytest.mark.parametrize(
    "fn, raw, out",
    [
        (n.meta_email, "  Ana@Example.COM ", "ana@example.com"),
        (n.meta_email, "not an email", None),
        (lambda v: n.meta_phone(v, "NL"), "06-12 34 56 78", "31612345678"),
        (lambda v: n.meta_phone(v, "NL"), "0031 6 12345678", "31612345678"),
        (lambda v: n.meta_phone(v, None), "+44 20 7946 0958", "442079460958"),
        (lambda v: n.meta_phone(v, None), "12345", None),
        (n.meta_name, " O'Brien-Smith ", "obriensmith"),
        (n.meta_name, "Mary  Ann", "mary ann"),
        (n.meta_city, "New York", "newyork"),
        (n.meta_city, "Saint-Étienne", "saintétienne"),
        (lambda v: n.meta_state(v, "US"), "California", "ca"),
        (lambda v: n.meta_state(v, "US"), "NY", "ny"),
        (lambda v: n.meta_state(v, "NL"), "Noord-Holland", "noordholland"),
        (lambda v: n.meta_zip(v, "US"), "94045-1234", "94045"),
        (lambda v: n.meta_zip(v, "GB"), "SW1A 1AA", "sw1a1aa"),
        (n.meta_country, "nl", "nl"),
        (n.meta_country, "UK", "gb"),
        (n.meta_country, "Netherlands", None),
        (n.meta_gender, "Female", "f"),
        (n.meta_gender, "x", None),
        (n.birth_date, "1990-5-7", ("1990", "05", "07")),
        (n.birth_date, "07/05/1990", None),
        (n.google_email, " Jane.Doe@GMail.com ", "janedoe@gmail.com"),
        (n.google_email, "jane.doe@googlemail.com", "janedoe@googlemail.com"),
        (n.google_email, "Jane.Doe@Example.com", "jane.doe@example.com"),
        (lambda v: n.google_phone(v, "NL"), "06 12345678", "+31612345678"),
        (n.google_first_name, "  Mary   Ann ", "mary ann"),
        (n.google_last_name, "O'Brien", "obrien"),
        (lambda v: n.google_postal_code(v, "GB"), " sw1a  1aa ", "SW1A 1AA"),
    ],
)
def test_rules(fn, raw, out):
    assert fn(raw) == out


# -- properties ---------------------------------------------------------------------------------------------------
IDEMPOTENT = [
    n.meta_email, n.meta_phone_digits, n.meta_name, n.meta_city, n.meta_country, n.meta_gender, n.google_email,
    n.google_first_name, n.google_last_name, lambda v: n.meta_state(v, "US"), lambda v: n.meta_state(v, "NL"),
    lambda v: n.meta_zip(v, "US"), lambda v: n.meta_zip(v, "DE"), lambda v: n.google_postal_code(v, "GB"),
    lambda v: n.e164(v, "NL"), lambda v: n.e164(v, "US"),
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(TEXT, st.sampled_from(range(len(IDEMPOTENT))))
def test_normalising_twice_changes_nothing(raw, which):
    fn = IDEMPOTENT[which]
    once = fn(raw)
    assert once is None or fn(once) == once


@settings(max_examples=200, deadline=None)
@given(EMAIL)
def test_email_variants_hash_alike(raw):
    canonical = raw.strip().lower()
    assert n.sha256_hex(n.meta_email(raw)) == n.sha256_hex(n.meta_email(canonical))
    assert n.google_email(raw) == n.google_email(canonical) == n.google_email(n.google_email(raw))
    local, domain = canonical.rsplit("@", 1)
    if domain in n.GMAIL_DOMAINS:
        assert n.google_email(raw) == local.replace(".", "") + "@" + domain
    else:
        assert n.google_email(raw) == canonical


@settings(max_examples=200, deadline=None)
@given(NL_MOBILE, st.sampled_from(["0{0}", "+31{0}", "0031{0}", "+31 (0){0}", "0{a}-{b}", "+31 {a} {b}", " 0{0} "]))
def test_phone_formats_hash_alike(number, template):
    """National and international writings of one number, parsed with the workspace's default region (NL)."""
    raw = template.format(number, a=number[:1], b=number[1:])
    assert n.meta_phone(raw, "NL") == "31" + number
    assert n.google_phone(raw, "NL") == "+31" + number
    # a number already in E.164 parses to itself whatever the default region
    assert n.meta_phone(n.google_phone(raw, "NL"), "US") == n.meta_phone(raw, "NL")
    assert n.sha256_hex(n.meta_phone(raw, "NL")) == n.sha256_hex("31" + number)


@settings(max_examples=200, deadline=None)
@given(TEXT)
def test_hashes_are_lower_hex_of_64(raw):
    digest = n.sha256_hex(raw)
    assert n.is_sha256_hex(digest) and len(digest) == 64
