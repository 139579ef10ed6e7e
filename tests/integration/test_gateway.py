"""The studio gateway (FastAPI under uvicorn) over raw sockets: strict framing and JSON,
keep-alive kept in sync after errors, bodies limited while they stream in, slow clients cut off,
gRPC statuses mapped to HTTP without leaking backend details, /healthz on the gateway's own
long-lived channels, the probes, the OpenAPI document, HTTP metrics by route template and a
graceful shutdown. Real processes: Redis, model server, encoder, worker, the query services and
the gateway, started by services/common/launcher.py, with authentication on: requests to /api/
routes carry the suite's admin token (framing errors, 404 and 405 come before the token check)."""

from __future__ import annotations

import json
import select
import signal
import socket
import threading
import time
import urllib.request
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from atelier.modelinfo import read_metadata
from atelier.processes import free_port
from atelier.v1 import (
    common_pb2,
    decoder_pb2_grpc,
    encoder_pb2,
    encoder_pb2_grpc,
)
from bench.studio_roundtrip import studio_suite
from services.gateway import schemas

pytestmark = pytest.mark.integration
# The committed model served by the suite: requests carry codes of its size.
LATENT_DIM = read_metadata(Path(__file__).resolve().parents[2] / "models").latent_dim
SECRET = "secret-detail-/srv/private/key.pem-10.0.0.7"
# The suite's admin token, sent by post() and get() (set by the suite fixture).
TOKEN: dict[str, str] = {}


def _auth() -> str:
    return f"Authorization: Bearer {TOKEN['value']}\r\n" if TOKEN.get("value") else ""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


class Connection:
    """One keep-alive connection that sends raw bytes and reads HTTP/1.1 responses."""

    def __init__(self, address: str):
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.reader = self.sock.makefile("rb")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def send(self, raw: bytes) -> None:
        self.sock.sendall(raw)

    def read(self, body: bool = True) -> Response:
        status_line = self.reader.readline()
        assert status_line.startswith(b"HTTP/1."), f"no HTTP response: {status_line!r}"
        status = int(status_line.split()[1])
        headers = {}
        while (line := self.reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", 0)) if body else 0
        return Response(status, headers, self.reader.read(length))

    def exchange(self, raw: bytes) -> Response:
        self.send(raw)
        return self.read()

    def closed_by_server(self) -> bool:
        self.sock.settimeout(5)
        try:
            return self.reader.read(1) == b""
        except ConnectionResetError:
            return True


def post(path: str, body: bytes, headers: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{_auth()}{headers}\r\n"
    ).encode() + body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n{_auth()}\r\n".encode()


def code_body(**fields) -> bytes:
    return json.dumps({"code": [0.1] * LATENT_DIM, **fields}).encode()


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    work = tmp_path_factory.mktemp("gateway")
    with studio_suite(work, {"GATEWAY_READ_TIMEOUT_SECONDS": "3"}) as suite:
        assert suite.token, "the launcher makes an admin token with auth on"
        TOKEN["value"] = suite.token
        yield suite
        TOKEN.clear()


@pytest.fixture()
def conn(suite):
    connection = Connection(suite.env["GATEWAY_ADDR"])
    yield connection
    connection.close()


def test_good_requests_share_one_connection(conn):
    decoded = conn.exchange(post("/api/decode", code_body()))
    assert decoded.status == 200 and decoded.body.startswith(b"\x89PNG")
    assert decoded.headers["x-request-id"]
    recommended = conn.exchange(post("/api/recommend", code_body(k=3, method="loglik")))
    assert recommended.status == 200 and len(recommended.json()["similar"]) == 3
    assert conn.exchange(get("/api/categories")).json()["categories"]


def test_api_routes_need_a_token_and_the_connection_stays_in_sync(conn):
    body = code_body()
    raw = f"POST /api/decode HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n"
    response = conn.exchange(raw.encode() + body)
    assert response.status == 401 and response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert "connection" not in response.headers  # the body was read: keep-alive goes on
    assert conn.exchange(post("/api/decode", body)).status == 200
    wrong = raw.replace("\r\n\r\n", "\r\nAuthorization: Bearer nope\r\n\r\n")
    assert conn.exchange(wrong.encode() + body).status == 401
    assert conn.exchange(get("/api/categories")).status == 200


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"k": 1e400}', "out of range"),
        (b'{"code": [1e400]}', "out of range"),
        (b'{"code": [NaN]}', "not a JSON number"),
        (b'{"code": [-Infinity]}', "not a JSON number"),
        (b"[1, 2, 3]", "must be a JSON object"),
        (b'"code"', "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (b'{"code": ', "invalid JSON"),
        (b"\xff\xfe{}", "UTF-8"),
        (b"[" * 200_000, "invalid JSON"),
        (b'{"code": [' + b"9" * 5000 + b"]}", "invalid JSON"),
        (b'{"code": [1, true]}', "code[1] must be a number"),
        (b'{"code": "0.1"}', "list of numbers"),
        (code_body(k=True), "k must be an integer"),
        (code_body(k=0), "k must be an integer"),
        (code_body(k=10**30), "k must be an integer"),
        (code_body(method="nope"), "unknown method"),
        (code_body(gender="\ud800"), "not valid Unicode"),
        (code_body(match_gender="yes"), "true or false"),
        (code_body(kk=1), "unknown field 'kk'"),
    ],
)
def test_bad_json_is_400_and_the_connection_stays_in_sync(conn, body, reason):
    response = conn.exchange(post("/api/recommend", body))
    assert response.status == 400, response.body
    assert reason in response.json()["error"]
    assert "connection" not in response.headers  # the body was read whole: keep-alive goes on
    follow_up = conn.exchange(post("/api/decode", code_body()))
    assert follow_up.status == 200 and follow_up.body.startswith(b"\x89PNG")


