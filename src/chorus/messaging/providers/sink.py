"""The file sink: a provider for every channel that keeps what it would have sent instead of sending it, as the
``filebased`` and ``console`` mail backends of the big web frameworks do. For trying Chorus without an account at
an email, SMS or chat provider (``chorus serve --dev`` uses it for channels without a provider), and for a staging
copy of production that must never reach a real person.

Email is written as the ``.eml`` file the SMTP provider would have transmitted, built by the same code
(:mod:`chorus.messaging.providers.email`: headers, List-Unsubscribe and List-Unsubscribe-Post, the DKIM signature
when ``dkim`` is configured); any other channel as a JSON file of the address, the rendered content and the
headers. One file per message, ``<root>/<dir>/<message id>.eml|.json``, written to a temporary file and renamed,
so a reader never sees half a message. The root is the server's (``CHORUS_OUTBOX_DIR``, default
``./chorus-outbox``), not the workspace's: ``dir`` is a relative directory inside it, so nobody who can change a
workspace's settings can make the server write anywhere else.

It is always named ``file`` (the message's ``provider``, its provider id ``file:<message id>``), it cannot be the
fail-over of a real provider (messages would be marked ``sent`` without leaving), and it is never configured unless
someone asks for it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile

import orjson

from chorus.messaging.providers import ConfigError, Outgoing, TransientError, check_settings
from chorus.messaging.providers.email import SETTINGS as EMAIL_SETTINGS
from chorus.messaging.providers.email import Composer
from chorus.messaging.providers.meta import MESSENGER_TAGS
from chorus.timeutil import iso, utcnow

log = logging.getLogger("chorus.messaging")
NAME = "file"
ROOT_ENV = "CHORUS_OUTBOX_DIR"
DEFAULT_ROOT = "./chorus-outbox"
KNOWN = {"type", "dir", "console"}
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,199}")


# The sender of dev mode's email: a reserved domain (RFC 2606), so a dev message can never pass for a real one.
DEV_FROM = "Chorus dev outbox <outbox@chorus.invalid>"


def dev_confs() -> dict[str, dict]:
    """Dev mode's providers: a file sink (logging a line a message) for every channel but the built-in inbox, used
    only where a workspace configured no provider (``chorus serve --dev``)."""
    from chorus.messaging.policy import MESSAGE_CHANNELS

    return {
        ch: {"type": "file", "dir": ch, "console": True, **({"from": DEV_FROM} if ch == "email" else {})}
        for ch in MESSAGE_CHANNELS
        if ch != "in_app"
    }


def outbox_root() -> str:
    """The directory every file sink of this process writes under (absolute)."""
    return os.path.abspath(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


def check_dir(value: object, where: str) -> str:
    """A relative directory inside the root: segments of letters, digits, ``_ . -``, none of them ``..``."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f'{where}.dir must be a directory name inside the outbox (e.g. "email")')
    parts = value.strip("/").split("/") if not value.startswith("/") else None
    if parts is None or not all(_SEGMENT.fullmatch(p) and p.strip(".") for p in parts) or len(parts) > 8:
        raise ConfigError(
            f"{where}.dir {value!r} must be a relative directory inside the outbox ({ROOT_ENV}): names of letters, "
            "digits, '_', '.' and '-' separated by '/', no '..' and no leading '/'"
        )
    return "/".join(parts)


def file_name(message_id: str) -> str:
    """The file's base name: the message id when it is a plain name, else a digest of it (never a path)."""
    if _FILE_NAME.fullmatch(message_id):
        return message_id
    return "id-" + hashlib.sha256(message_id.encode()).hexdigest()[:32]


