"""Encoder service and worker settings, read once from the environment (services/common/settings.py)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, PositiveFloat, PositiveInt

from atelier.jobs import JobPolicy
from services.common.settings import (
    CatalogueRootsSetting,
    ModelServerCaller,
    Port,
    ServiceSettings,
    listen_host,
    listen_port,
)


class Settings(ServiceSettings, ModelServerCaller):
    """The encoder service (images to codes, catalogue jobs, generations) and its Celery workers."""

    models_dir: Path = Field(
        Path("models"), description="Folder of the trained model versions (their metadata)."
    )
    host: str = listen_host("ENCODER_HOST")
    port: Port = listen_port("ENCODER_PORT", 50051)
    chunk_size: PositiveInt = Field(
        64, validation_alias="ENCODE_CHUNK_SIZE", description="Catalogue items per queued task."
    )
    visibility_timeout: PositiveInt = Field(
        300,
        validation_alias="QUEUE_VISIBILITY_TIMEOUT_SECONDS",
        description="A task unacknowledged this long (its worker died) goes back to the queue. "
        "Keep it well above a chunk's worst case (TASK_TIME_LIMIT_SECONDS) or live chunks run "
        "twice.",
    )
    catalogue_roots: CatalogueRootsSetting = Field(
        None,
        validate_default=True,
        description="Catalogue CSVs and images are read only from below these folders "
        "(os.pathsep-separated list; unset: the repository's data and tests/fixtures).",
    )
    job_ttl_seconds: PositiveInt = Field(
        7 * 24 * 3600,
        description="How long a job's records live in Redis (refreshed while it progresses).",
    )
    max_queued_chunks: PositiveInt = Field(
        32,
        validation_alias="MAX_QUEUED_CHUNKS_PER_JOB",
        description="Chunks of one job in the queue at once; each finished chunk tops the "
        "window up.",
    )
    max_job_entries: PositiveInt = Field(
        1_000_000, description="Most items one catalogue job may hold."
    )
    max_inline_image_bytes: PositiveInt = Field(
        4 * 1024 * 1024, description="Largest image sent inline (in the request) per item."
    )
    max_chunk_deliveries: PositiveInt = Field(
        3,
        description="Deliveries of one chunk before its items are marked failed: a chunk whose "
        "worker dies under it (out of memory, a crash in a decoder) would otherwise kill worker "
        "after worker.",
    )
    task_time_limit: PositiveInt = Field(
        240,
        validation_alias="TASK_TIME_LIMIT_SECONDS",
        description="A chunk running this long is killed (Celery's hard time limit).",
    )
    task_soft_time_limit: PositiveInt = Field(
        200,
        validation_alias="TASK_SOFT_TIME_LIMIT_SECONDS",
        description="A chunk running this long is stopped and recorded as failed (Celery's soft "
        "time limit); keep it below TASK_TIME_LIMIT_SECONDS.",
    )
    job_resume_interval: PositiveFloat = Field(
        30.0,
        validation_alias="JOB_RESUME_INTERVAL_SECONDS",
        description="How often the encoder carries on jobs left half-queued and queues again "
        "the chunks the queue lost.",
    )
    requeue_after: PositiveFloat = Field(
        30.0,
        validation_alias="JOB_REQUEUE_AFTER_SECONDS",
        description="An unfinished job this quiet, with nothing queued or running, lost tasks to "
        "a Redis crash: its missing items are queued again (atelier.jobs.requeue_lost).",
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
