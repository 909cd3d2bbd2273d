"""The file sink (``"type": "file"``): email kept as the .eml the SMTP provider would have sent (same builder, same
headers, same DKIM signature), other channels as JSON; settings checked like every provider's; and ``--dev``'s
sinks standing in only for channels without a provider."""

from __future__ import annotations

import base64
import email
import email.policy
import json
import logging
from datetime import UTC, datetime

import pytest

from chorus import workspaces
from chorus.collect import ingest
from chorus.collect.messages import normalise
from chorus.identity.resolver import Resolver
from chorus.messaging import outbox
from chorus.messaging.delivery import Deliverer, ProviderSet, warn_sinks
from chorus.messaging.links import Links
from chorus.messaging.providers import ConfigError, Outgoing, build
from chorus.messaging.providers.sink import DEV_FROM, check_dir, dev_confs, file_name
from chorus.worker import Worker

T0 = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
LINKS = Links("http://chorus.test", b"k" * 32)
UNSUBSCRIBE = {"List-Unsubscribe": "<https://c.example/u/t>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
FROM = "Shop ✓ <news@shop.example>"


@pytest.fixture
def outbox_dir(tmp_path, monkeypatch):
    root = tmp_path / "outbox"
    monkeypatch.setenv("CHORUS_OUTBOX_DIR", str(root))
    return root


def _email(mid="msg_1", **headers):
    return Outgoing(
        message_id=mid, workspace_id="ws", channel="email", address="ana@example.com", kind="marketing",
        topic="offers", content={"subject": "Your cart, Ana ✓", "html": "<p>Hello <b>Ana</b></p>", "text": "Hello Ana"},
        headers=headers,
    )  # fmt: skip


@pytest.fixture
def dkim_key(monkeypatch):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    monkeypatch.setenv("CHORUS_DKIM_KEY", pem.decode())
    pub = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(pub)
    return lambda name, timeout=5: record if name == b"s1._domainkey.shop.example." else None


def test_an_email_file_is_the_message_smtp_sends(outbox_dir, smtp_server, dkim_key, monkeypatch):
    import dkim

    monkeypatch.setenv("CHORUS_SMTP_PASSWORD", "s3cret")
    mail = {"from": FROM, "reply_to": "care@shop.example",
            "dkim": {"domain": "shop.example", "selector": "s1", "private_key_env": "CHORUS_DKIM_KEY"}}  # fmt: skip
    smtp = build({"type": "smtp", "host": "127.0.0.1", "port": smtp_server.port, "username": "chorus",
                  "password_env": "CHORUS_SMTP_PASSWORD", "ca_file": smtp_server.ca_file, **mail}, "p")  # fmt: skip
    sink = build({"type": "file", "dir": "mail", **mail}, "f", channel="email")
    try:
        smtp.send(_email(**UNSUBSCRIBE))
    finally:
        smtp.close()
    assert sink.send(_email(**UNSUBSCRIBE)) == "file:msg_1"
    assert sink.name == "file" and sink.sink

    path = outbox_dir / "mail" / "msg_1.eml"
    raw = path.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == ["msg_1.eml"]  # no temporary file left behind
    sent = smtp_server.messages[0]["raw"]
    kept, over_smtp = (email.message_from_bytes(r, policy=email.policy.default) for r in (raw, sent))
    for header in ("From", "To", "Reply-To", "Subject", "Message-ID", "List-Unsubscribe", "List-Unsubscribe-Post",
                   "X-Chorus-Message", "MIME-Version"):  # fmt: skip
        assert kept[header] == over_smtp[header], header
    assert kept["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert kept["Subject"] == "Your cart, Ana ✓" and kept["From"] == FROM
    assert kept.get_body(("plain",)).get_content().strip() == "Hello Ana"
    assert kept.get_body(("html",)).get_content() == over_smtp.get_body(("html",)).get_content()
    # the same signature over the same headers, verifiable with the published key
    assert raw.startswith(b"DKIM-Signature:") and sent.startswith(b"DKIM-Signature:")
    assert "list-unsubscribe-post" in kept["DKIM-Signature"].replace(" ", "").lower()
    assert dkim.verify(raw, dnsfunc=dkim_key)
    assert not dkim.verify(raw.replace(b"Hello Ana", b"Hello Bob"), dnsfunc=dkim_key)


def test_other_channels_are_kept_as_json_of_what_would_be_sent(outbox_dir, caplog):
    cases = {
        "sms": ("+31612345679", {"text": "Your code is 1234"}),
        "push": ("fcm-token-1", {"title": "Back in stock", "body": "Red shoes", "data": {"sku": "r1"}}),
        "messenger": ("6234567890", {"text": "Your order shipped"}),
        "whatsapp": ("+31612345679", {"text": "Hi"}),
        "webhook": ("p_1", {"body": {"event": "cart"}}),
    }
    caplog.set_level(logging.INFO, logger="chorus.messaging")
    for channel, (address, content) in cases.items():
        sink = build({"type": "file", "console": True}, f"settings.messaging.providers.{channel}[0]", channel=channel)
        out = Outgoing(f"msg_{channel}", "ws", channel, address, content, "transactional", "transactional",
                       headers={"X-Tag": "t"})  # fmt: skip
        assert sink.send(out) == f"file:msg_{channel}"
        kept = json.loads((outbox_dir / channel / f"msg_{channel}.json").read_text())
        assert kept["sink"] == "file" and kept["channel"] == channel and kept["address"] == address
        assert kept["content"] == content and kept["headers"] == {"X-Tag": "t"}
        assert kept["message_id"] == f"msg_{channel}" and kept["kind"] == "transactional"
    lines = [r.getMessage() for r in caplog.records if r.name == "chorus.messaging"]
    assert len(lines) == len(cases)
    assert lines[0].startswith("[sink] sms msg_sms to +31612345679: 'Your code is 1234' -> ")


def test_a_messenger_sink_takes_the_providers_tag_and_channel_choice_follows_it(outbox_dir):
    """A tagged Messenger provider may send transactional updates outside the 24-hour window; a sink standing in
    for it must let channel choice do the same, or staging would choose other channels than production."""
    from chorus.messaging.outbox import _anytime

    conf = {"type": "file", "tag": "POST_PURCHASE_UPDATE"}
    sink = build(conf, "settings.messaging.providers.messenger[0]", channel="messenger")
    sink.send(Outgoing("msg_m", "ws", "messenger", "6234567890", {"text": "Receipt"}, "transactional",
                       "transactional"))  # fmt: skip
    assert json.loads((outbox_dir / "messenger" / "msg_m.json").read_text())["tag"] == "POST_PURCHASE_UPDATE"
    defn = {"variants": {"messenger": {"text": "Receipt"}}}
    assert _anytime(defn, "transactional", {"providers": {"messenger": [conf]}}) == {"messenger"}
    assert _anytime(defn, "marketing", {"providers": {"messenger": [conf]}}) == set()
    assert _anytime(defn, "transactional", {"providers": {"messenger": [{"type": "file"}]}}) == set()


def test_a_symbolic_link_in_the_outbox_does_not_take_the_writes_out_of_it(outbox_dir, tmp_path):
    """Whoever can write in the outbox plants a link where a channel's directory would be: the sink refuses to
    write through it (a transient failure, retried), and nothing lands where the link points."""
    from chorus.messaging.providers import TransientError

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    outbox_dir.mkdir(parents=True, exist_ok=True)
    (outbox_dir / "sms").symlink_to(elsewhere, target_is_directory=True)
    sink = build({"type": "file"}, "f", channel="sms")
    with pytest.raises(TransientError, match="outside the outbox"):
        sink.send(Outgoing("m1", "ws", "sms", "+31612345679", {"text": "x"}, "transactional", "transactional"))
    assert list(elsewhere.iterdir()) == []


def test_a_provider_that_cannot_be_built_on_this_host_does_not_stop_a_worker(engine, caplog, tmp_path):
    """A CA file that exists on the API's host but not on the worker's: the start-up warnings skip that provider
    (its messages say why when they are sent) instead of failing the worker's start for every workspace."""
    from chorus.store.tables import workspaces as workspaces_table

    w = workspaces.create(engine, "ca")["id"]
    settings = {"messaging": {"providers": {"email": [
        {"type": "smtp", "host": "127.0.0.1", "port": 25, "from": "a@example.com",
         "ca_file": str(tmp_path / "missing-ca.pem")}]}}}  # fmt: skip
    with engine.begin() as conn:  # as saved where the file existed (the API's host)
        conn.execute(workspaces_table.update().where(workspaces_table.c.id == w).values(settings=settings))
    assert warn_sinks(engine) == []


def test_console_off_logs_nothing(outbox_dir, caplog):
    caplog.set_level(logging.INFO, logger="chorus.messaging")
    sink = build({"type": "file", "dir": "texts"}, "f", channel="sms")
    sink.send(Outgoing("m1", "ws", "sms", "+31612345679", {"text": "x"}, "transactional", "transactional"))
    assert (outbox_dir / "texts" / "m1.json").exists()
    assert not [r for r in caplog.records if r.name == "chorus.messaging"]


def test_no_field_makes_a_path(outbox_dir):
    assert file_name("msg_01HX") == "msg_01HX"
    for hostile in ("../../etc/passwd", "/abs", "a/b", ".hidden", "", "x" * 300, "a\x00b", "..", "C:\\x"):
        name = file_name(hostile)
        assert "/" not in name and "\\" not in name and not name.startswith(".") and len(name) < 210, hostile
    sink = build({"type": "file"}, "f", channel="sms")
    sink.send(Outgoing("../../escape", "ws", "sms", "+31612345679", {"text": "x"}, "transactional", "transactional"))
    written = [p for p in outbox_dir.rglob("*") if p.is_file()]
    assert len(written) == 1 and written[0].parent == outbox_dir / "sms"
    assert check_dir("a/b.c/d-e_f", "f") == "a/b.c/d-e_f"


@pytest.mark.parametrize(
    "conf, channel, says",
    [
        ({"type": "file", "dir": "../up"}, "sms", "f.dir '../up' must be a relative directory"),
        ({"type": "file", "dir": "a/../../b"}, "sms", "f.dir"),
        ({"type": "file", "dir": "/etc"}, "sms", "f.dir '/etc'"),
        ({"type": "file", "dir": 7}, "sms", "f.dir must be a directory name"),
        ({"type": "file", "dir": "a b"}, "sms", "f.dir"),
        ({"type": "file", "console": "yes"}, "sms", "f.console must be true or false"),
        ({"type": "file", "host": "x"}, "sms", "f.host is not a file sink setting"),
        ({"type": "file", "from": "a@b.example"}, "sms", "f.from is not a file sink setting"),  # email only
        ({"type": "file"}, "email", "f.from is required"),
        ({"type": "file", "from": "nobody"}, "email", "f.from 'nobody' has no address"),
        ({"type": "file", "from": "a@b.example", "dkim": {"domain": "b.example"}}, "email", "f.dkim needs"),
        ({"type": "file"}, "in_app", "the in-app inbox is built in"),
        ({"type": "file", "tag": "PROMOTION"}, "messenger", "f.tag must be one of"),
        ({"type": "file", "tag": "ACCOUNT_UPDATE"}, "sms", "f.tag is not a file sink setting"),  # Messenger only
        ({"type": "file"}, None, "configured under a channel"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(conf, channel, says, outbox_dir):
    with pytest.raises(ConfigError) as exc:
        build(conf, "f", resolve_secrets=False, channel=channel)
    assert says in str(exc.value)


def bearer(ws):
    return {"Authorization": f"Bearer {ws['api_key']}"}


@pytest.mark.parametrize(
    "providers, field",
    [
        ({"sms": [{"type": "file", "dir": "../../etc"}]}, "settings.messaging.providers.sms[0].dir"),
        ({"sms": [{"type": "file", "dir": "/tmp"}]}, "settings.messaging.providers.sms[0].dir"),
        ({"push": [{"type": "file", "dir": ["x"]}]}, "settings.messaging.providers.push[0].dir"),
        (
            {"email": [{"type": "file", "from": "a@b.example", "path": "/x"}]},
            "settings.messaging.providers.email[0].path is not a file sink setting",
        ),
        ({"email": [{"type": "file", "from": 5}]}, "settings.messaging.providers.email[0].from"),
        ({"sms": [{"type": "file", "console": 1}]}, "settings.messaging.providers.sms[0].console"),
        ({"in_app": [{"type": "file"}]}, "settings.messaging.providers.in_app[0]"),
        (
            {"email": [{"type": "smtp", "host": "h", "from": "a@b.example"}, {"type": "file", "from": "a@b.example"}]},
            "settings.messaging.providers.email[1] is a sink (file): it must be the channel's only provider",
        ),
    ],
)
def test_hostile_sink_settings_get_a_400_naming_the_field(http, workspace, providers, field):
    r = http.patch("/api/workspace/settings", json={"messaging": {"providers": providers}}, headers=bearer(workspace))
    assert r.status_code == 400, r.text
    assert field in r.json()["message"], r.json()


# -- delivery over the store ----------------------------------------------------------------------------------------
TEMPLATE = {
    "kind": "transactional",
    "variants": {"email": {"subject": "Hi {{ traits.first_name }}", "html": "<p>Hello {{ traits.first_name }}</p>"},
                 "sms": {"text": "Hi {{ traits.first_name }}, your code is 1234"}},
}  # fmt: skip


@pytest.fixture
def ws(engine):
    w = workspaces.create(engine, "sinks")
    with engine.begin() as conn:
        src = workspaces.source_by_write_key(conn, w["server_write_key"])
        msg = {"type": "identify", "userId": "u1",
               "traits": {"email": "ana@example.com", "phone": "+31612345679", "first_name": "Ana"}}  # fmt: skip
        ingest.store(conn, src, [normalise(msg, received_at=T0, source_kind="server")], [], T0)
    Resolver(engine).drain()
    outbox.save_template(engine, w["id"], "hi", TEMPLATE)
    return w


def _send(engine, w, key, channel, deliverer):
    with engine.connect() as conn:
        current = workspaces.get(conn, w["id"])
    body = outbox.parse_request({"to": {"user_id": "u1"}, "template": "hi", "channel": channel})
    mid = outbox.enqueue(engine, current, body, key, LINKS)[0]["id"]
    deliverer.drain()
    with engine.connect() as conn:
        return outbox.get_message(conn, w["id"], mid)


def test_a_configured_sink_sends_and_says_it_is_a_sink(engine, ws, outbox_dir, caplog):
    workspaces.update_settings(
        engine,
        ws["id"],
        {
            "messaging": {
                "providers": {
                    "email": [{"type": "file", "from": "Shop <news@shop.example>"}],
                    "sms": [{"type": "file", "dir": "texts"}],
                }
            }
        },
    )
    caplog.set_level(logging.WARNING, logger="chorus.messaging")
    said = warn_sinks(engine)
    assert any("settings.messaging.providers.email[0] is a sink: email messages are written to" in s for s in said)
    assert any(f"{outbox_dir / 'texts'}, not sent" in s for s in said)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == said
    d = Deliverer(engine)
    try:
        m = _send(engine, ws, "e-1", "email", d)
        s = _send(engine, ws, "s-1", "sms", d)
    finally:
        d.close()
    assert m["status"] == "sent" and m["provider"] == "file" and m["provider_message_id"] == f"file:{m['id']}", m
    assert [h["status"] for h in m["history"]] == ["queued", "sent"]
    kept = email.message_from_bytes((outbox_dir / "email" / f"{m['id']}.eml").read_bytes(), policy=email.policy.default)
    assert kept["Subject"] == "Hi Ana" and kept["To"] == "ana@example.com"
    assert kept["List-Unsubscribe"] is None  # transactional: no unsubscribe link
    assert s["status"] == "sent" and s["provider"] == "file"
    kept = json.loads((outbox_dir / "texts" / f"{s['id']}.json").read_text())
    assert kept["content"]["text"] == "Hi Ana, your code is 1234" and kept["address"] == "+31612345679"


def test_an_erasure_deletes_what_the_sinks_kept_of_the_person(engine, ws, outbox_dir):
    """A sink's files hold her address and the rendered messages (a staging copy of production keeps real people's):
    her erasure deletes them, in a configured sink's directory and in dev mode's, and nobody else's (found by an
    outside probe: the .eml files outlived her)."""
    from chorus.profiles import privacy

    workspaces.update_settings(engine, ws["id"], {"messaging": {"providers": {"sms": [{"type": "file",
                                                                                      "dir": "texts"}]}}})  # fmt: skip
    with engine.begin() as conn:  # somebody else, whose messages stay
        src = workspaces.source_by_write_key(conn, ws["server_write_key"])
        msg = {"type": "identify", "userId": "u2",
               "traits": {"email": "bo@example.com", "phone": "+31612345670", "first_name": "Bo"}}  # fmt: skip
        ingest.store(conn, src, [normalise(msg, received_at=T0, source_kind="server")], [], T0)
    Resolver(engine).drain()
    dev = Deliverer(engine, providers=ProviderSet(dev_confs()))
    try:
        hers = [_send(engine, ws, "h-1", "sms", dev), _send(engine, ws, "h-2", "email", dev)]
        with engine.connect() as conn:
            current = workspaces.get(conn, ws["id"])
        body = outbox.parse_request({"to": {"user_id": "u2"}, "template": "hi", "channel": "email"})
        other = outbox.enqueue(engine, current, body, "o-1", LINKS)[0]["id"]
        dev.drain()
    finally:
        dev.close()
    files = [outbox_dir / "texts" / f"{hers[0]['id']}.json", outbox_dir / "email" / f"{hers[1]['id']}.eml"]
    theirs = outbox_dir / "email" / f"{other}.eml"
    assert all(f.exists() for f in [*files, theirs])
    out = privacy.forget(engine, ws["id"], hers[0]["profile_id"], vacuum="plain")
    assert out["deleted"]["sink_files"] == 2
    assert not any(f.exists() for f in files) and theirs.exists()


def test_a_file_a_sink_writes_while_the_person_is_erased_goes_too(engine, ws, outbox_dir, monkeypatch):
    """Delivery claims the message, then the sink writes its file outside any transaction: an erasure in between
    finds no file to delete, so delivery deletes it when it finds the message gone (review)."""
    from chorus.messaging.providers import sink as sink_mod
    from chorus.profiles import privacy

    with engine.connect() as conn:
        current = workspaces.get(conn, ws["id"])
    body = outbox.parse_request({"to": {"user_id": "u1"}, "template": "hi", "channel": "email"})
    msg = outbox.enqueue(engine, current, body, "race-1", LINKS)[0]
    real = sink_mod.FileSink.send
    erased = {}

    def send(self, out):  # her erasure commits after the claim, before the file exists
        erased.update(privacy.forget(engine, ws["id"], msg["profile_id"], vacuum="plain"))
        return real(self, out)

    monkeypatch.setattr(sink_mod.FileSink, "send", send)
    dev = Deliverer(engine, providers=ProviderSet(dev_confs()))
    try:
        dev.drain()
    finally:
        dev.close()
    assert erased["deleted"]["messages"] == 1
    assert [p for p in outbox_dir.rglob("*") if p.is_file()] == []


def test_dev_sinks_stand_in_only_for_channels_without_a_provider(engine, ws, outbox_dir, smtp_server, monkeypatch):
    plain = Deliverer(engine)  # no --dev: a channel without a provider is skipped at once, with the reason
    try:
        m = _send(engine, ws, "plain-1", "sms", plain)
    finally:
        plain.close()
    assert m["status"] == "skipped" and m["reason"].startswith("no_provider: no provider is configured for sms"), m
    assert not outbox_dir.exists()

    monkeypatch.setenv("CHORUS_SMTP_PASSWORD", "s3cret")
    smtp = {
        "type": "smtp",
        "host": "127.0.0.1",
        "port": smtp_server.port,
        "username": "chorus",
        "password_env": "CHORUS_SMTP_PASSWORD",
        "from": "Shop <news@shop.example>",
        "ca_file": smtp_server.ca_file,
    }
    workspaces.update_settings(engine, ws["id"], {"messaging": {"providers": {"email": [smtp]}}})  # fmt: skip
    dev = Deliverer(engine, providers=ProviderSet(dev_confs()))
    try:
        s = _send(engine, ws, "dev-1", "sms", dev)
        e = _send(engine, ws, "dev-2", "email", dev)
    finally:
        dev.close()
    assert s["status"] == "sent" and s["provider"] == "file", s
    assert json.loads((outbox_dir / "sms" / f"{s['id']}.json").read_text())["content"]["text"].startswith("Hi Ana")
    # the workspace's own email provider is used, not the sink
    assert e["status"] == "sent" and e["provider"] == "smtp" and len(smtp_server.messages) == 1, e
    assert not (outbox_dir / "email").exists()


def test_dev_email_comes_from_a_reserved_domain(outbox_dir):
    sink = build(dev_confs()["email"], "dev", channel="email")
    sink.send(_email(mid="d1"))
    kept = email.message_from_bytes((outbox_dir / "email" / "d1.eml").read_bytes(), policy=email.policy.default)
    assert kept["From"] == DEV_FROM and kept["Message-ID"] == "<d1@chorus.invalid>"
    assert "in_app" not in dev_confs()


def test_only_a_dev_worker_has_sinks_and_it_says_so(engine, outbox_dir, caplog):
    caplog.set_level(logging.WARNING, logger="chorus.messaging")
    assert Worker(engine).task("deliver").providers.fallback == {}
    assert not [r for r in caplog.records if "dev mode" in r.getMessage()]
    dev = Worker(engine, dev=True)
    assert set(dev.task("deliver").providers.fallback) == {"email", "sms", "push", "whatsapp", "messenger", "webhook"}
    warned = [r.getMessage() for r in caplog.records if "dev mode" in r.getMessage()]
    assert len(warned) == 1 and f"written to files under {outbox_dir}, not sent" in warned[0]