@pytest.mark.parametrize("length", ["abc", "-1", "+12", "1_2", " 1 2", "0x10", "١٢", "1.5"])
def test_a_bad_content_length_is_400_and_closes(conn, length):
    raw = f"POST /api/decode HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\n"
    response = conn.exchange(raw.encode("utf-8") + b"12")
    assert response.status == 400
    assert "Content-Length" in response.json()["error"]
    assert response.headers["connection"] == "close"
    assert conn.closed_by_server()


def test_two_content_lengths_or_both_framings_are_refused(conn, suite):
    raw = (
        b"POST /api/decode HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}"
    )
    response = conn.exchange(raw)
    assert response.status == 400 and "Content-Length" in response.json()["error"]
    assert response.headers["connection"] == "close"
    other = Connection(suite.env["GATEWAY_ADDR"])
    try:
        both = b"POST /api/decode HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        response = other.exchange(both)
        assert response.status == 400 and response.headers["connection"] == "close"
        assert other.closed_by_server()
    finally:
        other.close()


def test_a_chunked_body_is_read_and_the_connection_stays_in_sync(conn):
    # uvicorn (h11) reads chunked bodies; the gateway counts their bytes against the limit.
    chunked = b"POST /api/decode HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
    body = code_body()
    response = conn.exchange(
        chunked + _auth().encode() + f"\r\n{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    )
    assert response.status == 200 and response.body.startswith(b"\x89PNG")
    empty = conn.exchange(chunked + _auth().encode() + b"\r\n2\r\n{}\r\n0\r\n\r\n")
    assert empty.status == 400 and "code is required" in empty.json()["error"]
    assert "connection" not in empty.headers
    assert conn.exchange(get("/api/categories")).status == 200


@pytest.mark.parametrize(
    ("path", "length", "status"),
    # JSON takes 1 MiB. A length of 5000 digits is refused by h11 itself, before any route: it
    # is not a number Python parses (int() stops at 4300 digits), so 400 rather than 413.
    [
        ("/api/encode", 99_999_999_999_999, 413),
        ("/api/decode", 2_000_000, 413),
        ("/api/decode", "9" * 5000, 400),
    ],
)
def test_a_huge_content_length_is_refused_without_reading_the_body(conn, path, length, status):
    raw = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\n".encode()
    response = conn.exchange(raw)
    assert response.status == status
    assert "Content-Length" in response.json()["error"] or status == 413
    assert response.headers["connection"] == "close"
    assert conn.closed_by_server()


def test_a_chunked_body_over_the_limit_is_413_while_it_streams(suite):
    """The JSON limit is 1 MiB; the client would send 64 MiB in 64 KiB chunks. The answer
    comes once the limit is passed, and the connection closes, without the rest being read."""
    connection = Connection(suite.env["GATEWAY_ADDR"])
    chunk = b"x" * 65536
    sent, planned = 0, 64 * 1024 * 1024
    try:
        connection.send(
            b"POST /api/decode HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
            + _auth().encode()
            + b"\r\n"
        )
        while sent < planned and not select.select([connection.sock], [], [], 0)[0]:
            try:
                connection.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except OSError:  # the gateway closed its end: its answer is waiting
                break
            sent += len(chunk)
        response = connection.read()
        assert response.status == 413 and "over 1048576 bytes" in response.json()["error"]
        assert response.headers["connection"] == "close"
        # What was sent past the limit is what the kernels' socket buffers hold, not the rest.
        assert sent < 16 * 1024 * 1024
        assert connection.closed_by_server()
    finally:
        connection.close()


def test_pipelined_requests_after_an_error_stay_in_sync(conn):
    # The first body looks like a request of its own; it must be read as a body, not smuggled.
    smuggled = b"GET /api/categories HTTP/1.1\r\nHost: t\r\n\r\n"
    conn.send(
        post("/api/decode", smuggled)
        + get("/nowhere")
        + b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
        + post("/api/decode", code_body())
    )
    first, second, third, fourth = (conn.read() for _ in range(4))
    assert first.status == 400 and "invalid JSON" in first.json()["error"]
    assert second.status == 404
    assert third.status == 200 and third.json()["serving"] is True
    assert fourth.status == 200 and fourth.body.startswith(b"\x89PNG")


def test_wrong_method_is_405_with_allow(conn):
    response = conn.exchange(get("/api/decode"))
    assert response.status == 405 and response.headers["allow"] == "POST"
    response = conn.exchange(post("/api/categories", b""))
    assert response.status == 405 and response.headers["allow"] == "GET"


def test_other_methods_are_405_and_keep_the_connection(conn):
    response = conn.exchange(b"PUT /api/decode HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}")
    assert response.status == 405 and response.headers["allow"] == "POST"
    conn.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n")
    head = conn.read(body=False)
    assert head.status == 405 and head.headers["allow"] == "GET"
    assert conn.exchange(post("/api/decode", code_body())).status == 200


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"GET / HTTP/0.9", 505),
        (b"PRI * HTTP/2.0", 505),
        (b"GET / HTTP/1.x", 400),
        (b"POST /", 400),
        (b"BREW /api/decode HTTP/1.1", 501),
    ],
)
def test_bad_request_lines_get_a_status_line_and_json(suite, line, status):
    connection = Connection(suite.env["GATEWAY_ADDR"])
    try:
        response = connection.exchange(line + b"\r\nHost: t\r\n\r\n")
        assert response.status == status
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"] and response.headers["connection"] == "close"
    finally:
        connection.close()


