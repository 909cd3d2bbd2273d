"""Spam complaints from mailbox providers' feedback loops (ARF, RFC 5965) over real HTTP: a marketing email goes
out through a real SMTP server, the report built from what arrived is posted to ``/webhooks/email/feedback``, and
the complaint is in the message's history and on the profile's consent (no more email, of any topic). Reports are
accepted raw and as SendGrid's and Mailgun's inbound forms; a report sent twice changes nothing more; a forged,
foreign, malformed or transactional one is a 4xx naming the part, and changes nothing."""

from __future__ import annotations

import email
from datetime import UTC, datetime
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chorus.errors import ChorusError
from chorus.messaging import feedback
from tests.api.test_messages import send, wait_status
from tests.api.test_messages import shop as shop  # noqa: F401 - the fixture

URL = "/webhooks/email/feedback"


def arf(original: bytes, feedback_type: str = "abuse", *, headers_only: bool = False,
        agent: str = "Yahoo!-Mail-Feedback/2.0", arrival: str = "Thu, 8 Mar 2026 14:00:00 -0000",
        date: str | None = None) -> bytes:  # fmt: skip
    """An ARF report as a feedback loop sends it (RFC 5965's example), about ``original`` as it arrived."""
    report = MIMEMultipart("report", report_type="feedback-report")
    report["From"] = "<staff@isp.example>"
    report["To"] = "<abuse@shop.example>"
    report["Subject"] = "FW: a complaint"
    if date:
        report["Date"] = date
    report.attach(MIMEText("This is an email abuse report for an email message received from IP 192.0.2.1.\n"))
    fields = MIMEBase("message", "feedback-report")
    body = f"Feedback-Type: {feedback_type}\r\nUser-Agent: {agent}\r\nVersion: 1\r\nArrival-Date: {arrival}\r\n"
    fields.set_payload(body)
    report.attach(fields)
    if headers_only:
        head = original.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode()
        part = MIMEText(head, "rfc822-headers")
        report.attach(part)
    else:
        report.attach(MIMEMessage(email.message_from_bytes(original)))
    return report.as_bytes()


def post(http, raw: bytes, content_type: str = "message/rfc822"):
    return http.post(URL, content=raw, headers={"Content-Type": content_type})


def sent_mail(http, shop, smtp_server, key="fb1", **body) -> tuple[dict, bytes]:  # noqa: F811
    m = send(http, shop, key, **body).json()
    wait_status(http, shop, m["id"], "sent")
    return m, smtp_server.messages[-1]["raw"]


def test_a_complaint_denies_email_and_is_recorded_once(http, server, shop, smtp_server):  # noqa: F811
    m, raw = sent_mail(http, shop, smtp_server)
    written = datetime.now(UTC).replace(microsecond=0)
    r = post(http, arf(raw, date=format_datetime(written)))
    assert r.status_code == 200, r.text
    assert r.json() == {"message_id": m["id"], "feedback_type": "abuse", "complained": True}
    again = post(http, arf(raw, headers_only=True))  # the same complaint, from another loop or resent
    assert again.status_code == 200 and again.json()["complained"] is False
    msg = http.get(f"/api/messages/{m['id']}", headers=shop).json()
    complaints = [h for h in msg["history"] if h["status"] == "complained"]
    assert len(complaints) == 1 and complaints[0]["user_agent"] == "Yahoo!-Mail-Feedback/2.0"
    # dated when the loop wrote the report (its Date), not by Arrival-Date (when the original arrived)
    assert datetime.fromisoformat(complaints[0]["at"]) == max(written, datetime.fromisoformat(msg["sent_at"]))
    assert msg["status"] == "sent"  # its delivery stands; the complaint is engagement
    listed = http.get("/api/messages", params={"status": "complained"}, headers=shop).json()["messages"]
    assert [x["id"] for x in listed] == [m["id"]] and listed[0]["engagement"] == ["complained"]
    server.settle()
    nxt = send(http, shop, "fb2").json()  # no more email to her, whatever the topic
    assert nxt["status"] == "skipped" and "email:* denied" in nxt["reason"] + str(nxt["choice"])
    other = send(http, shop, "fb3", topic="news").json()
    assert other["status"] == "skipped"
    assert len(smtp_server.messages) == 1


