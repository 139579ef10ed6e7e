"""Celery apps and tasks of personalisation: translate, delegate to atelier.personal_jobs, retry
what is transient.

Two apps, one per queue, because their tasks differ in length by orders of magnitude and Celery's
Redis transport redelivers any unacknowledged task after the app's visibility timeout: an import
batch should come back minutes after its worker died, a training run must not come back while it
still runs. Each app keeps its unacknowledged tasks under its own keys, so neither (nor the
encoder's workers) restores the other's.

    celery -A services.personalization.tasks:import_app worker -Q atelier.import
    celery -A services.personalization.tasks:train_app worker -Q atelier.train

Only the training task imports TensorFlow (through atelier.preference, when it runs).
"""

from __future__ import annotations

import functools
import logging
import time

import redis

from atelier import personal_jobs
from atelier.interactions import InteractionLog
from atelier.personal_store import PreferenceStore
from atelier.store import CodeStore
from services.common.celery_app import make_celery_app
from services.personalization.config import Settings

log = logging.getLogger(__name__)
IMPORT_QUEUE = "atelier.import"
TRAIN_QUEUE = "atelier.train"
TRANSIENT = (redis.ConnectionError, redis.TimeoutError)


settings = Settings.from_env()
import_app = make_celery_app(
    "atelier-import",
    settings.redis_url,
    IMPORT_QUEUE,
    settings.import_visibility_timeout,
    unacked_prefix=IMPORT_QUEUE,
    set_as_current=False,
    process="interactions-worker",
)
train_app = make_celery_app(
    "atelier-train",
    settings.redis_url,
    TRAIN_QUEUE,
    settings.train_visibility_timeout,
    settings.train_time_limit,
    unacked_prefix=TRAIN_QUEUE,
    set_as_current=False,
    process="trainer",
)


@functools.cache
def _redis() -> redis.Redis:
    # One pool per process, made on first use (after fork).
    return CodeStore.from_url(settings.redis_url).redis


def _prefs() -> PreferenceStore:
    return PreferenceStore(_redis())


def enqueue_import(job_id: str) -> None:
    import_interactions.apply_async(args=(job_id,), queue=IMPORT_QUEUE)


def enqueue_training(job_id: str) -> None:
    train_preference.apply_async(args=(job_id,), queue=TRAIN_QUEUE)


def _poisoned(job_id: str, attempt: int | str) -> bool:
    return personal_jobs.poisoned(_prefs(), job_id, attempt, settings.max_job_deliveries)


def _give_up(job_id: str, exc: BaseException) -> None:
    # Retries exhausted or a time limit: the job says so, it is never left running forever.
    try:
        _prefs().set_job_fields(job_id, reason=f"gave up: {exc}", finished=repr(time.time()))
    except redis.RedisError:
        log.exception("job %s: could not record its failure", job_id)


class ImportTask(import_app.Task):
    def on_failure(self, exc, task_id, args, kwargs, einfo):
        _give_up(args[0], exc)


class TrainTask(train_app.Task):
    def on_failure(self, exc, task_id, args, kwargs, einfo):
        _give_up(args[0], exc)


@import_app.task(
    base=ImportTask,
    bind=True,
    name="atelier.import_interactions",
    acks_late=True,
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=10,
    ignore_result=True,
)
def import_interactions(self, job_id: str, part: int = 0) -> None:
    # Deliveries are counted per slice of the import (`part`) and per retry of it.
    if _poisoned(job_id, f"{part}:{self.request.retries}"):
        return
    r = _redis()
    try:
        finished = personal_jobs.run_import(
            PreferenceStore(r),
            InteractionLog(r),
            settings.catalogue_roots,
            job_id,
            batch=settings.import_batch_rows,
            # A third of the visibility timeout: the broker never redelivers a running slice.
            slice_seconds=settings.import_visibility_timeout / 3,
        )
    except personal_jobs.JobGone:
        log.warning("import %s is gone (expired?); nothing to do", job_id)
        return
    if not finished:
        import_interactions.apply_async(args=(job_id, part + 1), queue=IMPORT_QUEUE)


@train_app.task(
    base=TrainTask,
    bind=True,
    name="atelier.train_preference",
    acks_late=True,
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=5,
    ignore_result=True,
)
def train_preference(self, job_id: str) -> None:
    if _poisoned(job_id, self.request.retries):
        return
    r = _redis()
    try:
        personal_jobs.run_training(PreferenceStore(r), CodeStore(r), InteractionLog(r), job_id)
    except personal_jobs.JobGone:
        log.warning("training %s is gone (expired?); nothing to do", job_id)
