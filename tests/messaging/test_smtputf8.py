"""Addresses beyond ASCII over SMTP (RFC 6531, 6532), against real SMTP servers (aiosmtpd) that offer SMTPUTF8 or
not: a part before the ``@`` that is not ASCII goes intact with the SMTPUTF8 option, or fails for good, before
anything is sent, on a server without it; an internationalised domain with an ASCII part before the ``@`` goes
IDNA-encoded everywhere. Before, both were a UnicodeEncodeError the worker took for "may have gone out"."""

from __future__ import annotations

import base64
import email
import email.policy
import smtplib
import ssl
from datetime import UTC, datetime, timedelta

import pytest

from chorus import workspaces
from chorus.collect import ingest
from chorus.collect.messages import normalise
from chorus.identity.resolver import Resolver
from chorus.messaging import outbox
from chorus.messaging.delivery import Deliverer
from chorus.messaging.links import Links
from chorus.messaging.providers import Outgoing, PermanentError, build
from tests.conftest import SMTPSink, _ASGIThread, free_port

NON_ASCII = pytest.mark.parametrize("address", ["josé@example.com", "用户@例子.广告"], ids=["latin", "chinese"])
MISSING = "the address needs SMTPUTF8, which the server does not offer"


class RecordingSink(SMTPSink):
    """The test suite's SMTP sink, also keeping every MAIL FROM with its options (what went on the wire)."""

    def __init__(self):
        super().__init__()
        self.mails: list[tuple[str, list[str]]] = []
        self.connections: set = set()  # the client's end of every connection that said EHLO

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.connections.add(session.peer)
        session.host_name = hostname  # what aiosmtpd does itself when the handler has no EHLO hook
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self.mails.append((address, list(mail_options)))
        envelope.mail_from, envelope.mail_options = address, list(mail_options)
        return "250 OK"


def _server(tls_cert, smtputf8: bool):
    from aiosmtpd.controller import Controller

    cert, key = tls_cert
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    sink = RecordingSink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port, tls_context=ctx, require_starttls=True,
                            enable_SMTPUTF8=smtputf8)  # fmt: skip
    controller.start()
    sink.port, sink.ca_file = port, str(cert)
    # what the server says it offers, as a client sees it after STARTTLS: the premise of every test here
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as probe:
        probe.starttls(context=ssl.create_default_context(cafile=str(cert)))
        probe.ehlo()
        assert probe.has_extn("smtputf8") is smtputf8
    sink.mails.clear()
    sink.connections.clear()
    return controller, sink


@pytest.fixture
def utf8_server(tls_cert):
    """An SMTP server that offers SMTPUTF8."""
    controller, sink = _server(tls_cert, True)
    yield sink
    controller.stop()


@pytest.fixture
def ascii_server(tls_cert):
    """An SMTP server that does not offer SMTPUTF8 (as most still do not)."""
    controller, sink = _server(tls_cert, False)
    yield sink
    controller.stop()


def _provider(server, **over):
    conf = {"type": "smtp", "name": "relay", "host": "127.0.0.1", "port": server.port, "security": "starttls",
            "from": "Shop <news@shop.example>", "ca_file": server.ca_file, **over}  # fmt: skip
    return build(conf, "settings.messaging.providers.email[0]")


def _out(address, mid="msg_1"):
    return Outgoing(
        message_id=mid, workspace_id="ws", channel="email", address=address, kind="marketing", topic="offers",
        content={"subject": "Bonjour ✓", "html": "<p>Hello</p>", "text": "Hello"},
    )  # fmt: skip


def _parse(raw: bytes):
    """A message whose headers may be UTF-8 (RFC 6532): the email package reads bytes' headers as ASCII only."""
    return email.message_from_string(raw.decode("utf-8"), policy=email.policy.default)


# -- the provider ----------------------------------------------------------------------------------------------
@NON_ASCII
def test_a_non_ascii_address_goes_out_intact_with_smtputf8_where_the_server_offers_it(utf8_server, address):
    p = _provider(utf8_server)
    try:
        assert p.send(_out(address)) == "<msg_1@shop.example>"
    finally:
        p.close()
    [(sender, options)] = utf8_server.mails
    assert sender == "news@shop.example" and options[0].startswith("SIZE=")
    assert options[1:] == ["SMTPUTF8", "BODY=8BITMIME"]
    got = utf8_server.messages[0]
    assert got["to"] == [address]  # the envelope: the address as it is, domain and all
    assert f"\r\nTo: {address}\r\n".encode() in got["raw"]  # UTF-8 in the header, as RFC 6532 has it
    msg = _parse(got["raw"])
    assert msg["To"].addresses[0].addr_spec == address
    assert msg.get_body(("plain",)).get_content().strip() == "Hello"


