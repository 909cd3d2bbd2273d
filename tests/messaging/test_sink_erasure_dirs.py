"""An erased person leaves no file in the outbox, whatever the sinks' settings became after her messages were written:
a sink's ``dir`` changed, or the sink removed, must not leave the files written before behind (found in review: the
erasure looked only in the directories the settings named at the time of the erasure).

End to end through the public HTTP API of a real server with its worker: the settings, the events, the messages and
the erasure; then every file under the outbox is read."""

from __future__ import annotations

import secrets

import pytest

from tests.conftest import wait_until

TEMPLATE = {
    "kind": "transactional",
    "variants": {"email": {"subject": "Hi {{ traits.name }}", "html": "<p>Hello {{ traits.name }}</p>"},
                 "sms": {"text": "Hi {{ traits.name }}, your code is 1234"}},
}  # fmt: skip
FROM = "Shop <news@shop.example>"


@pytest.fixture
def outbox_dir(tmp_path, monkeypatch):
    root = tmp_path / "outbox"
    monkeypatch.setenv("CHORUS_OUTBOX_DIR", str(root))
    return root


def _person() -> dict:
    tag = secrets.token_hex(6)
    return {"user_id": f"uid{tag}", "email": f"mail{tag}@example.org", "name": f"Name{tag}",
            "phone": "+3161" + "".join(secrets.choice("0123456789") for _ in range(7))}  # fmt: skip


def _settings(http, admin, providers: dict) -> None:
    r = http.patch("/api/workspace/settings", json={"messaging": {"providers": providers}}, headers=admin)
    assert r.status_code == 200, r.text


def _identify(http, ws, p: dict) -> None:
    r = http.post("/v1/batch", auth=(ws["server_write_key"], ""), json={"batch": [
        {"type": "identify", "userId": p["user_id"],
         "traits": {"email": p["email"], "phone": p["phone"], "name": p["name"]}},
    ]})  # fmt: skip
    assert r.status_code == 200, r.text
    admin = {"Authorization": f"Bearer {ws['api_key']}"}
    wait_until(lambda: http.get("/api/profiles", params={"email": p["email"]}, headers=admin).status_code == 200)
    found = http.get("/api/profiles", params={"email": p["email"]}, headers=admin).json()
    p["profile_ids"] = sorted({found["id"], *found["aliases"]})


def _send(http, admin, p: dict, channel: str, key: str) -> str:
    r = http.post("/api/messages", headers={**admin, "Idempotency-Key": f"{key}-{p['user_id']}"},
                  json={"to": {"user_id": p["user_id"]}, "template": "hi", "channel": channel})  # fmt: skip
    assert r.status_code == 201, r.text
    mid = r.json()["id"]
    wait_until(lambda: http.get(f"/api/messages/{mid}", headers=admin).json()["status"] == "sent")
    return mid


def _holding(outbox_dir, needles: list[bytes]) -> list[str]:
    """The files under the outbox holding any of these bytes (their paths inside it)."""
    return sorted(
        str(f.relative_to(outbox_dir))
        for f in outbox_dir.rglob("*")
        if f.is_file() and any(n in f.read_bytes() for n in needles)
    )


def test_erasure_finds_the_sink_files_written_before_the_dir_changed_or_the_sink_went(outbox_dir, workspace, http):
    admin = {"Authorization": f"Bearer {workspace['api_key']}"}
    gone, kept = _person(), _person()
    assert http.put("/api/templates/hi", json=TEMPLATE, headers=admin).status_code == 200
    _settings(http, admin, {"email": [{"type": "file", "dir": "mail/old", "from": FROM}],
                            "sms": [{"type": "file", "dir": "texts"}]})  # fmt: skip
    for p in (gone, kept):
        _identify(http, workspace, p)
        p["sent"] = [_send(http, admin, p, "email", "e1"), _send(http, admin, p, "sms", "s1")]
    assert (outbox_dir / "mail" / "old" / f"{gone['sent'][0]}.eml").exists()
    assert (outbox_dir / "texts" / f"{gone['sent'][1]}.json").exists()

    # the email sink moves to another directory; the SMS sink is removed (the section is replaced whole)
    _settings(http, admin, {"email": [{"type": "file", "dir": "mail/new", "from": FROM}]})
    for p in (gone, kept):
        p["sent"].append(_send(http, admin, p, "email", "e2"))
    assert (outbox_dir / "mail" / "new" / f"{gone['sent'][2]}.eml").exists()

    def needles(p: dict) -> list[bytes]:
        return [p[k].encode() for k in ("user_id", "email", "phone", "name")] + [
            x.encode() for x in p["profile_ids"] + p["sent"]
        ]

    assert len(_holding(outbox_dir, needles(gone))) == 3  # the scan finds her files before the erasure
    r = http.delete(f"/api/profiles/{gone['profile_ids'][0]}", headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["deleted"]["sink_files"] == 3
    assert _holding(outbox_dir, needles(gone)) == []
    # nobody else's: the other person's three files stay, in all three directories
    assert len(_holding(outbox_dir, needles(kept))) == 3


def test_the_search_does_not_follow_a_link_out_of_the_outbox(outbox_dir, tmp_path):
    """The whole outbox is searched, but a directory link planted in it is not followed: whatever it points at is not
    the sinks' (they refuse to write through it) and is left alone."""
    from chorus.messaging.providers.sink import forget_files

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "msg_1.eml").write_bytes(b"not the outbox's")
    (outbox_dir / "deep" / "er").mkdir(parents=True)
    (outbox_dir / "deep" / "er" / "msg_1.json").write_bytes(b"hers")
    (outbox_dir / "msg_1.eml").write_bytes(b"hers")
    (outbox_dir / "msg_2.eml").write_bytes(b"someone else's")
    (outbox_dir / "link").symlink_to(elsewhere, target_is_directory=True)
    assert forget_files(["msg_1"]) == 2
    assert sorted(str(p.relative_to(outbox_dir)) for p in outbox_dir.rglob("*") if p.is_file()) == ["msg_2.eml"]
    assert (elsewhere / "msg_1.eml").exists()
