"""A message node's channel that is not one is refused naming the value sent ('fax'), not "a channel ('auto') is
one of ...", which named a value nobody sent. Found by a probe."""

from __future__ import annotations

import pytest

from chorus.errors import ChorusError
from chorus.journeys import definition as d


def _journey(channel) -> dict:
    return {"id": "j", "entry": {"event": {"event": "Signed Up"}}, "start": "hello",
            "nodes": {"hello": {"type": "message", "template": "t1", "channel": channel, "next": "done"},
                      "done": {"type": "exit"}}}  # fmt: skip


@pytest.mark.parametrize(("channel", "path", "message"), [
    ("fax", "nodes.hello.channel",
     "'fax' is not a channel: give auto, or one of email, sms, push, whatsapp, messenger, in_app, webhook "
     "(or a list of them)"),
    (["sms", "pigeon"], "nodes.hello.channel[1]", "'pigeon' is not a channel: give auto, or one of"),
    (["sms", "auto"], "nodes.hello.channel[1]", "'auto' is given alone (channel: auto), not in a list of channels"),
    (7, "nodes.hello.channel", "7 is not a channel: give auto, or one of"),
])  # fmt: skip
def test_the_channel_error_names_the_value_sent(channel, path, message):
    with pytest.raises(ChorusError) as info:
        d.parse(_journey(channel))
    assert info.value.field == path
    assert info.value.message.startswith(f"{path}: {message}"), info.value.message
    assert "('auto')" not in info.value.message


def test_valid_channels_still_parse():
    for channel in ("auto", "sms", ["email", "sms"]):
        d.parse(_journey(channel))