def test_a_stalled_body_times_out_and_frees_the_connection(conn):
    conn.send(b"POST /api/decode HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{")
    started = time.monotonic()
    response = conn.read()  # GATEWAY_READ_TIMEOUT_SECONDS=3
    assert response.status == 408 and time.monotonic() - started < 20
    assert response.json()["error"] == "request body not received in time"
    assert conn.closed_by_server()


@pytest.mark.parametrize("trickled", [False, True], ids=["at-once", "trickled"])
def test_an_oversized_head_is_431_and_closes(suite, trickled):
    """Over GATEWAY_MAX_HEADER_BYTES (32 KiB): refused whether it arrives in one read (the
    gateway counts the parsed head) or piece by piece (h11 stops buffering at the limit)."""
    connection = Connection(suite.env["GATEWAY_ADDR"])
    head = b"GET /livez HTTP/1.1\r\nHost: t\r\nX-Big: " + b"v" * 40_000 + b"\r\n\r\n"
    try:
        pieces = [head[i : i + 4096] for i in range(0, len(head), 4096)] if trickled else [head]
        for piece in pieces:
            try:
                connection.send(piece)
            except OSError:  # refused before the rest was sent
                break
            time.sleep(0.01 if trickled else 0)
        response = connection.read()
        assert response.status == 431 and response.json()["error"]
        assert response.headers["connection"] == "close"
    finally:
        connection.close()


