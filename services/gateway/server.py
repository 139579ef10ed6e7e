"""The design studio's HTTP gateway: a static page plus a small JSON API over the gRPC services.

It uses the standard library's ThreadingHTTPServer: the gateway only translates a handful of
JSON calls to gRPC, so a web framework would add dependencies without removing code.

Every /api/ route checks the caller's `Authorization: Bearer <token>` against the same token store
and role table as the gRPC services (401 without a valid token, 403 for a role too low), then
passes that token on to the services it calls. The page itself and /healthz stay open.
"""

from __future__ import annotations

import copy
import json
import logging
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from atelier.auth import Role, TokenStore
from atelier.store import CodeStore
from services.common.auth import METHOD_ROLES, Denied, TokenCache, authorize, bearer_token
from services.common.client import METHODS, Addresses, AtelierClient, make_query
from services.common.tls import https_context, make_channel
from services.gateway.config import Settings

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
GRPC_TO_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    grpc.StatusCode.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
    grpc.StatusCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: HTTPStatus.SERVICE_UNAVAILABLE,  # overloaded: retry later
    grpc.StatusCode.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
    grpc.StatusCode.PERMISSION_DENIED: HTTPStatus.FORBIDDEN,
    grpc.StatusCode.FAILED_PRECONDITION: HTTPStatus.CONFLICT,
}
# Each API route needs the role of the RPC it makes (the image route reads Redis: a reader's).
ROUTE_ROLES: dict[tuple[str, str], Role] = {
    ("GET", "/api/categories"): METHOD_ROLES["/atelier.v1.DecoderService/ListCategories"],
    ("GET", "/api/start"): METHOD_ROLES["/atelier.v1.DecoderService/RandomStart"],
    ("GET", "/api/image/"): Role.READER,
    ("GET", "/api/generations"): METHOD_ROLES["/atelier.v1.EncoderService/ListGenerations"],
    ("POST", "/api/decode"): METHOD_ROLES["/atelier.v1.DecoderService/Decode"],
    ("POST", "/api/recommend"): METHOD_ROLES["/atelier.v1.RecommenderService/Recommend"],
    ("POST", "/api/encode"): METHOD_ROLES["/atelier.v1.EncoderService/Encode"],
    ("POST", "/api/generations/serve"): METHOD_ROLES["/atelier.v1.EncoderService/ServeGeneration"],
}
AUTH_STATUS = {
    grpc.StatusCode.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
    grpc.StatusCode.PERMISSION_DENIED: HTTPStatus.FORBIDDEN,
    grpc.StatusCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
}


def route_role(method: str, path: str) -> Role | None:
    """The role a route needs; None for an unknown /api/ route (nobody: fail closed)."""
    if method == "GET" and path.startswith("/api/image/"):
        return ROUTE_ROLES[("GET", "/api/image/")]
    return ROUTE_ROLES.get((method, path))


