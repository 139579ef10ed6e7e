"""Retrieval service settings, read once from the environment (services/common/settings.py)."""

from __future__ import annotations

from pydantic import Field

from services.common.queries import QuerySettings
from services.common.settings import Port


class Settings(QuerySettings):
    """Retrieval: the catalogue items nearest a query, under a ranking method."""

    host: str = Field(
        "127.0.0.1",
        validation_alias="RETRIEVAL_HOST",
        description="Address to listen on; 0.0.0.0 in a container (off loopback only with "
        "ATELIER_AUTH=token).",
    )
    port: Port = Field(50053, validation_alias="RETRIEVAL_PORT", description="gRPC port.")
