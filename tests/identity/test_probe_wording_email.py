"""An address that does not validate is refused in Chorus' words, never email_validator's ("An email address must
have an @-sign.", "The part after the @-sign contains invalid characters: '@', U+000A."). Found by a probe (list
members, CSV imports and journey starts all quoted the library's text)."""

from __future__ import annotations

import pytest

from chorus.identity.identifiers import normalise_email

# the library's words: none may reach a client
LIBRARY_WORDS = ("@-sign", "An email address", "The email address", "The part after", "There must be", "U+00")


@pytest.mark.parametrize(("raw", "why"), [
    ("not-an-email", "it has no @"),
    ("@example.com", "nothing comes before the @"),
    ("ada@", "nothing comes after the @"),
    ("ada@b@example.com", "its domain has a character not allowed in a domain name"),
    ("ada@exa\nmple.com", "its domain has a character not allowed in a domain name"),
    ("ada@localhost", "its domain has no period (example.com)"),
    ("ada..b@example.com", "it has two periods in a row"),
    (".ada@example.com", "it starts with a period"),
    ("ada.@example.com", "a period comes just before the @"),
    ("ada b@example.com", "the part before the @ has a character not allowed there"),
    ("ada@example.invalid", "its domain is a reserved name that takes no email"),
    ("Ada <ada@example.com>", "it has a name or angle brackets around it; give the address alone"),
    ("ada\u200b@example.com", "it has an invisible or control character"),
    ("ada@" + "x" * 300 + ".com", "its domain is too long"),
])  # fmt: skip
def test_invalid_addresses_are_refused_in_chorus_words(raw, why):
    with pytest.raises(ValueError) as info:
        normalise_email(raw)
    message = str(info.value)
    assert message == f"not a valid email address: {why}"
    assert not any(w in message for w in LIBRARY_WORDS), message


def test_an_unknown_library_message_gets_a_generic_reason_not_the_library_text():
    from chorus.identity.identifiers import email_problem

    assert email_problem("Some new wording from a future email_validator.") == "not a valid email address"
    assert normalise_email("  Ada@Example.COM ") == "ada@example.com"  # valid ones unchanged


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_list_members_answer_chorus_words(http, workspace):
    auth = {"Authorization": f"Bearer {workspace['api_key']}"}
    assert http.put("/api/lists/probe", json={"name": "probe"}, headers=auth).status_code < 300
    r = http.post("/api/lists/probe/members", json={"add": [{"email": "not-an-email"}]}, headers=auth)
    assert r.status_code == 400, r.text
    assert "not a valid email address: it has no @" in r.json()["message"], r.text
    assert "@-sign" not in r.text