IMAGE_MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def image_type(data: bytes) -> str | None:
    """The content type of image bytes by their magic number; None for anything else."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((kind for magic, kind in IMAGE_MAGIC if data.startswith(magic)), None)


def _item_json(scored) -> dict:
    item = scored.item
    return {
        "item_id": item.item_id,
        "sub_category": item.sub_category,
        "article_type": item.article_type,
        "gender": item.gender,
        "name": item.name,
        "score": scored.score,
        "partition": scored.partition,
        "image_url": item.image_ref,
    }


def _category_json(category) -> dict:
    return {
        "sub_category": category.sub_category,
        "master_category": category.master_category,
        "confidence": category.confidence,
        "from_label": category.from_label,
    }


class Gateway:
    """The API behind the page; every method returns (status, content type, body)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.client = AtelierClient(
            Addresses(
                settings.encoder_addr,
                settings.decoder_addr,
                settings.retrieval_addr,
                settings.recommender_addr,
            ),
            timeout=settings.timeout,
            token="",  # each request passes its caller's token on (as_caller)
        )
        self.store = CodeStore.from_url(settings.redis_url)
        self.tokens = (
            TokenCache(TokenStore.from_url(settings.redis_url), settings.auth.cache_seconds)
            if settings.auth.enabled
            else None
        )

    def authorize(self, method: str, path: str, token: str | None) -> None:
        """Raises Denied unless `token` may call this route (always passes with auth off)."""
        if self.tokens is None:
            return
        authorize(self.tokens.lookup, token, route_role(method, path), f"{method} {path}")

    def as_caller(self, token: str | None) -> Gateway:
        """This gateway, calling the services with the caller's token."""
        view = copy.copy(self)
        view.client = self.client.for_token(token)
        return view

    def categories(self) -> dict:
        reply = self.client.list_categories()
        return {
            "categories": [
                {
                    "sub_category": c.sub_category,
                    "master_category": c.master_category,
                    "items": c.items,
                }
                for c in reply.categories
            ],
            "model_version": reply.model_version,
        }

    def start(self, category: str) -> dict:
        reply = self.client.random_start(category)
        sliders = reply.sliders
        item = reply.item
        return {
            "item": {"item_id": item.item_id, "sub_category": item.sub_category, "gender": item.gender,
                     "name": item.name, "image_url": item.image_ref},
            "category": _category_json(reply.category),
            "code": list(reply.code.mu),
            "sliders": {
                "origin": list(sliders.origin.values),
                "directions": [list(d.values) for d in sliders.directions],
                "lower": list(sliders.lower),
                "upper": list(sliders.upper),
                "labels": list(sliders.labels),
            },
            "model_version": reply.model_version,
        }  # fmt: skip

    def decode(self, code: list[float]) -> bytes:
        return self.client.decode([code]).png[0]

    def recommend(
        self, code: list[float], method: str, k: int, gender: str, match_gender: bool
    ) -> dict:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
        reply = self.client.recommend(
            make_query(vector=code), method, "sub_category", k, (), match_gender, gender
        )
        return {
            "category": reply.query_partition,
            "query_category": _category_json(reply.query_category),
            "matched_gender": reply.matched_gender,
            "similar": [_item_json(s) for s in reply.similar.items],
            "pairings": [
                {"category": p.partition, "items": [_item_json(s) for s in p.items]}
                for p in reply.pairings
            ],
            "model_version": reply.model_version,
        }

    def encode(self, image: bytes) -> dict:
        reply = self.client.encode(image)
        return {"code": list(reply.code.mu), "model_version": reply.model_version}

    def generations(self) -> dict:
        reply = self.client.list_generations()
        return {
            "generations": [
                {"model_version": g.model_version, "items": g.items, "served": g.served}
                for g in reply.generations
            ],
            "served_version": reply.served_version,
        }

    def serve_generation(self, version: int) -> dict:
        reply = self.client.serve_generation(version)
        return {"model_version": reply.model_version, "previous_version": reply.previous_version}

    def image(self, item_id: str) -> tuple[bytes, str] | None:
        """An item's image file and its content type, looked up by id; None when there is none.

        The path stays inside the gateway: it comes from the store, and only an image (by its
        magic bytes) under the image root is served.
        """
        version = self.store.served_version()
        record = self.store.item(version, item_id) if version is not None else None
        if record is None or not record.metadata.get("image_ref"):
            return None
        path = Path(record.metadata["image_ref"]).resolve()
        # image_ref comes from whoever submitted the catalogue: never read outside the image root.
        if not path.is_relative_to(self.settings.image_root) or not path.is_file():
            return None
        data = path.read_bytes()
        content_type = image_type(data)
        return (data, content_type) if content_type else None

    def healthy(self) -> bool:
        for address in (
            self.settings.decoder_addr,
            self.settings.retrieval_addr,
            self.settings.recommender_addr,
        ):
            try:
                with make_channel(address) as channel:
                    reply = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=2
                    )
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    return False
            except grpc.RpcError:
                return False
        return True


