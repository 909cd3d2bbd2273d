"""Issue 12's scenario, through HTTP only: a browse-abandonment segment (laptops viewed 3 times in 7 days without
adding one to the cart or buying) fills from web events and a store purchase, imported from the POS, empties it.
The person's entries and exits are on her profile and timeline, and the members can be listed and exported."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.conftest import wait_until

RULE = {"and": [
    {"performed": {"event": "Product Viewed", "where": [{"property": "category", "equals": "laptops"}],
                   "window": "7d", "times": {"gte": 3}}},
    {"not": {"or": [
        {"performed": {"event": "Product Added", "where": [{"property": "category", "equals": "laptops"}],
                       "window": "7d"}},
        {"performed": {"event": "Order Completed", "window": "7d"}},
    ]}},
]}  # fmt: skip


def ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat()


def test_browse_abandoners_fill_from_the_web_and_a_store_purchase_empties_the_segment(http, server, workspace):
    h = {"Authorization": f"Bearer {workspace['api_key']}"}
    r = http.put("/api/segments/laptop-browsers", json={"name": "Laptop browse abandoners", "rule": RULE}, headers=h)
    assert r.status_code == 201, r.text
    assert r.json()["members"] == 0 and r.json()["version"] == 1
    wait_until(lambda: http.get("/api/segments/laptop-browsers", headers=h).json()["status"] == "ready")

    # Noor browses laptops three times on the web shop (as analytics.js sends it), then a phone once
    wk = (workspace["write_key"], "")
    views = [{"type": "track", "userId": "noor", "event": "Product Viewed", "timestamp": ago(300 - 60 * i),
              "properties": {"category": "laptops" if i < 3 else "phones", "sku": f"L-{i}"}} for i in range(4)]
    identify = {"type": "identify", "userId": "noor", "traits": {"email": "noor@example.com"}, "timestamp": ago(400)}
    sk = (workspace["server_write_key"], "")
    assert http.post("/v1/batch", auth=sk, json={"batch": [identify]}).status_code == 200
    assert http.post("/v1/batch", auth=wk, json={"batch": views}).status_code == 200

    def members():
        return [m["profile_id"] for m in http.get("/api/segments/laptop-browsers/members", headers=h).json()["members"]]

    (pid,) = wait_until(members)
    noor = http.get("/api/profiles", params={"user_id": "noor"}, headers=h).json()
    assert noor["id"] == pid
    # a marketer tries a variant before saving it: the preview counts the same people the engine put in
    r = http.post("/api/segments/preview", json={"rule": RULE, "sample": 5}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["count"] == 1 and r.json()["sample"][0]["profile_id"] == pid
    assert r.json()["sample"][0]["identifiers"]["email"] == ["noor@example.com"]
    stricter = {"and": [RULE, {"performed": {"event": "Product Viewed", "window": "7d", "times": {"gte": 5}}}]}
    assert http.post("/api/segments/preview", json={"rule": stricter}, headers=h).json()["count"] == 0
    r = http.put("/api/segments/phone-browsers", headers=h, json={"rule": {"performed": {
        "event": "Product Viewed", "where": [{"property": "category", "equals": "phones"}]}}})  # fmt: skip
    assert r.status_code == 201 and r.json()["estimate"]["count"] == 1, r.text
    assert http.delete("/api/segments/phone-browsers", headers=h).status_code == 204
    seen = http.get(f"/api/profiles/{pid}/segments", headers=h).json()
    assert [s["id"] for s in seen["segments"]] == ["laptop-browsers"]
    assert [(x["change"], x["cause"]) for x in seen["history"]] == [("entered", "event")]
    csv_text = http.get("/api/segments/laptop-browsers/export", headers=h).text
    assert csv_text.splitlines()[0] == "profile_id,user_id,email,phone,since" and "noor@example.com" in csv_text

    # she buys the laptop in the store; the POS export is imported
    when = ago(-2)[:19].replace("T", " ")
    pos = f"receipt_no,timestamp,email,revenue,currency,store\nR-9,{when},noor@example.com,1299.00,EUR,Amsterdam\n"
    r = http.post("/api/imports", headers=h, data={"source": "store"},
                  files={"file": ("pos.csv", pos.encode(), "text/csv")})  # fmt: skip
    assert r.status_code == 200 and r.json()["imported"] == 1, r.text
    wait_until(lambda: members() == [])
    seen = http.get(f"/api/profiles/{pid}/segments", headers=h).json()
    assert seen["segments"] == [] and [x["change"] for x in seen["history"]] == ["exited", "entered"]
    timeline = http.get(f"/api/profiles/{pid}/events", headers=h).json()["events"]
    assert {"Segment Entered", "Segment Exited"} <= {e.get("event") for e in timeline}


def test_segment_definitions_are_validated_with_the_path_to_the_bad_node(http, server, workspace):
    h = {"Authorization": f"Bearer {workspace['api_key']}"}
    bad = {"and": [{"trait": {"name": "plan", "equals": "pro"}}, {"performed": {"event": "X", "window": "7 days"}}]}
    r = http.put("/api/segments/s1", json={"rule": bad}, headers=h)
    assert r.status_code == 400 and r.json()["field"].startswith("rule.and[1].performed.window"), r.text
    r = http.put("/api/segments/s2", json={"rule": {"segment": "nope"}}, headers=h)
    assert r.status_code == 400 and "nope" in r.json()["message"]
    r = http.put("/api/segments/bad id", json={"rule": {"segment": "nope"}}, headers=h)
    assert r.status_code == 400 and r.json()["field"] == "id"
    assert http.put("/api/segments/a", json={"rule": {"bucket": {"from": 0, "to": 50}}}, headers=h).status_code == 201
    assert http.put("/api/segments/b", json={"rule": {"segment": "a"}}, headers=h).status_code == 201
    r = http.put("/api/segments/a", json={"rule": {"segment": "b"}}, headers=h)
    assert r.status_code == 400 and "depends on itself" in r.json()["message"], r.text
    assert http.delete("/api/segments/a", headers=h).status_code == 409
    assert http.delete("/api/segments/b", headers=h).status_code == 204
    assert http.delete("/api/segments/a", headers=h).status_code == 204
    yaml_rule = "performed:\n  event: Order Completed\n  window: 30d\n"
    r = http.put("/api/segments/buyers", json={"name": "Buyers", "yaml": yaml_rule}, headers=h)
    assert r.status_code == 201 and r.json()["rule"] == {"performed": {"event": "Order Completed", "window": "30d"}}


def test_a_static_list_from_a_csv_feeds_a_segment(http, server, workspace):
    h = {"Authorization": f"Bearer {workspace['api_key']}"}
    for u in ("ana", "bo"):
        r = http.post("/v1/identify", auth=(workspace["server_write_key"], ""),
                      json={"userId": u, "traits": {"email": f"{u}@example.com"}})  # fmt: skip
        assert r.status_code == 200
    server.settle()
    assert http.put("/api/lists/vip", json={"name": "VIP guests"}, headers=h).status_code == 201
    assert http.put("/api/segments/vips", json={"rule": {"list": "vip"}}, headers=h).status_code == 201
    csv_body = "email\nana@example.com\nnobody@example.com\n"
    r = http.post("/api/lists/vip/members", content=csv_body, headers={**h, "Content-Type": "text/csv"})
    assert r.status_code == 200 and r.json()["added"] == 1
    assert r.json()["not_found"] == [{"email": "nobody@example.com"}]
    ana = http.get("/api/profiles", params={"user_id": "ana"}, headers=h).json()["id"]
    wait_until(lambda: [m["profile_id"] for m in http.get("/api/segments/vips/members", headers=h).json()["members"]]
               == [ana])  # fmt: skip
    r = http.post("/api/lists/vip/members", json={"remove": [ana]}, headers=h)
    assert r.status_code == 200 and r.json()["removed"] == 1
    wait_until(lambda: http.get("/api/segments/vips/members", headers=h).json()["members"] == [])


def test_hostile_segment_and_list_input_gets_a_400_naming_the_field(http, server, workspace):
    h = {"Authorization": f"Bearer {workspace['api_key']}"}
    for yaml_text in ("- " * 3000 + "x", "[" * 5000):
        r = http.put("/api/segments/deep", json={"yaml": yaml_text}, headers=h)
        assert r.status_code == 400 and r.json()["field"] == "yaml", r.text
    r = http.put("/api/segments/bad", json={"yaml": "and:\n  - trait: {name: plan, equals: gold}\n  - nope: 1\n"},
                 headers=h)  # fmt: skip
    assert r.status_code == 400 and r.json()["field"] == "yaml.and[1]", r.text  # the YAML's own path
    r = http.put("/api/segments/bad", json={"yaml": "and: [1,"}, headers=h)
    body = r.json()
    assert r.status_code == 400 and body["field"] == "yaml" and "line 1, column" in body["message"], r.text
    assert http.put("/api/lists/vip", json={"name": "VIP"}, headers=h).status_code == 201
    for body, field in (({"add": [{"email": 5}]}, "add[0]"), ({"add": [{"email": ["a"]}]}, "add[0]"),
                        ({"add": [{"foo": "bar"}]}, "add[0]"), ({"remove": "x"}, "remove")):  # fmt: skip
        r = http.post("/api/lists/vip/members", json=body, headers=h)
        assert r.status_code == 400 and r.json()["field"] == field, (body, r.text)
    # an upload's bad entry is named by its line in the file (the header is line 1; blank lines count), and the good
    # rows next to it are applied all the same (an outside probe: one bad email lost the whole file)
    upload = "email\nana@example.com\n\nnot-an-email\n"
    r = http.post("/api/lists/vip/members", content=upload, headers={**h, "Content-Type": "text/csv"})
    body = r.json()
    assert r.status_code == 200 and body["invalid_count"] == 1, r.text  # (ana has no profile in this workspace)
    assert body["not_found"] == [{"email": "ana@example.com"}], r.text  # her row was looked up, not dropped
    assert [i["line"] for i in body["invalid"]] == [4] and body["invalid"][0]["reason"].startswith("email: "), r.text
    # a JSON body is a call, not a file: an invalid entry is a 400 naming it
    r = http.post("/api/lists/vip/members", json={"add": [{"email": "ana@example.com"}, {"email": "nope"}]},
                  headers=h)  # fmt: skip
    assert r.status_code == 400 and r.json()["field"] == "add[1]", r.text
    huge = "email\n\n\nana@example.com\n" + "a" * 200_000 + "\n"  # the cell over the csv module's limit: line 5
    r = http.post("/api/lists/vip/members", content=huge, headers={**h, "Content-Type": "text/csv"})
    assert r.status_code == 400 and r.json()["field"] == "line 5", r.text
    r = http.post("/api/lists/vip/members", content=b"email\n\xff\xfe\n", headers={**h, "Content-Type": "text/csv"})
    assert r.status_code == 400 and r.json()["field"] == "body"
    r = http.get("/api/segments/x/members", params={"cursor": "not-a-cursor"}, headers=h)
    assert r.status_code in (400, 404)


def test_a_preview_validates_like_a_save_and_is_for_the_admin_key_only(http, server, workspace):
    h = {"Authorization": f"Bearer {workspace['api_key']}"}
    r = http.post("/api/segments/preview", json={"rule": {"performed": {"event": "X", "window": "soon"}}}, headers=h)
    assert r.status_code == 400 and r.json()["field"].startswith("rule.performed.window"), r.text
    for sample in (101, -1, "5", True):
        r = http.post("/api/segments/preview", json={"rule": {"bucket": {"from": 0, "to": 5}}, "sample": sample},
                      headers=h)  # fmt: skip
        assert r.status_code == 400 and r.json()["field"] == "sample", (sample, r.text)
    r = http.post("/api/segments/preview", json={"rule": {"list": "nope"}}, headers=h)
    assert r.status_code == 400 and "nope" in r.json()["message"] and r.json()["field"] == "rule.list", r.text
    # deep inside the rule, the path to the reference (an outside probe: it said "rule" wherever the list was)
    r = http.post("/api/segments/preview", json={"rule": {"and": [{"bucket": {"from": 0, "to": 5}},
                                                                   {"not": {"list": "nope"}}]}}, headers=h)  # fmt: skip
    assert r.status_code == 400 and r.json()["field"] == "rule.and[1].not.list", r.text
    assert r.json()["message"].startswith("rule.and[1].not.list: static list 'nope' does not exist"), r.text
    r = http.post("/api/segments/preview", json={"rule": {"segment": "x"}, "name": "n"}, headers=h)
    assert r.status_code == 400 and r.json()["field"] == "body"
    r = http.post("/api/segments/preview", json={"rule": {"bucket": {"from": 0, "to": 100}}},
                  auth=(workspace["write_key"], ""))  # fmt: skip
    assert r.status_code in (401, 403)
    r = http.put("/api/segments/everyone", params={"estimate": "false"}, headers=h,
                 json={"rule": {"bucket": {"from": 0, "to": 100}}})  # fmt: skip
    assert r.status_code == 201 and "estimate" not in r.json()
    r = http.put("/api/segments/everyone", params={"estimate": "perhaps"}, headers=h,
                 json={"rule": {"bucket": {"from": 0, "to": 100}}})  # fmt: skip
    assert r.status_code in (400, 422) and r.json()["field"] == "estimate", r.text


def test_a_segment_on_the_whole_history_follows_orders_on_every_channel(http, server, workspace):
    """Conditions without a window (decision 0046 answers them from the profile's activity summary; through HTTP
    the path is not visible, the answers are): at least three orders ever, the first more than 30 days ago, and the
    newest activity in a store. Two web
    orders are not enough; a till receipt imported from the POS makes her a member; browsing the web shop
    afterwards moves her last channel online, and she leaves. The preview (one set-based query over the store)
    agrees with the engine at each step."""
    h = {"Authorization": f"Bearer {workspace['api_key']}"}
    rule = {"and": [
        {"performed": {"event": "Order Completed", "times": {"gte": 3}}},
        {"first_time": {"event": "Order Completed", "more_than_ago": "30d"}},
        {"last_channel": {"equals": "store"}},
    ]}  # fmt: skip
    r = http.put("/api/segments/store-regulars", json={"name": "Regulars who last came in", "rule": rule}, headers=h)
    assert r.status_code == 201, r.text
    wait_until(lambda: http.get("/api/segments/store-regulars", headers=h).json()["status"] == "ready")
    sk, wk = (workspace["server_write_key"], ""), (workspace["write_key"], "")
    identify = {"type": "identify", "userId": "ana", "traits": {"email": "ana@example.com"},
                "timestamp": ago(86400 * 50)}  # fmt: skip
    orders = [{"type": "track", "userId": "ana", "event": "Order Completed", "timestamp": ago(86400 * d),
               "properties": {"order_id": f"W-{d}", "total": 80}} for d in (40, 10)]  # fmt: skip
    assert http.post("/v1/batch", auth=sk, json={"batch": [identify]}).status_code == 200
    assert http.post("/v1/batch", auth=wk, json={"batch": orders}).status_code == 200
    server.settle()

    def members():
        return [m["profile_id"] for m in http.get("/api/segments/store-regulars/members", headers=h).json()["members"]]

    def previewed():
        return http.post("/api/segments/preview", json={"rule": rule}, headers=h).json()["count"]

    ana = http.get("/api/profiles", params={"user_id": "ana"}, headers=h).json()["id"]
    assert members() == [] and previewed() == 0  # two orders

    when = ago(60)[:19].replace("T", " ")
    pos = f"receipt_no,timestamp,email,revenue,currency,store\nR-1,{when},ana@example.com,45.00,EUR,Utrecht\n"
    r = http.post("/api/imports", headers=h, data={"source": "store"},
                  files={"file": ("pos.csv", pos.encode(), "text/csv")})  # fmt: skip
    assert r.status_code == 200 and r.json()["imported"] == 1, r.text
    wait_until(lambda: members() == [ana])
    assert previewed() == 1
    profile = http.get(f"/api/profiles/{ana}", headers=h).json()
    assert profile["last_channel"] == "store", profile

    view = {"type": "page", "userId": "ana", "name": "Home", "timestamp": ago(1)}
    assert http.post("/v1/batch", auth=wk, json={"batch": [view]}).status_code == 200
    wait_until(lambda: members() == [])
    assert previewed() == 0
    history = http.get(f"/api/profiles/{ana}/segments", headers=h).json()["history"]
    assert [x["change"] for x in history] == ["exited", "entered"]


def _three_people(http, workspace, prefix: str) -> dict:
    """<prefix>0..2 with emails <prefix>i@ex.com, resolved; the admin headers."""
    h = {"Authorization": f"Bearer {workspace['api_key']}"}
    people = [{"type": "identify", "userId": f"{prefix}{i}", "messageId": f"id{prefix}{i}",
               "traits": {"email": f"{prefix}{i}@ex.com"}} for i in range(3)]  # fmt: skip
    assert http.post("/v1/batch", json={"batch": people}, auth=(workspace["write_key"], "")).status_code == 200
    wait_until(lambda: all(http.get("/api/profiles", params={"user_id": f"{prefix}{i}"}, headers=h).status_code == 200
                           for i in range(3)))  # fmt: skip
    return h


def test_a_list_upload_applies_its_good_rows_and_reports_the_bad_ones_by_line(http, server, workspace):
    """An outside probe: one malformed email among three good ones was a 400 and nobody was added."""
    h = _three_people(http, workspace, "u")
    assert http.put("/api/lists/l1", json={"name": "L1"}, headers=h).status_code == 201
    upload = "email\nu0@ex.com\nnot-an-email\nu1@ex.com\n\"u2@ex.com\"\n@@\n"
    r = http.post("/api/lists/l1/members", content=upload, headers={**h, "Content-Type": "text/csv"})
    body = r.json()
    assert r.status_code == 200 and body["added"] == 3 and body["not_found_count"] == 0, r.text
    assert [(i["line"], i["reason"][:7]) for i in body["invalid"]] == [(3, "email: "), (6, "email: ")], r.text
    assert body["invalid_count"] == 2
    assert [x["members"] for x in http.get("/api/lists", headers=h).json()["lists"] if x["id"] == "l1"] == [3]


def test_a_list_upload_reads_an_exported_header_and_falls_back_to_the_next_identifier(http, server, workspace):
    """An outside probe: "Email" (as spreadsheets and mailing tools write it) was 'the CSV needs a header', and a
    row's second identifier column was never read, so a segment export whose profile id had since been merged or
    erased named nobody although its email did."""
    h = _three_people(http, workspace, "v")
    assert http.put("/api/lists/l2", json={"name": "L2"}, headers=h).status_code == 201
    csv_h = {**h, "Content-Type": "text/csv"}
    # Mailchimp's export header; the second row's stale profile id falls back to its email, the third's user id
    # names nobody and its email does
    upload = ("Profile ID,User-ID,Email Address\n"
              "p_gone,,v0@ex.com\n"
              ",nobody,V1@EX.COM\n"
              ",v2,\n"
              "p_gone2,ghost,ghost@ex.com\n"
              ",,not-an-email\n")  # fmt: skip
    r = http.post("/api/lists/l2/members", content=upload, headers=csv_h)
    body = r.json()
    assert r.status_code == 200 and body["added"] == 3, r.text
    assert body["not_found"] == [{"profile_id": "p_gone2", "user_id": "ghost", "email": "ghost@ex.com"}], r.text
    assert [(i["line"], i["reason"][:7]) for i in body["invalid"]] == [(6, "email: ")], r.text
    assert [x["members"] for x in http.get("/api/lists", headers=h).json()["lists"] if x["id"] == "l2"] == [3]
    # a header with no identifier column names what it reads
    r = http.post("/api/lists/l2/members", content="name\nAna\n", headers=csv_h)
    assert r.status_code == 400 and r.json()["field"] == "body" and "profile_id" in r.text and "email" in r.text, r.text


def test_a_declared_identifier_kind_is_read_from_a_csv_header_in_any_case():
    """Review: a declared kind with capitals ("crmId") named by its own header was refused as no identifier column."""
    from chorus.api.segments import _csv_entries

    kinds = ("user_id", "email", "phone", "anonymous_id", "crmId")
    for header in ("crmId", "CRMID", " CrmId "):
        rows, lines = _csv_entries(f"{header}\nC-1001\n".encode(), kinds)
        assert rows == [[{"crmId": "C-1001"}]] and lines == ["line 2"], header
