"""The design studio's HTTP gateway: the FastAPI app of services/gateway/app.py under uvicorn.

`run_server` binds the port (HTTPS when GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE are set)
and serves on an asyncio loop in a background thread; blocking work (token checks, gRPC, Redis)
runs on the app's own thread pool, so a slow or idle connection costs a socket, not a thread.
Leaving the context drains: /readyz turns 503 (for GATEWAY_SHUTDOWN_DELAY_SECONDS the listener
still accepts, so load balancers notice), then the listener closes, idle connections close,
requests in flight get GATEWAY_SHUTDOWN_GRACE_SECONDS to finish, and the gRPC channels close.

`GatewayProtocol` is uvicorn's h11 protocol with the rules for what never reaches the app:
a request head must arrive within GATEWAY_READ_TIMEOUT_SECONDS (slow-header clients are cut
off with 408); h11's own refusals (malformed request lines or headers, heads over
GATEWAY_MAX_HEADER_BYTES) are JSON with a request id like every other error; and a client that
half-closes after sending its requests still gets their answers.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from services.common.tls import https_context
from services.gateway.api import ROUTE_ROLES, Gateway, image_type
from services.gateway.app import (
    Lifecycle,
    conventional_name,
    create_app,
    error_json,
    new_request_id,
    standard_headers,
)
from services.gateway.config import Settings

# Imported from here by bench/security_probe.py and tests/unit/test_image_types.py.
__all__ = ["ROUTE_ROLES", "RunningGateway", "image_type", "run_server"]

log = logging.getLogger(__name__)
MAX_MESSAGE_CHARS = 200
STARTUP_TIMEOUT_SECONDS = 30.0


class GatewayProtocol(H11Protocol):
    """uvicorn's h11 protocol with the gateway's rules for requests that never reach the app
    (see the module docstring). `head_timeout` is set per server by `protocol_for`."""

    head_timeout: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_deadline: asyncio.TimerHandle | None = None
        self.client_done = False  # the client half-closed: answer what it sent, then close

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_arrived()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._head_arrived()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may already parse a pipelined request
        if self.transport.is_closing():
            return
        if self.client_done and self.conn.their_state is not h11.DONE:
            self.transport.close()  # nothing complete is left to answer
        elif self.conn.their_state is h11.IDLE:
            self._await_head()

    def eof_received(self) -> bool | None:  # type: ignore[override]  # asyncio allows True
        # uvicorn closes at once, dropping the answers to requests the client sent before it
        # half-closed; keep writing until those are answered (on_response_complete closes).
        # TLS cannot stay half open (asyncio's SSL transport closes regardless).
        if self.conn.their_state is h11.DONE and self.scheme == "http":
            self.client_done = True
            return True
        return None

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this inside its `except h11.RemoteProtocolError`, with a fixed message;
        # h11's own says what was wrong (and which status fits: 431 for an oversized head).
        error = sys.exception()
        if isinstance(error, h11.RemoteProtocolError):
            self._refuse(HTTPStatus(error.error_status_hint), str(error))
        else:
            self._refuse(HTTPStatus.BAD_REQUEST, msg)

    def _refuse(self, status: HTTPStatus, message: str) -> None:
        """Answer `status` with a JSON error, whatever state h11 is in, and close."""
        self._head_arrived()
        request_id = new_request_id()
        body = error_json(message[:MAX_MESSAGE_CHARS], request_id)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *standard_headers(request_id, []),
            (b"connection", b"close"),
        ]
        headers = [(conventional_name(name), value) for name, value in headers]
        try:
            response = h11.Response(status_code=status, headers=headers, reason=status.phrase)
            self.transport.write(self.conn.send(response) + self.conn.send(h11.Data(data=body)))
        except h11.LocalProtocolError:
            pass  # an answer was already under way: closing is all that is left
        self.transport.close()

    def _await_head(self) -> None:
        self._head_arrived()
        self.head_deadline = self.loop.call_later(self.head_timeout, self._head_overdue)

    def _head_arrived(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def _head_overdue(self) -> None:
        self.head_deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.trailing_data[0]:  # part of a head: tell the client why
            self._refuse(HTTPStatus.REQUEST_TIMEOUT, "request head not received in time")
        else:  # an idle connection: nothing to answer
            self.transport.close()


def protocol_for(settings: Settings) -> type[GatewayProtocol]:
    return type("GatewayProtocol", (GatewayProtocol,), {"head_timeout": settings.read_timeout})


@dataclass
class RunningGateway:
    port: int
    scheme: str
    lifecycle: Lifecycle


def uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    tls: dict[str, Any] = {}
    if settings.tls_cert_file and settings.tls_key_file:
        cert, key = settings.tls_cert_file, settings.tls_key_file
        tls = {
            "ssl_certfile": cert,
            "ssl_keyfile": key,
            # The suite's TLS policy (TLS 1.2 or newer), and a clear message for bad files.
            "ssl_context_factory": lambda config, default: https_context(cert, key),
        }
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol_for(settings),
        ws="none",
        lifespan="off",  # run_server opens and closes the gRPC channels
        log_config=None,  # configure_logging's handlers
        access_log=False,  # FrontDoor logs each request at DEBUG, with its id
        server_header=False,
        proxy_headers=False,
        timeout_keep_alive=settings.keep_alive_timeout,
        timeout_graceful_shutdown=settings.shutdown_grace,  # type: ignore[arg-type]
        h11_max_incomplete_event_size=settings.max_header_bytes,
        **tls,
    )


@contextmanager
def run_server(settings: Settings) -> Iterator[RunningGateway]:
    """Serve the studio until the context exits, then drain and stop (see the module docstring)."""
    settings.auth.check_bind(settings.host, "the gateway")
    gateway = Gateway(settings)
    lifecycle = Lifecycle()
    try:
        config = uvicorn_config(create_app(gateway, settings, lifecycle), settings)
        config.load()  # reads the TLS files: a bad one stops here, before the port is taken
        server = uvicorn.Server(config)
        # uvicorn binds the port itself: asyncio then sets TCP_NODELAY on each connection (a
        # socket bound here would not get it, and every answer would wait for a delayed ACK).
        thread = threading.Thread(target=server.run, name="gateway", daemon=True)
        thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise SystemExit("the gateway's HTTP server did not start (see the log above)")
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        scheme = "https" if settings.https else "http"
        log.info("design studio on %s://%s:%d/", scheme, settings.host, port)
        try:
            yield RunningGateway(port, scheme, lifecycle)
        finally:
            lifecycle.draining = True
            log.info("draining: /readyz answers 503")
            time.sleep(settings.shutdown_delay)
            server.should_exit = True
            thread.join()
            log.info("stopped")
    finally:
        gateway.close()
