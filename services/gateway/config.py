"""Gateway settings, read once from the environment (services/common/settings.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import (
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from services.common.settings import Port, ServiceSettings


class Settings(ServiceSettings):
    """The design studio's HTTP gateway: the page and its JSON API over the gRPC services."""

    encoder_addr: str = Field(
        "127.0.0.1:50051", description="The encoder (host:port): photo uploads, generations."
    )
    decoder_addr: str = Field(
        "127.0.0.1:50052", description="The decoder (host:port): images, categories, starts."
    )
    retrieval_addr: str = Field(
        "127.0.0.1:50053",
        description="The retrieval service: one address per shard, comma-separated, in shard "
        "order (dns:///name:port balances over a shard's replicas).",
    )
    recommender_addr: str = Field(
        "127.0.0.1:50054",
        description="The recommender: one address per shard, comma-separated, in shard order.",
    )
    personalization_addr: str = Field(
        "127.0.0.1:50055",
        description="The personalization service; without it the studio's 'for you' routes "
        "answer 503.",
    )
    host: str = Field(
        "127.0.0.1",
        validation_alias="GATEWAY_HOST",
        description="Address to listen on; 0.0.0.0 in a container (off loopback only with "
        "ATELIER_AUTH=token).",
    )
    port: Port = Field(8080, validation_alias="GATEWAY_PORT", description="HTTP(S) port.")
    timeout: PositiveFloat = Field(
        10.0,
        validation_alias="GATEWAY_TIMEOUT_SECONDS",
        description="Deadline of each call to a service, and of a request's whole handling once "
        "its body is in (token check and service calls): past it the answer is 504.",
    )
    max_upload_bytes: PositiveInt = Field(
        16 * 1024 * 1024,
        validation_alias="GATEWAY_MAX_UPLOAD_BYTES",
        description="Largest photo POSTed to /api/encode (413 beyond, counted as it streams in).",
    )
    max_json_bytes: PositiveInt = Field(
        1024 * 1024,
        validation_alias="GATEWAY_MAX_JSON_BYTES",
        description="Largest body of any other request (413 beyond, counted as it streams in).",
    )
    read_timeout: PositiveFloat = Field(
        30.0,
        validation_alias="GATEWAY_READ_TIMEOUT_SECONDS",
        description="A request's head must arrive within this time of the connection (or the "
        "previous answer), and its body may pause no longer than this between bytes: 408 and "
        "the connection closed otherwise.",
    )
    keep_alive_timeout: PositiveInt = Field(
        5,
        validation_alias="GATEWAY_KEEP_ALIVE_SECONDS",
        description="An idle keep-alive connection is closed after this many seconds (keep it "
        "above a load balancer's idle timeout in front of the gateway).",
    )
    max_header_bytes: PositiveInt = Field(
        32 * 1024,
        validation_alias="GATEWAY_MAX_HEADER_BYTES",
        description="Largest request line plus headers (431 beyond).",
    )
    threads: PositiveInt = Field(
        32,
        validation_alias="GATEWAY_THREADS",
        description="Threads making the blocking calls (token checks, gRPC, Redis, image files); "
        "requests beyond wait for one within their deadline.",
    )
    shutdown_delay: NonNegativeFloat = Field(
        0.0,
        validation_alias="GATEWAY_SHUTDOWN_DELAY_SECONDS",
        description="After SIGTERM, keep accepting for this long while /readyz answers 503, so a "
        "load balancer stops sending before the listener closes.",
    )
    shutdown_grace: NonNegativeFloat = Field(
        8.0,
        validation_alias="GATEWAY_SHUTDOWN_GRACE_SECONDS",
        description="After the listener closes, requests in flight get this long to finish "
        "before they are cancelled; keep delay plus grace below the orchestrator's kill timeout "
        "(compose: 10 s by default).",
    )
    image_root: Path = Field(
        Path("data"),
        validation_alias="GATEWAY_IMAGE_ROOT",
        description="Catalogue images are served only from below this folder.",
    )
    tls_cert_file: Path | None = Field(
        None,
        validation_alias="GATEWAY_TLS_CERT_FILE",
        description="Certificate chain (PEM) for HTTPS; set with GATEWAY_TLS_KEY_FILE.",
    )
    tls_key_file: Path | None = Field(
        None,
        validation_alias="GATEWAY_TLS_KEY_FILE",
        description="Private key (PEM) for HTTPS; set with GATEWAY_TLS_CERT_FILE.",
    )

    @model_validator(mode="after")
    def _checked(self) -> Self:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE must be set together")
        return self

    @field_validator("image_root")
    @classmethod
    def _absolute(cls, folder: Path) -> Path:
        # Resolved once: the image route compares resolved file paths against it.
        return folder.resolve()

    @property
    def https(self) -> bool:
        return self.tls_cert_file is not None
