"""What metrics and tracing cost a search: RetrievalService.Search p50 with them on against off,
measured in the same run.

    python -m bench.instrumentation_overhead [--calls 3000] [--synthetic-items 1000000]

Two retrieval replicas serve the same generation side by side: one with METRICS_PORT set and the OpenTelemetry SDK recording every span and exporting it over
OTLP/gRPC to a loopback collector (a sink that accepts and drops them, so export costs what it
would in production), the other with neither (no METRICS_PORT, OTEL_SDK_DISABLED=true). Calls
alternate between the two in rounds of 50, so drift on the machine falls on both alike. The
ratio is the instrumented p50 over the plain p50 (`ops.instrumentation_overhead_ratio`; target
at most 1.10). The instrumentation adds a fixed cost per RPC, so its share falls as a search
costs more: it is measured on the repo's sample catalogue (1,200 items, encoded through the
queue: the cheapest searches, the ratio reported) and again on `--synthetic-items` synthetic
codes. Writes the figures into the `ops` section of docs/benchmarks.json and .md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from atelier.processes import free_port
from atelier.search import CodeSet
from atelier.store import CodeStore
from atelier.v1 import common_pb2, encoder_pb2, retrieval_pb2, retrieval_pb2_grpc
from bench import report
from bench.query_services import synthetic_codes, write_generation
from services.common.auth import with_token
from services.common.launcher import (
    ROOT,
    UNSET,
    Suite,
    local_suite,
    start_process,
    wait_serving,
)
from services.common.tls import make_channel

log = logging.getLogger("bench.instrumentation_overhead")
CATALOGUE = ROOT / "data" / "sample-catalogue" / "styles.csv"
MODELS = ROOT / "models"
ROUND = 50
LATENT_DIM = 64
SYNTHETIC_VERSION = 900


class SpanSink(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace collector that counts the spans it is sent and keeps none."""

    def __init__(self):
        self.spans = 0
        self.lock = threading.Lock()

    def Export(self, request, context):
        count = sum(
            len(scope.spans)
            for resource in request.resource_spans
            for scope in resource.scope_spans
        )
        with self.lock:
            self.spans += count
        return trace_service_pb2.ExportTraceServiceResponse()


def start_sink() -> tuple[grpc.Server, SpanSink, int]:
    sink = SpanSink()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, sink, port


def item_ids(limit: int = 200) -> list[str]:
    lines = CATALOGUE.read_text().splitlines()[1 : limit + 1]
    return [line.split(",", 1)[0] for line in lines]


def synthetic_generation(store: CodeStore, version: int, items: int) -> list[str]:
    """`items` synthetic codes shaped like the catalogue's (bench/query_services.py), written as
    generation `version` under a model record of their own ε; returns their ids."""
    codes, metadata = synthetic_codes(items, LATENT_DIM, seed=7)
    epsilon = np.random.default_rng(8).standard_normal(LATENT_DIM).astype(np.float32)
    codes = CodeSet(codes.item_ids, codes.mu, codes.sigma, codes.mu + codes.sigma * epsilon)
    write_generation(store, version, codes, metadata, epsilon)
    return codes.item_ids


def start_replicas(suite: Suite, sink_port: int, breakdown: bool) -> dict:
    """Retrieval replicas of the served generation, each with metrics and tracing on or off;
    returns their Search stubs by name."""
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}"}
    off = {"OTEL_SDK_DISABLED": "true"}
    wanted = {"instrumented": (True, on), "plain": (False, off)}
    if breakdown:
        sampled = {
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.1",
        }
        wanted |= {
            "metrics_only": (True, off),
            "tracing_only": (False, on),
            "tracing_unexported": (False, {}),
            "tracing_sampled_10pct": (False, on | sampled),
        }
    stubs = {}
    for name, (with_metrics, tracing_env) in wanted.items():
        env = suite.process_env(f"retrieval-{name}") | tracing_env
        env["PROMETHEUS_MULTIPROC_DIR"] = UNSET
        if not with_metrics:
            env["METRICS_PORT"] = UNSET
        port = free_port()
        env["RETRIEVAL_PORT"] = str(port)
        process = suite.add(
            start_process(
                f"retrieval-{name}",
                [sys.executable, "-m", "services.retrieval"],
                env,
                suite.log_dir,
                f"127.0.0.1:{port}",
            )
        )
        wait_serving(process, 600, suite.client_tls())
        channel = with_token(make_channel(f"127.0.0.1:{port}"), suite.token)
        stubs[name] = retrieval_pb2_grpc.RetrievalServiceStub(channel).Search
    return stubs


