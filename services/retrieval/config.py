"""Retrieval service settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.runtime import env_float, env_int, env_str


@dataclass(frozen=True)
class Settings:
    redis_url: str
    encoder_addr: str
    host: str
    port: int
    kmeans_k: int
    max_abs_latent: float

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            redis_url=env_str("REDIS_URL"),
            encoder_addr=env_str("ENCODER_ADDR", "127.0.0.1:50051"),
            host=env_str("RETRIEVAL_HOST", "127.0.0.1"),
            port=env_int("RETRIEVAL_PORT", 50053),
            kmeans_k=env_int("KMEANS_K", 3),
            max_abs_latent=env_float("MAX_ABS_LATENT", 100.0),
        )