@pytest.mark.parametrize("form_field", ["email", "body-mime"])
def test_inbound_mail_services_forms_are_read(http, server, shop, smtp_server, form_field):  # noqa: F811
    m, raw = sent_mail(http, shop, smtp_server)
    r = http.post(URL, data={"to": "abuse@shop.example", form_field: arf(raw).decode()})
    assert r.status_code == 200 and r.json()["complained"] is True, r.text
    r = http.post(URL, data={"to": "abuse@shop.example"})
    assert r.status_code == 400 and r.json()["field"] == "email"


def test_a_report_that_is_not_a_complaint_changes_nothing(http, server, shop, smtp_server):  # noqa: F811
    m, raw = sent_mail(http, shop, smtp_server)
    r = post(http, arf(raw, "not-spam"))
    assert r.status_code == 200 and r.json() == {"message_id": m["id"], "feedback_type": "not-spam",
                                                 "complained": False}  # fmt: skip
    history = http.get(f"/api/messages/{m['id']}", headers=shop).json()["history"]
    assert "complained" not in [h["status"] for h in history]
    assert send(http, shop, "fb2").json()["status"] == "queued"


def test_forged_foreign_transactional_and_malformed_reports_are_refused(http, server, shop, smtp_server):  # noqa: F811
    m, raw = sent_mail(http, shop, smtp_server)
    forged = raw.replace(b"/u/", b"/u/x", 1)
    r = post(http, arf(forged))
    assert r.status_code == 404
    foreign = b"From: a@b.example\r\nTo: c@d.example\r\nSubject: hi\r\nMessage-ID: <1@b.example>\r\n\r\nhello\r\n"
    r = post(http, arf(foreign))
    assert r.status_code == 400 and r.json()["field"] == "List-Unsubscribe"
    receipt, raw_receipt = sent_mail(http, shop, smtp_server, "fb-r", kind="transactional", topic="orders")
    r = post(http, arf(raw_receipt))
    assert r.status_code == 400 and "transactional" in r.json()["message"]
    swapped = raw.replace(f"X-Chorus-Message: {m['id']}".encode(), f"X-Chorus-Message: {receipt['id']}".encode())
    r = post(http, arf(swapped))
    assert r.status_code == 400 and r.json()["field"] == "X-Chorus-Message"
    for body, field in ((b"just text", "body"), (arf(raw, "complaint"), "Feedback-Type"),
                        (arf(raw).replace(b"Feedback-Type: abuse\r\n", b""), "Feedback-Type")):  # fmt: skip
        r = post(http, body)
        assert r.status_code == 400 and r.json()["field"] == field, (field, r.text)
    r = post(http, arf(raw), content_type="application/json")
    assert r.status_code == 400 and r.json()["field"] == "Content-Type"
    history = [h["status"] for h in http.get(f"/api/messages/{m['id']}", headers=shop).json()["history"]]
    assert "complained" not in history
    assert send(http, shop, "fb2").json()["status"] == "queued"


# -- hostile reports over HTTP (found by review: 500s and a library's messages) ------------------------------------
def _with_8bit_date(report: bytes) -> bytes:
    head, body = report.split(b"\n\n", 1)
    return head + b"\nDate: Mon, 7 Dec 2026 10:00:00 +0000 \xe9\n\n" + body


def test_8bit_report_date_is_not_a_500(http, server, shop, smtp_server):  # noqa: F811
    m, raw = sent_mail(http, shop, smtp_server)
    r = post(http, _with_8bit_date(arf(raw)))
    assert r.status_code in (200, 400), (r.status_code, r.text)


def test_8bit_x_chorus_message_is_not_a_500(http, server, shop, smtp_server):  # noqa: F811
    m, raw = sent_mail(http, shop, smtp_server)
    report = arf(raw)
    bad = report.replace(b"X-Chorus-Message: ", b"X-Chorus-Message: \xe9", 1)
    assert bad != report
    r = post(http, bad)
    assert r.status_code == 400 and r.json()["field"] == "X-Chorus-Message", (r.status_code, r.text)


