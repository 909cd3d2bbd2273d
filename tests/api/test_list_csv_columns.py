"""A CSV list upload never loses a row silently (an outside probe: with the header ``email,Email Address`` a row
whose email was only in the second column was neither added nor reported, a 200 of nothing).

Two columns that name the same identifier kind are refused (a 400 naming the header line and both columns): which
of the two holds a row's value cannot be told. A row with no value in any identifier column is reported in
``invalid`` with its line, the other rows applied."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the parsing is the engine's neither


@pytest.fixture
def h(http, server, workspace):
    batch = [{"type": "identify", "userId": "ana", "traits": {"email": "ana@example.com"}}]
    assert http.post("/v1/batch", json={"batch": batch}, auth=(workspace["server_write_key"], "")).status_code == 200
    server.settle()
    h = {"Authorization": f"Bearer {workspace['api_key']}"}
    assert http.put("/api/lists/vip", json={"name": "VIP"}, headers=h).status_code == 201
    return h


def _upload(http, h, text: str):
    return http.post("/api/lists/vip/members", content=text.encode(), headers={**h, "Content-Type": "text/csv"})


@pytest.mark.parametrize(("header", "first", "second", "kind"), [
    ("email,Email Address", "email", "Email Address", "email"),
    ("email,email", "email", "email", "email"),  # the csv module's DictReader kept the last of the two
    ("Profile ID,profile_id,email", "Profile ID", "profile_id", "profile_id"),
    ("user_id,email,User-ID", "user_id", "User-ID", "user_id"),
])  # fmt: skip
def test_two_columns_of_one_identifier_kind_are_a_400_naming_them(http, h, header, first, second, kind):
    cells = ",".join([""] * (header.count(",")) + ["ana@example.com"])
    r = _upload(http, h, f"{header}\n{cells}\n")
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["code"] == "bad_request" and body["field"] == "line 1", body
    assert body["message"].startswith(f"line 1: columns '{first}' and '{second}' both name {kind}"), body
    assert http.get("/api/lists", headers=h).json()["lists"][0]["members"] == 0  # nothing applied


def test_a_row_with_no_identifier_value_is_reported_as_invalid(http, h):
    r = _upload(http, h, "email,user_id,name\nana@example.com,,Ana\n,,Bo\n , ,Cy\n\nnobody@example.com,,Di\n")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["added"], body["not_found_count"]) == (1, 1), body
    assert body["not_found"] == [{"email": "nobody@example.com"}], body
    # line 3: empty cells; line 4: blanks only; line 5 (an empty line) is no row at all
    assert [i["line"] for i in body["invalid"]] == [3, 4] and body["invalid_count"] == 2, body
    assert all("no value" in i["reason"] for i in body["invalid"]), body
    # every row is accounted for: added, not found or invalid
    assert body["added"] + body["not_found_count"] + body["invalid_count"] == 4


def test_one_column_per_kind_is_read_as_before(http, h):
    r = _upload(http, h, "Email Address,User ID\nana@example.com,\n,ana\n")
    assert r.status_code == 200, r.text
    assert (r.json()["added"], r.json()["invalid_count"]) == (1, 0), r.text  # the same person twice, added once
