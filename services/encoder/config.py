"""Encoder service and worker settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.auth import AuthSettings
from services.common.runtime import env_float, env_int, env_str


@dataclass(frozen=True)
class Settings:
    redis_url: str
    model_server_addr: str
    models_dir: Path
    host: str
    port: int
    chunk_size: int
    model_timeout: float
    visibility_timeout: int
    auth: AuthSettings

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            redis_url=env_str("REDIS_URL"),
            model_server_addr=env_str("MODEL_SERVER_ADDR", "127.0.0.1:8500"),
            models_dir=Path(env_str("MODELS_DIR", "models")),
            host=env_str("ENCODER_HOST", "127.0.0.1"),
            port=env_int("ENCODER_PORT", 50051),
            chunk_size=env_int("ENCODE_CHUNK_SIZE", 64),
            model_timeout=env_float("MODEL_TIMEOUT_SECONDS", 30.0),
            # A task unacknowledged this long (its worker died) goes back to the queue. Keep it well
            # above a chunk's worst case (model timeout plus retry backoff) or live chunks run twice.
            visibility_timeout=env_int("QUEUE_VISIBILITY_TIMEOUT_SECONDS", 300),
            auth=AuthSettings.from_env(),
        )
