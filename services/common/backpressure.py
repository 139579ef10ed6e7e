"""Back-pressure: a bound on the RPCs a server works on at once, and a quick, hinted refusal beyond it.

`ConcurrencyLimiter` is the outermost interceptor of every server (`runtime.grpc_server`). An RPC
over the limit is answered RESOURCE_EXHAUSTED at once, with a retry hint in its details and in the
trailing metadata (`retry-after-ms`, and `grpc-retry-pushback-ms`, which gRPC clients with a retry
policy honour), instead of waiting in the thread pool's queue until its deadline passes. Health
and reflection are never refused, so an overloaded service still reports SERVING.

grpc.server's own `maximum_concurrent_rpcs` is not used: it counts health checks as well, and
refuses with a bare "Concurrent RPC limit exceeded!", with no hint of when to come back.

An admitted RPC holds its slot until its handler has returned, whatever happens to it: a caller
that gives up does not stop the work its call started, so the slot stays taken until the thread
is free again. Unary requests are read by the wrapper itself (as a one-message stream): a stream
handler is always called, even for a call cancelled while it waited for a thread, so its slot is
always given back. A streaming response also gives it back when the call ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import grpc

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
RETRY_AFTER_KEY = "retry-after-ms"
PUSHBACK_KEY = "grpc-retry-pushback-ms"  # gRFC A6: server pushback, read by gRPC's retries


class ConcurrencyLimiter(grpc.ServerInterceptor):
    """At most `limit` RPCs in flight; the retry hint is the recent mean RPC time, clamped."""

    def __init__(
        self,
        limit: int,
        initial_hint_ms: int = 100,
        min_hint_ms: int = 10,
        max_hint_ms: int = 5000,
    ):
        if limit < 1:
            raise ValueError("the concurrency limit must be at least 1")
        self.limit = limit
        self._bounds = (min_hint_ms, max_hint_ms)
        self._mean_ms = float(initial_hint_ms)
        self._lock = threading.Lock()
        self._in_flight = 0
        self.admitted = 0
        self.refused = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def retry_after_ms(self) -> int:
        low, high = self._bounds
        return int(min(high, max(low, self._mean_ms)))

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(EXEMPT_PREFIXES):
            return handler
        with self._lock:
            if self._in_flight >= self.limit:
                self.refused += 1
                return self._refusal(handler, self._in_flight, self.retry_after_ms())
            self._in_flight += 1
            self.admitted += 1
        return self._admitted(handler, self._releaser())

    def _releaser(self) -> Callable[[], None]:
        started = time.monotonic()
        done = threading.Event()

        def release() -> None:
            with self._lock:
                if done.is_set():
                    return
                done.set()
                self._in_flight -= 1
                elapsed_ms = (time.monotonic() - started) * 1000
                self._mean_ms += 0.2 * (elapsed_ms - self._mean_ms)

        return release

    def _refusal(self, handler: grpc.RpcMethodHandler, in_flight: int, hint_ms: int):
        # Never reads the request: refusing costs no wait for the client's message.
        def refuse(_requests, context: grpc.ServicerContext):
            context.set_trailing_metadata(
                ((RETRY_AFTER_KEY, str(hint_ms)), (PUSHBACK_KEY, str(hint_ms)))
            )
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"server busy: {in_flight} requests in flight (limit {self.limit}); "
                f"retry after {hint_ms} ms",
            )

        factory = (
            grpc.stream_stream_rpc_method_handler
            if handler.response_streaming
            else grpc.stream_unary_rpc_method_handler
        )
        return factory(
            refuse,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    @staticmethod
    def _admitted(handler: grpc.RpcMethodHandler, release: Callable[[], None]):
        def hold(context: grpc.ServicerContext) -> None:
            # A response stream that is never started never runs its `finally`: release when
            # the call ends (status sent or cancelled), or at once if it already has.
            if not context.add_callback(release):
                release()

        def one_request(requests: Iterator, context: grpc.ServicerContext):
            try:
                return next(requests)
            except StopIteration:
                context.abort(grpc.StatusCode.UNIMPLEMENTED, "exactly one request message expected")

        def released_after(responses: Iterator) -> Iterator:
            try:
                yield from responses
            finally:
                release()

        if handler.request_streaming and handler.response_streaming:
            inner, factory = handler.stream_stream, grpc.stream_stream_rpc_method_handler

            def behavior(requests, context):
                hold(context)
                return released_after(inner(requests, context))

        elif handler.response_streaming:
            inner, factory = handler.unary_stream, grpc.stream_stream_rpc_method_handler

            def behavior(requests, context):
                hold(context)
                return released_after(inner(one_request(requests, context), context))

        elif handler.request_streaming:
            inner, factory = handler.stream_unary, grpc.stream_unary_rpc_method_handler

            def behavior(requests, context):
                try:
                    return inner(requests, context)
                finally:
                    release()

        else:
            inner, factory = handler.unary_unary, grpc.stream_unary_rpc_method_handler

            def behavior(requests, context):
                try:
                    return inner(one_request(requests, context), context)
                finally:
                    release()

        return factory(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
