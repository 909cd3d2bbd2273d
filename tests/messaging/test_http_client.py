"""The providers' HTTP client against real sockets: what it sends, and which failures may have reached the server."""

from __future__ import annotations

import socket
import threading

import pytest

from chorus.messaging.providers import AmbiguousError, TransientError, http_failure
from chorus.messaging.providers.http import Client, HTTPError
from tests.conftest import free_port


class RawServer:
    """A TCP server that answers every connection with ``handler(conn)``; records the bytes it received."""

    def __init__(self, handler):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.handler = handler
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.handler, args=(self, conn), daemon=True).start()

    def read_request(self, conn) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(v) for k, _, v in (ln.partition(b":") for ln in head.split(b"\r\n"))
                       if k.strip().lower() == b"content-length"), 0)  # fmt: skip
        while len(body) < length:
            body += conn.recv(65536)
        self.received.append(head + b"\r\n\r\n" + body)
        return body

    def close(self):
        self.sock.close()


def answer(server, conn):
    with conn:
        while True:
            try:
                server.read_request(conn)
            except OSError:
                return
            body = b'{"sid": "SM1", "note": "caf\xc3\xa9"}'
            conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nX-Request-Id: r1\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip


def test_requests_carry_auth_headers_and_bodies_and_reuse_the_connection():
    srv = RawServer(answer)
    client = Client(f"http://127.0.0.1:{srv.port}/", auth=("AC1", "tok"), headers={"X-App": "chorus"}, timeout=5)
    try:
        r = client.post("/form", data={"To": "+31612345678", "Body": "hé & co"})
        assert r.status_code == 201 and r.json() == {"sid": "SM1", "note": "café"} and "café" in r.text
        assert r.headers["x-request-id"] == "r1"  # case-insensitive
        client.post("/json", json={"a": [1, 2]}, headers={"X-App": "other"})
        client.request("DELETE", "/raw", content=b"\x00\x01")
    finally:
        client.close()
        srv.close()
    form, js, raw = srv.received
    assert form.startswith(b"POST /form HTTP/1.1\r\n")
    assert b"Authorization: Basic QUMxOnRvaw==" in form and b"X-App: chorus" in form
    assert b"Content-Type: application/x-www-form-urlencoded" in form
    assert form.endswith(b"To=%2B31612345678&Body=h%C3%A9+%26+co")
    assert b"Content-Type: application/json" in js and js.endswith(b'{"a":[1,2]}') and b"X-App: other" in js
    assert raw.startswith(b"DELETE /raw ") and raw.endswith(b"\x00\x01")


def test_a_refused_connection_was_not_sent():
    client = Client(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(HTTPError) as err:
        client.post("/x", json={})
    assert err.value.sent is False
    assert isinstance(http_failure(err.value, "X"), TransientError)


@pytest.mark.parametrize("how", ["silent", "hang_up", "half_answer"])
def test_a_request_without_an_answer_may_have_been_sent(how):
    done = threading.Event()

    def handler(server, conn):
        server.read_request(conn)
        if how == "hang_up":
            conn.close()
        elif how == "half_answer":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
            conn.close()
        else:
            done.wait(5)
            conn.close()

    srv = RawServer(handler)
    client = Client(f"http://127.0.0.1:{srv.port}", timeout=0.5)
    try:
        with pytest.raises(HTTPError) as err:
            client.post("/x", json={"n": 1})
    finally:
        done.set()
        srv.close()
    assert err.value.sent is True and len(srv.received) == 1  # it did arrive, and was not sent twice
    assert isinstance(http_failure(err.value, "X"), AmbiguousError)


def test_redirects_are_returned_not_followed():
    def handler(server, conn):
        with conn:
            server.read_request(conn)
            conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere.example/\r\nContent-Length: 0\r\n\r\n")

    srv = RawServer(handler)
    try:
        r = Client(f"http://127.0.0.1:{srv.port}", timeout=2).post("/x", json={})
    finally:
        srv.close()
    assert r.status_code == 302 and len(srv.received) == 1
