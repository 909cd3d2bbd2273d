"""The SMTP provider against a real SMTP server (aiosmtpd) with STARTTLS and AUTH."""

from __future__ import annotations

import pytest

from chorus.messaging.providers import ConfigError, Outgoing, PermanentError, TransientError, build
from tests.conftest import free_port


def _conf(smtp, **over):
    conf = {
        "type": "smtp", "name": "primary", "host": "127.0.0.1", "port": smtp.port, "security": "starttls",
        "username": "chorus", "password_env": "CHORUS_SMTP_PASSWORD", "from": "Shop <news@shop.example>",
        "ca_file": smtp.ca_file,
    }  # fmt: skip
    conf.update(over)
    return conf


def _out(address="ana@example.com", mid="msg_1", **headers):
    return Outgoing(
        message_id=mid, workspace_id="ws", channel="email", address=address, kind="marketing", topic="offers",
        content={"subject": "Your cart, Ana ✓", "html": "<p>Hello <b>Ana</b></p>", "text": "Hello Ana"},
        headers=headers,
    )  # fmt: skip


@pytest.fixture(autouse=True)
def _password(monkeypatch):
    monkeypatch.setenv("CHORUS_SMTP_PASSWORD", "s3cret")


def test_sends_multipart_over_starttls_with_auth_and_reuses_the_connection(smtp_server):
    p = build(_conf(smtp_server), "p")
    try:
        ids = [p.send(_out(mid=f"msg_{i}")) for i in range(3)]
    finally:
        p.close()
    assert ids == [f"<msg_{i}@shop.example>" for i in range(3)]
    assert len(smtp_server.messages) == 3
    assert len(smtp_server.sessions) == 1  # one connection for the three messages
    got = smtp_server.messages[0]
    assert got["auth"] and got["to"] == ["ana@example.com"] and got["from"] == "news@shop.example"
    msg = got["msg"]
    assert msg["Message-ID"] == "<msg_0@shop.example>"
    assert msg["Subject"] == "Your cart, Ana ✓"
    assert msg.get_content_type() == "multipart/alternative"
    assert msg.get_body(("plain",)).get_content().strip() == "Hello Ana"
    assert "<b>Ana</b>" in msg.get_body(("html",)).get_content()


def test_long_lines_and_non_ascii_survive_and_every_line_ends_in_crlf(smtp_server):
    import re

    p = build(_conf(smtp_server), "p")
    html = "<p>" + "Ça coûte 20 € — " * 60 + "</p>\n<p>second=line</p>"
    out = _out(mid="long")
    out.content = {"subject": "Été: 20 € de réduction, Ana", "html": html, "text": "Ligne 1\nLigne 2 " + "x" * 200}
    try:
        p.send(out)
    finally:
        p.close()
    raw = smtp_server.messages[0]["raw"]
    assert not re.search(rb"(?<!\r)\n", raw), "bare LF in the message"
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    msg = smtp_server.messages[0]["msg"]
    assert msg["Subject"] == "Été: 20 € de réduction, Ana"
    assert msg.get_body(("html",)).get_content().replace("\r\n", "\n").rstrip("\n") == html
    assert msg.get_body(("plain",)).get_content().replace("\r\n", "\n").rstrip("\n") == "Ligne 1\nLigne 2 " + "x" * 200


def test_wrong_password_is_a_transient_provider_failure(smtp_server, monkeypatch):
    monkeypatch.setenv("CHORUS_SMTP_PASSWORD", "nope")
    p = build(_conf(smtp_server), "p")
    with pytest.raises(TransientError, match="authentication failed"):
        p.send(_out())
    assert smtp_server.messages == []


def test_unknown_recipient_is_a_hard_bounce_and_4xx_is_transient(smtp_server):
    p = build(_conf(smtp_server), "p")
    try:
        with pytest.raises(PermanentError) as bounce:
            p.send(_out("bounce@example.com"))
        assert bounce.value.bounce and bounce.value.code == "550" and "User unknown" in bounce.value.reason
        with pytest.raises(TransientError, match="451"):
            p.send(_out("later@example.com"))
        assert p.send(_out("ok@example.com", mid="msg_ok"))  # the connection is still usable after refusals
    finally:
        p.close()
    assert [m["to"] for m in smtp_server.messages] == [["ok@example.com"]]


def test_server_down_is_transient():
    p = build({"type": "smtp", "host": "127.0.0.1", "port": free_port(), "from": "a@b.example", "timeout": 3}, "p")
    with pytest.raises(TransientError, match="cannot connect"):
        p.send(_out())


def test_reconnects_when_the_server_dropped_the_reused_connection(smtp_server):
    p = build(_conf(smtp_server), "p")
    try:
        p.send(_out(mid="a"))
        p._idle[0].sock.close()  # what an idle timeout on the server side looks like to the client
        p.send(_out(mid="b"))
    finally:
        p.close()
    assert [m["msg"]["Message-ID"] for m in smtp_server.messages] == ["<a@shop.example>", "<b@shop.example>"]


def test_dkim_signature_verifies_with_the_published_key(smtp_server, monkeypatch):
    import dkim
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    monkeypatch.setenv("CHORUS_DKIM_KEY", pem.decode())
    pub = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    import base64

    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(pub)
    conf = _conf(smtp_server, dkim={"domain": "shop.example", "selector": "s1", "private_key_env": "CHORUS_DKIM_KEY"})
    p = build(conf, "p")
    try:
        p.send(
            _out(
                **{"List-Unsubscribe": "<https://c.example/u/t>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
            )
        )
    finally:
        p.close()
    raw = smtp_server.messages[0]["raw"]
    assert raw.startswith(b"DKIM-Signature:")

    def dns(name, timeout=5):
        return record if name == b"s1._domainkey.shop.example." else None

    assert dkim.verify(raw, dnsfunc=dns)
    tampered = raw.replace(b"Hello Ana", b"Hello Bob")
    assert not dkim.verify(tampered, dnsfunc=dns)


@pytest.mark.parametrize(
    "conf, field",
    [
        ({"type": "smtp", "from": "a@b.example"}, "p.host"),
        ({"type": "smtp", "host": "h"}, "p.from"),
        ({"type": "smtp", "host": "h", "from": "a@b.example", "security": "ssl3"}, "p.security"),
        ({"type": "smtp", "host": "h", "from": "a@b.example", "pasword_env": "CHORUS_X"}, "p.pasword_env"),
        ({"type": "smtp", "host": "h", "from": "a@b.example", "password_env": "CHORUS_UNSET_VAR"}, "p.password_env"),
        ({"type": "carrier-pigeon"}, "p.type"),
    ],
)
def test_bad_configuration_names_the_setting(conf, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        build(conf, "p")


def test_a_connection_lost_after_the_message_went_out_is_ambiguous(smtp_server):
    from chorus.messaging.providers import AmbiguousError

    p = build(_conf(smtp_server), "p")
    try:
        with pytest.raises(AmbiguousError, match="may|lost"):
            p.send(_out("drop@example.com"))
        assert p.send(_out("ok@example.com", mid="after"))  # a fresh connection for the next message
    finally:
        p.close()
    assert smtp_server.messages[0] == {"to": ["drop@example.com"], "dropped": True}
