"""Environment settings, validated and documented in one place (pydantic-settings).

Every service's `config.Settings` is a `pydantic_settings.BaseSettings` whose field names are
the environment variables' names in lower case (no prefix: compose and Kubernetes set the plain
names), each with its default and a description. Where callers know a setting by a shorter name
(`host` for DECODER_HOST, `methods` for SEARCH_METHODS), the field keeps that name and carries the
variable's name as its `validation_alias`; `variables(cls)` lists what a class reads either way.
`load(Settings)` reads the environment once; a value that does not validate stops the process with
SystemExit naming the variable and why, not a traceback.

The services that check bearer tokens and keep their state in Redis share `ServiceSettings`: the
authentication variables (`AuthEnvironment`, behind services.common.auth.AuthSettings) and
REDIS_URL with its secrets filled in (services.common.redisconf.with_secrets).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import (
    AfterValidator,
    Field,
    NonNegativeFloat,
    PlainValidator,
    PositiveFloat,
    ValidationError,
    field_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from atelier.confinement import CatalogueRoots
from services.common.auth import AUTH_MODES, AuthSettings
from services.common.redisconf import with_secrets

T = TypeVar("T", bound=BaseSettings)

# frozen: read once at start, never changed; extra env variables are the norm, not an error.
# env_ignore_empty: `VAR=` means "use the default", as compose's `${VAR:-}` leaves it.
ENV_CONFIG = SettingsConfigDict(
    frozen=True, extra="ignore", case_sensitive=False, env_ignore_empty=True
)

Port = Annotated[int, Field(ge=0, le=65535)]
# REDIS_URL with REDIS_PASSWORD_FILE's password, the ACL user and the REDIS_TLS_* files it lacks.
RedisUrl = Annotated[str, AfterValidator(with_secrets)]


def _catalogue_roots(value: Any) -> CatalogueRoots:
    if isinstance(value, CatalogueRoots):
        return value
    return CatalogueRoots.parse(value)  # ValueError: reported against CATALOGUE_ROOTS


# An os.pathsep-separated list of folders (not JSON); unset or empty: the defaults.
CatalogueRootsSetting = Annotated[CatalogueRoots, NoDecode, PlainValidator(_catalogue_roots)]


def listen_host(variable: str) -> Any:
    """The field of a server's listening address, read from `variable` (for example DECODER_HOST)."""
    return Field(
        "127.0.0.1",
        validation_alias=variable,
        description="Address to listen on; 0.0.0.0 in a container (off loopback only with "
        "ATELIER_AUTH=token).",
    )


def listen_port(variable: str, default: int) -> Any:
    """The field of a server's gRPC port, read from `variable` (for example DECODER_PORT)."""
    return Field(default, validation_alias=variable, description="gRPC port.")


def load(cls: type[T], **overrides) -> T:
    """`cls` read from the environment (and `overrides`), or SystemExit with the reasons."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise SystemExit("; ".join(_reason(error) for error in exc.errors())) from None


def _reason(error: ErrorDetails) -> str:
    variable = ".".join(str(part) for part in error["loc"]).upper()
    if error["type"] == "missing":
        return f"missing required environment variable {variable}"
    if error["type"] == "value_error":
        # A validator's own message, which says what it got, without pydantic's "Value error, ".
        reason = str(error.get("ctx", {}).get("error", error["msg"]))
    else:
        got = error["input"]
        reason = f"{error['msg']}, got {got!r}" if isinstance(got, str) else error["msg"]
    return f"environment variable {variable}: {reason}" if variable else reason


def variables(cls: type[BaseSettings]) -> dict[str, str]:
    """The environment variables `cls` reads (upper case), each with the field it fills."""
    return {
        (field.validation_alias if isinstance(field.validation_alias, str) else name).upper(): name
        for name, field in cls.model_fields.items()
    }


class AuthEnvironment(BaseSettings):
    """How a process checks its callers and what it sends when it calls another service."""

    model_config = ENV_CONFIG

    atelier_auth: str = Field(
        "token",
        description="token: every call needs a bearer token of a high enough role; none: open, "
        "allowed on loopback only.",
    )
    atelier_auth_cache_seconds: NonNegativeFloat = Field(
        5.0,
        description="How long a token lookup is cached: a revoked token stops working within "
        "this time (0: no cache, every call asks Redis).",
    )
    atelier_token: str | None = Field(
        None, description="This process's own token for its calls to other services."
    )
    atelier_token_file: str | None = Field(
        None,
        description="A file holding this process's token (compose's secrets volume), read when "
        "first needed; ATELIER_TOKEN wins when both are set.",
    )
    redis_url: RedisUrl | None = Field(
        None,
        description="The Redis that keeps the tokens' hashes (needed with ATELIER_AUTH=token).",
    )

    @field_validator("atelier_auth")
    @classmethod
    def _known_mode(cls, mode: str) -> str:
        mode = mode.strip().lower()
        if mode not in AUTH_MODES:
            raise ValueError(f"ATELIER_AUTH must be one of {', '.join(AUTH_MODES)}, got {mode!r}")
        return mode

    @classmethod
    def from_env(cls) -> Self:
        """Read once from the environment; a bad value stops the process naming its variable."""
        return load(cls)

    @property
    def auth(self) -> AuthSettings:
        return AuthSettings(
            mode=self.atelier_auth,
            redis_url=self.redis_url,
            cache_seconds=self.atelier_auth_cache_seconds,
            token=self.atelier_token,
            token_file=self.atelier_token_file,
        )


class ModelServerCaller(BaseSettings):
    """The model server a service calls, and how long each call may take."""

    model_config = ENV_CONFIG

    model_server_addr: str = Field(
        "127.0.0.1:8500", description="The model server (host:port) that runs the models."
    )
    model_timeout: PositiveFloat = Field(
        30.0,
        validation_alias="MODEL_TIMEOUT_SECONDS",
        description="Deadline of each call to the model server (never longer than the caller's).",
    )


class ServiceSettings(AuthEnvironment):
    """Settings of a service that checks bearer tokens and keeps its state in Redis."""

    redis_url: RedisUrl = Field(
        description="The Redis holding codes, jobs and tokens; its password may come from "
        "REDIS_PASSWORD_FILE (and REDIS_USERNAME), its TLS files from REDIS_TLS_*."
    )


class ProcessSettings(BaseSettings):
    """What every process reads at start-up, whatever its service: logs, the metrics endpoint
    and the gRPC concurrency limit (services.common.runtime). Tracing reads OpenTelemetry's own
    standard variables (services/common/tracing.py)."""

    model_config = ENV_CONFIG

    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL.")
    log_format: Literal["json", "text"] = Field(
        "json", description="json: one JSON object a line, with the trace id; text: for a terminal."
    )
    metrics_port: Port | None = Field(
        None, description="Serve Prometheus /metrics on this port; unset: no endpoint, no counting."
    )
    metrics_host: str = Field(
        "127.0.0.1", description="The metrics endpoint's address (0.0.0.0 in containers)."
    )
    prometheus_multiproc_dir: str | None = Field(
        None,
        description="Celery workers: an empty folder where pool processes write their metrics "
        "for the main process to serve (prometheus_client reads it itself; health probes must "
        "not set it).",
    )
    max_concurrent_rpcs: int | None = Field(
        None,
        ge=1,
        description="RPCs a gRPC server runs at once; beyond that they are refused with a retry "
        "hint (default: its worker threads).",
    )

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, level: str) -> str:
        level = level.strip().upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(
                f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {level!r}"
            )
        return level

    @classmethod
    def from_env(cls) -> Self:
        return load(cls)
