"""The local servers the demo starts in its own process: the real Chorus HTTP app under uvicorn, and an SMTP
server (aiosmtpd) that receives what Chorus' SMTP provider sends. Both run in threads of the demo's process, so
the virtual clock (``timeutil.use_clock``) is theirs too; both listen on loopback only."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

from sqlalchemy.engine import Engine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, ready, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start within {timeout:.0f} s")
        time.sleep(0.02)


class ASGIServer:
    """Any ASGI app under uvicorn on 127.0.0.1, in a thread of this process."""

    def __init__(self, app, name: str, port: int | None = None):
        import uvicorn

        self.app, self.name = app, name
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False,
                                lifespan="on")  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"chorus-demo-{name}", daemon=True)

    def __enter__(self):
        self.thread.start()
        _wait(self.name, lambda: self.server.started or not self.thread.is_alive())
        if not self.server.started:
            raise RuntimeError(f"{self.name} could not listen on 127.0.0.1:{self.port}")
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)


class AppServer(ASGIServer):
    """``chorus.app`` without its own worker: the demo runs the worker's passes itself, between the steps of the
    virtual clock, exactly as the in-process worker of `chorus serve` would run them."""

    def __init__(self, engine: Engine, database_url: str, lake_dir: str, port: int | None = None):
        from chorus.app import create_app
        from chorus.config import Settings

        port = port or free_port()
        settings = Settings.from_env(database_url=database_url, public_url=f"http://127.0.0.1:{port}",
                                     lake_dir=lake_dir)  # fmt: skip
        super().__init__(create_app(settings, run_worker=False, engine=engine), "the Chorus HTTP server", port)


@dataclass(frozen=True)
class Mail:
    to: tuple[str, ...]
    data: bytes


class _Capture:
    """aiosmtpd handler: keeps every message it accepts, for the demo's customers to read."""

    def __init__(self):
        self.lock = threading.Lock()
        self.mail: list[Mail] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        with self.lock:
            self.mail.append(Mail(tuple(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 OK"


class MailServer:
    """A plain SMTP server on loopback (no TLS, no AUTH: nothing leaves the machine). Chorus' SMTP provider is
    configured against it with ``security: none``, so email goes through the real adapter and protocol."""

    def __init__(self, port: int | None = None):
        from aiosmtpd.controller import Controller

        self.port = port or free_port()
        self.handler = _Capture()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> MailServer:
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()

    def take(self) -> list[Mail]:
        """The messages received since the last call."""
        with self.handler.lock:
            got, self.handler.mail = self.handler.mail, []
        return got
