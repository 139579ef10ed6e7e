"""Model server settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.runtime import env_int, env_str


@dataclass(frozen=True)
class Settings:
    models_dir: Path
    host: str
    port: int
    workers: int
    max_batch: int

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            models_dir=Path(env_str("MODELS_DIR", "models")),
            host=env_str("MODEL_SERVER_HOST", "127.0.0.1"),
            port=env_int("MODEL_SERVER_PORT", 8500),  # TensorFlow Serving's gRPC port
            workers=env_int("MODEL_SERVER_WORKERS", 8),
            # Rows per Predict: a z batch of a few MB would otherwise decode to tens of GB.
            max_batch=env_int("MODEL_SERVER_MAX_BATCH", 1024),
        )
