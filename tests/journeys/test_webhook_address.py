"""A journey webhook connects to the address its check approved, and to no other.

The host is resolved once at delivery, every answer must be public (the web push check, ``providers.public.is_public``),
and the request goes to those addresses: a DNS name answering a public address to the check and 127.0.0.1 to a second
lookup (DNS rebinding) never reaches loopback. The Host header and the TLS server name stay the URL's host. The IPv6
forms that carry a loopback or private IPv4 address (NAT64, IPv4-compatible, 6to4, IPv4-mapped) are refused too.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
import urllib3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from chorus.journeys import webhooks
from chorus.messaging.providers.http import Client

SECRET_ENV = "CHORUS_TEST_WEBHOOK_ADDRESS_SECRET"
PUBLIC = "93.184.216.34"  # a public address: the check's first answer (never connected to in these tests)
SETTINGS = {"journeys": {"webhooks": {"secret_env": SECRET_ENV}}}
LOOPBACK_FORMS = ["64:ff9b::7f00:1", "::127.0.0.1", "2002:7f00:1::1", "2002:7f00:1::", "::ffff:127.0.0.1",
                  "64:ff9b::a00:1", "2002:c0a8:1::1", "fec0::1"]  # fmt: skip (fec0::/10, site-local: review)


class Listener:
    """An HTTP server on 127.0.0.1 recording every request it gets (method, path, Host header)."""

    def __init__(self):
        self.hits: list[dict] = []
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                listener.hits.append({"path": self.path, "host": self.headers.get("Host")})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listener():
    r = Listener()
    yield r
    r.close()


@pytest.fixture
def secret_set(monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "s")
    monkeypatch.delenv(webhooks.ALLOW_ENV, raising=False)


def row(url: str):
    return SimpleNamespace(url=url, method="POST", body={"a": 1}, key="i:s", journey_id="j", workspace_id="w")


def resolver(monkeypatch, name: str, answers: list[str]) -> dict:
    """``socket.getaddrinfo`` answering ``name`` with ``answers[0]``, then ``answers[1]``... (the last one from then
    on): a DNS name rebinding between lookups. Counts the lookups of ``name``."""
    real = socket.getaddrinfo
    seen = {"lookups": 0}

    def getaddrinfo(host, port, *args, **kwargs):
        if host != name:
            return real(host, port, *args, **kwargs)
        ip = answers[min(seen["lookups"], len(answers) - 1)]
        seen["lookups"] += 1
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        sockaddr = (ip, port, 0, 0) if family == socket.AF_INET6 else (ip, port)
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr)]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return seen


def connections(monkeypatch, unreachable: set[str]) -> list:
    """Every address a connection is opened to; those in ``unreachable`` refuse it (the test reaches no internet)."""
    real = urllib3.util.connection.create_connection
    opened: list = []

    def create_connection(address, *args, **kwargs):
        opened.append(address[0])
        if address[0] in unreachable:
            raise ConnectionRefusedError(111, "Connection refused")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", create_connection)
    return opened


def test_a_name_rebinding_to_loopback_after_the_check_never_reaches_it(monkeypatch, listener, secret_set):
    seen = resolver(monkeypatch, "rebind.example", [PUBLIC, "127.0.0.1"])
    opened = connections(monkeypatch, unreachable={PUBLIC})
    client = Client(timeout=5)
    try:
        out = webhooks.attempt(client, row(f"http://rebind.example:{listener.port}/hook"), SETTINGS)
    finally:
        client.close()
    assert listener.hits == []  # nothing reached the loopback listener
    assert opened == [PUBLIC]  # the one connection went to the checked address, not to a second lookup's answer
    assert seen["lookups"] == 1  # resolved once
    assert out.status == "retry" and out.reason.startswith("webhook unreachable")


def test_a_name_with_a_loopback_answer_among_public_ones_is_refused(monkeypatch, listener, secret_set):
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host == "mixed.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in (PUBLIC, "127.0.0.1")]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    opened = connections(monkeypatch, unreachable={PUBLIC})
    out = webhooks.attempt(Client(timeout=5), row(f"http://mixed.example:{listener.port}/hook"), SETTINGS)
    assert out.status == "failed" and "resolves to 127.0.0.1, a private address" in out.reason
    assert opened == [] and listener.hits == []


@pytest.mark.parametrize("address", LOOPBACK_FORMS)
def test_ipv6_forms_of_a_loopback_or_private_address_are_refused(monkeypatch, address, secret_set):
    # written as the url's host
    assert "a private address" in webhooks.refused_address(f"https://[{address}]/x", allow_private=False)
    assert webhooks.refused_address(f"https://[{address}]/x", allow_private=True) is None
    # answered by DNS for a name, and nothing is connected to
    resolver(monkeypatch, "nat.example", [address])
    opened = connections(monkeypatch, unreachable=set())
    assert "a private address" in webhooks.refused_address("https://nat.example/x", allow_private=False)
    out = webhooks.attempt(Client(timeout=5), row("https://nat.example/x"), SETTINGS)
    assert out.status == "failed" and f"resolves to {ipaddress.ip_address(address)}, a private address" in out.reason
    assert opened == []


@pytest.mark.parametrize("address", ["2606:4700:4700::1111", "2002:5db8:d822::1", PUBLIC])
def test_public_addresses_and_ipv6_forms_of_public_ones_are_called(address):
    host = f"[{address}]" if ":" in address else address
    assert webhooks.refused_address(f"https://{host}/x", allow_private=False) is None


def test_allowed_loopback_is_called_at_the_resolved_address_with_the_urls_host(monkeypatch, listener, secret_set):
    """The test mechanism (CHORUS_ALLOW_PRIVATE_WEBHOOKS=1) still delivers to a local server; the name is resolved once
    and the Host header is the URL's."""
    monkeypatch.setenv(webhooks.ALLOW_ENV, "1")
    seen = resolver(monkeypatch, "hook.example", ["127.0.0.1", "10.9.9.9"])
    opened = connections(monkeypatch, unreachable={"10.9.9.9"})
    out = webhooks.attempt(Client(timeout=5), row(f"http://hook.example:{listener.port}/hook?x=1"), SETTINGS)
    assert out.status == "delivered"
    assert listener.hits == [{"path": "/hook?x=1", "host": f"hook.example:{listener.port}"}]
    assert opened == ["127.0.0.1"] and seen["lookups"] == 1


