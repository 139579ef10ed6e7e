"""The span trees of one catalogue chunk and one studio round trip, recorded with the in-memory
exporter through the real servers (tests/integration/span_trees.py): one trace from the first
call to the model server and Redis, each span the child of the call that caused it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from atelier.processes import free_port, start_redis, stop_pid

pytestmark = pytest.mark.integration
HARNESS = Path(__file__).with_name("span_trees.py")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, models_dir, tiny_csv):
    work = tmp_path_factory.mktemp("traces")
    redis_server = start_redis(work / "redis")
    env = {
        **os.environ,
        "REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0",
        "MODELS_DIR": str(models_dir),
        "ATELIER_AUTH": "none",
        "CATALOGUE_ROOTS": str(tiny_csv.parent),
        "GATEWAY_IMAGE_ROOT": str(tiny_csv.parent),
        "SPAN_TREES_CSV": str(tiny_csv),
        "ENCODE_CHUNK_SIZE": "1000",  # the 300 items in one chunk
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    env.pop("METRICS_PORT", None)
    for port_var, addr_var in (
        ("MODEL_SERVER_PORT", "MODEL_SERVER_ADDR"),
        ("ENCODER_PORT", "ENCODER_ADDR"),
        ("DECODER_PORT", "DECODER_ADDR"),
        ("GATEWAY_PORT", "GATEWAY_ADDR"),
    ):
        port = free_port()
        env[port_var], env[addr_var] = str(port), f"127.0.0.1:{port}"

    def record(scenario: str) -> list[dict]:
        out = work / f"{scenario}.json"
        done = subprocess.run(
            [sys.executable, str(HARNESS), scenario, str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return json.loads(out.read_text())

    try:
        yield record
    finally:
        stop_pid(redis_server.process)


def tree(spans: list[dict], root: dict) -> dict:
    """{span name: ...} nested by parent, below `root`."""
    children = [s for s in spans if s["parent_id"] == root["span_id"]]
    return {f"{c['kind']} {c['name']}": tree(spans, c) for c in children}


def only(spans: list[dict], name: str, kind: str) -> dict:
    found = [s for s in spans if s["name"] == name and s["kind"] == kind]
    assert len(found) == 1, f"{kind} {name}: {len(found)} spans ({[s['name'] for s in spans]})"
    return found[0]


def children(spans: list[dict], parent: dict, kind: str | None = None) -> list[dict]:
    return [
        s
        for s in spans
        if s["parent_id"] == parent["span_id"] and (kind is None or s["kind"] == kind)
    ]


def test_one_catalogue_chunk_is_one_trace(recorded):
    spans = recorded("chunk")
    submit = only(spans, "/atelier.v1.EncoderService/SubmitCatalogue", "SERVER")
    assert submit["parent_id"] is None  # an untraced caller: the trace starts at the encoder
    trace = [s for s in spans if s["trace_id"] == submit["trace_id"]]
    # The submission queues the chunk; the worker runs it in the same trace.
    publish = only(trace, "apply_async/atelier.encode_chunk", "PRODUCER")
    run = only(trace, "run/atelier.encode_chunk", "CONSUMER")
    assert run["parent_id"] == publish["span_id"]
    ancestors, span = [], publish
    while span["parent_id"] is not None:
        span = next(s for s in trace if s["span_id"] == span["parent_id"])
        ancestors.append(span["span_id"])
    assert submit["span_id"] in ancestors
    # The task calls the model server (its client span, and the server's span below it) ...
    predict = [
        s for s in children(trace, run, "CLIENT") if s["name"].endswith("PredictionService/Predict")
    ]
    assert predict, tree(trace, run)
    assert all(children(trace, call, "SERVER") for call in predict), tree(trace, run)
    # ... and writes the codes to Redis, in the task's span.
    redis_calls = [s for s in children(trace, run, "CLIENT") if s not in predict]
    assert redis_calls, tree(trace, run)
    assert all(s["status"] != "ERROR" for s in trace)


def test_one_studio_round_trip_is_one_trace(recorded):
    spans = recorded("studio")
    decode_server = only(spans, "/atelier.v1.DecoderService/Decode", "SERVER")
    trace = [s for s in spans if s["trace_id"] == decode_server["trace_id"]]
    roots = [s for s in trace if s["parent_id"] is None]
    assert len(roots) == 1 and roots[0]["kind"] == "SERVER", tree(trace, roots[0])
    decode_client = only(trace, "/atelier.v1.DecoderService/Decode", "CLIENT")
    assert decode_server["parent_id"] == decode_client["span_id"]
    predict = [s for s in children(trace, decode_server, "CLIENT") if s["name"].endswith("Predict")]
    assert predict and all(children(trace, call, "SERVER") for call in predict)
    assert all(s["status"] != "ERROR" for s in trace)
