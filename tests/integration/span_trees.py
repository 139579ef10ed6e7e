"""Record the spans of one request through real servers in one process, with the in-memory
exporter, and write them as JSON: `python tests/integration/span_trees.py SCENARIO OUT.json`.

test_traces.py runs it in a fresh interpreter with the environment the services read (their
settings are read once, at import). Every server here is the real one on a loopback port, and
spans cross them the way they cross processes: in the gRPC metadata and the Celery task headers.

- chunk: SubmitCatalogue (one chunk) -> Celery task (an embedded worker thread) -> model server
  -> Redis.
- studio: POST /api/decode on the gateway -> DecoderService.Decode -> model server.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import grpc
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from services.common import tracing


def spans_json(exporter: InMemorySpanExporter) -> list[dict]:
    return [
        {
            "name": span.name,
            "kind": span.kind.name,
            "trace_id": format(span.context.trace_id, "032x"),
            "span_id": format(span.context.span_id, "016x"),
            "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
            "status": span.status.status_code.name,
        }
        for span in exporter.get_finished_spans()
    ]


def model_server(stack: ExitStack) -> None:
    from services.modelserver.config import Settings
    from services.modelserver.server import run_server

    stack.enter_context(run_server(Settings.from_env()))


def submit_and_wait(stub, **request) -> int:
    from atelier.v1 import common_pb2, encoder_pb2

    job = stub.SubmitCatalogue(
        encoder_pb2.SubmitCatalogueRequest(csv_path=os.environ["SPAN_TREES_CSV"], **request),
        timeout=60,
    )
    deadline = time.monotonic() + 120
    while job.state != common_pb2.JOB_STATE_SUCCEEDED:
        if job.state == common_pb2.JOB_STATE_FAILED or time.monotonic() > deadline:
            raise SystemExit(f"the job did not succeed: {job}")
        time.sleep(0.2)
        job = stub.GetJob(encoder_pb2.GetJobRequest(job_id=job.job_id), timeout=5)
    return job.model_version


def encoding(stack: ExitStack):
    """The model server, the encoder and an embedded worker; returns an encoder stub."""
    from celery.contrib.testing.worker import start_worker

    from atelier.v1 import encoder_pb2_grpc
    from services.encoder.config import Settings
    from services.encoder.server import run_server
    from services.encoder.tasks import app

    model_server(stack)
    stack.enter_context(run_server(Settings.from_env()))
    stack.enter_context(start_worker(app, perform_ping_check=False, shutdown_timeout=30))
    # The caller is not traced (a plain channel): the trace starts at the encoder.
    channel = stack.enter_context(grpc.insecure_channel(os.environ["ENCODER_ADDR"]))
    return encoder_pb2_grpc.EncoderServiceStub(channel)


def chunk(stack: ExitStack, exporter: InMemorySpanExporter) -> None:
    stub = encoding(stack)
    version = submit_and_wait(stub)  # registers the model version, warms every path
    exporter.clear()  # from here, only the trace of one more job, of one chunk
    submit_and_wait(stub, model_version=version)
    time.sleep(1.0)  # the task's own span ends just after its job is marked done


def studio(stack: ExitStack, exporter: InMemorySpanExporter) -> None:
    from atelier.store import CodeStore
    from services.decoder.config import Settings as DecoderSettings
    from services.decoder.server import run_server as run_decoder
    from services.gateway.config import Settings as GatewaySettings
    from services.gateway.server import run_server as run_gateway

    version = submit_and_wait(encoding(stack))
    CodeStore.from_url(os.environ["REDIS_URL"]).serve(version)
    stack.enter_context(run_decoder(DecoderSettings.from_env()))
    stack.enter_context(run_gateway(GatewaySettings.from_env()))
    base = f"http://{os.environ['GATEWAY_ADDR']}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{base}/api/start", timeout=5) as answer:
                code = json.loads(answer.read())["code"]
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    exporter.clear()
    request = urllib.request.Request(
        f"{base}/api/decode",
        data=json.dumps({"code": code}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 200 and answer.read().startswith(b"\x89PNG")
    time.sleep(0.5)


def main() -> None:
    scenario, out = sys.argv[1], Path(sys.argv[2])
    exporter = InMemorySpanExporter()
    tracing.configure(scenario, [SimpleSpanProcessor(exporter)])
    with ExitStack() as stack:
        {"chunk": chunk, "studio": studio}[scenario](stack, exporter)
        out.write_text(json.dumps(spans_json(exporter), indent=1))
    for thread in threading.enumerate():  # no lingering non-daemon thread keeps us alive
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join(timeout=5)


if __name__ == "__main__":
    main()