def test_https_names_the_urls_host_in_tls_while_connecting_to_the_checked_address(monkeypatch, secret_set, tmp_path):
    """SNI (and so the certificate check) is the URL's host, not the pinned address: a self-signed server on
    127.0.0.1 sees ``hook.example`` in the handshake (and the certificate is refused: nothing is sent)."""
    monkeypatch.setenv(webhooks.ALLOW_ENV, "1")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hook.example")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("hook.example")]), critical=False)
            .sign(key, hashes.SHA256()))  # fmt: skip
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))  # fmt: skip
    names: list = []
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    ctx.sni_callback = lambda sock, server_name, context: names.append(server_name)
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve():
        conn, _ = server.accept()
        try:
            ctx.wrap_socket(conn, server_side=True).close()
        except (ssl.SSLError, OSError):
            pass  # the client refuses the self-signed certificate
        finally:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    resolver(monkeypatch, "hook.example", ["127.0.0.1"])
    try:
        out = webhooks.attempt(Client(timeout=5), row(f"https://hook.example:{port}/hook"), SETTINGS)
    finally:
        thread.join(5)
        server.close()
    assert names == ["hook.example"]
    assert out.status == "retry" and "SSLError" in out.reason  # not verified: nothing was sent


# -- review of the pinned connection ----------------------------------------------------------------------------------
class _Answer(BaseHTTPRequestHandler):
    body, encoding, status = b"", None, 204

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(self.status)
        if self.encoding:
            self.send_header("Content-Encoding", self.encoding)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *a):
        pass


def _serve(handler):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_a_first_address_that_times_out_does_not_hide_the_next(monkeypatch):
    """Review: only a refused connection moved on to the next checked address; a black-holed first one (a connect
    timeout) failed every attempt though the host answered at its second address."""
    import urllib3.util.connection as uconn

    srv = _serve(_Answer)
    real = uconn.create_connection

    def black_holed(address, *a, **kw):
        if address[0] == "192.0.2.1":
            raise TimeoutError("timed out")
        return real(address, *a, **kw)

    monkeypatch.setattr(uconn, "create_connection", black_holed)
    try:
        r = webhooks.send(Client(timeout=2), "POST", f"http://hooks.example:{srv.server_port}/x",
                          ["192.0.2.1", "127.0.0.1"], body=b"{}", headers={})  # fmt: skip
        assert r.status_code == 204
    finally:
        srv.shutdown()


def test_an_answer_is_read_only_as_far_as_a_reason_needs(monkeypatch):
    """Review: the whole answer was read and inflated: a 200 KB gzip answer held 200 MB in the worker."""
    import gzip

    class Bomb(_Answer):
        body, encoding, status = gzip.compress(b"\0" * (50 * 2**20), 9), "gzip", 500

    class Long(_Answer):
        body, status = b"x" * (3 * 2**20), 500

    for handler in (Bomb, Long):
        srv = _serve(handler)
        try:
            r = webhooks.send(Client(timeout=5), "POST", f"http://h.example:{srv.server_port}/", ["127.0.0.1"],
                              body=b"{}", headers={})  # fmt: skip
            assert r.status_code == 500 and len(r.content) <= webhooks.ANSWER_BYTES
        finally:
            srv.shutdown()