class FileSink:
    """Writes each message to a file; serves whichever channel it is configured under (but the in-app inbox)."""

    every_channel = True
    sink = True
    name = NAME

    def __init__(
        self, conf: dict, where: str, resolve_secrets: bool = True, *, channel: str | None = None,
        workspace: str | None = None,
    ):
        if channel is None:
            raise ConfigError(f"{where}: a file sink is configured under a channel (settings.messaging.providers)")
        if channel == "in_app":
            raise ConfigError(f"{where}: the in-app inbox is built in; a file sink cannot stand in for it")
        self.channel = channel
        extra = EMAIL_SETTINGS if channel == "email" else {"tag"} if channel == "messenger" else set()
        check_settings(conf, KNOWN | extra, where, "file sink")
        # Messenger's tag, as on the Messenger provider: it lets transactional updates out of the 24-hour window
        # (outbox._anytime reads it from the settings), so a sink in its place chooses channels as production does
        self.tag = conf.get("tag")
        if self.tag is not None and self.tag not in MESSENGER_TAGS:
            raise ConfigError(f"{where}.tag must be one of {', '.join(MESSENGER_TAGS)}")
        self.dir = check_dir(conf.get("dir", channel), where)
        self.console = conf.get("console", False)
        if not isinstance(self.console, bool):
            raise ConfigError(f"{where}.console must be true or false")
        # email: the same From, Reply-To and DKIM settings as the SMTP provider, and the same message
        self.composer = Composer(conf, where, resolve_secrets, workspace=workspace) if channel == "email" else None
        self.root = outbox_root()
        self.path = os.path.join(self.root, *self.dir.split("/"))
        if os.path.commonpath([self.root, os.path.normpath(self.path)]) != self.root:  # check_dir makes it so
            raise ConfigError(f"{where}.dir {self.dir!r} is outside the outbox")

    def describe(self) -> str:
        return f"{self.channel} messages are written to {self.path}, not sent"

    def send(self, out: Outgoing) -> str:
        if self.composer is not None:
            data, ext = self.composer.build(out), "eml"
        else:
            data, ext = orjson.dumps(self.record(out), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS), "json"
        target = os.path.join(self.path, f"{file_name(out.message_id)}.{ext}")
        try:
            _inside(self.root, self.path)
            _write_atomically(self.path, target, data)
        except OSError as exc:  # nothing was written: another attempt may succeed (disk full, permissions fixed)
            raise TransientError(f"cannot write {target}: {exc}", code="io") from None
        if self.console:
            log.info("[sink] %s", self.summary(out, target))
        return f"{NAME}:{out.message_id}"

    def record(self, out: Outgoing) -> dict:
        """What the JSON file holds: everything the channel's provider would have been given."""
        return {
            "sink": NAME, "message_id": out.message_id, "workspace_id": out.workspace_id, "channel": out.channel,
            "address": out.address, "kind": out.kind, "topic": out.topic, "content": out.content,
            "headers": out.headers, "written_at": iso(utcnow()), **({"tag": self.tag} if self.tag else {}),
        }  # fmt: skip

    def summary(self, out: Outgoing, target: str) -> str:
        """One line: channel, message, address, the subject (or the first characters of the text), the file."""
        c = out.content or {}
        what = c.get("subject") or c.get("title") or c.get("text") or c.get("body") or ""
        what = " ".join(str(what).split())
        what = what if len(what) <= 60 else what[:59] + "…"
        return f"{out.channel} {out.message_id} to {out.address}: {what!r} -> {target}"

    def close(self) -> None:
        pass


def forget_files(message_ids: list[str]) -> int:
    """Delete the files the sinks of this process' outbox root wrote for these messages (an erased person's: the
    files hold her address and the rendered content); how many there were. A file that cannot be deleted
    (permissions: the API and the workers run as different users) is logged, not raised: the erasure of the
    database goes on.

    The whole outbox is searched, not the directories the settings name now: a sink's ``dir`` changed, or the sink
    removed, after it wrote her messages, left those files behind (review). Searching by name is the robust way: a
    file's name is its message's id, unique in the store, so a hit anywhere under the root is hers, whatever the
    settings were then; the settings' history is not kept, and a path recorded with the message would be recorded after
    the file exists (a crash in between leaves a file nobody knows of) and is missing for the files written before. It
    costs one listing of the outbox an erasure, which only dev mode and staging copies fill. Links are not followed: a
    directory that resolves outside the outbox (a planted link) is not looked into, and the sink writes nowhere else."""
    wanted = {f"{file_name(mid)}.{ext}" for mid in message_ids for ext in ("eml", "json")}
    root, gone = outbox_root(), 0
    if not wanted or not os.path.isdir(root):
        return 0

    def unreadable(exc: OSError) -> None:  # a directory its files may be in: say so rather than skip it silently
        log.warning("erasure: cannot search %s for the sink's files: %s", exc.filename, exc.strerror or exc)

    for here, _dirs, files in os.walk(root, onerror=unreadable, followlinks=False):
        for name in sorted(wanted.intersection(files)):
            target = os.path.join(here, name)
            try:
                os.unlink(target)
                gone += 1
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("erasure: cannot delete the sink's file %s: %s", target, exc.strerror or exc)
    return gone


def _inside(root: str, path: str) -> None:
    """Refuse a directory that resolves outside the outbox: a symbolic link planted in it (by whoever can write
    there) must not send the server's writes anywhere else."""
    os.makedirs(path, exist_ok=True)
    if not _resolves_inside(root, path):
        raise OSError(f"{path} resolves to {os.path.realpath(path)}, outside the outbox {os.path.realpath(root)}")


def _resolves_inside(root: str, path: str) -> bool:
    """Whether ``path``, links followed, is inside ``root``."""
    real_root = os.path.realpath(root)
    return os.path.commonpath([real_root, os.path.realpath(path)]) == real_root


def _write_atomically(directory: str, target: str, data: bytes) -> None:
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
