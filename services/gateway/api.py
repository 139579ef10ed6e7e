"""What the studio's HTTP API means in gRPC: `Gateway` calls the services for one caller and
returns JSON-ready data or image bytes; the field readers check a JSON body strictly (finite
numbers, known fields, bounded strings) and raise `HttpError` with a message for the caller;
`grpc_error` maps a failed call to an HTTP status without leaking backend details (only the
services' own validation messages pass).

Nothing here knows the web framework: services/gateway/app.py routes HTTP requests to it.
Every /api/ route needs the role of the RPC it makes (`ROUTE_ROLES`), checked against the same
token store as the gRPC services; the caller's token is then passed on (`Gateway.as_caller`).
"""

from __future__ import annotations

import base64
import copy
import json
import math
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import grpc

from atelier.auth import Role, TokenStore
from atelier.store import CodeStore
from atelier.v1 import personalization_pb2, personalization_pb2_grpc
from services.common.auth import METHOD_ROLES, Denied, TokenCache, authorize, with_token
from services.common.backpressure import RETRY_AFTER_KEY
from services.common.client import Addresses, AtelierClient, make_query
from services.common.tls import make_channel
from services.gateway.config import Settings

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


class HttpError(Exception):
    """A response to give instead of the normal one; `close` when the connection must close
    after it (its framing can no longer be trusted, or the rest of a body is not worth reading)."""

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


def required_text(request: dict[str, Any], name: str) -> str:
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
