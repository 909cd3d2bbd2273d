"""Provider hardening found by an outside probe: which environment variables a workspace's settings may name, web
push endpoints that point inward (registered, and resolved when called), and provider settings that were accepted
and broke every send, answered a 500, or answered Python's codec text."""

from __future__ import annotations

import socket
import uuid

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from chorus.messaging import settings as msettings
from chorus.messaging.providers import (
    OWN_VARIABLES,
    ConfigError,
    Outgoing,
    PermanentError,
    build,
    public,
    workspace_prefix,
)
from tests.standins.pushservice import b64u

WHERE = "settings.messaging.providers.email[0]"


def smtp(**over) -> dict:
    conf = {"type": "smtp", "name": "relay", "host": "smtp.example.net", "port": 587, "username": "chorus",
            "password_env": "CHORUS_SMTP_PASSWORD", "from": "Shop <news@shop.example>"}  # fmt: skip
    conf.update(over)
    return conf


def refused(conf: dict) -> str:
    """The 400 message saving these settings answers (messaging.settings.validate is what the API calls)."""
    with pytest.raises(ValueError) as caught:
        msettings.validate({"providers": {"email": [conf]}})
    return str(caught.value)


def bearer(ws: dict) -> dict:
    return {"Authorization": f"Bearer {ws['api_key']}"}


# -- 1. secrets: Chorus' own variables, and one workspace's variables ---------------------------------------------
@pytest.mark.parametrize("name", ["CHORUS_DATABASE_URL", "CHORUS_SECRET_KEY", "CHORUS_PUBLIC_URL"])
def test_a_provider_cannot_name_chorus_own_configuration(name, monkeypatch):
    monkeypatch.setenv(name, "postgresql://chorus:hunter2@db/chorus")
    assert refused(smtp(password_env=name)) == (
        f"{WHERE}.password_env names ${name}, one of Chorus' own settings: a provider may not read it"
    )
    with pytest.raises(ConfigError, match=r"password_env names \$" + name):  # nor when the worker builds it
        build(smtp(password_env=name), WHERE, workspace="shop")
    dkim = {"domain": "shop.example", "selector": "s1", "private_key_env": "CHORUS_SECRET_KEY"}
    assert refused(smtp(dkim=dkim)).startswith(f"{WHERE}.dkim.private_key_env names $CHORUS_SECRET_KEY")


