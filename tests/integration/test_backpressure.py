"""Back-pressure: RPCs over a server's concurrency limit are refused at once with a retry hint,
health still answers, slots are given back, and clients retry after the hint."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.backpressure import PUSHBACK_KEY, RETRY_AFTER_KEY
from services.common.launcher import local_suite
from services.common.model_client import ModelClient
from services.common.runtime import grpc_server
from services.common.tls import ClientTLS, ServerTLS, make_channel

pytestmark = pytest.mark.integration
PLAINTEXT = ClientTLS()


class Held:
    """A service whose Hold call works until the test lets it go."""

    def __init__(self):
        self.gate = threading.Event()
        self.started = threading.Semaphore(0)
        self.calls = 0

    def hold(self, request: bytes, context) -> bytes:
        self.calls += 1
        self.started.release()
        self.gate.wait(30)
        return b"done:" + request

    def register(self, server: grpc.Server) -> None:
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "test.Held", {"Hold": grpc.unary_unary_rpc_method_handler(self.hold)}
                ),
            )
        )


@pytest.fixture()
def held():
    service = Held()
    with grpc_server(
        service.register, ("test.Held",), max_concurrent_rpcs=2, tls=ServerTLS(), auth=None
    ) as running:
        running.set_serving(True)
        yield service, running
        service.gate.set()


def _metadata(error: grpc.RpcError) -> dict[str, str]:
    return {item.key: item.value for item in error.trailing_metadata() or ()}


def test_the_call_over_the_limit_is_refused_at_once_with_a_hint(held):
    service, running = held
    with make_channel(f"127.0.0.1:{running.port}", PLAINTEXT) as channel:
        call = channel.unary_unary("/test.Held/Hold")
        busy = [call.future(b"a", timeout=30), call.future(b"b", timeout=30)]
        for _ in busy:
            assert service.started.acquire(timeout=10)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:
            call(b"c", timeout=30)
        elapsed = time.monotonic() - started
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert elapsed < 1.0, f"the refusal took {elapsed:.2f}s: it waited instead of refusing"
        hint = _metadata(refused.value)
        assert int(hint[RETRY_AFTER_KEY]) > 0 and hint[PUSHBACK_KEY] == hint[RETRY_AFTER_KEY]
        assert f"retry after {hint[RETRY_AFTER_KEY]} ms" in refused.value.details()
        assert "limit 2" in refused.value.details()
        assert service.calls == 2  # the refused call never reached the service
        # Health is never refused: the service still says SERVING while it is full.
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=2
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        service.gate.set()
        assert [f.result() for f in busy] == [b"done:a", b"done:b"]
        assert call(b"d", timeout=10) == b"done:d"
    assert running.limiter.in_flight == 0
    assert (running.limiter.admitted, running.limiter.refused) == (3, 1)


def test_a_slot_is_held_until_the_work_ends_even_when_the_caller_gave_up(held):
    service, running = held
    with make_channel(f"127.0.0.1:{running.port}", PLAINTEXT) as channel:
        call = channel.unary_unary("/test.Held/Hold")
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as gave_up:
                call(b"slow", timeout=0.3)
            assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # Their work goes on, so the server is still full, and says so.
        assert running.limiter.in_flight == 2
        with pytest.raises(grpc.RpcError) as refused:
            call(b"x", timeout=5)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        service.gate.set()
        deadline = time.monotonic() + 10
        while running.limiter.in_flight and time.monotonic() < deadline:
            time.sleep(0.02)
        assert running.limiter.in_flight == 0
        assert call(b"y", timeout=10) == b"done:y"


def test_clients_retry_after_the_hint(held):
    service, running = held
    with make_channel(f"127.0.0.1:{running.port}", PLAINTEXT, retry_overload=True) as channel:
        call = channel.unary_unary("/test.Held/Hold")
        busy = [call.future(b"a", timeout=30), call.future(b"b", timeout=30)]
        for _ in busy:
            assert service.started.acquire(timeout=10)
        # A slot frees 0.15 s from now; the retried call gets it.
        threading.Timer(0.15, service.gate.set).start()
        assert call(b"c", timeout=10) == b"done:c"
        assert running.limiter.refused >= 1
        assert [f.result() for f in busy] == [b"done:a", b"done:b"]
        # While the server stays full, retries stop after a few attempts, well within the deadline.
        service.gate.clear()
        busy = [call.future(b"d", timeout=30), call.future(b"e", timeout=30)]
        for _ in busy:
            assert service.started.acquire(timeout=10)
        refused_before = running.limiter.refused
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:
            call(b"f", timeout=20)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert running.limiter.refused - refused_before == 4  # maxAttempts of the retry policy
        assert time.monotonic() - started < 5
        service.gate.set()


def test_the_limiter_comes_before_the_token_check(tmp_path):
    """Interceptors run [limiter, auth]: a full server refuses at once whoever calls, without
    looking a token up; within the limit the token check applies as usual."""
    from atelier.auth import Role, TokenStore
    from atelier.processes import start_redis
    from services.common.auth import AuthSettings, with_token

    redis_server = start_redis(tmp_path / "redis")
    try:
        token = TokenStore.from_url(redis_server.url).create("held", Role.READER)
        auth = AuthSettings(
            mode="token", redis_url=redis_server.url, cache_seconds=0, token=None, token_file=None
        )
        service = Held()
        handler = grpc.method_handlers_generic_handler(
            "atelier.v1.RetrievalService",
            {"Search": grpc.unary_unary_rpc_method_handler(service.hold)},
        )
        with grpc_server(
            lambda server: server.add_generic_rpc_handlers((handler,)),
            ("atelier.v1.RetrievalService",),
            max_concurrent_rpcs=1,
            tls=ServerTLS(),
            auth=auth,
        ) as running:
            running.set_serving(True)
            address = f"127.0.0.1:{running.port}"
            method = "/atelier.v1.RetrievalService/Search"
            with (
                make_channel(address, PLAINTEXT) as plain,
                with_token(make_channel(address, PLAINTEXT), token) as signed,
            ):
                with pytest.raises(grpc.RpcError) as anonymous:
                    plain.unary_unary(method)(b"x", timeout=5)
                assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
                busy = signed.unary_unary(method).future(b"a", timeout=30)
                assert service.started.acquire(timeout=10)
                with pytest.raises(grpc.RpcError) as refused:
                    plain.unary_unary(method)(b"y", timeout=5)
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                service.gate.set()
                assert busy.result() == b"done:a"
                assert service.calls == 1
                assert (running.limiter.admitted, running.limiter.refused) == (2, 1)
    finally:
        redis_server.stop()


@pytest.fixture(scope="module")
def limited_model_server(tmp_path_factory, models_dir):
    """The real model server, allowed one RPC at a time."""
    env = {"MAX_CONCURRENT_RPCS": "1"}
    with local_suite(
        tmp_path_factory.mktemp("limited"),
        models_dir,
        workers=0,
        services=("modelserver",),
        extra_env=env,
    ) as suite:
        yield suite


def test_the_model_server_refuses_overload_quickly_and_stays_healthy(limited_model_server):
    address = limited_model_server.env["MODEL_SERVER_ADDR"]
    client = ModelClient(address, timeout=60, tls=PLAINTEXT)
    shape = client.shape()
    images = np.random.default_rng(0).random(
        (64, shape.image_height, shape.image_width, 3), dtype=np.float32
    )

    def predict(_index: int) -> tuple[str, float, dict[str, str]]:
        started = time.monotonic()
        try:
            client.encode(images, shape.version)
            return "OK", time.monotonic() - started, {}
        except grpc.RpcError as error:
            return error.code().name, time.monotonic() - started, _metadata(error)

    try:
        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(predict, range(8)))
            with make_channel(address, PLAINTEXT) as channel:
                health = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
        codes = [code for code, _, _ in outcomes]
        assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, outcomes  # never DEADLINE_EXCEEDED
        assert "OK" in codes and "RESOURCE_EXHAUSTED" in codes, outcomes
        for code, seconds, metadata in outcomes:
            if code == "RESOURCE_EXHAUSTED":
                assert seconds < 1.0 and int(metadata[RETRY_AFTER_KEY]) > 0, outcomes
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        client.close()
