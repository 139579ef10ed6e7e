"""Decoder service settings, read once from the environment (services/common/settings.py)."""

from __future__ import annotations

from pydantic import Field, PositiveFloat, PositiveInt

from services.common.settings import (
    ModelServerCaller,
    Port,
    ServiceSettings,
    listen_host,
    listen_port,
)


class Settings(ServiceSettings, ModelServerCaller):
    """The decoder: latent codes to images, through the model server."""

    host: str = listen_host("DECODER_HOST")
    port: Port = listen_port("DECODER_PORT", 50052)
    max_abs_latent: PositiveFloat = Field(
        100.0,
        description="Largest absolute value accepted in a caller's latent vector (a value "
        "beyond it is refused as INVALID_ARGUMENT).",
    )
    max_batch: PositiveInt = Field(
        64, validation_alias="MAX_DECODE_BATCH", description="Most codes decoded in one request."
    )
    max_steps: PositiveInt = Field(
        32,
        validation_alias="MAX_TRAVERSE_STEPS",
        description="Most images one Traverse request may ask for.",
    )