@NON_ASCII
def test_without_smtputf8_the_message_fails_for_good_before_anything_is_sent(ascii_server, address):
    p = _provider(ascii_server)
    try:
        with pytest.raises(PermanentError) as failed:
            p.send(_out(address))
        assert failed.value.reason == MISSING and failed.value.code == "smtputf8"
        assert failed.value.bounce is False  # the address may well work elsewhere: consent is not withdrawn
        assert ascii_server.mails == [] and ascii_server.messages == []  # not even MAIL FROM
        p.send(_out("ana@example.com", mid="msg_2"))  # the connection was left clean and is used again
    finally:
        p.close()
    assert [m["to"] for m in ascii_server.messages] == [["ana@example.com"]]
    [(sender, options)] = ascii_server.mails  # the ASCII message's transaction only, without SMTPUTF8
    assert sender == "news@shop.example" and [o for o in options if not o.startswith("SIZE=")] == []
    assert len(ascii_server.connections) == 1


@pytest.mark.parametrize("smtputf8", [False, True], ids=["ascii-server", "utf8-server"])
@pytest.mark.parametrize(("address", "ascii_form"), [
    ("ana@bücher.example", "ana@xn--bcher-kva.example"),
    ("ana@straße.de", "ana@xn--strae-oqa.de"),  # IDNA 2008, as the profile validated it: IDNA 2003 says strasse.de
    ("ana@例子.广告", "ana@xn--fsqu00a.xn--4rr70v"),
], ids=["buecher", "strasse", "chinese"])  # fmt: skip
def test_an_idn_domain_with_an_ascii_local_part_goes_as_punycode_and_needs_no_smtputf8(
        tls_cert, smtputf8, address, ascii_form):  # fmt: skip
    controller, server = _server(tls_cert, smtputf8)
    try:
        p = _provider(server)
        try:
            p.send(_out(address))
        finally:
            p.close()
    finally:
        controller.stop()
    assert all("SMTPUTF8" not in options for _, options in server.mails)  # plain ASCII SMTP, whatever is offered
    got = server.messages[0]
    assert got["to"] == [ascii_form] and got["msg"]["To"].addresses[0].addr_spec == ascii_form
    assert got["raw"].isascii()


def test_a_domain_with_no_ascii_form_fails_for_good_in_words(ascii_server):
    p = _provider(ascii_server)
    try:
        with pytest.raises(PermanentError, match=r"^the address's domain '.*' has no ASCII \(IDNA\) form$") as failed:
            p.send(_out("ana@☃.example"))
    finally:
        p.close()
    assert failed.value.bounce is False and ascii_server.mails == []


def test_a_dkim_signature_over_a_utf8_to_header_verifies(utf8_server, monkeypatch):
    import dkim
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    monkeypatch.setenv("CHORUS_DKIM_KEY", pem.decode())
    pub = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(pub)
    p = _provider(utf8_server, dkim={"domain": "shop.example", "selector": "s1", "private_key_env": "CHORUS_DKIM_KEY"})
    try:
        p.send(_out("josé@example.com"))
    finally:
        p.close()
    raw = utf8_server.messages[0]["raw"]

    def dns(name, timeout=5):
        return record if name == b"s1._domainkey.shop.example." else None

    assert raw.startswith(b"DKIM-Signature:") and dkim.verify(raw, dnsfunc=dns)
    assert not dkim.verify(raw.replace("josé".encode(), "jose\u0301".encode()), dnsfunc=dns)  # To is signed


def test_the_file_sink_keeps_the_message_smtputf8_would_send(tmp_path, monkeypatch):
    monkeypatch.setenv("CHORUS_OUTBOX_DIR", str(tmp_path))
    sink = build({"type": "file", "dir": "mail", "from": "Shop <news@shop.example>"}, "f", channel="email")
    sink.send(_out("josé@example.com", mid="msg_utf8"))
    sink.send(_out("ana@bücher.example", mid="msg_idn"))
    read = {p.stem: _parse(p.read_bytes()) for p in (tmp_path / "mail").iterdir()}
    assert read["msg_utf8"]["To"].addresses[0].addr_spec == "josé@example.com"
    assert read["msg_idn"]["To"].addresses[0].addr_spec == "ana@xn--bcher-kva.example"


def _sendgrid_send(standin, address) -> None:
    """Send to ``address`` through a SendGrid provider on ``standin``."""
    with _ASGIThread(standin.app) as srv:
        conf = {"type": "sendgrid", "api_key_env": "CHORUS_SENDGRID_KEY", "from": "news@shop.example",
                "base_url": srv.base_url}  # fmt: skip
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("CHORUS_SENDGRID_KEY", standin.api_key)
            p = build(conf, "p")
        try:
            p.send(_out(address))
        finally:
            p.close()


def test_sendgrid_refuses_a_non_ascii_address_in_its_words_never_as_may_have_gone_out():
    """SendGrid takes the address in JSON (no encoding to fail on) and its API answers for it: the stand-in, as
    SendGrid's validator, refuses it with a 400 naming the field, which is a permanent failure in those words."""
    from tests.standins.sendgrid import SendGridStandIn

    standin = SendGridStandIn("SG.test-key.0123456789")
    with pytest.raises(PermanentError, match=r"valid address\. \(field personalizations\.0\.to\.0\.email\)"):
        _sendgrid_send(standin, "josé@example.com")
    assert standin.sent == []


