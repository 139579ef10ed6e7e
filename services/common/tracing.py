"""OpenTelemetry tracing with the official instrumentations: gRPC servers and channels, Celery
(publish and run, context carried in the task headers) and Redis.

`configure(process)` installs the SDK's tracer provider once per process, as the standard
variables say: OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) records spans
and sends them over OTLP/gRPC in batches; without it, trace ids are still made and passed on (so
log lines carry them) but spans are not recorded, unless OTEL_TRACES_SAMPLER asks otherwise or an
upstream caller sampled the trace; OTEL_SDK_DISABLED=true turns tracing off entirely (no ids, no
interceptors); OTEL_SERVICE_NAME overrides the service name. Health checks make no spans, and no trace starts
at a client call made outside a request (`RequestRoots`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence

import grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import client_interceptor, filters, server_interceptor
from opentelemetry.instrumentation.grpc.grpcext import intercept_channel
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import SpanKind

log = logging.getLogger(__name__)


class RequestRoots(Sampler):
    """Traces start where a request or a task does (a server or consumer span), never at a call
    made outside one: a background loop's Redis polls and its calls (following changes,
    scanning jobs, a Celery worker waiting for tasks) would be a root trace every second."""

    def __init__(self, delegate: Sampler = ALWAYS_ON):
        self.delegate = delegate

    def should_sample(
        self,
        parent_context,
        trace_id,
        name,
        kind=None,
        attributes=None,
        links=None,
        trace_state=None,
    ):
        if kind is SpanKind.CLIENT:
            return SamplingResult(Decision.DROP)
        return self.delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"RequestRoots{{{self.delegate.get_description()}}}"


RECORDED = ParentBased(RequestRoots())
UNEXPORTED = ParentBased(ALWAYS_OFF)
_lock = threading.Lock()
_provider: TracerProvider | None = None


def disabled() -> bool:
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def enabled() -> bool:
    """Whether this process records spans (configure() ran and tracing is not disabled)."""
    return _provider is not None


def _exporter_wanted() -> bool:
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def configure(process: str, processors: Sequence[SpanProcessor] = ()) -> TracerProvider | None:
    """Install the tracer provider for this process (once; later calls return the first) and
    instrument Redis clients. `processors` are added to it (tests pass an in-memory exporter's);
    None when OTEL_SDK_DISABLED=true."""
    global _provider
    if disabled():
        return None
    with _lock:
        if _provider is not None:
            for processor in processors:
                _provider.add_span_processor(processor)
            return _provider
        name = os.environ.get("OTEL_SERVICE_NAME") or f"atelier-{process}"
        exporting = _exporter_wanted() or bool(processors)
        # Nothing to send the spans to: trace ids are still made and passed on (log lines carry
        # them), but no span is recorded unless the caller's trace was sampled upstream.
        if os.environ.get("OTEL_TRACES_SAMPLER"):
            sampler = None  # the SDK reads it
        else:
            sampler = RECORDED if exporting else UNEXPORTED
        provider = TracerProvider(resource=Resource.create({"service.name": name}), sampler=sampler)
        for processor in processors:
            provider.add_span_processor(processor)
        if _exporter_wanted():
            # Imported only when asked for: the exporter pulls in its own gRPC stubs.
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            log.info("exporting traces over OTLP")
        trace.set_tracer_provider(provider)
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        RedisInstrumentor().instrument(tracer_provider=provider)
        _provider = provider
        return provider


def shutdown() -> None:
    """Flush spans still queued for export (at a clean exit)."""
    if _provider is not None:
        _provider.shutdown()


def server_interceptors() -> list[grpc.ServerInterceptor]:
    """The server span of every RPC but health checks (probes every few seconds), in the
    caller's trace when its metadata carries one."""
    if not enabled():
        return []
    not_health = filters.negate(filters.service_name("grpc.health.v1.Health"))
    return [server_interceptor(tracer_provider=_provider, filter_=not_health)]


def traced_channel(channel: grpc.Channel) -> grpc.Channel:
    """`channel` with a client span per call and the trace context sent in the metadata."""
    if not enabled():
        return channel
    return intercept_channel(channel, client_interceptor(tracer_provider=_provider))


def instrument_celery() -> None:
    """Spans for publishing tasks (the producer) and running them (a worker's pool process),
    linked through the task headers. Call after configure(), in the process that publishes or
    runs (after fork, for pool processes)."""
    if not enabled():
        return
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    instrumentor = CeleryInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=_provider)


def current_trace_id() -> str | None:
    """The active span's trace id as 32 hex digits; None outside a recorded trace."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
