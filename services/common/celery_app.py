"""One Celery app configuration for every queue of the suite (encoding, interaction imports,
preference training): tasks acknowledged late and redelivered when their worker dies, JSON only,
no results stored, one task prefetched per worker process; and one start-up for every worker:
JSON logs, traces that go on from the process that queued the task, and /metrics served by the
worker's main process for all its pool processes (services/common/metrics.py)."""

from __future__ import annotations

import os

from celery import Celery, signals

from services.common import logs, metrics, tracing
from services.common.redisconf import celery_broker


def _process(sender) -> str:
    app = getattr(sender, "app", None)
    return app.conf.get("atelier_process", "worker") if app is not None else "worker"


@signals.setup_logging.connect
def _logging(**_kwargs) -> None:
    # Connected, this replaces Celery's own logging set-up: the suite's JSON lines instead.
    logs.configure_logging(process="worker")


@signals.worker_init.connect
def _worker_started(sender=None, **_kwargs) -> None:
    process = _process(sender)
    logs.configure_logging(process=process)
    tracing.configure(process)
    metrics.clear_other_processes()
    metrics.serve_metrics()


@signals.worker_process_init.connect
def _pool_process_started(**_kwargs) -> None:
    tracing.configure("worker")  # a no-op after fork: the main process configured it
    tracing.instrument_celery()


@signals.worker_process_shutdown.connect
def _pool_process_stopped(pid=None, **_kwargs) -> None:
    tracing.shutdown()  # the pool process leaves by os._exit: send its last spans first
    if metrics.MULTIPROCESS_DIR:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())


@signals.task_postrun.connect
def _task_finished(task=None, state=None, **_kwargs) -> None:
    metrics.WORKER_TASKS.labels(
        task.name if task else "unknown", (state or "unknown").lower()
    ).inc()


def make_celery_app(
    name: str,
    redis_url: str,
    queue: str,
    visibility_timeout: int,
    time_limit: int | None = None,
    soft_time_limit: int | None = None,
    unacked_prefix: str | None = None,
    set_as_current: bool = True,
    process: str = "worker",
) -> Celery:
    """A Celery app on the suite's Redis whose tasks go to `queue`.

    A task unacknowledged for `visibility_timeout` seconds (its worker died) goes back to the
    queue. `unacked_prefix` gives the app its own unacknowledged-task keys, so that its
    redeliveries follow its own timeout and not another app's on the same Redis.
    `set_as_current=False` for a module that defines more than one app. `process` names its
    workers in logs and traces (compose's service name).
    """
    broker, broker_ssl = celery_broker(redis_url)
    transport = {
        "visibility_timeout": visibility_timeout,
        # Look for tasks of dead workers (unacknowledged past the visibility timeout) every few
        # seconds: kombu's default looks every 10 s but only acts every 10th time, so a killed
        # worker's chunk waited up to ~100 s more (the chaos benchmark measured it).
        "unacked_restore_interval": max(1, min(10, visibility_timeout // 2)),
        "unacked_restore_throttle": 1,
    }
    if unacked_prefix:
        transport |= {
            "unacked_key": f"{unacked_prefix}:unacked",
            "unacked_index_key": f"{unacked_prefix}:unacked_index",
            "unacked_mutex_key": f"{unacked_prefix}:unacked_mutex",
        }
    app = Celery(name, broker=broker, set_as_current=set_as_current)
    app.conf.update(
        broker_use_ssl=broker_ssl,  # None unless rediss://
        task_acks_late=True,  # acknowledged only once the task's outcome is written
        task_reject_on_worker_lost=True,  # redelivered; each queue caps how often
        task_time_limit=time_limit,  # the worker process is killed past this
        task_soft_time_limit=soft_time_limit,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=queue,
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
        atelier_process=process,
    )
    return app
