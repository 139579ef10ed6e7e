"""Retrieval service settings, read once from the environment (services/common/settings.py)."""

from __future__ import annotations

from services.common.queries import QuerySettings
from services.common.settings import Port, listen_host, listen_port


class Settings(QuerySettings):
    """Retrieval: the catalogue items nearest a query, under a ranking method."""

    host: str = listen_host("RETRIEVAL_HOST")
    port: Port = listen_port("RETRIEVAL_PORT", 50053)
