"""Recommender service settings, read once from the environment (services/common/settings.py)."""

from __future__ import annotations

from pydantic import Field

from services.common.queries import QuerySettings
from services.common.settings import Port


class Settings(QuerySettings):
    """The recommender: similar items in the query's partition and pairings from the others."""

    host: str = Field(
        "127.0.0.1",
        validation_alias="RECOMMENDER_HOST",
        description="Address to listen on; 0.0.0.0 in a container (off loopback only with "
        "ATELIER_AUTH=token).",
    )
    port: Port = Field(50054, validation_alias="RECOMMENDER_PORT", description="gRPC port.")