def time_searches(stubs: dict, ids: list[str], calls: int) -> dict[str, list[float]]:
    """Searches by item (k=10, own subCategory), alternating between the replicas in rounds."""
    samples: dict[str, list[float]] = {name: [] for name in stubs}

    def search(stub, index: int) -> float:
        request = retrieval_pb2.SearchRequest(
            query=common_pb2.Query(item_id=ids[index % len(ids)]), k=10
        )
        started = time.perf_counter()
        stub(request, timeout=10)
        return (time.perf_counter() - started) * 1e3

    for stub in stubs.values():  # warm every replica before timing any
        for index in range(200):
            search(stub, index)
    names = list(stubs)
    for round_index in range(max(1, calls // ROUND)):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            for index in range(ROUND):
                samples[name].append(search(stubs[name], round_index * ROUND + index))
    return samples


def summary(samples: dict[str, list[float]]) -> dict:
    p50 = {name: float(np.percentile(values, 50)) for name, values in samples.items()}
    p99 = {name: float(np.percentile(values, 99)) for name, values in samples.items()}
    return {
        "ratio": round(p50["instrumented"] / p50["plain"], 3),
        "p50_ms": {name: round(value, 3) for name, value in p50.items()},
        "p99_ms": {name: round(value, 3) for name, value in p99.items()},
        "calls_each": len(samples["plain"]),
    }


def measure(catalogue: str, items: int, calls: int, breakdown: bool, sink_port: int) -> dict:
    """One suite, one served generation (the sample catalogue, encoded; or `items` synthetic
    codes), its replicas timed side by side."""
    with (
        tempfile.TemporaryDirectory(prefix="atelier-overhead-") as work,
        local_suite(Path(work), MODELS, workers=1, metrics=False) as suite,
    ):
        store = CodeStore.from_url(suite.env["REDIS_URL"])
        if items:
            ids = synthetic_generation(store, SYNTHETIC_VERSION, items)
            store.serve(SYNTHETIC_VERSION)
            ids = [ids[i] for i in np.random.default_rng(9).choice(len(ids), 500, replace=False)]
        else:
            job = suite.encode(encoder_pb2.SubmitCatalogueRequest(csv_path=str(CATALOGUE)))
            store.serve(job.model_version)
            ids = item_ids()
        stubs = start_replicas(suite, sink_port, breakdown)
        figures = summary(time_searches(stubs, ids, calls))
        log.info("%s: %s", catalogue, figures)
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3000, help="Searches per replica")
    parser.add_argument(
        "--synthetic-items",
        type=int,
        default=1_000_000,
        help="Items of the second, synthetic catalogue (0: only the sample catalogue)",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="Also time replicas with only metrics and only tracing on (printed, not written)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    sink_server, sink, sink_port = start_sink()
    sample = measure("sample catalogue", 0, args.calls, args.breakdown, sink_port)
    larger = (
        measure(
            f"{args.synthetic_items} synthetic",
            args.synthetic_items,
            args.calls,
            args.breakdown,
            sink_port,
        )
        if args.synthetic_items
        else None
    )
    time.sleep(6)  # the replicas' batch exporters send every 5 s
    sink_server.stop(0)
    if args.breakdown:
        return
    figures = {
        "instrumentation_overhead_ratio": sample["ratio"],
        "instrumentation_overhead_goal_ratio": 1.10,
        "instrumentation_overhead_sample_catalogue": sample,
        "spans_exported": sink.spans,
    }
    if larger:
        figures[f"instrumentation_overhead_{args.synthetic_items // 1000}k_items"] = larger
    report.merge(
        "ops", "instrumentation_overhead", figures, "python -m bench.instrumentation_overhead"
    )


if __name__ == "__main__":
    main()
