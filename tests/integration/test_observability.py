"""Metrics and logs of a running suite: every process serves /metrics, the shared interceptor
counts RPCs by method and status, the domain gauges say what is served and queued, the Grafana
dashboard queries only exported metrics, and log lines are JSON carrying the caller's trace id."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from atelier.store import CodeStore
from atelier.v1 import (
    common_pb2,
    decoder_pb2,
    decoder_pb2_grpc,
    encoder_pb2,
    retrieval_pb2,
    retrieval_pb2_grpc,
)
from services.common.launcher import local_suite

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "atelier.json"


def scrape(address: str) -> dict[str, list]:
    """Samples by sample name (e.g. atelier_grpc_server_requests_total) from one /metrics."""
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list], name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in samples.get(name, [])
        if all(s.labels.get(key) == wanted for key, wanted in labels.items())
    )


@pytest.fixture(scope="module")
def suite(tmp_path_factory, models_dir, tiny_csv):
    work = tmp_path_factory.mktemp("observed")
    with local_suite(work, models_dir, workers=1) as suite:
        job = suite.encode(encoder_pb2.SubmitCatalogueRequest(csv_path=str(tiny_csv)))
        CodeStore.from_url(suite.env["REDIS_URL"]).serve(job.model_version)
        for name in ("decoder", "retrieval", "recommender"):
            suite.start_service(name)
        suite.start_gateway()
        yield suite, job


def test_every_process_serves_metrics_with_the_shared_interceptor(suite):
    suite, job = suite
    with suite.channel("retrieval") as channel:
        search = retrieval_pb2_grpc.RetrievalServiceStub(channel).Search
        query = common_pb2.Query(item_id="1164")
        for _ in range(3):
            search(retrieval_pb2.SearchRequest(query=query, k=5), timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            search(retrieval_pb2.SearchRequest(query=query, k=0), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with suite.channel("decoder") as channel:
        decoder_pb2_grpc.DecoderServiceStub(channel).RandomStart(
            decoder_pb2.RandomStartRequest(), timeout=10
        )

    assert set(suite.metrics_addresses) >= {
        "modelserver", "encoder", "worker1", "decoder", "retrieval", "gateway",
    }  # fmt: skip
    retrieval = scrape(suite.metrics_addresses["retrieval"])
    requests = "atelier_grpc_server_requests_total"
    search_method = {"service": "atelier.v1.RetrievalService", "method": "Search"}
    assert value(retrieval, requests, code="OK", **search_method) == 3
    assert value(retrieval, requests, code="INVALID_ARGUMENT", **search_method) == 1
    latency = "atelier_grpc_server_request_duration_seconds_count"
    assert value(retrieval, latency, **search_method) == 4
    assert "atelier_grpc_server_requests_in_flight" in retrieval

    # What is served, and how it is cut.
    assert value(retrieval, "atelier_served_generation") == job.model_version
    items = value(retrieval, "atelier_generation_items", generation=str(job.model_version))
    assert items == job.total > 0
    assert value(retrieval, "atelier_partition_items", partitioning="sub_category") == items
    assert value(retrieval, "atelier_index_build_seconds_count", service="retrieval") >= 1
    caught_up = value(retrieval, "atelier_index_caught_up_timestamp_seconds", service="retrieval")
    assert time.time() - caught_up < 10  # the follower reads the change stream twice a second
    # A replica's own gauges are not exported, as zeros, by the other processes.
    assert "atelier_served_generation" not in scrape(suite.metrics_addresses["encoder"])

    # The model server saw the worker's batches and the decoder's; the worker counted its
    # chunks across its pool process; the encoder reads the queue and jobs from Redis.
    model = scrape(suite.metrics_addresses["modelserver"])
    assert value(model, "atelier_model_batch_size_count") >= 2
    assert value(model, "atelier_model_batch_size_sum") >= job.total
    worker = scrape(suite.metrics_addresses["worker1"])
    assert value(worker, "atelier_worker_items_total", outcome="encoded") == job.done
    assert value(worker, "atelier_worker_tasks_total", outcome="success") >= 1
    encoder = scrape(suite.metrics_addresses["encoder"])
    assert value(encoder, "atelier_queue_depth", queue="atelier.encode", state="ready") == 0
    assert value(encoder, "atelier_jobs_active") == 0
    assert value(encoder, requests, method="SubmitCatalogue", code="OK") == 1


def test_unknown_methods_make_no_labels(suite):
    """A caller's made-up method name must not become a label (metrics without bound)."""
    suite, _ = suite
    with suite.channel("retrieval") as channel:
        call = channel.unary_unary("/atelier.v1.RetrievalService/Nope" + "x" * 20)
        with pytest.raises(grpc.RpcError) as missing:
            call(b"", timeout=5)
        assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED
    retrieval = scrape(suite.metrics_addresses["retrieval"])
    methods = {s.labels["method"] for s in retrieval["atelier_grpc_server_requests_total"]}
    assert not any(m.startswith("Nope") for m in methods)


def test_the_dashboard_queries_only_exported_metrics(suite):
    suite, _ = suite
    exported: set[str] = set()
    for address in suite.metrics_addresses.values():
        exported |= set(scrape(address))
    # Histograms are queried by their series (_bucket, _sum, _count), counters as _total.
    queried = set(re.findall(r"atelier_[a-z_]+", DASHBOARD.read_text()))
    assert queried, "the dashboard queries no atelier metric"
    missing = sorted(queried - exported)
    assert not missing, f"the dashboard queries metrics no process exports: {missing}"


def test_log_lines_are_json_with_the_callers_trace_id(suite):
    suite, _ = suite
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{trace_id}-00f067aa0ba902b7-01"
    with suite.channel("retrieval") as channel:
        search = retrieval_pb2_grpc.RetrievalServiceStub(channel).Search
        with pytest.raises(grpc.RpcError):
            search(
                retrieval_pb2.SearchRequest(query=common_pb2.Query(item_id="no-such-item"), k=5),
                metadata=(("traceparent", traceparent),),
                timeout=10,
            )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = (suite.log_dir / "retrieval.log").read_text().splitlines()
        records = [json.loads(line) for line in lines if line.startswith("{")]
        if any(r.get("trace_id") == trace_id for r in records):
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"no log line of retrieval carries trace id {trace_id}")
    traced = [r for r in records if r.get("trace_id") == trace_id]
    assert all({"time", "level", "logger", "message", "service"} <= set(r) for r in traced)
    assert all(r["service"] == "retrieval" for r in traced)


def test_a_pool_process_logs_its_task_in_the_submitters_trace(suite):
    """The worker's forked pool process is traced too: its lines about a chunk carry the trace
    id the encoder's SubmitCatalogue passed on in the task's headers."""
    suite, _ = suite
    lines = (suite.log_dir / "worker1.log").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    chunks = [r for r in records if r["logger"] == "services.encoder.tasks"]
    assert chunks, "the worker logged nothing about its chunks"
    # One job, one trace: chunks queued later, by the worker itself, stay in it.
    assert len({r["trace_id"] for r in chunks}) == 1 and len(chunks[0]["trace_id"]) == 32
    assert all(r["service"] == "worker" for r in records)
