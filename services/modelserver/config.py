"""Model server settings, read once from the environment (services/common/settings.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, PositiveInt
from pydantic_settings import BaseSettings

from services.common.settings import ENV_CONFIG, Port, load


class Settings(BaseSettings):
    """The model server: TensorFlow Serving's Predict API over the trained models. It has no
    authentication (nor does TensorFlow Serving), so compose publishes it on loopback only."""

    model_config = ENV_CONFIG

    models_dir: Path = Field(
        Path("models"), description="Folder of the trained model versions it serves."
    )
    host: str = Field(
        "127.0.0.1", validation_alias="MODEL_SERVER_HOST", description="Address to listen on."
    )
    port: Port = Field(
        8500, validation_alias="MODEL_SERVER_PORT", description="TensorFlow Serving's gRPC port."
    )
    workers: PositiveInt = Field(
        8, validation_alias="MODEL_SERVER_WORKERS", description="Threads answering Predict calls."
    )
    max_batch: PositiveInt = Field(
        1024,
        validation_alias="MODEL_SERVER_MAX_BATCH",
        description="Rows per Predict: a z batch of a few MB would otherwise decode to tens of GB.",
    )

    @classmethod
    def from_env(cls) -> Self:
        """Read once from the environment; a bad value stops the process naming its variable."""
        return load(cls)
