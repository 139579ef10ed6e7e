"""Authentication and roles on the real suite: tokens in Redis, every service, the gateway, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from atelier.auth import Role, TokenStore
from atelier.catalogue import read_catalogue_csv
from atelier.processes import free_port, start_redis
from atelier.v1 import (
    common_pb2,
    decoder_pb2,
    decoder_pb2_grpc,
    encoder_pb2,
    encoder_pb2_grpc,
    recommender_pb2,
    recommender_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)
from services.common.auth import AuthInterceptor, AuthSettings, TokenCache, with_token
from services.common.launcher import local_suite, start_process
from services.common.runtime import grpc_server
from services.common.secrets import init_secrets
from services.common.tls import make_channel

pytestmark = pytest.mark.integration
CACHE_SECONDS = 1.0
ITEMS = 60


def _entries(csv_path, images):
    return [
        encoder_pb2.CatalogueEntry(
            item=common_pb2.Item(
                item_id=item.item_id,
                sub_category=item.sub_category,
                master_category=item.master_category,
                article_type=item.article_type,
                gender=item.gender,
                name=item.name,
                # By reference (under the default catalogue roots), so the gateway's image route
                # has a file to serve: an entry sent with its bytes is stored as "inline".
                image_ref=str(images / f"{item.item_id}.jpg"),
            ),
        )
        for item in read_catalogue_csv(csv_path)[:ITEMS]
    ]


@pytest.fixture(scope="module")
def suite(tmp_path_factory, models_dir, tiny_csv, tiny_images):
    work = tmp_path_factory.mktemp("auth-suite")
    env = {
        "ATELIER_AUTH_CACHE_SECONDS": str(CACHE_SECONDS),
        "KMEANS_K": "2",
        "GATEWAY_IMAGE_ROOT": str(tiny_csv.parent),
    }
    with local_suite(work, models_dir, workers=1, extra_env=env) as suite:
        with suite.channel("encoder") as channel:
            stub = encoder_pb2_grpc.EncoderServiceStub(channel)
            request = encoder_pb2.SubmitCatalogueRequest(
                entries=encoder_pb2.CatalogueEntries(entries=_entries(tiny_csv, tiny_images))
            )
            job = stub.SubmitCatalogue(request, timeout=60)
            deadline = time.monotonic() + 240
            while (
                stub.GetJob(encoder_pb2.GetJobRequest(job_id=job.job_id), timeout=5).state
                != common_pb2.JOB_STATE_SUCCEEDED
            ):
                assert time.monotonic() < deadline, "encoding the fixture items took too long"
                time.sleep(0.2)
            stub.ServeGeneration(
                encoder_pb2.ServeGenerationRequest(model_version=job.model_version), timeout=10
            )
        for name in ("decoder", "retrieval", "recommender"):
            suite.start_service(name)
        suite.add(
            start_process(
                "gateway", [sys.executable, "-m", "services.gateway"], suite.env, suite.log_dir
            )
        )
        from services.demo import wait_http

        wait_http(f"http://127.0.0.1:{suite.env['GATEWAY_PORT']}/healthz")
        suite.env["TEST_MODEL_VERSION"] = str(job.model_version)
        yield suite


@pytest.fixture(scope="module")
def tokens(suite) -> TokenStore:
    return TokenStore.from_url(suite.env["REDIS_URL"])


@pytest.fixture(scope="module")
def role_tokens(tokens) -> dict[Role, str]:
    return {role: tokens.create(f"test-{role.label}", role) for role in Role}


def _stubs(channel: grpc.Channel) -> dict[str, object]:
    return {
        "encoder": encoder_pb2_grpc.EncoderServiceStub(channel),
        "decoder": decoder_pb2_grpc.DecoderServiceStub(channel),
        "retrieval": retrieval_pb2_grpc.RetrievalServiceStub(channel),
        "recommender": recommender_pb2_grpc.RecommenderServiceStub(channel),
    }


# One cheap call per service: (service, method, request).
CALLS = [
    ("encoder", "GetJob", encoder_pb2.GetJobRequest(job_id="nope")),
    ("decoder", "ListCategories", decoder_pb2.ListCategoriesRequest()),
    (
        "retrieval",
        "Search",
        retrieval_pb2.SearchRequest(query=common_pb2.Query(item_id="1164"), k=2),
    ),
    (
        "recommender",
        "Recommend",
        recommender_pb2.RecommendRequest(query=common_pb2.Query(item_id="1164"), k=2),
    ),
]


def _call(suite, service: str, method: str, request, token: str | None):
    with with_token(make_channel(suite.env[f"{service.upper()}_ADDR"]), token) as ch:
        return getattr(_stubs(ch)[service], method)(request, timeout=10)


def _code(suite, service, method, request, token) -> grpc.StatusCode:
    try:
        _call(suite, service, method, request, token)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(("service", "method", "request_message"), CALLS)
def test_no_or_unknown_token_is_unauthenticated(suite, service, method, request_message):
    for token in (None, "not-a-token"):
        with pytest.raises(grpc.RpcError) as refused:
            _call(suite, service, method, request_message, token)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "token" in refused.value.details() or "credentials" in refused.value.details()


@pytest.mark.parametrize(("service", "method", "request_message"), CALLS)
def test_a_reader_may_query(suite, role_tokens, service, method, request_message):
    code = _code(suite, service, method, request_message, role_tokens[Role.READER])
    # GetJob of an unknown job gets past the check and is NOT_FOUND; the others answer.
    assert code == (grpc.StatusCode.NOT_FOUND if method == "GetJob" else grpc.StatusCode.OK)


def test_a_reader_cannot_submit_or_cancel(suite, role_tokens):
    reader = role_tokens[Role.READER]
    submit = encoder_pb2.SubmitCatalogueRequest(csv_path="/nowhere.csv")
    cancel = encoder_pb2.CancelJobRequest(job_id="nope")
    for method, request in (("SubmitCatalogue", submit), ("CancelJob", cancel)):
        with pytest.raises(grpc.RpcError) as refused:
            _call(suite, "encoder", method, request, reader)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "needs role writer" in refused.value.details()
    # The writer gets past the check: an unknown job is NOT_FOUND.
    code = _code(suite, "encoder", "CancelJob", cancel, role_tokens[Role.WRITER])
    assert code == grpc.StatusCode.NOT_FOUND


def test_only_an_admin_switches_the_served_generation(suite, role_tokens):
    version = int(suite.env["TEST_MODEL_VERSION"])
    serve = encoder_pb2.ServeGenerationRequest(model_version=version)
    remove = encoder_pb2.RemoveGenerationRequest(model_version=version)
    for role in (Role.READER, Role.WRITER):
        for method, request in (("ServeGeneration", serve), ("RemoveGeneration", remove)):
            with pytest.raises(grpc.RpcError) as refused:
                _call(suite, "encoder", method, request, role_tokens[role])
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, (role, method)
    reply = _call(suite, "encoder", "ServeGeneration", serve, role_tokens[Role.ADMIN])
    assert reply.model_version == version and reply.previous_version == version
    listing = _call(
        suite,
        "encoder",
        "ListGenerations",
        encoder_pb2.ListGenerationsRequest(),
        role_tokens[Role.READER],
    )
    assert listing.served_version == version
    assert [g.items for g in listing.generations if g.served] == [ITEMS]
    # Removing the served generation is refused by the domain, not by the role check.
    code = _code(suite, "encoder", "RemoveGeneration", remove, role_tokens[Role.ADMIN])
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    code = _code(
        suite,
        "encoder",
        "ServeGeneration",
        encoder_pb2.ServeGenerationRequest(model_version=999),
        role_tokens[Role.ADMIN],
    )
    assert code == grpc.StatusCode.NOT_FOUND


def test_a_query_by_photo_reaches_the_encoder_with_the_service_token(
    suite, role_tokens, tiny_images
):
    query = common_pb2.Query(image=(tiny_images / "1164.jpg").read_bytes())
    reply = _call(
        suite,
        "retrieval",
        "Search",
        retrieval_pb2.SearchRequest(query=query, k=3),
        role_tokens[Role.READER],
    )
    assert len(reply.results) == 3


def test_a_revoked_token_stops_working_within_the_cache_ttl(suite, tokens):
    token = tokens.create("test-revoked", Role.ADMIN)
    service, method, request = CALLS[1]
    assert _code(suite, service, method, request, token) == grpc.StatusCode.OK
    assert tokens.revoke("test-revoked") and not tokens.revoke("test-revoked")
    time.sleep(CACHE_SECONDS + 0.5)
    for service, method, request in CALLS:
        assert _code(suite, service, method, request, token) == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("service", ["encoder", "decoder", "retrieval", "recommender"])
def test_health_and_reflection_stay_open(suite, service):
    with make_channel(suite.env[f"{service.upper()}_ADDR"]) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        response = next(
            reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([request]), timeout=5
            )
        )
        names = {s.name for s in response.list_services_response.service}
        assert "grpc.health.v1.Health" in names and any(n.startswith("atelier.v1.") for n in names)


# --- the gateway ---


def _http(suite, method: str, path: str, token: str | None = None, body: bytes | None = None):
    url = f"http://127.0.0.1:{suite.env['GATEWAY_PORT']}{path}"
    request = urllib.request.Request(url, data=body, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_gateway_checks_tokens_and_roles(suite, role_tokens):
    reader, admin = role_tokens[Role.READER], role_tokens[Role.ADMIN]
    # The page and the health probe are open.
    assert _http(suite, "GET", "/")[0] == 200
    assert _http(suite, "GET", "/healthz")[0] == 200
    for path in ("/api/categories", "/api/start", "/api/image/1164", "/api/generations"):
        status, headers, body = _http(suite, "GET", path)
        assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Bearer"), path
        assert _http(suite, "GET", path, "garbage")[0] == 401, path
    for path in ("/api/decode", "/api/recommend", "/api/encode", "/api/generations/serve"):
        assert _http(suite, "POST", path, body=b"{}")[0] == 401, path
    status, _, body = _http(suite, "GET", "/api/categories", reader)
    assert status == 200 and json.loads(body)["categories"]
    status, headers, body = _http(suite, "GET", "/api/image/1164", reader)
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
    version = int(suite.env["TEST_MODEL_VERSION"])
    serve = json.dumps({"model_version": version}).encode()
    for role in (Role.READER, Role.WRITER):
        status, _, body = _http(suite, "POST", "/api/generations/serve", role_tokens[role], serve)
        assert status == 403 and "needs role admin" in json.loads(body)["error"], role
    status, _, body = _http(suite, "POST", "/api/generations/serve", admin, serve)
    assert status == 200 and json.loads(body)["model_version"] == version


# --- the CLI ---


def _atelier(suite, *args: str, env: dict[str, str] | None = None):
    import os

    full_env = {**os.environ, **suite.env, "ATELIER_TOKEN": "", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=full_env,
    )


def test_tokens_commands(suite, tmp_path):
    redis_url = suite.env["REDIS_URL"]
    created = _atelier(
        suite, "tokens", "create", "cli-reader", "--role", "reader", "--redis", redis_url
    )
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert len(token) >= 40 and "shown only now" in created.stderr
    again = _atelier(
        suite, "tokens", "create", "cli-reader", "--role", "admin", "--redis", redis_url
    )
    assert again.returncode == 2 and "exists" in again.stderr
    listing = _atelier(suite, "tokens", "list", "--redis", redis_url)
    assert listing.returncode == 0
    line = next(li for li in listing.stdout.splitlines() if li.startswith("cli-reader"))
    assert "reader" in line and token not in listing.stdout  # only hashes are kept
    stored = TokenStore.from_url(redis_url).redis
    assert not any(token.encode() in k for k in stored.keys("atelier:auth:*"))

    token_file = tmp_path / "reader.token"
    token_file.write_text(token + "\n")
    similar = _atelier(
        suite, "similar", "--item", "1164", "-k", "2", "--token-file", str(token_file)
    )
    assert similar.returncode == 0, similar.stderr
    listed = _atelier(suite, "generations", "list", env={"ATELIER_TOKEN": token})
    assert listed.returncode == 0 and "(served)" in listed.stdout, listed.stderr
    refused = _atelier(
        suite, "generations", "serve", suite.env["TEST_MODEL_VERSION"], "--token", token
    )
    assert refused.returncode == 2 and "PERMISSION_DENIED" in refused.stderr
    anonymous = _atelier(suite, "similar", "--item", "1164")
    assert anonymous.returncode == 2 and "UNAUTHENTICATED" in anonymous.stderr

    revoked = _atelier(suite, "tokens", "revoke", "cli-reader", "--redis", redis_url)
    assert revoked.returncode == 0
    assert "cli-reader" not in _atelier(suite, "tokens", "list", "--redis", redis_url).stdout
    assert _atelier(suite, "tokens", "revoke", "cli-reader", "--redis", redis_url).returncode == 2


# --- pieces that need their own Redis ---


def test_init_secrets_is_idempotent(tmp_path):
    redis_server = start_redis(tmp_path / "redis")
    try:
        store = TokenStore.from_url(redis_server.url)
        wanted = {"admin": "admin", "retrieval": "reader"}
        secrets = tmp_path / "secrets"
        assert init_secrets(store, secrets, wanted) == {"admin": "created", "retrieval": "created"}
        admin = (secrets / "admin.token").read_text().strip()
        assert (secrets / "admin.token").stat().st_mode & 0o777 == 0o400
        assert store.lookup(admin).role == Role.ADMIN
        assert init_secrets(store, secrets, wanted) == {"admin": "kept", "retrieval": "kept"}
        assert (secrets / "admin.token").read_text().strip() == admin
        # A missing file: a new token, and the old one revoked.
        old_reader = (secrets / "retrieval.token").read_text().strip()
        (secrets / "retrieval.token").unlink()
        assert init_secrets(store, secrets, wanted)["retrieval"] == "created"
        assert store.lookup(old_reader) is None
        assert store.lookup((secrets / "retrieval.token").read_text().strip()).name == "retrieval"
        # Redis lost its tokens: the files are registered again, unchanged.
        store.redis.flushdb()
        assert init_secrets(store, secrets, wanted) == {
            "admin": "registered again",
            "retrieval": "registered again",
        }
        assert store.lookup(admin).role == Role.ADMIN
        # A new role for an existing name keeps the token and changes its role.
        assert init_secrets(store, secrets, {"retrieval": "writer"})["retrieval"] == "role changed"
        assert store.get("retrieval").role == Role.WRITER
    finally:
        redis_server.stop()


def _echo_server(redis_url: str, method_roles=None):
    """A real gRPC server through grpc_server whose one RPC (RetrievalService/Search) answers
    an empty reply: the interceptor in front of it is the thing under test."""
    handler = grpc.method_handlers_generic_handler(
        "atelier.v1.RetrievalService",
        {
            "Search": grpc.unary_unary_rpc_method_handler(
                lambda request, context: retrieval_pb2.SearchResponse(model_version=7),
                request_deserializer=retrieval_pb2.SearchRequest.FromString,
                response_serializer=retrieval_pb2.SearchResponse.SerializeToString,
            )
        },
    )
    auth = AuthSettings(
        mode="token", redis_url=redis_url, cache_seconds=0, token=None, token_file=None
    )
    return grpc_server(
        lambda server: server.add_generic_rpc_handlers((handler,)),
        ("atelier.v1.RetrievalService",),
        auth=auth,
    )


def test_a_token_store_outage_is_unavailable_and_health_stays_open(tmp_path):
    redis_server = start_redis(tmp_path / "redis")
    token = TokenStore.from_url(redis_server.url).create("outage", Role.READER)
    try:
        with _echo_server(redis_server.url) as running:
            running.set_serving(True)
            channel = with_token(make_channel(f"127.0.0.1:{running.port}"), token)
            with channel:
                search = retrieval_pb2_grpc.RetrievalServiceStub(channel).Search
                assert search(retrieval_pb2.SearchRequest(), timeout=5).model_version == 7
                redis_server.stop()
                with pytest.raises(grpc.RpcError) as refused:
                    search(retrieval_pb2.SearchRequest(), timeout=20)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "redis" not in refused.value.details().lower()
                health = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
                assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        redis_server.stop()


def test_a_method_missing_from_the_role_table_is_denied(tmp_path):
    redis_server = start_redis(tmp_path / "redis")
    try:
        store = TokenStore.from_url(redis_server.url)
        token = store.create("fail-closed", Role.ADMIN)
        interceptor = AuthInterceptor(TokenCache(store, 0).lookup, method_roles={})
        server = grpc.server(futures.ThreadPoolExecutor(2), interceptors=[interceptor])
        handler = grpc.method_handlers_generic_handler(
            "atelier.v1.RetrievalService",
            {
                "Search": grpc.unary_unary_rpc_method_handler(
                    lambda request, context: retrieval_pb2.SearchResponse(),
                    request_deserializer=retrieval_pb2.SearchRequest.FromString,
                    response_serializer=retrieval_pb2.SearchResponse.SerializeToString,
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
        server.start()
        try:
            channel = with_token(make_channel(f"127.0.0.1:{port}"), token)
            with channel, pytest.raises(grpc.RpcError) as refused:
                retrieval_pb2_grpc.RetrievalServiceStub(channel).Search(
                    retrieval_pb2.SearchRequest(), timeout=5
                )
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        finally:
            server.stop(0)
    finally:
        redis_server.stop()