def test_sendgrid_sends_an_idn_domain_as_punycode():
    """As over SMTP: an ASCII part before the @ and an internationalised domain go IDNA 2008-encoded (the stand-in,
    as SendGrid's validator, refuses the Unicode domain)."""
    from tests.standins.sendgrid import SendGridStandIn

    standin = SendGridStandIn("SG.test-key.0123456789")
    _sendgrid_send(standin, "ana@straße.de")
    (sent,) = standin.sent
    assert sent["body"]["personalizations"][0]["to"] == [{"email": "ana@xn--strae-oqa.de"}]


# -- the worker: the message's state -----------------------------------------------------------------------------
T0 = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
LINKS = Links("http://chorus.test", b"k" * 32)


def _workspace(engine, server, address, *more):
    """A workspace whose email goes through ``server`` (then ``more``: one backup at most)."""
    w = workspaces.create(engine, "smtputf8")
    with engine.begin() as conn:
        src = workspaces.source_by_write_key(conn, w["server_write_key"])
        msg = {"type": "identify", "userId": "u1", "traits": {"email": address, "first_name": "José"}}
        ingest.store(conn, src, [normalise(msg, received_at=T0, source_kind="server")], [], T0)
    Resolver(engine).drain()
    servers = {"relay": server, **({"backup": more[0]} if more else {})}
    smtp = [{"type": "smtp", "name": name, "host": "127.0.0.1", "port": srv.port, "from": "Shop <news@shop.example>",
             "ca_file": srv.ca_file} for name, srv in servers.items()]  # fmt: skip
    workspaces.update_settings(engine, w["id"], {"messaging": {"providers": {"email": smtp}}})
    outbox.save_template(engine, w["id"], "hi", {"variants": {"email": {"subject": "Hola", "html": "<p>Hola</p>"}}})
    with engine.connect() as conn:
        ws = workspaces.get(conn, w["id"])
    body = outbox.parse_request({"to": {"email": address}, "template": "hi"})
    return w, outbox.enqueue(engine, ws, body, "k1", LINKS, clock=lambda: T0)[0]


def _view(engine, w, mid):
    with engine.connect() as conn:
        return outbox.get_message(conn, w["id"], mid)


def test_the_worker_sends_to_a_non_ascii_address_over_smtputf8(engine, utf8_server):
    w, m = _workspace(engine, utf8_server, "josé@example.com")
    assert m["address"] == "josé@example.com"
    d = Deliverer(engine, clock=lambda: T0)
    try:
        d.run_once()
    finally:
        d.close()
    v = _view(engine, w, m["id"])
    assert v["status"] == "sent", v
    assert utf8_server.messages[0]["to"] == ["josé@example.com"]


def test_the_worker_fails_the_message_at_once_in_words_where_the_server_lacks_smtputf8(engine, ascii_server):
    w, m = _workspace(engine, ascii_server, "josé@example.com")
    clock = [T0]
    d = Deliverer(engine, clock=lambda: clock[0])
    try:
        d.run_once()
        v = _view(engine, w, m["id"])
        assert v["status"] == "failed" and v["reason"] == f"relay: {MISSING}", v
        assert "may have" not in v["reason"]
        assert [h["status"] for h in v["history"]] == ["queued", "failed"]
        clock[0] += timedelta(days=1)
        assert d.run_once() == 0  # never tried again
    finally:
        d.close()
    assert ascii_server.mails == [] and ascii_server.messages == []


def test_a_server_without_smtputf8_passes_the_message_to_the_next_provider(engine, ascii_server, utf8_server):
    """Review: the server lacking SMTPUTF8 failed the message for good, although the channel's next provider could
    take it. The lack is the server's, not the address': the next one is tried; the message fails for good only
    when none can take it, naming each."""
    w, m = _workspace(engine, ascii_server, "josé@example.com", utf8_server)
    d = Deliverer(engine, clock=lambda: T0)
    try:
        d.run_once()
    finally:
        d.close()
    v = _view(engine, w, m["id"])
    assert (v["status"], v["provider"]) == ("sent", "backup"), v
    assert ascii_server.mails == [] and utf8_server.messages[0]["to"] == ["josé@example.com"]


def test_when_no_provider_takes_the_address_it_fails_for_good_naming_each(engine, tls_cert, ascii_server):
    other, sink = _server(tls_cert, False)
    try:
        w, m = _workspace(engine, ascii_server, "josé@example.com", sink)
        clock = [T0]
        d = Deliverer(engine, clock=lambda: clock[0])
        try:
            d.run_once()
            v = _view(engine, w, m["id"])
            assert v["status"] == "failed" and v["reason"] == f"backup: {MISSING} (and relay: {MISSING})", v
            clock[0] += timedelta(days=1)
            assert d.run_once() == 0  # never tried again
        finally:
            d.close()
    finally:
        other.stop()
