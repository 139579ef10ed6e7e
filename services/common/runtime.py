"""What every Atelier process shares at start-up (logs, traces, the metrics endpoint) and what
every gRPC service shares: server setup, interceptors, health, reflection and shutdown."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common import metrics, tracing
from services.common.auth import AuthSettings, server_interceptors
from services.common.backpressure import ConcurrencyLimiter
from services.common.logs import configure_logging
from services.common.settings import ProcessSettings
from services.common.tls import MAX_MESSAGE_BYTES, ServerTLS

log = logging.getLogger(__name__)

# Threads beyond the concurrency limit: health checks and refusals always find one free.
SPARE_THREADS = 4
MAX_CONNECTION_AGE_SECONDS = 300
CONNECTION_AGE_GRACE_SECONDS = 180  # above the longest deadline a client sets (120 s)


def bootstrap(process: str) -> None:
    """Start-up of every service and worker process: JSON logs, the tracer provider and the
    /metrics endpoint, all as the environment says (services.common.settings.ProcessSettings and
    OpenTelemetry's variables; services/common/{logs,tracing,metrics}.py)."""
    configure_logging(process=process)
    tracing.configure(process)
    metrics.serve_metrics()


# Details travel percent-encoded in a trailer (up to 3 bytes per UTF-8 byte), and clients
# refuse trailers over 8 KiB.
MAX_DETAILS_BYTES = 1000


def _capped(details: str | None) -> str | None:
    if details is None or len(details.encode()) <= MAX_DETAILS_BYTES:
        return details
    return details.encode()[: MAX_DETAILS_BYTES - 3].decode(errors="ignore") + "…"


class _CallerContext:
    """The servicer context with status details capped: a message that quotes a caller's
    megabyte-long value must not exceed the trailers' size limit (the client would see
    RESOURCE_EXHAUSTED instead of the status the service chose)."""

    def __init__(self, context: grpc.ServicerContext):
        self._context = context

    def __getattr__(self, name: str):
        return getattr(self._context, name)

    def abort(self, code: grpc.StatusCode, details: str = ""):
        self._context.abort(code, _capped(details))

    def set_details(self, details: str) -> None:
        self._context.set_details(_capped(details))


class CallerErrors(grpc.ServerInterceptor):
    """What callers get wrong is answered as their error, for every method of every service.

    A request whose bytes do not parse as its message is INVALID_ARGUMENT: grpc itself answers
    INTERNAL ("Exception deserializing request!"), which reads as a server bug and would hide
    real ones; so each method gets its request bytes and parses them here, and only DecodeError
    becomes the caller's fault. Status details are capped at MAX_DETAILS_BYTES."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer

        def parsed(raw: bytes, context):
            try:
                return parse(raw)
            except DecodeError:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed request message")

        def each(requests, context):
            for raw in requests:
                yield parsed(raw, context)

        if handler.unary_unary:
            behavior, wrap, make = handler.unary_unary, parsed, grpc.unary_unary_rpc_method_handler
        elif handler.unary_stream:
            behavior, wrap, make = (
                handler.unary_stream,
                parsed,
                grpc.unary_stream_rpc_method_handler,
            )
        elif handler.stream_unary:
            behavior, wrap, make = handler.stream_unary, each, grpc.stream_unary_rpc_method_handler
        else:
            behavior, wrap, make = (
                handler.stream_stream,
                each,
                grpc.stream_stream_rpc_method_handler,
            )

        def call(request, context):
            return behavior(wrap(request, context), _CallerContext(context))

        return make(
            call, request_deserializer=None, response_serializer=handler.response_serializer
        )


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    service_names: tuple[str, ...]
    limiter: ConcurrencyLimiter
    tls: ServerTLS

    def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service_names):
            self.health.set(name, status)


class UnavailableOn(grpc.ServerInterceptor):
    """Answer UNAVAILABLE (retry later), never UNKNOWN, when a backing store is unreachable.

    `errors` are the store client's connection errors (for Redis: down, restarting, or still
    loading its data); the reason names the store, never the error's text.
    """

    def __init__(self, errors: tuple[type[BaseException], ...], store: str):
        self.errors = errors
        self.message = f"{store} is unavailable; retry shortly"

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        def guarded(request, context):
            try:
                return inner(request, context)
            except self.errors as exc:
                log.warning("%s: %s", handler_call_details.method, exc)
                context.abort(grpc.StatusCode.UNAVAILABLE, self.message)

        return handler._replace(unary_unary=guarded)


@contextmanager
def grpc_server(
    register: Callable[[grpc.Server], None],
    service_names: tuple[str, ...],
    host: str = "127.0.0.1",
    port: int = 0,
    workers: int = 8,
    grace_seconds: float = 5.0,
    thread_initializer: Callable[[], None] | None = None,
    max_concurrent_rpcs: int | None = None,
    tls: ServerTLS | None = None,
    *,
    auth: AuthSettings | None,
    service_interceptors: Sequence[grpc.ServerInterceptor] = (),
) -> Iterator[RunningServer]:
    """A started server with health (NOT_SERVING until the caller says so) and reflection.

    Port 0 binds a free port; the bound one is on the result. At most `max_concurrent_rpcs`
    (default: env MAX_CONCURRENT_RPCS, else `workers`) RPCs run at once, beyond that they are
    refused with a retry hint (services/common/backpressure.py). TLS or mutual TLS as `tls` says
    (default: from the environment, services/common/tls.py). `auth` is how callers are checked
    (services/common/auth.py); only the internal model server passes None (no check at all).
    `service_interceptors` run last, next to the servicer (for example UnavailableOn).
    """
    if auth is not None:
        auth.check_bind(host, ", ".join(service_names))
    limit = max_concurrent_rpcs or ProcessSettings.from_env().max_concurrent_rpcs or workers
    tls = ServerTLS.from_env() if tls is None else tls
    limiter = ConcurrencyLimiter(limit)
    # The trace span comes first, then the RPC's metrics and failure log (inside the span, so
    # the log line carries the trace id): every RPC is traced and counted, refusals included.
    # The limiter is next: an RPC over the limit is refused before any other work is
    # done (the token check included, and without reading the request). CallerErrors follows: it
    # parses the request bytes itself, so a malformed message is INVALID_ARGUMENT (before the
    # token check, which cannot be reached without a parsed request) rather than grpc's INTERNAL,
    # and every status after it, authentication's included, has its details capped.
    interceptors: list[grpc.ServerInterceptor] = [
        *tracing.server_interceptors(),
        metrics.RpcObserver(count=metrics.metrics_enabled()),
        limiter,
        CallerErrors(),
        *server_interceptors(auth),
        *service_interceptors,
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=limit + SPARE_THREADS, initializer=thread_initializer
        ),
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Clients reconnect, and so re-resolve a name, at least this often: replicas an
            # autoscaler adds get traffic. RPCs in flight get the grace to finish.
            ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_SECONDS * 1000),
            ("grpc.max_connection_age_grace_ms", CONNECTION_AGE_GRACE_SECONDS * 1000),
        ],
    )
    register(server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{host}:{port}"
    if tls.enabled:
        bound = server.add_secure_port(address, tls.credentials())
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise SystemExit(f"could not bind {host}:{port}")
    server.start()
    running = RunningServer(server, bound, health_servicer, service_names, limiter, tls)
    running.set_serving(False)
    log.info(
        "listening on %s:%d (%s; %s; at most %d RPCs at once)",
        host,
        bound,
        ", ".join(service_names),
        tls.describe(),
        limit,
    )
    try:
        yield running
    finally:
        health_servicer.enter_graceful_shutdown()
        server.stop(grace_seconds).wait()


def wait_for_shutdown(running: RunningServer) -> None:
    """Block until SIGTERM or SIGINT, then flip health to NOT_SERVING; the caller's context stops the server."""
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("received %s, shutting down", signal.Signals(signum).name)
        running.health.enter_graceful_shutdown()
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
