"""Messaging and audience settings refused in Chorus' own words: a bad key or value names the settings field and
says what it must be; the ``cryptography`` and ``py_vapid`` libraries' text ("Could not deserialize key data",
"ASN.1 parsing error", "Incorrect padding") and Python's ("invalid literal for int()", "unhashable type") never
reach ``PATCH /api/workspace/settings``, and a value of the wrong type is a 400, not a 500."""

from __future__ import annotations

import pytest

from chorus.messaging.providers import ConfigError, build
from chorus.messaging.providers.sendgrid import SendGridProvider, load_public_key
from chorus.messaging.providers.webpush import WebPushProvider, load_vapid
from chorus.workspaces import validate_settings

LIBRARY_WORDS = ("deserialize", "ASN.1", "padding", "base64 data is allowed", "ASCII characters", "cryptography.io",
                 "PEM file", "InvalidData", "invalid literal", "int()", "float()", "unhashable", "has no attribute",
                 "NoneType", "['")  # fmt: skip

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
SENDGRID = {"type": "sendgrid", "api_key_env": "CHORUS_SG_KEY", "from": "Shop <news@shop.example>"}
WEBPUSH = {"type": "webpush", "vapid_private_key_env": "CHORUS_VAPID_KEY", "subject": "mailto:ops@shop.example"}
NOT_A_KEY = ("MFkwEwYHKoZIzj0CAQY=", "not base64!", "é", "-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----")


def refused(patch: dict) -> str:
    with pytest.raises(ValueError) as info:
        validate_settings(patch)
    text = str(info.value)
    assert not any(w in text for w in LIBRARY_WORDS), text
    return text


@pytest.mark.parametrize("key", NOT_A_KEY)
def test_sendgrid_webhook_key_names_the_field_not_the_library(key):
    patch = {"messaging": {"providers": {"email": [{**SENDGRID, "webhook_public_key": key}]}}}
    assert refused(patch) == (
        "settings.messaging.providers.email[0].webhook_public_key is not a PEM or base64 DER public key"
    )
    with pytest.raises(ValueError, match="^not a PEM or base64 DER public key$"):
        load_public_key(key)


@pytest.mark.parametrize("key", ("nope", "AAAA", "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----"))
def test_vapid_key_names_the_variable_and_the_field_not_the_library(key, monkeypatch):
    monkeypatch.setenv("CHORUS_VAPID_KEY", key)
    with pytest.raises(ConfigError) as info:
        WebPushProvider(WEBPUSH, "settings.messaging.providers.push[0]")
    assert str(info.value) == (
        "the key in $CHORUS_VAPID_KEY (settings.messaging.providers.push[0].vapid_private_key_env) is not a P-256 "
        "private key (PEM, or base64url DER or raw 32 bytes)"
    )
    with pytest.raises(ConfigError) as info:  # GET /v1/push/vapid-key's call
        load_vapid(key)
    assert not any(w in str(info.value) for w in LIBRARY_WORDS), info.value


def test_sendgrid_provider_with_a_bad_key_at_delivery(monkeypatch):
    monkeypatch.setenv("CHORUS_SG_KEY", "SG.x")
    with pytest.raises(ConfigError) as info:
        SendGridProvider({**SENDGRID, "webhook_public_key": "AAAA"}, "settings.messaging.providers.email[1]")
    assert str(info.value) == "settings.messaging.providers.email[1].webhook_public_key is not a PEM or base64 DER " \
                              "public key"  # fmt: skip


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"messaging": {"providers": {"push": [{**WEBPUSH, "ttl": "abc"}]}}},
         "settings.messaging.providers.push[0].ttl must be a whole number of seconds from 0 to 2419200 (4 weeks)"),
        ({"messaging": {"providers": {"push": [{**WEBPUSH, "ttl": None}]}}},  # was a 500 (TypeError)
         "settings.messaging.providers.push[0].ttl must be a whole number of seconds from 0 to 2419200 (4 weeks)"),
        ({"messaging": {"providers": {"push": [{**WEBPUSH, "timeout": {}}]}}},
         "settings.messaging.providers.push[0].timeout must be a number of seconds, more than 0 and at most 300"),
        ({"messaging": {"providers": {"email": [{"type": ["sendgrid"]}]}}},  # was a 500 (unhashable)
         "settings.messaging.providers.email[0].type must be a provider type (smtp, sendgrid, twilio, fcm, webpush, "
         "whatsapp, messenger, webhook, file)"),
        ({"messaging": {"topics": ["offers"]}},  # was a 500 (AttributeError)
         'settings.messaging.topics must be an object {topic: {"mode": "opt_in" | "opt_out"}}'),
        ({"messaging": {"caps": ["total"]}},
         "settings.messaging.caps must be an object {channel or 'total': {'day': n, 'week': n}}"),
        ({"messaging": {"timezone": ["Europe/Paris"]}},
         "settings.messaging.timezone must be the name of an IANA time zone, such as Europe/Paris"),
        ({"audiences": {"providers": [{"type": ["meta"]}]}},  # was a 500 (unhashable)
         "settings.audiences.providers[0].type is not an audience provider type (meta, google)"),
        ({"audiences": {"providers": [{"type": "tiktok"}]}},
         "settings.audiences.providers[0].type 'tiktok' is not an audience provider type (meta, google)"),
    ],
)  # fmt: skip
def test_settings_of_the_wrong_type_are_named(patch, message):
    assert refused(patch) == message