def test_form_edge_cases_are_4xx(http, server, shop, smtp_server):  # noqa: F811
    cases = {
        "no boundary": (b"--x\r\n", "multipart/form-data"),
        "many files": (b"".join(b'--b\r\nContent-Disposition: form-data; name="f%d"; filename="a"\r\n\r\nx\r\n' % i
                                for i in range(6)) + b"--b--\r\n", "multipart/form-data; boundary=b"),
        "many fields urlenc": (b"&".join(b"f%d=x" % i for i in range(300)), "application/x-www-form-urlencoded"),
        "bad charset": (b'--b\r\nContent-Disposition: form-data; name="email"\r\n\r\n\xff\xfe\r\n--b--\r\n',
                        "multipart/form-data; boundary=b; charset=nope"),
        "no disposition": (b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--\r\n", "multipart/form-data; boundary=b"),
        "email as list": (b"email=a&email=b", "application/x-www-form-urlencoded"),
    }
    bad = {}
    for name, (body, ctype) in cases.items():
        r = http.post(URL, content=body, headers={"Content-Type": ctype})
        if not (400 <= r.status_code < 500) or not r.json().get("field"):
            bad[name] = (r.status_code, r.text[:200])
    assert not bad, bad


# -- the parser alone, on hostile input -------------------------------------------------------------------------------
line = st.text(st.characters(min_codepoint=1, max_codepoint=0x2FF, exclude_characters="\r\n"), max_size=60)
field = st.sampled_from(["Feedback-Type", "User-Agent", "Version", "Arrival-Date", "List-Unsubscribe",
                         "X-Chorus-Message", "Content-Type", "Message-ID"])  # fmt: skip
headers = st.lists(st.tuples(field, st.one_of(line, st.sampled_from(
    ["abuse", "not-spam", "<https://h/u/a.b>", "<x>", "Mon, 99 Foo 2026", "message/feedback-report"]))),
    max_size=5).map(lambda hs: "".join(f"{k}: {v}\r\n" for k, v in hs))  # fmt: skip
kinds = st.sampled_from(["text/plain", "message/feedback-report", "text/rfc822-headers", "message/rfc822",
                         "multipart/report; report-type=feedback-report; boundary=in"])  # fmt: skip


def _report(parts: list[tuple[str, str, str]]) -> bytes:
    out = "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=b\r\n\r\n"
    for kind, head, body in parts:
        out += f"--b\r\nContent-Type: {kind}\r\n\r\n{head}\r\n{body}\r\n"
    return (out + "--b--\r\n").encode("utf-8")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=400), st.lists(st.tuples(kinds, headers, line), max_size=4).map(_report)))
def test_the_parser_answers_any_input_with_a_report_or_an_error_naming_a_part(raw):
    try:
        rep = feedback.parse(raw)
    except ChorusError as exc:
        assert exc.field in ("body", "Feedback-Type", "message/feedback-report", "message/rfc822", "List-Unsubscribe")
    else:
        assert rep.feedback_type in feedback.KNOWN_TYPES and rep.token


def test_a_receipt_whose_body_prints_its_unsubscribe_link_is_still_not_complained_about(http, server, shop,
                                                                                          smtp_server):  # noqa: F811
    """The link in a transactional message's body carries the same signed token as a marketing message's header: a
    report quoting it is refused all the same (review)."""
    import re

    receipt, raw = sent_mail(http, shop, smtp_server, "fb-r2", kind="transactional", topic="orders")
    body = smtp_server.messages[-1]["msg"].get_body(("html",)).get_content()
    url = re.search(r'href="(http[^"]+/u/[^"]+)"', body).group(1)
    forged = f"Message-ID: <x@shop.example>\r\nList-Unsubscribe: <{url}>\r\nSubject: receipt\r\n\r\nhi\r\n".encode()
    r = post(http, arf(forged))
    assert r.status_code == 400 and "transactional" in r.json()["message"], r.text
    history = http.get(f"/api/messages/{receipt['id']}", headers=shop).json()["history"]
    assert "complained" not in [h["status"] for h in history]
