"""The field a settings error names, over HTTP: the whole path, never with the value or the rest of the message
in it (two reviews: errors.field_of)."""

from __future__ import annotations

import pytest

from tests.api.test_admin import bearer


@pytest.mark.parametrize("patch, field", [
    ({"identifiers": []}, "settings.identifiers"),
    ({"identifier_limits": []}, "settings.identifier_limits"),
    ({"audiences": []}, "settings.audiences"),
    ({"messaging": {"providers": "x"}}, "settings.messaging.providers"),
    ({"messaging": {"providers": {"push": [{"type": "webpush", "subject": "x"}]}}},
     "settings.messaging.providers.push[0].subject"),
    ({"messaging": {"providers": {"sms": [{"type": "file", "dir": "a"}, {"type": "file", "dir": "b"}]}}},
     "settings.messaging.providers.sms[0]"),
    ({"messaging": {"timezone": "Mars/Base"}}, "settings.messaging.timezone"),
    ({"default_region": "XX"}, "settings.default_region"),
])  # fmt: skip
def test_a_settings_error_names_its_field_whole(http, workspace, patch, field):
    r = http.patch("/api/workspace/settings", json=patch, headers=bearer(workspace))
    assert r.status_code == 400 and r.json()["field"] == field, (patch, r.json())
