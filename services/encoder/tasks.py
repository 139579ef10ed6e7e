"""Celery app and the batch-encoding task: translate, delegate to atelier.jobs, retry what is transient.

Start a worker with `celery -A services.encoder.tasks worker`.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

import grpc
import redis
from celery import Celery

from atelier import jobs
from atelier.store import CodeStore
from services.common.redisconf import celery_broker
from services.encoder.config import Settings

if TYPE_CHECKING:
    from services.common.model_client import ModelClient

log = logging.getLogger(__name__)
QUEUE = "atelier.encode"


class TransientModelError(Exception):
    """The model server was unreachable or too slow; the chunk is retried."""


def make_app(settings: Settings) -> Celery:
    broker, broker_ssl = celery_broker(settings.redis_url)
    app = Celery("atelier", broker=broker)
    app.conf.update(
        broker_use_ssl=broker_ssl,  # None unless rediss://
        task_acks_late=True,  # a chunk is acknowledged only after its codes are written
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=QUEUE,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


settings = Settings.from_env()
app = make_app(settings)


@functools.cache
def _worker_context() -> tuple[CodeStore, ModelClient]:
    # Imported here: the model client pulls in TensorFlow, which `celery inspect ping` (the
    # container health check) and the encoder service's enqueueing never need.
    from services.common.model_client import ModelClient

    # One Redis pool and one gRPC channel per worker process, made on first use (after fork).
    return CodeStore.from_url(settings.redis_url), ModelClient(
        settings.model_server_addr, settings.model_timeout
    )


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


class EncodeChunkTask(app.Task):
    def on_failure(self, exc, task_id, args, kwargs, einfo):
        # Retries are exhausted: the items are reported, never silently dropped from the job.
        job_id, item_ids = args[0], args[1]
        store, _ = _worker_context()
        try:
            jobs.fail_chunk(store, job_id, item_ids, f"gave up after retries: {exc}")
        except redis.RedisError:
            log.exception(
                "job %s: could not record %d failed items (Redis down)", job_id, len(item_ids)
            )


@app.task(
    base=EncodeChunkTask,
    name="atelier.encode_chunk",
    acks_late=True,
    autoretry_for=(TransientModelError, redis.ConnectionError, redis.TimeoutError),
    retry_backoff=True,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=10,
    ignore_result=True,
)
def encode_chunk(job_id: str, item_ids: list[str], image_height: int, image_width: int) -> None:
    store, model = _worker_context()
    written, failed = jobs.encode_chunk(
        store, functools.partial(_encode, model), job_id, item_ids, (image_height, image_width)
    )
    log.info("job %s: %d encoded, %d failed", job_id, written, failed)
