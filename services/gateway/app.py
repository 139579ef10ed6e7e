"""The studio gateway's HTTP side: a FastAPI app that serves the page, the JSON API, health
probes and the API's OpenAPI document (/docs, /openapi.json).

Each request passes `FrontDoor` once, before routing: it names the request (X-Request-Id: the
active OpenTelemetry trace id, else a random one), refuses what never reaches a route (HTTP
versions other than 1.0/1.1: 505; unknown methods: 501; a head over GATEWAY_MAX_HEADER_BYTES:
431; Content-Length with Transfer-Encoding: 400; a Content-Length over the route's limit: 413),
adds `Cache-Control: no-store` and
`X-Content-Type-Options: nosniff` to every answer, turns any unexpected exception into a 500
that names the request id, and counts the request in the HTTP metrics under its route template.

An /api/ route that takes a body reads it first (`read_body`: bytes counted as they stream in, 413 at the
limit, 408 when the client pauses too long), so the connection stays in sync whatever the
answer; then, on the gateway's own threads and within GATEWAY_TIMEOUT_SECONDS (504 past it), it
checks the caller's bearer token against ROUTE_ROLES (401/403), parses the body strictly and
makes its gRPC calls with the caller's token (services/gateway/api.py). Errors are JSON
`{"error", "request_id"}`; one after which the rest of the request cannot be trusted or is not
worth reading carries `Connection: close`. The page, /healthz, /livez, /readyz and the docs need
no token.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from pathlib import Path
from typing import Any, TypeVar

import anyio
import grpc
import redis
from fastapi import APIRouter, FastAPI, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common import tracing
from services.common.auth import Denied, bearer_token
from services.common.client import METHODS
from services.common.metrics import HTTP_IN_FLIGHT, HTTP_LATENCY, HTTP_REQUESTS
from services.gateway import schemas
from services.gateway.api import (
    CALLER_FAULTS,
    MAX_STRING_CHARS,
    Gateway,
    HttpError,
    bool_field,
    check_fields,
    code_field,
    denied_error,
    grpc_error,
    int_field,
    parse_json_object,
    query_params,
    required_text,
    str_field,
    text,
)
from services.gateway.config import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
STATIC = Path(__file__).parent / "static"
# Other methods get 501 and a close, as from the standard library's server before.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
HTTP_VERSIONS = frozenset({"1.0", "1.1"})
IMAGE_MAX_AGE_SECONDS = 300
UPLOAD_PATH = "/api/encode"
BEARER = HTTPBearer(
    auto_error=False,
    description="A token from `atelier tokens create`; each /api/ route needs the role of the "
    "RPC it makes.",
)


@dataclass
class Lifecycle:
    """What /readyz reports besides the services: whether the gateway is shutting down."""

    draining: bool = False


def new_request_id() -> str:
    """The active OpenTelemetry trace's id (32 hex digits), so a log line leads to its trace;
    a random id of the same shape when no span is active."""
    return tracing.current_trace_id() or secrets.token_hex(16)


def standard_headers(
    request_id: str, present: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """nosniff and the request id on every answer; no-store unless the route chose its caching."""
    cached = any(name.lower() == b"cache-control" for name, _ in present)
    return [
        *([] if cached else [(b"cache-control", b"no-store")]),
        (b"x-content-type-options", b"nosniff"),
        (b"x-request-id", request_id.encode("ascii")),
    ]


def conventional_name(name: bytes) -> bytes:
    """A header name as the old gateway wrote it ("WWW-Authenticate", "Content-Type"): names are
    case-insensitive, but some clients compare them as written (Starlette sends lower case)."""
    return b"-".join(b"WWW" if part == b"www" else part.capitalize() for part in name.split(b"-"))


def error_json(message: str, request_id: str, **extra: str) -> bytes:
    return json.dumps({**extra, "error": message, "request_id": request_id}).encode()


def error_response(error: HttpError, request_id: str) -> Response:
    headers = {**error.headers, **({"Connection": "close"} if error.close else {})}
    body = error_json(error.message, request_id, **error.extra)
    return Response(body, error.status, headers, media_type="application/json")


def request_id_of(request: Request) -> str:
    return request.scope["state"]["request_id"]


def body_limit(settings: Settings, path: str) -> int:
    return settings.max_upload_bytes if path == UPLOAD_PATH else settings.max_json_bytes


class FrontDoor:
    """Runs once around every HTTP request (see the module docstring)."""

    def __init__(self, app: ASGIApp, settings: Settings, routes: list[BaseRoute]) -> None:
        self.app = app
        self.settings = settings
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        method = scope["method"]
        chunked = any(name == b"transfer-encoding" for name, _ in scope["headers"])
        status: int | None = None
        body_done = False

        async def receive_tracked() -> Message:
            nonlocal body_done
            message = await receive()
            body_done = body_done or not message.get("more_body", False)
            return message

        async def send_marked(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                present = list(message.get("headers", ()))
                headers = [*present, *standard_headers(request_id, present)]
                # uvicorn would read and drop the rest of an unread body before the next
                # request: bounded for a Content-Length (within the limit), not for chunks.
                if chunked and not body_done and (b"connection", b"close") not in headers:
                    headers.append((b"connection", b"close"))
                named = [(conventional_name(name), value) for name, value in headers]
                message = {**message, "headers": named}
            await send(message)

        method_label = method if method in KNOWN_METHODS else "other"
        in_flight = HTTP_IN_FLIGHT.labels(method_label)
        in_flight.inc()
        started = time.perf_counter()
        try:
            refusal = self.refusal(scope)
            if refusal is not None:
                await error_response(refusal, request_id)(scope, receive, send_marked)
            else:
                await self.app(scope, receive_tracked, send_marked)
        except Exception:
            log.exception("request %s: %s %s failed", request_id, method, scope["path"][:200])
            if status is not None:
                raise  # the answer is half sent: the server closes the connection
            failure = HttpError(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                f"internal error; quote request id {request_id}",
                close=True,
            )
            await error_response(failure, request_id)(scope, receive, send_marked)
        finally:
            in_flight.dec()
            route = self.route_template(scope)
            HTTP_LATENCY.labels(route, method_label).observe(time.perf_counter() - started)
            HTTP_REQUESTS.labels(route, method_label, str(status or "unanswered")).inc()
            log.debug("request %s: %s %s -> %s", request_id, method, scope["path"][:200], status)

    def refusal(self, scope: Scope) -> HttpError | None:
        """The answer to a request no route should see, or None."""
        if scope["http_version"] not in HTTP_VERSIONS:
            return HttpError(
                HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "use HTTP/1.1 (or 1.0)", close=True
            )
        if scope["method"] not in KNOWN_METHODS:
            return HttpError(
                HTTPStatus.NOT_IMPLEMENTED,
                f"method {scope['method'][:20]!r} is not supported",
                close=True,
            )
        head_bytes = len(scope["raw_path"]) + sum(len(n) + len(v) + 4 for n, v in scope["headers"])
        if head_bytes > self.settings.max_header_bytes:
            # h11 bounds only a head that is still arriving; one read can bring a whole larger one.
            return HttpError(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                f"request head over {self.settings.max_header_bytes} bytes",
                close=True,
            )
        lengths = [value for name, value in scope["headers"] if name == b"content-length"]
        if not lengths:
            return None
        if any(name == b"transfer-encoding" for name, _ in scope["headers"]):
            # Which one frames the body is where request smuggling lives: trust neither.
            return HttpError(
                HTTPStatus.BAD_REQUEST,
                "send a Content-Length or a Transfer-Encoding, not both",
                close=True,
            )
        limit = body_limit(self.settings, scope["path"])
        if int(lengths[0]) > limit:  # h11 checked it is digits, and that repeats agree
            return HttpError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"request body is {lengths[0][:24].decode()} bytes; this endpoint takes at "
                f"most {limit}",
                close=True,
            )
        return None

    def route_template(self, scope: Scope) -> str:
        """The route's path template ("/api/image/{item_id:path}"), never the raw path: one label
        per route, whatever callers send."""
        route = scope.get("route")
        if route is None:  # refused before routing: find the route it was meant for
            route = next((r for r in self.routes if r.matches(scope)[0] != Match.NONE), None)
        return getattr(route, "path", None) or "unmatched"


async def read_body(request: Request, limit: int, idle_timeout: float) -> bytes:
    """The request's body, counted as it streams in (chunked or not): 413 as soon as it passes
    `limit`, without reading more; 408 when the client sends nothing for `idle_timeout`."""
    body = bytearray()
    chunks = request.stream()
    try:
        while True:
            with anyio.fail_after(idle_timeout):
                chunk = await anext(chunks, None)
            if chunk is None:
                return bytes(body)
            if len(body) + len(chunk) > limit:
                raise HttpError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"request body is over {limit} bytes, the most this endpoint takes",
                    close=True,
                )
            body += chunk
    except TimeoutError:
        raise HttpError(
            HTTPStatus.REQUEST_TIMEOUT, "request body not received in time", close=True
        ) from None
    except ClientDisconnect:
        raise HttpError(
            HTTPStatus.BAD_REQUEST, "the connection closed inside the body", close=True
        ) from None
    finally:
        await chunks.aclose()


# --- the routes' work, on the gateway's threads with the caller's Gateway


def json_object(body: bytes, allowed: set[str]) -> dict[str, Any]:
    request = parse_json_object(body)
    check_fields(request, allowed)
    return request


def categories(api: Gateway) -> Response:
    return JSONResponse(api.categories())


def start(api: Gateway, query: str) -> Response:
    category = text(query_params(query).get("category", ""), "category")
    return JSONResponse(api.start(category))


def image(api: Gateway, item_id: str) -> Response:
    item_id = text(item_id, "item id")
    found = api.image(item_id) if item_id else None
    if found is None:
        raise HttpError(HTTPStatus.NOT_FOUND, f"no image for item {item_id[:40]!r}")
    data, content_type = found
    # A catalogue photo changes only when its item is re-encoded: the browser keeps it a while
    # (for this caller only), so a slider move's cards mostly come from its cache.
    cache = {"Cache-Control": f"private, max-age={IMAGE_MAX_AGE_SECONDS}", "Vary": "Authorization"}
    return Response(data, media_type=content_type, headers=cache)  # with nosniff, as every answer


def generations(api: Gateway) -> Response:
    return JSONResponse(api.generations())


def users(api: Gateway) -> Response:
    return JSONResponse(api.users())


def decode(api: Gateway, body: bytes) -> Response:
    request = json_object(body, {"code"})
    return Response(api.decode(code_field(request)), media_type="image/png")


def recommend(api: Gateway, body: bytes) -> Response:
    request = json_object(body, {"code", "method", "k", "gender", "match_gender"})
    reply = api.recommend(
        code_field(request),
        str_field(request, "method", "fixed_eps", METHODS),
        int_field(request, "k", 8, 1, 1000),
        str_field(request, "gender", ""),
        bool_field(request, "match_gender", True),
    )
    return JSONResponse(reply)


def encode(api: Gateway, body: bytes) -> Response:
    if not body:
        raise HttpError(HTTPStatus.BAD_REQUEST, "send the photo's bytes as the body")
    return JSONResponse(api.encode(body))


def serve_generation(api: Gateway, body: bytes) -> Response:
    request = json_object(body, {"model_version"})
    if "model_version" not in request:
        raise HttpError(HTTPStatus.BAD_REQUEST, "model_version is required")
    return JSONResponse(api.serve_generation(int_field(request, "model_version", 0, 0, 2**63 - 1)))


def for_you(api: Gateway, body: bytes) -> Response:
    request = json_object(body, {"user_id", "k", "category"})
    reply = api.for_you(
        required_text(request, "user_id"),
        int_field(request, "k", 8, 1, 1000),
        str_field(request, "category", ""),
    )
    return JSONResponse(reply)


def design_for_me(api: Gateway, body: bytes) -> Response:
    request = json_object(body, {"user_id", "category", "item_id"})
    category = str_field(request, "category", "")
    item_id = str_field(request, "item_id", "")
    if not category and not item_id:
        raise HttpError(HTTPStatus.BAD_REQUEST, "give a category or an item_id")
    return JSONResponse(api.design_for_me(required_text(request, "user_id"), category, item_id))


# --- OpenAPI descriptions

ERROR_STATUSES = (400, 401, 403, 404, 408, 413, 429, 500, 502, 503, 504)


def answers(model: type[BaseModel] | None = None, media_type: str = "") -> dict[str, Any]:
    """Route options documenting a 200 of `model` (JSON) or of `media_type` bytes, and the
    JSON errors."""
    ok: dict[str, Any] = {"model": model} if model else {"content": {media_type: {}}}
    errors = {status: {"model": schemas.Error} for status in ERROR_STATUSES}
    return {"responses": {200: {**ok, "description": "OK"}, **errors}}


# Read from the raw query by `start` (query_params: at most 20 fields), documented here.
CATEGORY_QUERY = {
    "parameters": [
        {
            "name": "category",
            "in": "query",
            "required": False,
            "schema": {"type": "string", "maxLength": MAX_STRING_CHARS},
            "description": "Start from an item of this sub-category (default: any).",
        }
    ]
}


def binary_body(media_type: str) -> dict[str, Any]:
    schema = {"type": "string", "format": "binary"}
    content = {media_type: {"schema": schema}}
    return {"openapi_extra": {"requestBody": {"required": True, "content": content}}}


def create_app(gateway: Gateway, settings: Settings, lifecycle: Lifecycle) -> FastAPI:
    """The gateway's ASGI app over `gateway`'s services; `lifecycle` says when it drains."""
    app = FastAPI(
        title="Atelier design studio",
        version="1",
        summary="The studio page's JSON API over the Atelier gRPC services.",
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
        redirect_slashes=False,  # an unknown path is a 404, not a redirect to guess at
    )
    api = APIRouter(prefix="/api", dependencies=[Security(BEARER)])
    threads = anyio.CapacityLimiter(settings.threads)
    page = (STATIC / "index.html").read_bytes()

    async def blocking(request: Request, work: Callable[..., T], *args: Any) -> T:
        """`work(*args)` on the gateway's threads, within the request's deadline (504 past it;
        the thread is left to finish, bounded by its calls' own deadlines)."""
        with anyio.move_on_after(settings.timeout):
            return await anyio.to_thread.run_sync(
                partial(work, *args), abandon_on_cancel=True, limiter=threads
            )
        log.warning(
            "request %s: %s %s: not answered within %gs",
            request_id_of(request), request.method, request.scope["path"], settings.timeout,
        )  # fmt: skip
        raise HttpError(HTTPStatus.GATEWAY_TIMEOUT, "the request did not finish in time")

    async def for_caller(request: Request, work: Callable[..., Response], *args: Any) -> Response:
        """The route's role check for the caller's token, then `work(api, *args)` with a
        Gateway that passes that token on."""
        token = bearer_token(request.headers.items())
        method, path = request.method, request.scope["path"]

        def checked() -> Response:
            gateway.authorize(method, path, token)
            return work(gateway.as_caller(token), *args)

        return await blocking(request, checked)

    async def body_of(request: Request) -> bytes:
        limit = body_limit(settings, request.scope["path"])
        return await read_body(request, limit, settings.read_timeout)

    @app.get("/", include_in_schema=False)
    @app.get("/index.html", include_in_schema=False)
    async def index() -> Response:
        return Response(page, media_type="text/html; charset=utf-8")

    @app.get("/healthz", tags=["health"], summary="Whether the query services serve", **answers(schemas.Health))  # fmt: skip
    async def healthz(request: Request) -> Response:
        services = await blocking(request, gateway.healthy)
        ok = all(services.values())
        return JSONResponse({"serving": ok, "services": services}, 200 if ok else 503)

    @app.get("/livez", tags=["health"], summary="The process is up (no backend calls)", **answers(schemas.Live))  # fmt: skip
    async def livez() -> Response:
        return JSONResponse({"live": True})

    @app.get("/readyz", tags=["health"], summary="Ready for traffic: services up, not draining", **answers(schemas.Ready))  # fmt: skip
    async def readyz(request: Request) -> Response:
        if lifecycle.draining:
            return JSONResponse({"ready": False, "draining": True, "services": {}}, 503)
        services = await blocking(request, gateway.healthy)
        ok = all(services.values())
        reply = {"ready": ok, "draining": False, "services": services}
        return JSONResponse(reply, 200 if ok else 503)

    @api.get("/categories", summary="Catalogue categories and their item counts", **answers(schemas.Categories))  # fmt: skip
    async def categories_route(request: Request) -> Response:
        return await for_caller(request, categories)

    @api.get("/start", summary="A random catalogue item's code and the sliders around it", openapi_extra=CATEGORY_QUERY, **answers(schemas.Start))  # fmt: skip
    async def start_route(request: Request) -> Response:
        return await for_caller(request, start, request.scope["query_string"].decode("latin-1"))

    @api.get("/image/{item_id:path}", summary="A catalogue item's photo (ids may hold a percent-encoded /)", **answers(media_type="image/*"))  # fmt: skip
    async def image_route(request: Request, item_id: str) -> Response:
        return await for_caller(request, image, item_id)

    @api.get("/generations", summary="The catalogue's generations and the served one", **answers(schemas.Generations))  # fmt: skip
    async def generations_route(request: Request) -> Response:
        return await for_caller(request, generations)

    @api.get("/users", summary="Users with interactions (personalisation)", **answers(schemas.Users))  # fmt: skip
    async def users_route(request: Request) -> Response:
        return await for_caller(request, users)

    @api.post("/decode", summary="A latent code's image (PNG)", openapi_extra=schemas.json_body(schemas.DecodeRequest), **answers(media_type="image/png"))  # fmt: skip
    async def decode_route(request: Request) -> Response:
        return await for_caller(request, decode, await body_of(request))

    @api.post("/recommend", summary="Similar items and pairings for a code", openapi_extra=schemas.json_body(schemas.RecommendRequest), **answers(schemas.Recommendation))  # fmt: skip
    async def recommend_route(request: Request) -> Response:
        return await for_caller(request, recommend, await body_of(request))

    @api.post("/encode", summary="A photo's latent code (the photo's bytes as the body)", **binary_body("image/*"), **answers(schemas.Encoded))  # fmt: skip
    async def encode_route(request: Request) -> Response:
        return await for_caller(request, encode, await body_of(request))

    @api.post("/generations/serve", summary="Serve another generation (admin)", openapi_extra=schemas.json_body(schemas.ServeGenerationRequest), **answers(schemas.ServedGeneration))  # fmt: skip
    async def serve_generation_route(request: Request) -> Response:
        return await for_caller(request, serve_generation, await body_of(request))

    @api.post("/for-you", summary="Items ranked for a user", openapi_extra=schemas.json_body(schemas.ForYouRequest), **answers(schemas.ForYou))  # fmt: skip
    async def for_you_route(request: Request) -> Response:
        return await for_caller(request, for_you, await body_of(request))

    @api.post("/design-for-me", summary="A new design optimised for a user", openapi_extra=schemas.json_body(schemas.DesignForMeRequest), **answers(schemas.Design))  # fmt: skip
    async def design_for_me_route(request: Request) -> Response:
        return await for_caller(request, design_for_me, await body_of(request))

    app.include_router(api)
    add_error_handlers(app)
    app.add_middleware(FrontDoor, settings=settings, routes=app.router.routes)
    # Outermost: a caller's traceparent (or a configured tracer's new span) is active in
    # FrontDoor, which takes its trace id as the request id.
    FastAPIInstrumentor.instrument_app(app, exclude_spans=["receive", "send"])
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every error a route raises, as the JSON answer the caller gets (and a log line)."""

    @app.exception_handler(HttpError)
    async def on_http_error(request: Request, error: HttpError) -> Response:
        return error_response(error, request_id_of(request))

    @app.exception_handler(Denied)
    async def on_denied(request: Request, denied: Denied) -> Response:
        request_id = request_id_of(request)
        log.info("request %s: %s %s: %s", request_id, request.method, request.scope["path"], denied.code.name)  # fmt: skip
        return error_response(denied_error(denied), request_id)

    @app.exception_handler(grpc.RpcError)
    async def on_rpc_error(request: Request, exc: grpc.RpcError) -> Response:
        request_id = request_id_of(request)
        code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
        details = exc.details() if callable(getattr(exc, "details", None)) else ""
        log.log(
            logging.INFO if code in CALLER_FAULTS else logging.WARNING,
            "request %s: %s %s: %s %s",
            request_id, request.method, request.scope["path"], code, details,
        )  # fmt: skip
        return error_response(grpc_error(exc), request_id)

    @app.exception_handler(redis.RedisError)
    async def on_redis_error(request: Request, exc: redis.RedisError) -> Response:
        request_id = request_id_of(request)
        log.warning("request %s: %s %s: redis: %s", request_id, request.method, request.scope["path"], exc)  # fmt: skip
        unavailable = HttpError(
            HTTPStatus.SERVICE_UNAVAILABLE,
            "the catalogue store is unavailable; retry shortly",
            headers={"Retry-After": "1"},
        )
        return error_response(unavailable, request_id)

    @app.exception_handler(StarletteHTTPException)
    async def on_routing_error(request: Request, exc: StarletteHTTPException) -> Response:
        path = request.scope["path"]
        if exc.status_code == HTTPStatus.NOT_FOUND:
            error = HttpError(HTTPStatus.NOT_FOUND, "no such route")
        elif exc.status_code == HTTPStatus.METHOD_NOT_ALLOWED:
            error = HttpError(
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"{path[:100]} does not take {request.method}",
                headers={"Allow": (exc.headers or {}).get("Allow", "")},
            )
        else:
            error = HttpError(HTTPStatus(exc.status_code), str(exc.detail))
        return error_response(error, request_id_of(request))
