"""Encoder service and worker settings, read once from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from atelier.confinement import CatalogueRoots
from atelier.jobs import JobPolicy
from services.common.auth import AuthSettings
from services.common.redisconf import redis_url_from_env
from services.common.runtime import env_float, env_int, env_str


@dataclass(frozen=True)
class Settings:
    redis_url: str
    model_server_addr: str
    models_dir: Path
    host: str
    port: int
    chunk_size: int
    model_timeout: float
    visibility_timeout: int
    catalogue_roots: CatalogueRoots
    job_ttl_seconds: int
    max_queued_chunks: int
    max_job_entries: int
    max_inline_image_bytes: int
    max_chunk_deliveries: int
    task_time_limit: int
    task_soft_time_limit: int
    job_resume_interval: float
    auth: AuthSettings
    requeue_after: float

    @classmethod
    def from_env(cls) -> Settings:
        try:
            roots = CatalogueRoots.parse(os.environ.get("CATALOGUE_ROOTS"))
        except ValueError as exc:
            raise SystemExit(f"environment variable CATALOGUE_ROOTS: {exc}") from None
        return cls(
            redis_url=redis_url_from_env(),
            model_server_addr=env_str("MODEL_SERVER_ADDR", "127.0.0.1:8500"),
            models_dir=Path(env_str("MODELS_DIR", "models")),
            host=env_str("ENCODER_HOST", "127.0.0.1"),
            port=env_int("ENCODER_PORT", 50051),
            chunk_size=env_int("ENCODE_CHUNK_SIZE", 64),
            model_timeout=env_float("MODEL_TIMEOUT_SECONDS", 30.0),
            # A task unacknowledged this long (its worker died) goes back to the queue. Keep it well
            # above a chunk's worst case (the task time limit) or live chunks run twice.
            visibility_timeout=env_int("QUEUE_VISIBILITY_TIMEOUT_SECONDS", 300),
            # Catalogue CSVs and images are read only from below these folders (os.pathsep list).
            catalogue_roots=roots,
            job_ttl_seconds=env_int("JOB_TTL_SECONDS", 7 * 24 * 3600),
            max_queued_chunks=env_int("MAX_QUEUED_CHUNKS_PER_JOB", 32),
            max_job_entries=env_int("MAX_JOB_ENTRIES", 1_000_000),
            max_inline_image_bytes=env_int("MAX_INLINE_IMAGE_BYTES", 4 * 1024 * 1024),
            max_chunk_deliveries=env_int("MAX_CHUNK_DELIVERIES", 3),
            task_time_limit=env_int("TASK_TIME_LIMIT_SECONDS", 240),
            task_soft_time_limit=env_int("TASK_SOFT_TIME_LIMIT_SECONDS", 200),
            job_resume_interval=env_float("JOB_RESUME_INTERVAL_SECONDS", 30.0),
            # An unfinished job this quiet, with nothing queued or running, lost tasks to a Redis
            # crash: its missing items are queued again (atelier.jobs.requeue_lost).
            requeue_after=env_float("JOB_REQUEUE_AFTER_SECONDS", 30.0),
            auth=AuthSettings.from_env(),
        )

    @property
    def job_policy(self) -> JobPolicy:
        return JobPolicy(
            chunk_size=self.chunk_size,
            ttl_seconds=self.job_ttl_seconds,
            max_queued_chunks=self.max_queued_chunks,
            max_job_entries=self.max_job_entries,
            max_inline_image_bytes=self.max_inline_image_bytes,
        )
