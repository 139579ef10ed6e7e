"""Prometheus metrics: the suite's one catalogue of metric names, the gRPC server interceptor
that counts (and logs the failures of) every RPC, and the /metrics endpoint each process serves
on METRICS_PORT.

Every name a dashboard or alert may query is defined here, once; deploy/grafana/atelier.json
queries only these (tests/integration/test_observability.py checks it against live processes).
A Celery worker's pool processes are forked: with PROMETHEUS_MULTIPROC_DIR set (compose and
Kubernetes set it) their counters are summed by the worker's main process, which serves them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY, Collector

from services.common.settings import ProcessSettings

log = logging.getLogger(__name__)
MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if MULTIPROCESS_DIR:
    # prometheus_client writes each process's values to files there from the first metric on.
    os.makedirs(MULTIPROCESS_DIR, exist_ok=True)

# Seconds; from a cached health check (sub-millisecond) to a slow decode batch or a rebuild call.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

GRPC_REQUESTS = Counter(
    "atelier_grpc_server_requests",
    "RPCs answered, by service, method and status code.",
    ["service", "method", "code"],
)
GRPC_LATENCY = Histogram(
    "atelier_grpc_server_request_duration_seconds",
    "Time from an RPC's arrival to its status, by service and method.",
    ["service", "method"],
    buckets=LATENCY_BUCKETS,
)
GRPC_IN_FLIGHT = Gauge(
    "atelier_grpc_server_requests_in_flight",
    "RPCs being answered now, by service and method.",
    ["service", "method"],
    multiprocess_mode="livesum",
)
HTTP_REQUESTS = Counter(
    "atelier_http_requests",
    "Gateway HTTP requests answered, by route, method and status.",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "atelier_http_request_duration_seconds",
    "Gateway HTTP request time, by route and method.",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge(
    "atelier_http_requests_in_flight",
    "Gateway HTTP requests being answered now, by method.",
    ["method"],
    multiprocess_mode="livesum",
)
# A query replica's own figures, labelled by its service (retrieval, recommender): a metric
# without labels would also be exported, as 0, by every process that imports this module.
SERVED_GENERATION = Gauge(
    "atelier_served_generation",
    "Model version of the generation this replica answers from.",
    ["service"],
    multiprocess_mode="liveall",
)
GENERATION_ITEMS = Gauge(
    "atelier_generation_items",
    "Live items of the generation this replica answers from (its shard's own, on a shard).",
    ["service", "generation"],
    multiprocess_mode="liveall",
)
PARTITION_ITEMS = Gauge(
    "atelier_partition_items",
    "Items per partition of the served generation as last built (its shard's own, on a shard).",
    ["service", "partitioning", "partition"],
    multiprocess_mode="liveall",
)
INDEX_BUILD_SECONDS = Histogram(
    "atelier_index_build_seconds",
    "Time to build a generation's indexes from the store (a start, a switch or a rebuild).",
    ["service"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
INDEX_CAUGHT_UP = Gauge(
    "atelier_index_caught_up_timestamp_seconds",
    "Unix time up to which this replica has applied every change of its generation: the lag "
    "is time() minus this, and it grows while the replica cannot read or apply changes.",
    ["service"],
    multiprocess_mode="liveall",
)
INDEX_UPDATES = Counter(
    "atelier_index_updates",
    "Item changes this replica applied to its generation's indexes in place.",
    ["service"],
)
MODEL_BATCH_SIZE = Histogram(
    "atelier_model_batch_size",
    "Rows per model-server Predict call, by model and signature.",
    ["model", "signature"],
    buckets=BATCH_BUCKETS,
)
WORKER_TASKS = Counter(
    "atelier_worker_tasks",
    "Celery tasks finished by this worker, by task and outcome.",
    ["task", "outcome"],
)
WORKER_ITEMS = Counter(
    "atelier_worker_items",
    "Catalogue items a worker encoded or failed, by outcome.",
    ["outcome"],
)
# Read from Redis at scrape time (see RedisStateCollector): the queue and jobs are shared state.
QUEUE_DEPTH = "atelier_queue_depth"
JOB_ITEMS = "atelier_job_items"
JOBS_ACTIVE = "atelier_jobs_active"


# Not logged: the concurrency limit's refusals come in floods exactly when the server is busiest.
QUIET_CODES = {"OK", "RESOURCE_EXHAUSTED"}
# Statuses that say the service, not its caller, failed.
SERVER_FAULTS = {"UNKNOWN", "INTERNAL", "DATA_LOSS", "UNAVAILABLE", "DEADLINE_EXCEEDED"}


def _split(full_method: str) -> tuple[str, str]:
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


def _code_of(context: grpc.ServicerContext, failed: bool) -> str:
    code = context.code()
    if code is not None:
        return code.name
    if failed:
        return "UNKNOWN"
    # The caller gave up (deadline or cancel) while the servicer worked: not an OK answer.
    return "OK" if context.is_active() else "CANCELLED"


class RpcObserver(grpc.ServerInterceptor):
    """Counts, times and tracks every RPC of a server's own methods when `count` is set, and
    logs each one that fails (INFO for the caller's faults, WARNING for the others), inside the
    RPC's trace span so the line carries its trace id. It runs before the concurrency limit and
    authentication, so their refusals are counted too. Unknown methods are not counted: their
    names come from the caller and would make labels without bound."""

    def __init__(self, count: bool):
        self.count = count

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return handler
        service, method = _split(handler_call_details.method)
        requests: dict[str, Counter] = {}  # by status code, made on first use
        latency = GRPC_LATENCY.labels(service, method)
        in_flight = GRPC_IN_FLIGHT.labels(service, method)
        count = self.count

        def record(context, started: float, failed: bool) -> None:
            seconds = time.perf_counter() - started
            code = _code_of(context, failed)
            if code not in QUIET_CODES:
                log.log(
                    logging.WARNING if code in SERVER_FAULTS else logging.INFO,
                    "%s/%s: %s after %.1f ms",
                    service, method, code, seconds * 1000,
                )  # fmt: skip
            if not count:
                return
            latency.observe(seconds)
            counter = requests.get(code)
            if counter is None:
                counter = requests[code] = GRPC_REQUESTS.labels(service, method, code)
            counter.inc()

        def unary(behavior: Callable) -> Callable:
            def call(request, context):
                started = time.perf_counter()
                if count:
                    in_flight.inc()
                failed = True
                try:
                    response = behavior(request, context)
                    failed = False
                    return response
                finally:
                    if count:
                        in_flight.dec()
                    record(context, started, failed)

            return call

        def streaming(behavior: Callable) -> Callable:
            def call(request, context) -> Iterator:
                started = time.perf_counter()
                if count:
                    in_flight.inc()
                failed = True
                try:
                    yield from behavior(request, context)
                    failed = False
                finally:
                    if count:
                        in_flight.dec()
                    record(context, started, failed)

            return call

        if handler.unary_unary:
            return handler._replace(unary_unary=unary(handler.unary_unary))
        if handler.stream_unary:
            return handler._replace(stream_unary=unary(handler.stream_unary))
        if handler.unary_stream:
            return handler._replace(unary_stream=streaming(handler.unary_stream))
        return handler._replace(stream_stream=streaming(handler.stream_stream))


Samples = list[tuple[dict[str, str], float]]


class StateCollector(Collector):
    """Gauges computed when scraped from shared state (Redis): `read()` returns
    {metric name: [(labels, value), ...]}. A scrape while the state cannot be read reports
    nothing for them rather than failing the endpoint."""

    def __init__(self, read: Callable[[], dict[str, Samples]]):
        self.read = read

    def describe(self) -> Iterable:
        return []

    def collect(self) -> Iterable[GaugeMetricFamily]:
        try:
            state = self.read()
        except Exception as exc:  # a scrape must still answer with the process's own metrics
            log.warning("metrics from Redis unavailable: %s", exc)
            return
        for name, samples in state.items():
            labels = sorted({key for sample_labels, _ in samples for key in sample_labels})
            family = GaugeMetricFamily(name, STATE_HELP[name], labels=labels)
            for sample_labels, value in samples:
                family.add_metric([sample_labels.get(key, "") for key in labels], value)
            yield family


STATE_HELP = {
    QUEUE_DEPTH: "Celery tasks by queue: waiting (ready) or delivered and not yet acknowledged (unacked).",
    JOB_ITEMS: "Items of unfinished catalogue jobs, by state (total, done, failed).",
    JOBS_ACTIVE: "Catalogue jobs not yet finished.",
}


def queue_depths(client, queues: dict[str, str]) -> Samples:
    """`queues`: queue name -> the kombu hash of its app's unacknowledged tasks."""
    pipe = client.pipeline(transaction=False)
    for queue, unacked in queues.items():
        pipe.llen(queue)
        pipe.hlen(unacked)
    counts = pipe.execute()
    samples: Samples = []
    for position, queue in enumerate(queues):
        samples.append(({"queue": queue, "state": "ready"}, counts[2 * position]))
        samples.append(({"queue": queue, "state": "unacked"}, counts[2 * position + 1]))
    return samples


@contextmanager
def registered(collector: Collector) -> Iterator[None]:
    """State read at scrape time on this process's /metrics (when it serves one), while the
    context lasts."""
    if not metrics_enabled():
        yield
        return
    REGISTRY.register(collector)
    try:
        yield
    finally:
        REGISTRY.unregister(collector)


class ReplicaMetrics:
    """The gauges of one query replica (`service`: retrieval or recommender)."""

    def __init__(self, service: str):
        self.service = service
        self.build_seconds = INDEX_BUILD_SECONDS.labels(service)
        self.caught_up = INDEX_CAUGHT_UP.labels(service)
        self.updates = INDEX_UPDATES.labels(service)
        self.caught_up_at = 0.0

    def timed_build(self, build: Callable) -> Callable:
        """`build`, the duration of each one that succeeds observed."""

        def call(*args, **kwargs):
            started = time.perf_counter()
            built = build(*args, **kwargs)
            self.build_seconds.observe(time.perf_counter() - started)
            return built

        return call

    def installed(self, generation) -> None:
        """A generation built from the store is served: its version, items and partitions."""
        SERVED_GENERATION.labels(self.service).set(generation.version)
        GENERATION_ITEMS.clear()
        GENERATION_ITEMS.labels(self.service, str(generation.version)).set(generation.item_count)
        PARTITION_ITEMS.clear()
        for name, partitioning in generation.base.partitionings.items():
            partition = partitioning.by_space["mu"]
            sizes = np.bincount(partition.labels, minlength=len(partition.names))
            for label, size in zip(partition.names, sizes, strict=True):
                PARTITION_ITEMS.labels(self.service, name, label).set(int(size))
        self._caught_up(time.time())

    def _caught_up(self, at: float) -> None:
        self.caught_up_at = max(self.caught_up_at, at)
        self.caught_up.set(self.caught_up_at)

    def changes(self, generation, applied: int, newest_change_ms: int | None) -> None:
        """The follower read the change stream: nothing newer (`newest_change_ms` None: caught
        up now), or it installed `applied` changes of its own, the newest written then."""
        if newest_change_ms is None:
            self._caught_up(time.time())
            return
        self.updates.inc(applied)
        self._caught_up(newest_change_ms / 1000)
        GENERATION_ITEMS.labels(self.service, str(generation.version)).set(generation.item_count)


def clear_other_processes() -> None:
    """A worker's start: drop the value files of processes that ran before it in the folder (a
    restarted container keeps its emptyDir), whose gauges would otherwise be summed forever.
    Health probes must not set PROMETHEUS_MULTIPROC_DIR (the images' probes unset it)."""
    if not MULTIPROCESS_DIR:
        return
    own = f"_{os.getpid()}.db"
    for path in Path(MULTIPROCESS_DIR).glob("*.db"):
        if not path.name.endswith(own):
            path.unlink(missing_ok=True)


def metrics_enabled() -> bool:
    return ProcessSettings.from_env().metrics_port is not None


def serve_metrics() -> int | None:
    """Serve /metrics on METRICS_HOST:METRICS_PORT (default host 127.0.0.1) in a daemon thread;
    None when METRICS_PORT is unset. With PROMETHEUS_MULTIPROC_DIR set (a Celery worker), the
    counters of every process that shares the folder are summed."""
    settings = ProcessSettings.from_env()
    if settings.metrics_port is None:
        return None
    port, host = settings.metrics_port, settings.metrics_host
    if MULTIPROCESS_DIR:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    server, _thread = start_http_server(port, host, registry=registry)
    bound = server.server_address[1]
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return bound
