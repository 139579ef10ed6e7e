"""Decoder service settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.auth import AuthSettings
from services.common.redisconf import redis_url_from_env
from services.common.runtime import env_float, env_int, env_str


@dataclass(frozen=True)
class Settings:
    redis_url: str
    model_server_addr: str
    host: str
    port: int
    max_abs_latent: float
    max_batch: int
    max_steps: int
    model_timeout: float
    auth: AuthSettings

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            redis_url=redis_url_from_env(),
            model_server_addr=env_str("MODEL_SERVER_ADDR", "127.0.0.1:8500"),
            host=env_str("DECODER_HOST", "127.0.0.1"),
            port=env_int("DECODER_PORT", 50052),
            max_abs_latent=env_float("MAX_ABS_LATENT", 100.0),
            max_batch=env_int("MAX_DECODE_BATCH", 64),
            max_steps=env_int("MAX_TRAVERSE_STEPS", 32),
            model_timeout=env_float("MODEL_TIMEOUT_SECONDS", 30.0),
            auth=AuthSettings.from_env(),
        )