def test_a_slow_request_head_times_out(conn):
    """A client trickling its headers (slowloris) is answered 408 and cut off."""
    started = time.monotonic()
    for byte in b"GET /livez HTTP/1.1\r\nHost: t\r\n":
        conn.send(bytes([byte]))
        if time.monotonic() - started > 1.5:
            break
        time.sleep(0.05)
    response = conn.read()  # GATEWAY_READ_TIMEOUT_SECONDS=3 from the connection's start
    assert response.status == 408 and time.monotonic() - started < 10
    assert response.json()["error"] == "request head not received in time"
    assert response.headers["x-request-id"] == response.json()["request_id"]
    assert conn.closed_by_server()


def test_a_client_that_half_closes_still_gets_its_answers(conn):
    conn.send(get("/livez") + get("/api/categories"))
    conn.sock.shutdown(socket.SHUT_WR)
    assert conn.read().json() == {"live": True}
    assert conn.read().json()["categories"]
    assert conn.closed_by_server()


def test_every_answer_has_a_request_id_and_safe_headers(conn):
    for raw in (get("/"), get("/livez"), get("/nowhere"), post("/api/decode", b"[]")):
        response = conn.exchange(raw)
        assert len(response.headers["x-request-id"]) == 32
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"


def test_the_request_id_is_the_callers_trace_id(conn):
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traced = f"GET /nowhere HTTP/1.1\r\nHost: t\r\ntraceparent: 00-{trace_id}-00f067aa0ba902b7-01\r\n\r\n"
    response = conn.exchange(traced.encode())
    assert response.headers["x-request-id"] == trace_id
    assert response.json()["request_id"] == trace_id


def test_service_validation_messages_reach_the_caller(conn):
    response = conn.exchange(post("/api/decode", json.dumps({"code": [0.5] * 3}).encode()))
    assert response.status == 400
    assert f"latent vector must have {LATENT_DIM} values, got 3" in response.json()["error"]
    response = conn.exchange(
        post("/api/decode", json.dumps({"code": [500.0] * LATENT_DIM}).encode())
    )
    assert response.status == 400 and "within" in response.json()["error"]
    response = conn.exchange(get("/api/start?category=NoSuchCategory"))
    assert response.status == 404 and "NoSuchCategory" in response.json()["error"]
    response = conn.exchange(post("/api/encode", b"not an image"))
    assert response.status == 400 and "not an image" in response.json()["error"]
    assert conn.exchange(post("/api/encode", b"")).status == 400


