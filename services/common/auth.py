"""Bearer-token authentication for every Atelier gRPC service, in one server interceptor.

`grpc_server` (services/common/runtime.py) installs `AuthInterceptor` on every Atelier service.
Clients send metadata `authorization: Bearer <token>`; the token's role (atelier.auth.Role) must
reach the method's role in METHOD_ROLES. No or an unknown token: UNAUTHENTICATED; a role too low,
or a method missing from the table (fail closed): PERMISSION_DENIED; Redis unreachable while
checking: UNAVAILABLE. The health and reflection services stay open for probes.

Lookups are cached for ATELIER_AUTH_CACHE_SECONDS (default 5), so a revoked token stops working
within that time.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cachetools
import grpc
import redis

from atelier.auth import Role, TokenRecord, TokenStore

log = logging.getLogger(__name__)

READER, WRITER, ADMIN = Role.READER, Role.WRITER, Role.ADMIN
# Every method of every Atelier service and the role it needs. A unit test checks this against
# the service descriptors, so a new RPC cannot ship without a role.
METHOD_ROLES: dict[str, Role] = {
    "/atelier.v1.EncoderService/Encode": READER,
    "/atelier.v1.EncoderService/GetJob": READER,
    "/atelier.v1.EncoderService/ListGenerations": READER,
    "/atelier.v1.EncoderService/SubmitCatalogue": WRITER,
    "/atelier.v1.EncoderService/CancelJob": WRITER,
    "/atelier.v1.EncoderService/UpsertItems": WRITER,
    "/atelier.v1.EncoderService/DeleteItems": WRITER,
    "/atelier.v1.EncoderService/ServeGeneration": ADMIN,
    "/atelier.v1.EncoderService/RemoveGeneration": ADMIN,
    "/atelier.v1.DecoderService/Decode": READER,
    "/atelier.v1.DecoderService/RandomStart": READER,
    "/atelier.v1.DecoderService/Traverse": READER,
    "/atelier.v1.DecoderService/ListCategories": READER,
    "/atelier.v1.RetrievalService/Search": READER,
    "/atelier.v1.RecommenderService/Recommend": READER,
    "/atelier.v1.PersonalizationService/RecordInteractions": WRITER,
    "/atelier.v1.PersonalizationService/ImportInteractions": WRITER,
    "/atelier.v1.PersonalizationService/GetPersonalizationJob": READER,
    "/atelier.v1.PersonalizationService/TrainPreferenceModel": ADMIN,
    "/atelier.v1.PersonalizationService/ListPreferenceModels": READER,
    "/atelier.v1.PersonalizationService/ServePreferenceModel": ADMIN,
    "/atelier.v1.PersonalizationService/ListUsers": READER,
    "/atelier.v1.PersonalizationService/RankForUser": READER,
    "/atelier.v1.PersonalizationService/SimilarForUser": READER,
    "/atelier.v1.PersonalizationService/DesignForUser": READER,
}
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
LOOPBACK_HOSTS = frozenset({"localhost"})
AUTH_MODES = ("token", "none")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class AuthSettings:
    """How a service checks its callers (`mode`) and what it sends when it calls another one."""

    mode: str  # "token": check bearer tokens; "none": open (loopback only)
    redis_url: str | None
    cache_seconds: float
    token: str | None  # ATELIER_TOKEN: this process's own token for outgoing calls
    token_file: str | None  # ATELIER_TOKEN_FILE, read when first needed

    @classmethod
    def from_env(cls) -> AuthSettings:
        """ATELIER_AUTH, ATELIER_AUTH_CACHE_SECONDS, ATELIER_TOKEN(_FILE) and REDIS_URL (with its
        secrets), validated by services.common.settings.AuthEnvironment."""
        # Imported here: settings imports this module (for AuthSettings and AUTH_MODES).
        from services.common.settings import AuthEnvironment

        return AuthEnvironment.from_env().auth

    @property
    def enabled(self) -> bool:
        return self.mode == "token"

    def outgoing_token(self) -> str | None:
        return self.token or read_token_file(self.token_file)

    def check_bind(self, host: str, what: str) -> None:
        """Refuse to serve without authentication on anything but loopback."""
        if self.enabled:
            if not self.redis_url:
                raise SystemExit("ATELIER_AUTH=token needs REDIS_URL (where tokens are kept)")
            return
        if not is_loopback(host):
            raise SystemExit(
                f"ATELIER_AUTH=none is refused for {what} on {host}: without authentication a "
                "service may listen on loopback only (127.0.0.1, ::1, localhost)"
            )
        log.warning(
            "AUTHENTICATION IS OFF (ATELIER_AUTH=none): %s on %s accepts every caller; "
            "loopback only",
            what,
            host,
        )


def read_token_file(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return Path(path).read_text().strip() or None
    except OSError as exc:
        raise SystemExit(f"cannot read ATELIER_TOKEN_FILE {path}: {exc.strerror}") from None


def client_token(explicit: str | None = None) -> str | None:
    """A client's token: the one given, else $ATELIER_TOKEN, else the file at $ATELIER_TOKEN_FILE."""
    if explicit:
        return explicit
    return os.environ.get("ATELIER_TOKEN") or read_token_file(os.environ.get("ATELIER_TOKEN_FILE"))


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an `authorization: Bearer <token>` header (gRPC metadata or HTTP)."""
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class TokenCache:
    """TokenStore lookups with a short TTL and a bounded size (a flood of random tokens only
    evicts entries). Unknown tokens are cached too, so they cannot make every call hit Redis."""

    def __init__(self, store: TokenStore, ttl_seconds: float, max_entries: int = 4096):
        self.store = store
        self._lock = threading.Lock()
        self._cache: cachetools.TTLCache | None = (
            cachetools.TTLCache(max_entries, ttl_seconds) if ttl_seconds > 0 else None
        )

    def lookup(self, token: str) -> TokenRecord | None:
        """Raises redis.RedisError when the store cannot be reached."""
        if self._cache is None:
            return self.store.lookup(token)
        with self._lock:
            if token in self._cache:
                return self._cache[token]
        record = self.store.lookup(token)
        with self._lock:
            self._cache[token] = record
        return record


class Denied(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def authorize(
    lookup: Callable[[str], TokenRecord | None], token: str | None, required: Role | None, what: str
) -> TokenRecord:
    """The caller's record if its token may call `what` (which needs `required`; None: nobody)."""
    if token is None:
        raise Denied(
            grpc.StatusCode.UNAUTHENTICATED,
            "missing credentials: send 'authorization: Bearer <token>'",
        )
    try:
        record = lookup(token)
    except redis.RedisError:
        log.warning("cannot check a token for %s: the token store is unreachable", what)
        raise Denied(
            grpc.StatusCode.UNAVAILABLE, "cannot check credentials right now; retry"
        ) from None
    if record is None:
        raise Denied(grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked token")
    if required is None:
        raise Denied(grpc.StatusCode.PERMISSION_DENIED, f"{what} is not open to any role")
    if record.role < required:
        raise Denied(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{what} needs role {required.label}; this token's role is {record.role.label}",
        )
    return record


def _wrap(handler: grpc.RpcMethodHandler, check: Callable[[grpc.ServicerContext], None]):
    """The same handler with `check(context)` first: it runs on the server's worker pool, not on
    the thread that dispatches calls, so a slow token store never holds up health checks."""

    def guarded(behavior):
        def call(request_or_iterator, context):
            check(context)
            return behavior(request_or_iterator, context)

        return call

    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(guarded(handler.unary_unary), **serializers)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(guarded(handler.unary_stream), **serializers)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(guarded(handler.stream_unary), **serializers)
    return grpc.stream_stream_rpc_method_handler(guarded(handler.stream_stream), **serializers)


class AuthInterceptor(grpc.ServerInterceptor):
    """Checks the bearer token of every call but the open services'."""

    def __init__(
        self,
        lookup: Callable[[str], TokenRecord | None],
        method_roles: dict[str, Role] | None = None,
    ):
        self.lookup = lookup
        self.method_roles = METHOD_ROLES if method_roles is None else method_roles

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.split("/")[1] in OPEN_SERVICES:
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # no such method: UNIMPLEMENTED, as without the interceptor
        token = bearer_token(handler_call_details.invocation_metadata)
        required = self.method_roles.get(method)

        def check(context: grpc.ServicerContext) -> None:
            try:
                authorize(self.lookup, token, required, method)
            except Denied as denied:
                log.info("%s from %s: %s", method, context.peer(), denied.code.name)
                context.abort(denied.code, denied.message)

        return _wrap(handler, check)


def server_interceptors(settings: AuthSettings | None) -> list[grpc.ServerInterceptor]:
    if settings is None or not settings.enabled:
        return []
    assert settings.redis_url is not None  # check_bind refused to start without it
    cache = TokenCache(TokenStore.from_url(settings.redis_url), settings.cache_seconds)
    return [AuthInterceptor(cache.lookup)]


class BearerClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to every call on a channel."""

    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details):
        metadata = [m for m in (details.metadata or ()) if m[0].lower() != "authorization"]
        return _CallDetails(
            details.method,
            details.timeout,
            [*metadata, self._header],
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


def with_token(channel: grpc.Channel, token: str | None) -> grpc.Channel:
    """`channel` sending `token` on every call (unchanged when there is none)."""
    return grpc.intercept_channel(channel, BearerClientInterceptor(token)) if token else channel
