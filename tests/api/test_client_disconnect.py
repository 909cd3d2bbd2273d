"""A client that closes the connection halfway through its request body (a browser leaving the page, a dropped
mobile connection, a provider's timeout) is ordinary: every route logs it at DEBUG and stores nothing, never an
ERROR with a traceback. Over real HTTP: uvicorn on loopback, a raw socket that sends half a body, then closes."""

from __future__ import annotations

import logging
import socket

import httpx
import pytest
import sqlalchemy as sa

from chorus.store.tables import events
from tests.conftest import LiveServer, wait_until

ROUTES = [  # (path, content type): JSON, multipart and urlencoded bodies, admin, tracking, webhooks, public pages
    ("/api/messages", "application/json"),
    ("/api/imports", "multipart/form-data; boundary=xyz"),
    ("/v1/batch", "application/json"),
    ("/webhooks/twilio/{ws}/inbound", "application/x-www-form-urlencoded"),
    ("/webhooks/meta/{ws}", "application/json"),
    ("/u/not-a-token", "application/x-www-form-urlencoded"),
]
BODY = {
    "application/json": b'{"batch": [{"type": "track", "event": "Viewed", "userId": "u1"',
    "multipart/form-data; boundary=xyz": b'--xyz\r\nContent-Disposition: form-data; name="source"\r\n\r\nsto',
    "application/x-www-form-urlencoded": b"From=%2B31612345678&Body=Hel",
}


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def logs():
    handler = Records()
    # uvicorn's own loggers do not propagate to the root logger: listen to them directly
    names = ["chorus", "uvicorn.error", "uvicorn"]
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).addHandler(handler)
    logging.getLogger("chorus").setLevel(logging.DEBUG)
    yield handler
    for n in names:
        logging.getLogger(n).removeHandler(handler)
        logging.getLogger(n).setLevel(levels[n])


def _half_a_body(port: int, path: str, content_type: str, auth: str) -> None:
    part = BODY[content_type]
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(part) * 4}\r\nAuthorization: {auth}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head.encode() + part)


@pytest.mark.parametrize(("path", "content_type"), ROUTES, ids=[r[0] for r in ROUTES])
def test_a_client_that_leaves_mid_body_is_logged_quietly_on_every_route(db_url, engine, workspace, logs, path,
                                                                         content_type):  # fmt: skip
    with LiveServer(db_url, engine, run_worker=False) as srv:
        url = path.format(ws=workspace["id"])
        auth = f"Bearer {workspace['api_key']}" if path.startswith("/api") else "Basic " + _basic(workspace)
        _half_a_body(srv.port, url, content_type, auth)
        wait_until(lambda: any("client closed" in r.getMessage() or r.levelno >= logging.ERROR
                               for r in logs.records), timeout=10)  # fmt: skip
        # the server goes on serving, and nothing of the half request was stored
        assert httpx.get(srv.base_url + "/healthz", timeout=10).status_code == 200
    loud = [f"{r.name} {r.levelname}: {r.getMessage()}" for r in logs.records if r.levelno >= logging.WARNING]
    assert not loud, loud
    quiet = [r for r in logs.records if "client closed" in r.getMessage()]
    assert quiet and quiet[0].levelno == logging.DEBUG and url in quiet[0].getMessage()
    with engine.connect() as conn:
        stored = conn.execute(sa.select(sa.func.count()).select_from(events).where(
            events.c.workspace_id == workspace["id"])).scalar_one()  # fmt: skip
    assert stored == 0


def _basic(workspace) -> str:
    import base64

    return base64.b64encode(f"{workspace['write_key']}:".encode()).decode()
