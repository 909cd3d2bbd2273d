"""Messaging and audience settings refused in Chorus' own words: a bad key or value names the settings field and
says what it must be; the ``cryptography`` and ``py_vapid`` libraries' text ("Could not deserialize key data",
"ASN.1 parsing error", "Incorrect padding") and Python's ("invalid literal for int()", "unhashable type") never
reach ``PATCH /api/workspace/settings``, and a value of the wrong type is a 400, not a 500."""

from __future__ import annotations

import pytest

from chorus.messaging.providers import ConfigError
from chorus.messaging.providers.sendgrid import SendGridProvider, load_public_key
from chorus.messaging.providers.webpush import WebPushProvider, load_vapid
from chorus.workspaces import validate_settings

LIBRARY_WORDS = ("deserialize", "ASN.1", "padding", "base64 data is allowed", "ASCII characters", "cryptography.io",
                 "PEM file", "InvalidData", "invalid literal", "int()", "float()", "unhashable", "has no attribute",
                 "NoneType", "['")  # fmt: skip

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
SENDGRID = {"type": "sendgrid", "api_key_env": "TEST_SG_KEY", "from": "Shop <news@shop.example>"}
WEBPUSH = {"type": "webpush", "vapid_private_key_env": "TEST_VAPID_KEY", "subject": "mailto:ops@shop.example"}
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
    monkeypatch.setenv("TEST_VAPID_KEY", key)
    with pytest.raises(ConfigError) as info:
        WebPushProvider(WEBPUSH, "settings.messaging.providers.push[0]")
    assert str(info.value) == (
        "the key in $TEST_VAPID_KEY (settings.messaging.providers.push[0].vapid_private_key_env) is not a P-256 "
        "private key (PEM, or base64url DER or raw 32 bytes)"
    )
    with pytest.raises(ConfigError) as info:  # GET /v1/push/vapid-key's call
        load_vapid(key)
    assert not any(w in str(info.value) for w in LIBRARY_WORDS), info.value


def test_sendgrid_provider_with_a_bad_key_at_delivery(monkeypatch):
    monkeypatch.setenv("TEST_SG_KEY", "SG.x")
    with pytest.raises(ConfigError) as info:
        SendGridProvider({**SENDGRID, "webhook_public_key": "AAAA"}, "settings.messaging.providers.email[1]")
    assert str(info.value) == "settings.messaging.providers.email[1].webhook_public_key is not a PEM or base64 DER " \
                              "public key"  # fmt: skip


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"messaging": {"providers": {"push": [{**WEBPUSH, "ttl": "abc"}]}}},
         "settings.messaging.providers.push[0].ttl must be a whole number of seconds"),
        ({"messaging": {"providers": {"push": [{**WEBPUSH, "ttl": None}]}}},  # was a 500 (TypeError)
         "settings.messaging.providers.push[0].ttl must be a whole number of seconds"),
        ({"messaging": {"providers": {"push": [{**WEBPUSH, "timeout": {}}]}}},
         "settings.messaging.providers.push[0].timeout must be a number of seconds"),
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
         "must be a whole number of seconds"),
    ]:  # fmt: skip
        r = http.patch("/api/workspace/settings", json={"messaging": {"providers": {channel: [conf]}}}, headers=h)
        assert r.status_code == 400 and r.json() == {"code": "bad_request", "field": field,
                                                     "message": f"{field} {message}"}, r.text  # fmt: skip
