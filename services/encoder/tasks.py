"""Celery app and the batch-encoding task: translate, delegate to atelier.jobs, retry what is transient.

Start a worker with `celery -A services.encoder.tasks worker`.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

import grpc
import redis
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from atelier import jobs
from atelier.store import CodeStore
from services.common import metrics
from services.common.celery_app import make_celery_app
from services.encoder.config import Settings

if TYPE_CHECKING:
    from services.common.model_client import ModelClient

log = logging.getLogger(__name__)
QUEUE = "atelier.encode"


def queue_idle(client: redis.Redis) -> bool:
    """No encode task waits in the queue, runs, or is held for a retry (all of those are in
    kombu's `unacked` hash until acknowledged)."""
    pipe = client.pipeline(transaction=True)
    pipe.llen(QUEUE)
    pipe.hlen("unacked")
    waiting, unacked = pipe.execute()
    return waiting == 0 and unacked == 0


class TransientModelError(Exception):
    """The model server was unreachable or too slow; the chunk is retried."""


settings = Settings.from_env()
app = make_celery_app(
    "atelier",
    settings.redis_url,
    QUEUE,
    settings.visibility_timeout,
    settings.task_time_limit,
    settings.task_soft_time_limit,
)


@functools.cache
def _store() -> CodeStore:
    # One Redis pool per process, made on first use (after fork).
    return CodeStore.from_url(settings.redis_url)


@functools.cache
def _model() -> ModelClient:
    # Imported here: the model client pulls in TensorFlow, which `celery inspect ping` (the
    # container health check), the worker's parent process and enqueueing never need.
    from services.common.model_client import ModelClient

    return ModelClient(settings.model_server_addr, settings.model_timeout)


def enqueue(job_id: str, chunk_index: int) -> None:
    encode_chunk.apply_async(args=(job_id, chunk_index), queue=QUEUE)


def _top_up(store: CodeStore, job_id: str) -> None:
    """Queue the job's next chunks now that one has finished; the encoder's scan retries failures."""
    try:
        jobs.pump(store, job_id, enqueue, settings.max_queued_chunks)
    except Exception:
        log.exception("job %s: could not queue the next chunks (the encoder retries)", job_id)


def _encode(model: ModelClient, images, version: int):
    try:
        codes, _ = model.encode(images, version)
    except grpc.RpcError as exc:
        if exc.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ):
            raise TransientModelError(f"model server: {exc.code().name}: {exc.details()}") from exc
        raise jobs.ChunkRejected(
            f"model server rejected the batch: {exc.code().name}: {exc.details()}"
        ) from exc
    return codes


def _failure_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeLimitExceeded):
        return f"the chunk ran past the task time limit ({settings.task_time_limit} s)"
    if isinstance(exc, SoftTimeLimitExceeded):
        return f"the chunk ran past the task time limit ({settings.task_soft_time_limit} s)"
    return f"gave up after retries: {exc}"


class EncodeChunkTask(app.Task):
    def on_failure(self, exc, task_id, args, kwargs, einfo):
        # Retries exhausted, or a time limit: the items are reported, never silently dropped.
        # Runs in the worker's parent process for a hard time limit (the child is gone).
        job_id, chunk_index = args[0], args[1]
        store = _store()
        try:
            jobs.fail_chunk(store, job_id, chunk_index, _failure_reason(exc))
        except redis.RedisError:
            log.exception("job %s: could not record chunk %d as failed", job_id, chunk_index)
            return
        _top_up(store, job_id)


@app.task(
    base=EncodeChunkTask,
    bind=True,
    name="atelier.encode_chunk",
    acks_late=True,
    autoretry_for=(TransientModelError, redis.ConnectionError, redis.TimeoutError),
    retry_backoff=True,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=10,
    ignore_result=True,
)
def encode_chunk(self, job_id: str, chunk_index: int) -> None:
    store = _store()
    if jobs.poisoned(
        store, job_id, chunk_index, self.request.retries, settings.max_chunk_deliveries
    ):
        _top_up(store, job_id)
        return
    written, failed = jobs.encode_chunk(
        store,
        functools.partial(_encode, _model()),
        job_id,
        chunk_index,
        settings.catalogue_roots,
    )
    metrics.WORKER_ITEMS.labels("encoded").inc(written)
    metrics.WORKER_ITEMS.labels("failed").inc(failed)
    log.info("job %s chunk %d: %d encoded, %d failed", job_id, chunk_index, written, failed)
    _top_up(store, job_id)
