"""Recommender service settings, read once from the environment (services/common/settings.py)."""

from __future__ import annotations

from services.common.queries import QuerySettings
from services.common.settings import Port, listen_host, listen_port


class Settings(QuerySettings):
    """The recommender: similar items in the query's partition and pairings from the others."""

    host: str = listen_host("RECOMMENDER_HOST")
    port: Port = listen_port("RECOMMENDER_PORT", 50054)