def _connections_to(port: int) -> set[int]:
    """Local ports of the TCP sockets on this host connected to 127.0.0.1:port, in any state."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, remote = line.split()[1:3]
            if int(remote.rsplit(":", 1)[1], 16) == port:
                found.add(int(local.rsplit(":", 1)[1], 16))
    return found


def test_healthz_reuses_the_gateways_channels(suite, conn):
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux /proc/net/tcp")
    decoder_port = int(suite.env["DECODER_PORT"])
    assert conn.exchange(get("/healthz")).status == 200
    before = _connections_to(decoder_port)
    for _ in range(15):
        response = conn.exchange(get("/healthz"))
        assert response.status == 200
        assert response.json()["services"] == {
            "decoder": True,
            "retrieval": True,
            "recommender": True,
        }
    assert _connections_to(decoder_port) - before == set()


class FailingBackend(
    decoder_pb2_grpc.DecoderServiceServicer, encoder_pb2_grpc.EncoderServiceServicer
):
    """A real gRPC server whose calls fail the ways a broken deployment fails."""

    def ListCategories(self, request, context):
        context.abort(grpc.StatusCode.INTERNAL, SECRET)

    def RandomStart(self, request, context):
        raise RuntimeError(SECRET)  # grpc answers UNKNOWN

    def Decode(self, request, context):
        context.set_trailing_metadata((("retry-after", "7"),))
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, SECRET)

    def Encode(self, request, context):
        time.sleep(2.0)  # past the gateway's 0.5 s deadline
        return encoder_pb2.EncodeResponse()


@pytest.fixture(scope="module")
def broken(suite):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    backend = FailingBackend()
    decoder_pb2_grpc.add_DecoderServiceServicer_to_server(backend, server)
    encoder_pb2_grpc.add_EncoderServiceServicer_to_server(backend, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    gateway_port = free_port()
    dead = f"127.0.0.1:{free_port()}"  # nothing listens here
    env = {
        "GATEWAY_PORT": str(gateway_port),
        "GATEWAY_ADDR": f"127.0.0.1:{gateway_port}",
        "DECODER_ADDR": f"127.0.0.1:{port}",
        "ENCODER_ADDR": f"127.0.0.1:{port}",
        "RECOMMENDER_ADDR": dead,
        "RETRIEVAL_ADDR": dead,
        "GATEWAY_TIMEOUT_SECONDS": "0.5",
    }
    managed = suite.start_gateway("gateway-broken", env, ready_path="/")
    yield f"127.0.0.1:{gateway_port}"
    managed.stop()
    server.stop(0)


@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        (lambda: get("/api/categories"), 502, "a service failed"),
        (lambda: get("/api/start"), 502, "a service failed"),
        (lambda: post("/api/decode", code_body()), 429, "busy"),
        (lambda: post("/api/recommend", code_body()), 503, "unavailable"),
        (lambda: post("/api/encode", b"\x89PNG..."), 504, "in time"),
        (lambda: get("/healthz"), 503, None),
    ],
    ids=["internal", "unknown", "exhausted", "unavailable", "deadline", "healthz"],
)
def test_backend_failures_map_to_http_without_details(broken, raw, status, message):
    connection = Connection(broken)
    try:
        response = connection.exchange(raw())
    finally:
        connection.close()
    assert response.status == status, response.body
    text = response.body.decode()
    assert SECRET not in text and "127.0.0.1" not in text and "ipv4" not in text
    if message is not None:
        assert message in response.json()["error"]
        assert response.json()["request_id"] == response.headers["x-request-id"]
    if status == 429:
        assert response.headers["retry-after"] == "7"
    if status == 503 and message is not None:
        assert response.headers["retry-after"] == "1"


def test_readiness_follows_the_backends_and_liveness_does_not(broken):
    connection = Connection(broken)
    try:
        ready = connection.exchange(get("/readyz"))
        assert ready.status == 503 and ready.json()["ready"] is False
        assert ready.json()["services"]["retrieval"] is False
        live = connection.exchange(get("/livez"))
        assert live.status == 200 and live.json() == {"live": True}
    finally:
        connection.close()


def test_liveness_and_readiness(conn):
    assert conn.exchange(get("/livez")).json() == {"live": True}
    ready = conn.exchange(get("/readyz"))
    assert ready.status == 200
    assert ready.json() == {
        "ready": True,
        "draining": False,
        "services": {"decoder": True, "retrieval": True, "recommender": True},
    }


ROUTES = {
    ("get", "/healthz"), ("get", "/livez"), ("get", "/readyz"),
    ("get", "/api/categories"), ("get", "/api/start"), ("get", "/api/image/{item_id}"),
    ("get", "/api/generations"), ("get", "/api/users"), ("post", "/api/decode"),
    ("post", "/api/recommend"), ("post", "/api/encode"), ("post", "/api/generations/serve"),
    ("post", "/api/for-you"), ("post", "/api/design-for-me"),
}  # fmt: skip


def test_openapi_describes_every_route(conn):
    spec = conn.exchange(get("/openapi.json")).json()
    operations = {(m, p): op for p, ops in spec["paths"].items() for m, op in ops.items()}
    assert set(operations) == ROUTES
    for (method, path), operation in operations.items():
        needs_token = path.startswith("/api/")
        assert bool(operation.get("security")) == needs_token, path
        assert operation["responses"]["200"], path
        if method == "post":
            assert operation["requestBody"]["content"], path
    recommend = operations[("post", "/api/recommend")]["requestBody"]["content"]
    assert set(recommend["application/json"]["schema"]["properties"]) == {
        "code", "method", "k", "gender", "match_gender",
    }  # fmt: skip
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    docs = conn.exchange(get("/docs"))
    assert docs.status == 200 and docs.headers["content-type"].startswith("text/html")
    assert b"/openapi.json" in docs.body and b"swagger" in docs.body.lower()


def test_answers_have_their_documented_shapes(conn):
    """Live answers validate against the OpenAPI document's models (which forbid extras)."""
    schemas.Categories.model_validate(conn.exchange(get("/api/categories")).json())
    start = conn.exchange(get("/api/start")).json()
    schemas.Start.model_validate(start)
    recommended = conn.exchange(
        post("/api/recommend", json.dumps({"code": start["code"]}).encode())
    )
    schemas.Recommendation.model_validate(recommended.json())
    schemas.Generations.model_validate(conn.exchange(get("/api/generations")).json())
    schemas.Health.model_validate(conn.exchange(get("/healthz")).json())
    schemas.Ready.model_validate(conn.exchange(get("/readyz")).json())
    schemas.Live.model_validate(conn.exchange(get("/livez")).json())
    schemas.Error.model_validate(conn.exchange(get("/nowhere")).json())
    schemas.DecodeRequest.model_validate({"code": start["code"]})