def make_handler(gateway: Gateway):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):
            log.debug("%s " + format, self.address_string(), *args)

        def _send(self, status: int, content_type: str, body: bytes, nosniff: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            if nosniff:
                self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, payload) -> None:
            self._send(status, "application/json", json.dumps(payload).encode())

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 <= length <= gateway.settings.max_upload_bytes:
                self.close_connection = True  # the unread body must not be parsed as a request
                raise ValueError(
                    f"request body must be 0 to {gateway.settings.max_upload_bytes} bytes"
                )
            return self.rfile.read(length)

        def _guard(self, action) -> None:
            try:
                action()
            except grpc.RpcError as exc:
                self._json(
                    GRPC_TO_HTTP.get(exc.code(), HTTPStatus.BAD_GATEWAY),
                    {"error": exc.details(), "code": exc.code().name},
                )
            except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
                self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            except redis.RedisError as exc:
                self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"redis: {exc}"})

        def _caller(self, method: str, path: str) -> Gateway | None:
            """The gateway acting for this request's caller, or None once refused (401/403)."""
            token = bearer_token(list(self.headers.items()))
            try:
                gateway.authorize(method, path, token)
            except Denied as denied:
                status = AUTH_STATUS.get(denied.code, HTTPStatus.FORBIDDEN)
                body = json.dumps({"error": denied.message, "code": denied.code.name}).encode()
                self.send_response(status)
                if status == HTTPStatus.UNAUTHORIZED:
                    self.send_header("WWW-Authenticate", 'Bearer realm="atelier"')
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)
                return None
            return gateway.as_caller(token)

        def _image(self, api: Gateway, item_id: str) -> None:
            found = api.image(item_id)
            if found is None:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no image for item {item_id[:100]!r}"})
            else:
                self._send(HTTPStatus.OK, found[1], found[0], nosniff=True)

        def do_GET(self):
            path, _, query = self.path.partition("?")
            params = {key: values[0] for key, values in parse_qs(query).items()}
            if path in ("/", "/index.html"):
                self._send(
                    HTTPStatus.OK, "text/html; charset=utf-8", (STATIC / "index.html").read_bytes()
                )
                return
            if path == "/healthz":
                ok = gateway.healthy()
                self._json(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, {"serving": ok})
                return
            if not path.startswith("/api/"):
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no route {path}"})
                return
            api = self._caller("GET", path)
            if api is None:
                return
            if path == "/api/categories":
                self._guard(lambda: self._json(HTTPStatus.OK, api.categories()))
            elif path == "/api/start":
                self._guard(
                    lambda: self._json(HTTPStatus.OK, api.start(params.get("category", "")))
                )
            elif path == "/api/generations":
                self._guard(lambda: self._json(HTTPStatus.OK, api.generations()))
            elif path.startswith("/api/image/"):
                self._guard(lambda: self._image(api, unquote(path.rsplit("/", 1)[1])))
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no route {path}"})

        def do_POST(self):
            path = self.path.partition("?")[0]
            api = self._caller("POST", path) if path.startswith("/api/") else gateway
            if api is None:
                self.close_connection = True  # the unread body must not be parsed as a request
                return

            def handle():
                body = self._body()
                if path == "/api/encode":
                    self._json(HTTPStatus.OK, api.encode(body))
                    return
                request = json.loads(body or b"{}")
                if path == "/api/generations/serve":
                    self._json(HTTPStatus.OK, api.serve_generation(int(request["model_version"])))
                    return
                code = [float(v) for v in request.get("code", [])]
                if path == "/api/decode":
                    self._send(HTTPStatus.OK, "image/png", api.decode(code))
                elif path == "/api/recommend":
                    self._json(
                        HTTPStatus.OK,
                        api.recommend(
                            code,
                            request.get("method", "fixed_eps"),
                            int(request.get("k", 8)),
                            str(request.get("gender", "")),
                            bool(request.get("match_gender", True)),
                        ),
                    )
                else:
                    self._json(HTTPStatus.NOT_FOUND, {"error": f"no route {path}"})

            self._guard(handle)

    return Handler


class HTTPSServer(ThreadingHTTPServer):
    """HTTPS: each connection's TLS handshake runs in its own thread, under a timeout, so a
    client that connects and never handshakes holds up no one else (wrapping the listening
    socket would shake hands inside accept())."""

    handshake_timeout = 10.0

    def __init__(self, address, handler, context: ssl.SSLContext):
        self.context = context
        super().__init__(address, handler)

    def finish_request(self, request, client_address):
        request.settimeout(self.handshake_timeout)
        try:
            secure = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
            return
        try:
            secure.settimeout(None)
            super().finish_request(secure, client_address)
        finally:
            secure.close()


@contextmanager
def run_server(settings: Settings) -> Iterator[ThreadingHTTPServer]:
    settings.auth.check_bind(settings.host, "the gateway")
    gateway = Gateway(settings)
    handler = make_handler(gateway)
    address = (settings.host, settings.port)
    if settings.tls_cert_file and settings.tls_key_file:
        context = https_context(settings.tls_cert_file, settings.tls_key_file)
        server: ThreadingHTTPServer = HTTPSServer(address, handler, context)
    elif settings.tls_cert_file or settings.tls_key_file:
        raise SystemExit("GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE must be set together")
    else:
        server = ThreadingHTTPServer(address, handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="gateway", daemon=True)
    thread.start()
    scheme = "https" if isinstance(server, HTTPSServer) else "http"
    log.info("design studio on %s://%s:%d/", scheme, settings.host, server.server_address[1])
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        gateway.client.close()