PROVIDERS = {"email": [SENDGRID], "push": [WEBPUSH]}


@pytest.mark.parametrize("ttl", [1e300, 2419201, -1, 10**400, float("inf"), "nan", "1e300", True, [], {}])
def test_web_push_ttl_is_bounded_to_the_protocol_four_weeks(ttl):
    """A TTL past 4 weeks (RFC 8030; 1e300 was stored, and an int() of it sent in a header) is named, not kept."""
    assert refused({"messaging": {"providers": {"push": [{**WEBPUSH, "ttl": ttl}]}}}) == (
        "settings.messaging.providers.push[0].ttl must be a whole number of seconds from 0 to 2419200 (4 weeks)"
    )


@pytest.mark.parametrize("timeout", ["nan", float("nan"), "inf", 1e300, 0, -5, 300.5, "0", True, None, [], {}])
@pytest.mark.parametrize("channel", ["email", "push"])
def test_provider_timeouts_are_finite_and_bounded(channel, timeout):
    """``timeout`` "nan" was stored (float("nan")), then every call to the provider failed at once; 1e300 would
    hold a worker's thread for ever. Finite seconds, more than 0 and at most 300."""
    patch = {"messaging": {"providers": {channel: [{**PROVIDERS[channel][0], "timeout": timeout}]}}}
    assert refused(patch) == (
        f"settings.messaging.providers.{channel}[0].timeout must be a number of seconds, more than 0 and at most 300"
    )


def test_ttl_and_timeout_bounds_are_inclusive():
    ok = [{**WEBPUSH, "ttl": 0, "timeout": 300}, {**WEBPUSH, "name": "b", "ttl": 2419200, "timeout": 0.5}]
    assert validate_settings({"messaging": {"providers": {"push": ok}}})
    assert validate_settings({"messaging": {"providers": {"email": [{**SENDGRID, "timeout": "300"}]}}})


def test_what_was_accepted_stays_accepted():
    ok = {**WEBPUSH, "ttl": "3600", "timeout": "5"}  # int() and float() of text, as before
    assert validate_settings({"messaging": {"providers": {"push": [ok]}}})


@SQLITE
def test_patch_settings_answers_in_chorus_words(http, workspace):
    h = {"Authorization": f"Bearer {workspace['api_key']}"}
    for conf, channel, field, message in [
        ({**SENDGRID, "webhook_public_key": "MFkwEwYHKoZIzj0CAQY="}, "email",
         "settings.messaging.providers.email[0].webhook_public_key", "is not a PEM or base64 DER public key"),
        ({**WEBPUSH, "ttl": None}, "push", "settings.messaging.providers.push[0].ttl",
         "must be a whole number of seconds from 0 to 2419200 (4 weeks)"),
        ({**WEBPUSH, "ttl": 1e300}, "push", "settings.messaging.providers.push[0].ttl",
         "must be a whole number of seconds from 0 to 2419200 (4 weeks)"),
        ({**SENDGRID, "timeout": "nan"}, "email", "settings.messaging.providers.email[0].timeout",
         "must be a number of seconds, more than 0 and at most 300"),
    ]:  # fmt: skip
        r = http.patch("/api/workspace/settings", json={"messaging": {"providers": {channel: [conf]}}}, headers=h)
        assert r.status_code == 400 and r.json() == {"code": "bad_request", "field": field,
                                                     "message": f"{field} {message}"}, r.text  # fmt: skip


TYPES = "(smtp, sendgrid, twilio, fcm, webpush, whatsapp, messenger, webhook, file)"


@pytest.mark.parametrize(
    "conf, message",
    [
        ({"type": ["sendgrid"]}, f"providers.email[0].type must be a provider type {TYPES}"),  # was a TypeError
        ({"type": {"a": 1}}, f"providers.email[0].type must be a provider type {TYPES}"),
        ({"type": None}, f"providers.email[0].type must be a provider type {TYPES}"),
        ({"name": "x"}, f"providers.email[0].type must be a provider type {TYPES}"),
        ({"type": "mailgun"}, f"providers.email[0].type 'mailgun' is not a known provider type {TYPES}"),
        ({"type": "it's"}, f"providers.email[0].type 'it's' is not a known provider type {TYPES}"),  # not "it\'s"
        ({"type": "x" * 5000}, f"providers.email[0].type '{'x' * 63}…' is not a known provider type {TYPES}"),
    ],
)  # fmt: skip
def test_build_names_a_bad_provider_type_without_python_repr(conf, message):
    """build() is called on stored settings too (the worker, the CLI), not only behind validate_settings' check."""
    with pytest.raises(ConfigError) as info:
        build(conf, "providers.email[0]", resolve_secrets=False, channel="email")
    assert str(info.value) == message
