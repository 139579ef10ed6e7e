"""One Celery app configuration for every queue of the suite (encoding, interaction imports,
preference training): tasks acknowledged late and redelivered when their worker dies, JSON only,
no results stored, one task prefetched per worker process."""

from __future__ import annotations

from celery import Celery

from services.common.redisconf import celery_broker


def make_celery_app(
    name: str,
    redis_url: str,
    queue: str,
    visibility_timeout: int,
    time_limit: int | None = None,
    soft_time_limit: int | None = None,
    unacked_prefix: str | None = None,
    set_as_current: bool = True,
) -> Celery:
    """A Celery app on the suite's Redis whose tasks go to `queue`.

    A task unacknowledged for `visibility_timeout` seconds (its worker died) goes back to the
    queue. `unacked_prefix` gives the app its own unacknowledged-task keys, so that its
    redeliveries follow its own timeout and not another app's on the same Redis.
    `set_as_current=False` for a module that defines more than one app.
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
    )
    return app
