"""Personalization service and worker settings, read once from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass

from atelier.confinement import CatalogueRoots
from services.common.auth import AuthSettings
from services.common.redisconf import redis_url_from_env
from services.common.runtime import env_float, env_int, env_str


@dataclass(frozen=True)
class Settings:
    redis_url: str
    recommender_addr: str
    model_server_addr: str
    host: str
    port: int
    call_timeout: float
    model_timeout: float
    catalogue_roots: CatalogueRoots
    job_ttl_seconds: int
    import_batch_rows: int
    import_visibility_timeout: int
    train_visibility_timeout: int
    train_time_limit: int
    max_job_deliveries: int
    auth: AuthSettings

    @classmethod
    def from_env(cls) -> Settings:
        try:
            roots = CatalogueRoots.parse(os.environ.get("CATALOGUE_ROOTS"))
        except ValueError as exc:
            raise SystemExit(f"environment variable CATALOGUE_ROOTS: {exc}") from None
        train_time_limit = env_int("TRAIN_TIME_LIMIT_SECONDS", 3600)
        return cls(
            redis_url=redis_url_from_env(),
            recommender_addr=env_str("RECOMMENDER_ADDR", "127.0.0.1:50054"),
            model_server_addr=env_str("MODEL_SERVER_ADDR", "127.0.0.1:8500"),
            host=env_str("PERSONALIZATION_HOST", "127.0.0.1"),
            port=env_int("PERSONALIZATION_PORT", 50055),
            # Deadline of calls to the recommender (never longer than the caller's own).
            call_timeout=env_float("PERSONALIZATION_CALL_TIMEOUT_SECONDS", 10.0),
            model_timeout=env_float("MODEL_TIMEOUT_SECONDS", 30.0),
            # Interactions CSVs are read only from below these folders, as catalogues are.
            catalogue_roots=roots,
            job_ttl_seconds=env_int("JOB_TTL_SECONDS", 7 * 24 * 3600),
            import_batch_rows=env_int("IMPORT_BATCH_ROWS", 2000),
            # An import batch or training run whose worker died is redelivered after this long;
            # training's must stay above TRAIN_TIME_LIMIT_SECONDS or a live run starts twice.
            import_visibility_timeout=env_int("IMPORT_VISIBILITY_TIMEOUT_SECONDS", 300),
            train_visibility_timeout=env_int(
                "TRAIN_VISIBILITY_TIMEOUT_SECONDS", train_time_limit + 600
            ),
            train_time_limit=train_time_limit,
            max_job_deliveries=env_int("MAX_JOB_DELIVERIES", 3),
            auth=AuthSettings.from_env(),
        )
