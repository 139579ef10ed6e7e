"""Personalization service and worker settings, read once from the environment
(services/common/settings.py)."""

from __future__ import annotations

from pydantic import Field, PositiveFloat, PositiveInt, ValidationInfo, field_validator

from services.common.settings import (
    CatalogueRootsSetting,
    ModelServerCaller,
    Port,
    ServiceSettings,
    listen_host,
    listen_port,
)

# A training run's redelivery waits this much longer than the run may take.
TRAIN_VISIBILITY_MARGIN_SECONDS = 600


class Settings(ServiceSettings, ModelServerCaller):
    """The personalization service (interactions, preference models, ranking for a user) and its
    import and training workers."""

    recommender_addr: str = Field(
        "127.0.0.1:50054",
        description="The recommender: one address per shard, comma-separated in shard order "
        "(the service fans out to all of them).",
    )
    host: str = listen_host("PERSONALIZATION_HOST")
    port: Port = listen_port("PERSONALIZATION_PORT", 50055)
    call_timeout: PositiveFloat = Field(
        10.0,
        validation_alias="PERSONALIZATION_CALL_TIMEOUT_SECONDS",
        description="Deadline of calls to the recommender (never longer than the caller's own).",
    )
    catalogue_roots: CatalogueRootsSetting = Field(
        None,
        validate_default=True,
        description="Interactions CSVs are read only from below these folders, as catalogues "
        "are (os.pathsep-separated list; unset: the repository's data and tests/fixtures).",
    )
    job_ttl_seconds: PositiveInt = Field(
        7 * 24 * 3600, description="How long an import or training job's record is kept."
    )
    import_batch_rows: PositiveInt = Field(
        2000, description="Interaction rows written to Redis per batch of an import."
    )
    import_visibility_timeout: PositiveInt = Field(
        300,
        validation_alias="IMPORT_VISIBILITY_TIMEOUT_SECONDS",
        description="An import slice whose worker died is redelivered after this long; a slice "
        "runs for a third of it, so a live one is never redelivered.",
    )
    train_time_limit: PositiveInt = Field(
        3600,
        validation_alias="TRAIN_TIME_LIMIT_SECONDS",
        description="A training run taking longer is killed (Celery's hard time limit).",
    )
    train_visibility_timeout: PositiveInt = Field(
        None,
        validate_default=True,
        validation_alias="TRAIN_VISIBILITY_TIMEOUT_SECONDS",
        description="A training run whose worker died is redelivered after this long; it must "
        "stay above TRAIN_TIME_LIMIT_SECONDS or a live run starts twice (unset: that limit "
        f"+ {TRAIN_VISIBILITY_MARGIN_SECONDS} s).",
    )
    max_job_deliveries: PositiveInt = Field(
        3,
        description="Deliveries of one import slice or training run before its job is marked "
        "failed: a run whose worker dies under it would otherwise kill worker after worker.",
    )

    @field_validator("train_visibility_timeout", mode="before")
    @classmethod
    def _default_above_the_time_limit(cls, value: object, info: ValidationInfo) -> object:
        if value is not None:
            return value
        # Unset. When TRAIN_TIME_LIMIT_SECONDS itself is bad, its own error is reported.
        limit = info.data.get("train_time_limit", cls.model_fields["train_time_limit"].default)
        return limit + TRAIN_VISIBILITY_MARGIN_SECONDS
