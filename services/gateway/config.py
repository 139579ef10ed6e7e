"""Gateway settings, read once from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from services.common.auth import AuthSettings
from services.common.redisconf import redis_url_from_env
from services.common.runtime import env_float, env_int, env_str


def _optional_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


@dataclass(frozen=True)
class Settings:
    redis_url: str
    encoder_addr: str
    decoder_addr: str
    retrieval_addr: str
    recommender_addr: str
    personalization_addr: str
    host: str
    port: int
    timeout: float
    max_upload_bytes: int
    max_json_bytes: int
    read_timeout: float
    image_root: Path
    tls_cert_file: Path | None
    tls_key_file: Path | None
    auth: AuthSettings

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            redis_url=redis_url_from_env(),
            encoder_addr=env_str("ENCODER_ADDR", "127.0.0.1:50051"),
            decoder_addr=env_str("DECODER_ADDR", "127.0.0.1:50052"),
            retrieval_addr=env_str("RETRIEVAL_ADDR", "127.0.0.1:50053"),
            recommender_addr=env_str("RECOMMENDER_ADDR", "127.0.0.1:50054"),
            personalization_addr=env_str("PERSONALIZATION_ADDR", "127.0.0.1:50055"),
            host=env_str("GATEWAY_HOST", "127.0.0.1"),
            port=env_int("GATEWAY_PORT", 8080),
            timeout=env_float("GATEWAY_TIMEOUT_SECONDS", 10.0),
            max_upload_bytes=env_int("GATEWAY_MAX_UPLOAD_BYTES", 16 * 1024 * 1024),
            max_json_bytes=env_int("GATEWAY_MAX_JSON_BYTES", 1024 * 1024),
            # A client that stops sending mid-request (or idles on keep-alive) frees its thread.
            read_timeout=env_float("GATEWAY_READ_TIMEOUT_SECONDS", 30.0),
            # Catalogue images are served only from below this folder.
            image_root=Path(env_str("GATEWAY_IMAGE_ROOT", "data")).resolve(),
            # HTTPS when both are set (services/common/tls.py: https_context).
            tls_cert_file=_optional_path("GATEWAY_TLS_CERT_FILE"),
            tls_key_file=_optional_path("GATEWAY_TLS_KEY_FILE"),
            auth=AuthSettings.from_env(),
        )
