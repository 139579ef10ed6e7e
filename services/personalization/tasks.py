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
from celery import Celery

from atelier import personal_jobs
from atelier.interactions import InteractionLog
from atelier.personal_store import PreferenceStore
from atelier.store import CodeStore
from services.common.redisconf import celery_broker
from services.personalization.config import Settings

log = logging.getLogger(__name__)
IMPORT_QUEUE = "atelier.import"
TRAIN_QUEUE = "atelier.train"
TRANSIENT = (redis.ConnectionError, redis.TimeoutError)


def make_app(
    settings: Settings, name: str, queue: str, visibility_timeout: int, time_limit: int | None
) -> Celery:
    broker, broker_ssl = celery_broker(settings.redis_url)
    app = Celery(name, broker=broker, set_as_current=False)
    app.conf.update(
        broker_use_ssl=broker_ssl,
        task_acks_late=True,  # acknowledged only once the job's state is written
        task_reject_on_worker_lost=True,  # redelivered; MAX_JOB_DELIVERIES caps crash loops
        task_time_limit=time_limit,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=queue,
        broker_transport_options={
            "visibility_timeout": visibility_timeout,
            "unacked_restore_interval": max(1, min(10, visibility_timeout // 2)),
            "unacked_restore_throttle": 1,
            "unacked_key": f"{queue}:unacked",
            "unacked_index_key": f"{queue}:unacked_index",
            "unacked_mutex_key": f"{queue}:unacked_mutex",
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


settings = Settings.from_env()
import_app = make_app(
    settings, "atelier-import", IMPORT_QUEUE, settings.import_visibility_timeout, None
)
train_app = make_app(
    settings,
    "atelier-train",
    TRAIN_QUEUE,
    settings.train_visibility_timeout,
    settings.train_time_limit,
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


def _poisoned(job_id: str, attempt: int) -> bool:
    """A job whose task keeps killing its worker fails with that reason instead of looping."""
    prefs = _prefs()
    deliveries = prefs.count_delivery(job_id, attempt)
    if deliveries == 0:
        log.warning("job %s is gone (expired?); nothing to do", job_id)
        return True
    if deliveries > settings.max_job_deliveries:
        prefs.set_job_fields(
            job_id,
            reason=f"the job's task killed its worker {deliveries - 1} times",
            finished=repr(time.time()),
        )
        return True
    return False


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
def import_interactions(self, job_id: str) -> None:
    if _poisoned(job_id, self.request.retries):
        return
    r = _redis()
    try:
        personal_jobs.run_import(
            PreferenceStore(r),
            InteractionLog(r),
            settings.catalogue_roots,
            job_id,
            batch=settings.import_batch_rows,
        )
    except personal_jobs.JobGone:
        log.warning("import %s is gone (expired?); nothing to do", job_id)


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