def _metric_samples(address: str) -> list:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def test_http_metrics_are_labelled_by_route_template(suite, conn):
    for raw in (
        get("/api/image/1164"),
        get("/api/image/no-such-item"),
        get("/nowhere/at/all"),
        post("/api/decode", code_body()),
    ):
        conn.exchange(raw)
    odd = Connection(suite.env["GATEWAY_ADDR"])
    try:
        assert odd.exchange(b"BREW /nowhere HTTP/1.1\r\nHost: t\r\n\r\n").status == 501
    finally:
        odd.close()
    samples = _metric_samples(suite.metrics_addresses["gateway"])  # the launcher's port
    answered = {
        (s.labels["route"], s.labels["method"], s.labels["status"]): s.value
        for s in samples
        if s.name == "atelier_http_requests_total"
    }
    assert answered[("/api/image/{item_id:path}", "GET", "200")] >= 1
    assert answered[("/api/image/{item_id:path}", "GET", "404")] >= 1
    assert answered[("/api/decode", "POST", "200")] >= 1
    assert answered[("unmatched", "GET", "404")] >= 1
    assert answered[("unmatched", "other", "501")] >= 1
    timed = {
        (s.labels["route"], s.labels["method"]): s.value
        for s in samples
        if s.name == "atelier_http_request_duration_seconds_count"
    }
    assert timed[("/api/decode", "POST")] >= 1
    routes = {s.labels["route"] for s in samples if "route" in s.labels}
    assert not [r for r in routes if "1164" in r or "no-such-item" in r or "nowhere" in r]
    assert [s for s in samples if s.name == "atelier_http_requests_in_flight"]


class SlowEncoder(encoder_pb2_grpc.EncoderServiceServicer):
    """A real encoder stand-in that takes its time: a request in flight during a shutdown."""

    seconds = 5.0

    def __init__(self):
        self.started = threading.Event()

    def Encode(self, request, context):
        self.started.set()
        time.sleep(self.seconds)
        code = common_pb2.LatentCode(mu=[0.25] * LATENT_DIM)
        return encoder_pb2.EncodeResponse(code=code, model_version=7)


def test_sigterm_finishes_requests_in_flight_and_exits_0(suite):
    backend = SlowEncoder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    encoder_pb2_grpc.add_EncoderServiceServicer_to_server(backend, server)
    encoder_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {
        "GATEWAY_PORT": str(port),
        "GATEWAY_ADDR": address,
        "ENCODER_ADDR": f"127.0.0.1:{encoder_port}",
        "GATEWAY_SHUTDOWN_DELAY_SECONDS": "2",
        "GATEWAY_SHUTDOWN_GRACE_SECONDS": "20",
    }
    managed = suite.start_gateway("gateway-drain", env, ready_path="/livez")
    answers: dict[str, Response] = {}

    def upload() -> None:
        connection = Connection(address)
        try:
            answers["encode"] = connection.exchange(post("/api/encode", b"\x89PNG..."))
        finally:
            connection.close()

    uploader = threading.Thread(target=upload)
    uploader.start()
    try:
        assert backend.started.wait(30), "the upload never reached the encoder"
        managed.process.send_signal(signal.SIGTERM)
        # For the shutdown delay the listener still accepts, and readiness says no.
        deadline = time.monotonic() + 1.5
        while True:
            probe = Connection(address)
            try:
                ready = probe.exchange(get("/readyz"))
            finally:
                probe.close()
            if ready.status == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert ready.status == 503 and ready.json()["draining"] is True
        # Then new connections are refused while the upload is still being answered.
        deadline = time.monotonic() + 4
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "the gateway still accepts connections"
            time.sleep(0.1)
        assert uploader.is_alive(), "the upload should still be in flight"
        uploader.join(30)
        encoded = answers["encode"]
        assert encoded.status == 200 and encoded.json()["model_version"] == 7
        assert managed.process.wait(timeout=30) == 0
    finally:
        managed.stop()
        server.stop(0)
