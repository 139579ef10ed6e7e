"""The design studio's HTTP gateway: a static page plus a small JSON API over the gRPC services.

It uses the standard library's ThreadingHTTPServer: the gateway only translates a handful of
JSON calls to gRPC, so a web framework would add dependencies without removing code. Requests
are framed and parsed strictly (see `read_body`, `parse_json_object` and the field readers):
anything malformed is a 4xx with a reason, a connection whose framing cannot be trusted is
closed, and no exception or backend detail other than our own validation messages reaches the
browser; a 500 or 502 names a request id that the log has the details under.

Every /api/ route checks the caller's `Authorization: Bearer <token>` against the same token store
and role table as the gRPC services (401 without a valid token, 403 for a role too low), then
passes that token on to the services it calls. The check comes after the request has been read
whole (so keep-alive stays in sync) and routed (404/405 first). The page and /healthz stay open.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import math
import re
import ssl
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import grpc
import redis

from atelier.auth import Role, TokenStore
from atelier.store import CodeStore
from atelier.v1 import personalization_pb2, personalization_pb2_grpc
from services.common.auth import (
    METHOD_ROLES,
    Denied,
    TokenCache,
    authorize,
    bearer_token,
    with_token,
)
from services.common.backpressure import RETRY_AFTER_KEY
from services.common.client import METHODS, Addresses, AtelierClient, make_query
from services.common.tls import https_context, make_channel
from services.gateway.config import Settings

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
# The details of these statuses are the services' validation messages, written for callers.
CALLER_FAULTS = {
    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.OUT_OF_RANGE: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
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
    ("GET", "/api/users"): METHOD_ROLES["/atelier.v1.PersonalizationService/ListUsers"],
    ("POST", "/api/for-you"): METHOD_ROLES["/atelier.v1.PersonalizationService/RankForUser"],
    ("POST", "/api/design-for-me"): METHOD_ROLES[
        "/atelier.v1.PersonalizationService/DesignForUser"
    ],
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


# Everything else gets a fixed message: its details may name hosts, paths or internals.
GRPC_TO_HTTP = {
    grpc.StatusCode.UNAUTHENTICATED: (HTTPStatus.UNAUTHORIZED, "authentication required"),
    grpc.StatusCode.PERMISSION_DENIED: (HTTPStatus.FORBIDDEN, "not allowed"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (
        HTTPStatus.TOO_MANY_REQUESTS,
        "the service is busy; retry shortly",
    ),
    grpc.StatusCode.UNAVAILABLE: (
        HTTPStatus.SERVICE_UNAVAILABLE,
        "a service is unavailable; retry shortly",
    ),
    grpc.StatusCode.CANCELLED: (HTTPStatus.SERVICE_UNAVAILABLE, "the request was cancelled"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (
        HTTPStatus.GATEWAY_TIMEOUT,
        "a service did not answer in time",
    ),
}
RETRYABLE = {HTTPStatus.TOO_MANY_REQUESTS, HTTPStatus.SERVICE_UNAVAILABLE}
MAX_DETAIL_CHARS = 300
MAX_CODE_VALUES = 4096
MAX_STRING_CHARS = 256
FLOAT32_MAX = 3.4028234663852886e38
CONTENT_LENGTH = re.compile(r"[0-9]+")
# path -> handler method; a path ending in "/" routes everything below it.
GET_ROUTES = {
    "/": "index",
    "/index.html": "index",
    "/healthz": "healthz",
    "/api/categories": "categories",
    "/api/start": "start",
    "/api/image/": "image",
    "/api/generations": "generations",
    "/api/users": "users",
}
POST_ROUTES = {
    "/api/encode": "encode",
    "/api/decode": "decode",
    "/api/recommend": "recommend",
    "/api/generations/serve": "serve_generation",
    "/api/for-you": "for_you",
    "/api/design-for-me": "design_for_me",
}


def match(routes: dict[str, str], path: str) -> str | None:
    if path in routes:
        return routes[path]
    prefix = path[: path.rfind("/") + 1]
    return routes.get(prefix) if len(prefix) > 1 and prefix.endswith("/") else None


class HttpError(Exception):
    """A response to give instead of the normal one; `close` when the connection's framing
    can no longer be trusted (the rest of the body, if any, is never read)."""

    def __init__(
        self,
        status: HTTPStatus,
        message: str,
        close: bool = False,
        headers: dict[str, str] | None = None,
        extra: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close
        self.headers = headers or {}
        self.extra = extra or {}  # more fields of the JSON answer


BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="atelier"'}


def denied_error(denied: Denied) -> HttpError:
    """The answer to a request the route's role check refused: 401 (with the Bearer challenge),
    403, or 503 when the token store cannot be asked."""
    status = AUTH_STATUS.get(denied.code, HTTPStatus.FORBIDDEN)
    headers = {}
    if status == HTTPStatus.UNAUTHORIZED:
        headers = dict(BEARER_CHALLENGE)
    elif status == HTTPStatus.SERVICE_UNAVAILABLE:
        headers = {"Retry-After": "1"}
    return HttpError(status, denied.message, headers=headers, extra={"code": denied.code.name})


def content_length(values: list[str], limit: int) -> int:
    """The body's length from the request's Content-Length headers (0 when there is none).

    Only one header of plain ASCII digits is accepted: int() would also take "+5", " 5", "5_0"
    or other scripts' digits, and then the server and a proxy could disagree on where the body
    ends."""
    if not values:
        return 0
    if len(values) > 1:
        raise HttpError(HTTPStatus.BAD_REQUEST, "more than one Content-Length header", close=True)
    value = values[0].strip(" \t")
    if not CONTENT_LENGTH.fullmatch(value):
        raise HttpError(
            HTTPStatus.BAD_REQUEST, "Content-Length must be a non-negative integer", close=True
        )
    length = int(value) if len(value) <= 18 else limit + 1  # int() refuses 4300+ digits
    if length > limit:
        raise HttpError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"request body is {value[:24]} bytes; this endpoint takes at most {limit}",
            close=True,
        )
    return length


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses to inf
        raise HttpError(HTTPStatus.BAD_REQUEST, f"number {text[:40]} is out of range")
    return value


def _no_constant(name: str) -> float:
    raise HttpError(HTTPStatus.BAD_REQUEST, f"{name} is not a JSON number")


def parse_json_object(body: bytes) -> dict[str, Any]:
    """A request body as a JSON object of finite numbers; an empty body is an empty object."""
    if not body.strip():
        return {}
    try:
        value = json.loads(
            body.decode("utf-8"), parse_float=_finite_float, parse_constant=_no_constant
        )
    except UnicodeDecodeError:
        raise HttpError(HTTPStatus.BAD_REQUEST, "the body must be UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise HttpError(
            HTTPStatus.BAD_REQUEST,
            f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
        ) from None
    except RecursionError:
        raise HttpError(HTTPStatus.BAD_REQUEST, "invalid JSON: nested too deeply") from None
    except ValueError:  # an integer beyond int()'s digit limit
        raise HttpError(HTTPStatus.BAD_REQUEST, "invalid JSON: a number is too long") from None
    if not isinstance(value, dict):
        raise HttpError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
    return value


def check_fields(request: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(request) - allowed)
    if unknown:
        raise HttpError(
            HTTPStatus.BAD_REQUEST,
            f"unknown field {unknown[0][:40]!r}; expected some of {sorted(allowed)}",
        )


def code_field(request: dict[str, Any], name: str = "code") -> list[float]:
    """A required list of finite numbers that fit a float32."""
    values = request.get(name)
    if not isinstance(values, list) or not values:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"{name} is required: a non-empty list of numbers")
    if len(values) > MAX_CODE_VALUES:
        raise HttpError(
            HTTPStatus.BAD_REQUEST, f"{name} has {len(values)} values; at most {MAX_CODE_VALUES}"
        )
    code = []
    for position, value in enumerate(values):
        # bool is an int in Python, but true is not a number in JSON.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise HttpError(HTTPStatus.BAD_REQUEST, f"{name}[{position}] must be a number")
        if not abs(value) <= FLOAT32_MAX:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"{name}[{position}] is out of range")
        code.append(float(value))
    return code


def int_field(request: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = request.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"{name} must be an integer from {low} to {high}")
    return value


def bool_field(request: dict[str, Any], name: str, default: bool) -> bool:
    value = request.get(name, default)
    if not isinstance(value, bool):
        raise HttpError(HTTPStatus.BAD_REQUEST, f"{name} must be true or false")
    return value


def text(value: Any, name: str, choices: dict | None = None) -> str:
    """A short string that gRPC can carry (UTF-8: no lone surrogates, which JSON allows)."""
    if not isinstance(value, str) or len(value) > MAX_STRING_CHARS:
        raise HttpError(
            HTTPStatus.BAD_REQUEST, f"{name} must be a string of at most {MAX_STRING_CHARS} chars"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"{name} is not valid Unicode") from None
    if choices is not None and value not in choices:
        raise HttpError(
            HTTPStatus.BAD_REQUEST, f"unknown {name} {value[:40]!r}; choose from {sorted(choices)}"
        )
    return value


def str_field(request: dict[str, Any], name: str, default: str, choices: dict | None = None) -> str:
    return text(request.get(name, default), name, choices)


def _required_text(request: dict[str, Any], name: str) -> str:
    value = str_field(request, name, "")
    if not value:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"{name} is required")
    return value


def query_params(query: str) -> dict[str, str]:
    try:
        parsed = parse_qs(query, max_num_fields=20)
    except ValueError:
        raise HttpError(HTTPStatus.BAD_REQUEST, "too many query parameters") from None
    return {key: values[0] for key, values in parsed.items()}


def grpc_error(exc: grpc.RpcError) -> HttpError:
    """An HTTP error for a failed call: our validation messages pass, other details never do."""
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    if code in CALLER_FAULTS:
        details = (exc.details() or code.name.lower()).replace("\n", " ")
        if len(details) > MAX_DETAIL_CHARS:
            details = details[: MAX_DETAIL_CHARS - 3] + "..."
        return HttpError(CALLER_FAULTS[code], details)
    trailers = _trailers(exc)
    hint_ms = trailers.get(RETRY_AFTER_KEY, "")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and hint_ms.isascii() and hint_ms.isdigit():
        # Our services' back-pressure (services/common/backpressure.py): the service itself is
        # overloaded and the client's retries under its hint ran out. 503, with that hint.
        seconds = max(1, math.ceil(int(hint_ms[:9]) / 1000))
        return HttpError(
            HTTPStatus.SERVICE_UNAVAILABLE,
            "a service is overloaded; retry shortly",
            headers={"Retry-After": str(seconds)},
        )
    status, message = GRPC_TO_HTTP.get(
        code, (HTTPStatus.BAD_GATEWAY, "a service failed to answer the request")
    )
    headers = {}
    if status in RETRYABLE:
        # A service that sheds load may say when to come back (trailing metadata "retry-after").
        retry_after = trailers.get("retry-after", "")
        headers["Retry-After"] = (
            retry_after if retry_after.isascii() and retry_after.isdigit() else "1"
        )
    if status == HTTPStatus.UNAUTHORIZED:
        headers.update(BEARER_CHALLENGE)
    return HttpError(status, message, headers=headers)


def _trailers(exc: grpc.RpcError) -> dict[str, str]:
    trailing = getattr(exc, "trailing_metadata", None)
    pairs = (trailing() if callable(trailing) else None) or ()
    return {key: value for key, value in pairs if isinstance(value, str)}


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


def _fallback_name(value: int) -> str:
    if value == personalization_pb2.FALLBACK_POPULARITY:
        return "popularity"
    return "none"


def _category_json(category) -> dict:
    return {
        "sub_category": category.sub_category,
        "master_category": category.master_category,
        "confidence": category.confidence,
        "from_label": category.from_label,
    }


class Gateway:
    """The API behind the page: each method calls the services with checked arguments and
    returns what the handler sends (JSON-ready data or image bytes)."""

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
        # The personalization service is optional: without it, its routes answer 503.
        self._personal_channel = make_channel(settings.personalization_addr, retry_overload=True)
        self.personal = personalization_pb2_grpc.PersonalizationServiceStub(self._personal_channel)
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
        view.personal = personalization_pb2_grpc.PersonalizationServiceStub(
            with_token(self._personal_channel, token)
        )
        return view

    def close(self) -> None:
        self.client.close()
        self._personal_channel.close()

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

    def users(self) -> dict:
        reply = self.personal.ListUsers(
            personalization_pb2.ListUsersRequest(limit=20), timeout=self.settings.timeout
        )
        return {
            "users": [{"user_id": u.user_id, "interactions": u.interactions} for u in reply.users],
            "preference_version": reply.preference_version,
        }

    def for_you(self, user_id: str, k: int, category: str) -> dict:
        reply = self.personal.RankForUser(
            personalization_pb2.RankForUserRequest(user_id=user_id, k=k, category=category),
            timeout=self.settings.timeout,
        )
        return {
            "items": [_item_json(s) for s in reply.items],
            "fallback": _fallback_name(reply.fallback),
            "preference_version": reply.preference_version,
            "model_version": reply.model_version,
        }

    def design_for_me(self, user_id: str, category: str, item_id: str) -> dict:
        request = personalization_pb2.DesignForUserRequest(user_id=user_id)
        if item_id:
            request.item_id = item_id
        else:
            request.category = category
        reply = self.personal.DesignForUser(request, timeout=self.settings.timeout)
        return {
            "png_base64": base64.b64encode(reply.png).decode(),
            "code": list(reply.code.values),
            "score": reply.score,
            "start_score": reply.start_score,
            "best_item_score": reply.best_item_score,
            "best_item": _item_json(reply.best_item),
            "nearest": [_item_json(s) for s in reply.nearest],
            "max_abs_sigma": reply.max_abs_sigma,
            "category": reply.category,
            "preference_version": reply.preference_version,
            "model_version": reply.model_version,
        }

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

    def healthy(self) -> dict[str, bool]:
        # Over the client's long-lived channels: a probe every few seconds opens no connection.
        return self.client.serving(timeout=2.0)


def make_handler(gateway: Gateway) -> type[BaseHTTPRequestHandler]:
    settings = gateway.settings

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Answers to requests without a version (or with a bad one) get a status line too; the
        # stdlib's HTTP/0.9 default would send a bare body that no client can frame.
        default_request_version = "HTTP/1.0"
        timeout = settings.read_timeout  # applied to the socket by StreamRequestHandler
        request_id = ""
        responded = False
        api: Gateway = gateway  # acting for this request's caller (see _caller)

        def parse_request(self) -> bool:
            if not super().parse_request():
                return False
            major, minor = self.request_version.removeprefix("HTTP/").split(".")
            if (int(major), int(minor)) < (1, 0):  # "GET / HTTP/0.9"
                self.request_version = "HTTP/1.0"
                self.send_error(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED)
                return False
            return True

        def send_error(self, code: int, message: str | None = None, explain=None) -> None:
            """The stdlib's own rejections (request line, headers, unknown method) as JSON
            like every other error, with the standard reason phrase in the status line."""
            self.close_connection = True
            self.request_id = uuid.uuid4().hex[:16]
            self.responded = False
            short = self.responses.get(code, ("error",))[0]
            with suppress(OSError):
                self._error(HttpError(HTTPStatus(code), message or short, close=True))

        def log_message(self, format, *args):
            log.debug("%s " + format, self.address_string(), *args)

        def _send(
            self,
            status: int,
            content_type: str,
            body: bytes,
            headers: dict[str, str] | None = None,
        ) -> None:
            self.responded = True
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("X-Request-Id", self.request_id)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, payload, headers: dict[str, str] | None = None) -> None:
            self._send(status, "application/json", json.dumps(payload).encode(), headers)

        def _error(self, error: HttpError) -> None:
            if error.close:
                self.close_connection = True
            payload = {**error.extra, "error": error.message, "request_id": self.request_id}
            self._json(error.status, payload, error.headers)

        def _read_body(self, limit: int) -> bytes:
            if self.headers.get_all("Transfer-Encoding"):
                raise HttpError(
                    HTTPStatus.LENGTH_REQUIRED,
                    "send the body with a Content-Length; transfer encodings are not supported",
                    close=True,
                )
            length = content_length(self.headers.get_all("Content-Length") or [], limit)
            body = self.rfile.read(length) if length else b""
            if len(body) != length:
                raise HttpError(
                    HTTPStatus.BAD_REQUEST,
                    "the body is shorter than its Content-Length",
                    close=True,
                )
            return body

        def _serve(self, method: str) -> None:
            """Read the whole request, route it, and answer; nothing escapes unanswered."""
            self.request_id = uuid.uuid4().hex[:16]
            self.responded = False
            path, _, query = self.path.partition("?")
            try:
                limit = (
                    settings.max_upload_bytes if path == "/api/encode" else settings.max_json_bytes
                )
                # Read every body, even one a route ignores, so the next request starts in sync.
                body = self._read_body(limit)
                self._route(method, path, query, body)
            except HttpError as exc:
                self._fail(exc)
            except grpc.RpcError as exc:
                error = grpc_error(exc)
                log.log(
                    logging.INFO if exc.code() in CALLER_FAULTS else logging.WARNING,
                    "request %s: %s %s: %s %s",
                    self.request_id, method, path, exc.code(), exc.details(),
                )  # fmt: skip
                self._fail(error)
            except redis.RedisError as exc:
                log.warning("request %s: %s %s: redis: %s", self.request_id, method, path, exc)
                self._fail(
                    HttpError(
                        HTTPStatus.SERVICE_UNAVAILABLE,
                        "the catalogue store is unavailable; retry shortly",
                        headers={"Retry-After": "1"},
                    )
                )
            except TimeoutError:
                self.close_connection = True  # the client stopped sending mid-body
                self._fail(
                    HttpError(HTTPStatus.REQUEST_TIMEOUT, "request body not received in time")
                )
            except ConnectionError:
                self.close_connection = True  # the client went away; nobody to answer
            except Exception:
                log.exception("request %s: %s %s failed", self.request_id, method, path)
                self.close_connection = True
                self._fail(
                    HttpError(
                        HTTPStatus.INTERNAL_SERVER_ERROR,
                        f"internal error; quote request id {self.request_id}",
                    )
                )

        def _fail(self, error: HttpError) -> None:
            if self.responded:  # the failure was in writing the answer: the stream is unusable
                self.close_connection = True
                return
            try:
                self._error(error)
            except OSError:
                self.close_connection = True

        def _route(self, method: str, path: str, query: str, body: bytes) -> None:
            routes = {"GET": GET_ROUTES, "POST": POST_ROUTES}
            route = match(routes.get(method, {}), path)
            if route is None:
                allowed = [m for m, table in routes.items() if match(table, path) is not None]
                if allowed:
                    raise HttpError(
                        HTTPStatus.METHOD_NOT_ALLOWED,
                        f"{path[:100]} does not take {method}",
                        headers={"Allow": ", ".join(allowed)},
                    )
                raise HttpError(HTTPStatus.NOT_FOUND, "no such route")
            # The role check comes after the whole request was read and routed; the services
            # are then called with the caller's own token.
            self.api = self._caller(method, path) if path.startswith("/api/") else gateway
            getattr(self, route)(path, query, body)

        def _caller(self, method: str, path: str) -> Gateway:
            """The gateway acting for this request's caller; HttpError 401/403 if refused."""
            token = bearer_token(list(self.headers.items()))
            try:
                gateway.authorize(method, path, token)
            except Denied as denied:
                log.info("request %s: %s %s: %s", self.request_id, method, path, denied.code.name)
                raise denied_error(denied) from None
            return gateway.as_caller(token)

        def index(self, path: str, query: str, body: bytes) -> None:
            page = (STATIC / "index.html").read_bytes()
            self._send(HTTPStatus.OK, "text/html; charset=utf-8", page)

        def healthz(self, path: str, query: str, body: bytes) -> None:
            services = gateway.healthy()
            ok = all(services.values())
            self._json(
                HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE,
                {"serving": ok, "services": services},
            )

        def categories(self, path: str, query: str, body: bytes) -> None:
            self._json(HTTPStatus.OK, self.api.categories())

        def generations(self, path: str, query: str, body: bytes) -> None:
            self._json(HTTPStatus.OK, self.api.generations())

        def serve_generation(self, path: str, query: str, body: bytes) -> None:
            request = parse_json_object(body)
            check_fields(request, {"model_version"})
            if "model_version" not in request:
                raise HttpError(HTTPStatus.BAD_REQUEST, "model_version is required")
            version = int_field(request, "model_version", 0, 0, 2**63 - 1)
            self._json(HTTPStatus.OK, self.api.serve_generation(version))

        def users(self, path: str, query: str, body: bytes) -> None:
            self._json(HTTPStatus.OK, self.api.users())

        def for_you(self, path: str, query: str, body: bytes) -> None:
            request = parse_json_object(body)
            check_fields(request, {"user_id", "k", "category"})
            reply = self.api.for_you(
                _required_text(request, "user_id"),
                int_field(request, "k", 8, 1, 1000),
                str_field(request, "category", ""),
            )
            self._json(HTTPStatus.OK, reply)

        def design_for_me(self, path: str, query: str, body: bytes) -> None:
            request = parse_json_object(body)
            check_fields(request, {"user_id", "category", "item_id"})
            category = str_field(request, "category", "")
            item_id = str_field(request, "item_id", "")
            if not category and not item_id:
                raise HttpError(HTTPStatus.BAD_REQUEST, "give a category or an item_id")
            reply = self.api.design_for_me(_required_text(request, "user_id"), category, item_id)
            self._json(HTTPStatus.OK, reply)

        def start(self, path: str, query: str, body: bytes) -> None:
            params = query_params(query)
            category = text(params.get("category", ""), "category")
            self._json(HTTPStatus.OK, self.api.start(category))

        def image(self, path: str, query: str, body: bytes) -> None:
            item_id = text(unquote(path.removeprefix("/api/image/")), "item id")
            found = self.api.image(item_id) if item_id else None
            if found is None:
                raise HttpError(HTTPStatus.NOT_FOUND, f"no image for item {item_id[:40]!r}")
            data, content_type = found
            self._send(HTTPStatus.OK, content_type, data)  # always with nosniff

        def encode(self, path: str, query: str, body: bytes) -> None:
            if not body:
                raise HttpError(HTTPStatus.BAD_REQUEST, "send the photo's bytes as the body")
            self._json(HTTPStatus.OK, self.api.encode(body))

        def decode(self, path: str, query: str, body: bytes) -> None:
            request = parse_json_object(body)
            check_fields(request, {"code"})
            self._send(HTTPStatus.OK, "image/png", self.api.decode(code_field(request)))

        def recommend(self, path: str, query: str, body: bytes) -> None:
            request = parse_json_object(body)
            check_fields(request, {"code", "method", "k", "gender", "match_gender"})
            reply = self.api.recommend(
                code_field(request),
                str_field(request, "method", "fixed_eps", METHODS),
                int_field(request, "k", 8, 1, 1000),
                str_field(request, "gender", ""),
                bool_field(request, "match_gender", True),
            )
            self._json(HTTPStatus.OK, reply)

        def do_GET(self):
            self._serve("GET")

        def do_POST(self):
            self._serve("POST")

        # Other common methods get a 405 (or 404) on a connection that stays usable; unknown
        # ones get the stdlib's 501 and a close.
        def do_HEAD(self):
            self._serve("HEAD")

        def do_PUT(self):
            self._serve("PUT")

        def do_DELETE(self):
            self._serve("DELETE")

        def do_PATCH(self):
            self._serve("PATCH")

        def do_OPTIONS(self):
            self._serve("OPTIONS")

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
        gateway.close()
