"""Shared fixtures. Every store-touching test runs on SQLite and on PostgreSQL.

PostgreSQL comes from $CHORUS_TEST_POSTGRES_URL (default: the local server on 127.0.0.1:5432, trust auth). Under
CI (CI=true) an unreachable PostgreSQL fails the run instead of skipping.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from chorus.store.db import create_engine, upgrade
from chorus.store.tables import metadata

PG_URL = os.environ.get("CHORUS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _pg_admin_engine():
    return create_engine(PG_URL, isolation_level="AUTOCOMMIT", pool_size=1, max_overflow=0)


@pytest.fixture(scope="session")
def pg_base_url():
    try:
        eng = _pg_admin_engine()
        with eng.connect() as conn:
            conn.execute(sa.text("select 1"))
    except Exception as exc:  # noqa: BLE001
        if IN_CI:
            pytest.fail(f"PostgreSQL is required under CI but {PG_URL} is unreachable: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {exc}")
    name = f"chorus_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with eng.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    with eng.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    eng.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("template") / "chorus.db"
    upgrade(f"sqlite:///{path}")
    import sqlite3

    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return path


def _truncate_pg(url: str) -> None:
    eng = create_engine(url, pool_size=1, max_overflow=0)
    with eng.begin() as conn:
        names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
        conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    eng.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        template = request.getfixturevalue("sqlite_template")
        path = tmp_path / "chorus.db"
        shutil.copy(template, path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("pg_base_url")
    _truncate_pg(url)
    return url


@pytest.fixture
def engine(db_url):
    eng = create_engine(db_url)
    yield eng
    eng.dispose()


def pending(engine) -> int:
    from chorus.store.tables import events

    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.count()).select_from(events).where(events.c.profile_id.is_(None))
        ).scalar_one()


def wait_until(predicate, timeout: float = 15.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _ASGIThread:
    """Any ASGI app under uvicorn on a loopback port, in a thread."""

    def __init__(self, app, port: int | None = None, **config):
        import uvicorn

        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        cfg = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", **config)
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        wait_until(lambda: self.server.started, timeout=10)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


class LiveServer:
    """The real app under uvicorn on a loopback port, in a thread: tests talk real HTTP to it."""

    def __init__(self, url: str, engine, run_worker: bool = True, **settings):
        from chorus.app import create_app
        from chorus.config import Settings

        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.engine = engine
        self.app = create_app(
            Settings.from_env(database_url=url, worker_poll_seconds=0.05, public_url=self.base_url, **settings),
            run_worker=run_worker,
            engine=engine,
        )
        self._thread = _ASGIThread(self.app, self.port, lifespan="on")
        self.server = self._thread.server

    def __enter__(self):
        self._thread.__enter__()
        return self

    def __exit__(self, *exc):
        self._thread.__exit__(*exc)

    def settle(self, timeout: float = 30.0) -> None:
        """Wait until the in-process worker has resolved every accepted event."""
        wait_until(lambda: pending(self.engine) == 0, timeout=timeout)


class ServeProcess:
    """`chorus serve` itself, as a subprocess on a loopback port (this checkout's code, whatever the working
    directory), its output in ``log_path``; ``keys`` are the keys it printed for the workspace it created. ``args``
    are more options of `chorus serve` (``"--dev"``)."""

    def __init__(self, url: str, tmp_path: Path, *args: str, **env):
        import chorus

        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / "serve.log"
        self._log = open(self.log_path, "w+")
        src = str(Path(chorus.__file__).parents[1])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chorus.cli", "serve", "--port", str(self.port), "--db", url, *args],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": src, **env}, cwd=tmp_path,
        )  # fmt: skip
        self.keys: dict[str, str] = {}

    def __enter__(self):
        import httpx

        def up():
            try:
                return httpx.get(self.base_url + "/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=60)
        self.keys = dict(re.findall(r"(write_key|server_write_key|api_key): (\S+)", self.log_path.read_text()))
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()

    def output(self) -> str:
        return self.log_path.read_text()


@pytest.fixture
def server(db_url, engine):
    with LiveServer(db_url, engine) as srv:
        yield srv


@pytest.fixture
def workspace(engine) -> dict:
    from chorus import workspaces

    return workspaces.create(engine, f"shop-{uuid.uuid4().hex[:6]}")


@pytest.fixture
def http(server):
    import httpx

    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        yield client


# --- a real SMTP server (aiosmtpd) with STARTTLS and AUTH -----------------------------------------------------
@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1/localhost, and its file for clients to trust."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    d = tmp_path_factory.mktemp("tls")
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return d / "cert.pem", d / "key.pem"


class SMTPSink:
    """aiosmtpd handler: keeps every message; recipients containing 'bounce' get 550, 'later' get 451, and for
    'drop' the connection closes after the message was received, before the answer."""

    def __init__(self):
        self.messages: list = []
        self.sessions: set = set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if "bounce" in address:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if "later" in address:
            return "451 4.3.0 Mailbox temporarily unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        import email
        import email.policy

        self.sessions.add(id(session))
        if any("drop" in r for r in envelope.rcpt_tos):  # the message arrived, the answer never leaves
            self.messages.append({"to": list(envelope.rcpt_tos), "dropped": True})
            server.transport.close()
            return "250 never sent"
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        self.messages.append(
            {"from": envelope.mail_from, "to": list(envelope.rcpt_tos), "raw": envelope.original_content, "msg": msg,
             "auth": session.authenticated}
        )  # fmt: skip
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server(tls_cert):
    import ssl

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    cert, key = tls_cert
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = getattr(auth_data, "login", None) == b"chorus" and getattr(auth_data, "password", None) == b"s3cret"
        return AuthResult(success=ok, handled=False)

    sink = SMTPSink()
    port = free_port()
    controller = Controller(
        sink, hostname="127.0.0.1", port=port, tls_context=ctx, require_starttls=True, authenticator=authenticator,
        auth_required=True, auth_require_tls=True,
    )  # fmt: skip
    controller.start()
    sink.port = port
    sink.ca_file = str(cert)
    try:
        yield sink
    finally:
        controller.stop()


@pytest.fixture
def twilio():
    """The Twilio Messages API stand-in (tests/standins/twilio.py) on a loopback port."""
    from tests.standins.twilio import TwilioStandIn

    standin = TwilioStandIn("AC" + "0" * 31 + "1", "twilio-test-token")
    with _ASGIThread(standin.app) as srv:
        standin.base_url = srv.base_url
        yield standin
