"""Retrieval service settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.queries import QuerySettings


@dataclass(frozen=True)
class Settings(QuerySettings):
    @classmethod
    def from_env(cls) -> Settings:
        return cls.read("RETRIEVAL", 50053)