@pytest.mark.parametrize("name", ["DATABASE_URL", "PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "HOME", "CHORUS_"])
def test_a_provider_names_only_chorus_variables(name, monkeypatch):
    monkeypatch.setenv(name, "s3cret")
    assert refused(smtp(password_env=name)) == (
        f"{WHERE}.password_env must name a variable whose name starts with CHORUS_, e.g. CHORUS_SMTP_PASSWORD (a "
        "provider may read no other)"
    )
    with pytest.raises(ConfigError, match="must name a variable whose name starts with CHORUS_"):
        build(smtp(password_env=name), WHERE, workspace="shop")


def test_every_variable_chorus_reads_for_itself_is_listed():
    """OWN_VARIABLES holds every CHORUS_ variable src/chorus reads (a line that names os.environ or a *_ENV
    constant): one read for itself that a provider could name would leak."""
    import re
    from pathlib import Path

    import chorus

    read = set()
    for path in Path(chorus.__file__).parent.rglob("*.py"):
        for line in path.read_text().splitlines():
            if "environ" in line or re.search(r"_ENV = ", line) or path.name == "config.py":
                read |= set(re.findall(r"\"(CHORUS_[A-Z0-9_]+)\"", line))
    read.discard("CHORUS_DEMO_TWILIO_TOKEN")  # the demo's Twilio secret: named by the demo workspace's settings
    assert {"CHORUS_DATABASE_URL", "CHORUS_SECRET_KEY", "CHORUS_GC"} <= read
    assert read <= OWN_VARIABLES, sorted(read - OWN_VARIABLES)


def test_a_workspace_reads_only_its_own_workspace_variables(monkeypatch):
    monkeypatch.setenv("CHORUS_WS_SHOP__SMTP_PASSWORD", "shop-secret")
    monkeypatch.setenv("CHORUS_WS_SHOP_B__SMTP_PASSWORD", "shop-b-secret")
    monkeypatch.setenv("CHORUS_SMTP_PASSWORD", "shared")
    assert workspace_prefix("Shop") == "CHORUS_WS_SHOP__"
    assert workspace_prefix("shop b!") == "CHORUS_WS_SHOP_B__" == workspace_prefix("Shop-B")
    assert build(smtp(password_env="CHORUS_WS_SHOP__SMTP_PASSWORD"), WHERE, workspace="shop").password == "shop-secret"
    assert build(smtp(password_env="CHORUS_WS_SHOP_B__SMTP_PASSWORD"), WHERE, workspace="shop b").password == (
        "shop-b-secret"
    )
    assert build(smtp(), WHERE, workspace="anyone").password == "shared"  # a variable the operator shares
    # "shop" may not read "shop b"'s variable, although that starts with CHORUS_WS_SHOP_
    with pytest.raises(ConfigError) as caught:
        build(smtp(password_env="CHORUS_WS_SHOP_B__SMTP_PASSWORD"), WHERE, workspace="shop")
    assert str(caught.value) == (
        f"{WHERE}.password_env names $CHORUS_WS_SHOP_B__SMTP_PASSWORD, another workspace's variable: this "
        "workspace's own variables start with CHORUS_WS_SHOP__"
    )
    with pytest.raises(ConfigError, match="another workspace's variable"):  # when settings are saved too
        build(smtp(password_env="CHORUS_WS_SHOP__SMTP_PASSWORD"), WHERE, resolve_secrets=False, workspace="other")
    # where the caller cannot say whose settings these are, the value is never read
    with pytest.raises(ConfigError, match="where the workspace is not known"):
        build(smtp(password_env="CHORUS_WS_SHOP__SMTP_PASSWORD"), WHERE)
    with pytest.raises(ConfigError, match=r"CHORUS_WS_<WORKSPACE>__<NAME>"):  # whose would it be?
        build(smtp(password_env="CHORUS_WS_SHOP_SMTP_PASSWORD"), WHERE, resolve_secrets=False, workspace="shop")


def test_saving_settings_that_name_the_secret_key_is_a_400_naming_the_field(http, workspace):
    conf = smtp(password_env="CHORUS_SECRET_KEY")
    r = http.patch("/api/workspace/settings", json={"messaging": {"providers": {"email": [conf]}}},
                   headers=bearer(workspace))  # fmt: skip
    assert r.status_code == 400, r.text
    assert r.json()["field"] == f"{WHERE}.password_env"


# -- 2. web push endpoints: public hosts only ---------------------------------------------------------------------
INWARD = [
    "https://0.0.0.0:18329/x", "https://[::ffff:127.0.0.1]:18329/x", "https://2130706433:18329/x",
    "https://0x7f000001/x", "https://0177.0.0.1/x", "https://127.1/x", "https://10.0.0.1/x", "https://192.168.1.5/x",
    "https://169.254.169.254/latest/meta-data", "https://[fe80::1]/x", "https://[fd00::1]/x", "https://[::]/x",
    "https://[64:ff9b::a00:1]/x", "https://[2002:a00:1::]/x", "https://localhost/x", "https://push.localhost/x",
    "https://127.0.0.1./x", "https://100.64.0.1/x",
]  # fmt: skip


@pytest.mark.parametrize("endpoint", INWARD)
def test_an_inward_push_endpoint_is_refused_in_every_encoding(endpoint, monkeypatch):
    monkeypatch.delenv(public.ALLOW_LOOPBACK_ENV, raising=False)
    assert public.endpoint_problem(endpoint) is not None


def test_public_push_endpoints_are_accepted_and_loopback_only_when_the_operator_allows_it(monkeypatch):
    monkeypatch.delenv(public.ALLOW_LOOPBACK_ENV, raising=False)
    for endpoint in ["https://fcm.googleapis.com/fcm/send/abc", "https://updates.push.services.mozilla.com/wpush/v2/x",
                     "https://8.8.8.8/x", "https://[2606:4700::1111]/x"]:  # fmt: skip
        assert public.endpoint_problem(endpoint) is None, endpoint
    assert public.endpoint_problem("http://fcm.googleapis.com/x") == "must be https"
    monkeypatch.setenv(public.ALLOW_LOOPBACK_ENV, "1")  # a local test push service
    assert public.endpoint_problem("http://127.0.0.1:8080/push/b1") is None
    assert public.endpoint_problem("https://[::1]/x") is None
    assert public.endpoint_problem("https://10.0.0.1/x") is not None  # private is never allowed
    assert public.endpoint_problem("https://169.254.169.254/x") is not None


def test_registering_an_inward_endpoint_is_a_400_naming_the_field(http, workspace):
    keys = {"p256dh": "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM",
            "auth": "tBHItJI5svbpez7KI4CCXg"}  # fmt: skip
    wk = (workspace["write_key"], "")
    for endpoint in ["https://2130706433:18329/x", "https://[::ffff:127.0.0.1]/x", "https://169.254.169.254/x",
                     "https://[::1"]:  # fmt: skip
        body = {"anonymousId": "anon-1", "subscription": {"endpoint": endpoint, "keys": keys}}
        r = http.post("/v1/push/subscriptions", auth=wk, json=body)
        assert r.status_code == 400 and r.json()["field"] == "subscription.endpoint", (endpoint, r.text)


@pytest.fixture
def vapid_env(monkeypatch):
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    monkeypatch.setenv("CHORUS_TEST_VAPID_KEY", pem.decode())


@pytest.fixture
def listener():
    """A TCP listener on 127.0.0.1 standing for an internal service; says whether anything connected."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.3)

    def connected() -> bool:
        try:
            sock.accept()[0].close()
            return True
        except TimeoutError:
            return False

    try:
        yield sock.getsockname()[1], connected
    finally:
        sock.close()


def push_to(endpoint: str) -> Outgoing:
    browser = ec.generate_private_key(ec.SECP256R1()).public_key()
    p256dh = b64u(browser.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))
    return Outgoing(message_id="msg_" + uuid.uuid4().hex, workspace_id="ws", channel="push", address=endpoint,
                    kind="transactional", topic="", content={"title": "t", "body": "b", "subscription": {
                        "keys": {"p256dh": p256dh, "auth": b64u(b"0123456789abcdef")}}})  # fmt: skip


def resolving(monkeypatch, name: str, *addresses: str) -> None:
    """``name`` resolves to ``addresses`` (a DNS name pointing inward); every other lookup is the real one."""
    real = socket.getaddrinfo

    def fake(host, port, *args, **kwargs):
        if host == name:
            return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                    for a in addresses]  # fmt: skip
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)


def test_a_push_endpoint_resolving_inward_is_never_connected_to(vapid_env, listener, monkeypatch):
    """Registered as a DNS name (accepted: it looks public), resolved by the worker to 127.0.0.1: a permanent
    failure in Chorus' words, and the internal service sees no connection."""
    monkeypatch.delenv(public.ALLOW_LOOPBACK_ENV, raising=False)
    port, connected = listener
    resolving(monkeypatch, "push.inward.example", "127.0.0.1")
    endpoint = f"https://push.inward.example:{port}/x"
    assert public.endpoint_problem(endpoint) is None
    conf = {"type": "webpush", "vapid_private_key_env": "CHORUS_TEST_VAPID_KEY", "subject": "mailto:ops@shop.example"}
    provider = build(conf, "settings.messaging.providers.push[0]", workspace="shop")
    try:
        with pytest.raises(PermanentError) as caught:
            provider.send(push_to(endpoint))
        assert caught.value.code == "private_address"
        assert caught.value.reason == (
            "the push endpoint's host push.inward.example resolves to 127.0.0.1, which is not a public address: "
            "not called"
        )
        assert not connected()
        # one inward address among public ones is enough to refuse the name
        resolving(monkeypatch, "push.mixed.example", "8.8.8.8", "10.1.2.3")
        with pytest.raises(PermanentError, match="resolves to 10.1.2.3"):
            provider.send(push_to(f"https://push.mixed.example:{port}/x"))
        # an endpoint stored before the registration check is refused when called, too
        with pytest.raises(PermanentError, match="private_address|not a public address"):
            provider.send(push_to(f"https://2130706433:{port}/x"))
        assert not connected()
    finally:
        provider.close()


def test_through_an_https_proxy_the_host_is_checked_before_the_proxy_is_asked(vapid_env, listener, monkeypatch):
    """With HTTPS_PROXY set the proxy makes the connection, not the checked one: the host is checked first."""
    monkeypatch.delenv(public.ALLOW_LOOPBACK_ENV, raising=False)
    port, connected = listener
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    resolving(monkeypatch, "push.inward.example", "10.0.0.7")
    conf = {"type": "webpush", "vapid_private_key_env": "CHORUS_TEST_VAPID_KEY", "subject": "mailto:ops@shop.example"}
    provider = build(conf, "settings.messaging.providers.push[0]", workspace="shop")
    try:
        with pytest.raises(PermanentError, match="resolves to 10.0.0.7, which is not a public address"):
            provider.send(push_to("https://push.inward.example/x"))
    finally:
        provider.close()
    assert not connected()  # the proxy was never asked


def test_with_loopback_allowed_the_worker_connects_to_the_address_it_checked(vapid_env, listener, monkeypatch):
    monkeypatch.setenv(public.ALLOW_LOOPBACK_ENV, "1")
    port, connected = listener
    resolving(monkeypatch, "push.local.example", "127.0.0.1")
    conf = {"type": "webpush", "vapid_private_key_env": "CHORUS_TEST_VAPID_KEY", "subject": "mailto:ops@shop.example",
            "timeout": 1}  # fmt: skip
    provider = build(conf, "settings.messaging.providers.push[0]", workspace="shop")
    try:
        with pytest.raises(Exception):  # noqa: B017 - the listener speaks no TLS: what matters is the connection
            provider.send(push_to(f"https://push.local.example:{port}/x"))
    finally:
        provider.close()
    assert connected()


# -- 3. provider settings: a 400 naming the setting ---------------------------------------------------------------
@pytest.mark.parametrize("ca_file", ["/etc/passwd", "../../nonexistent", "/dev/zero", "/", "", 7])
def test_a_ca_file_that_is_no_ca_bundle_is_a_400_naming_it(ca_file):
    assert refused(smtp(ca_file=ca_file)) == (
        f"{WHERE}.ca_file must be the path of a file of PEM CA certificates, readable by Chorus"
    )


def test_saving_a_ca_file_that_is_no_ca_bundle_is_a_400_not_a_500(http, workspace):
    body = {"messaging": {"providers": {"email": [smtp(ca_file="/etc/passwd")]}}}
    r = http.patch("/api/workspace/settings", json=body, headers=bearer(workspace))
    assert r.status_code == 400, r.text
    assert r.json()["field"] == f"{WHERE}.ca_file"


@pytest.mark.parametrize("rate", [-1, 0, "5", True, float("nan"), float("inf"), 1e9])
def test_rate_per_second_must_be_a_positive_number(rate):
    message = refused(smtp(rate_per_second=rate))
    assert message.startswith(f"{WHERE}.rate_per_second must be a number of sends a second, more than 0"), message
    # every provider type takes it: the same check for twilio
    twilio = {"type": "twilio", "account_sid": "AC1", "auth_token_env": "CHORUS_TWILIO_TOKEN", "from": "+15005550006",
              "rate_per_second": rate}  # fmt: skip
    with pytest.raises(ValueError, match=r"providers.sms\[0\].rate_per_second"):
        msettings.validate({"providers": {"sms": [twilio]}})


def test_a_fractional_or_absent_rate_is_accepted():
    msettings.validate({"providers": {"email": [smtp(rate_per_second=0.5)]}})
    msettings.validate({"providers": {"email": [smtp(rate_per_second=None)]}})


@pytest.mark.parametrize("port", [70000, 0, -25, "25", True, 25.5])
def test_an_smtp_port_must_be_a_port_number(port):
    assert refused(smtp(port=port)) == f"{WHERE}.port must be a whole number from 1 to 65535"


@pytest.mark.parametrize("field", ["from", "reply_to"])
def test_an_idn_domain_is_sent_in_its_ascii_form(field, smtp_server, monkeypatch):
    """``from`` and ``reply_to`` on an internationalised domain work: the domain goes out IDNA-encoded (an outside
    probe got Python's codec text as a 400, with a fragment of it as the field)."""
    monkeypatch.setenv("CHORUS_TEST_SMTP_PASSWORD", "s3cret")
    value = {"from": "Shöp <news@shöp.example>", "reply_to": "Care <care@bücher.example>"}[field]
    conf = smtp(host="127.0.0.1", port=smtp_server.port, ca_file=smtp_server.ca_file,
                password_env="CHORUS_TEST_SMTP_PASSWORD", **{field: value})  # fmt: skip
    msettings.validate({"providers": {"email": [conf]}})
    provider = build(conf, WHERE, workspace="shop")
    try:
        provider.send(Outgoing(message_id="msg_idn", workspace_id="ws", channel="email", address="ana@example.com",
                               kind="transactional", topic="", content={"subject": "Hi", "text": "hello"}))  # fmt: skip
    finally:
        provider.close()
    got = smtp_server.messages[0]
    if field == "from":
        assert got["from"] == "news@xn--shp-tna.example"
        assert got["msg"]["From"].addresses[0].domain == "xn--shp-tna.example"
        assert got["msg"]["From"].addresses[0].display_name == "Shöp"
    else:
        assert got["msg"]["Reply-To"].addresses[0].addr_spec == "care@xn--bcher-kva.example"


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("from", "jürgen@shop.example", "from: the part before @ must be ASCII"),
        ("reply_to", "Care <jürgen@shop.example>", "reply_to: the part before @ must be ASCII"),
        ("reply_to", "a@shop.example, b@shop.example", "reply_to must be one email address"),
        ("from", "news@bad..例え.example", "from: 'bad..例え.example' is not a valid domain name"),
    ],
)
def test_an_address_chorus_cannot_send_from_is_a_400_in_its_words(field, value, words):
    message = refused(smtp(**{field: value}))
    assert message.startswith(f"{WHERE}.{words}"), message
    assert "codec" not in message and "ordinal" not in message
