"""Back-pressure under overload: the real model server, many more callers than it may serve at once.

Two runs of the same load (CLIENTS callers sending Predict back to back for SECONDS, each with a
DEADLINE): one with MAX_CONCURRENT_RPCS=LIMIT, one with a limit no load reaches (no back-pressure).
Figures per run: calls answered, refused (RESOURCE_EXHAUSTED) and timed out; latency of answered
calls and of refusals; latency of health checks made during the overload.

    python -m bench.overload [--clients 24] [--seconds 10] [--limit 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.report import update
from services.common.launcher import local_suite
from services.common.model_client import ModelClient
from services.common.tls import ClientTLS, make_channel

ROOT = Path(__file__).resolve().parents[1]


def _ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000, 1) if values else float("nan")


def run(limit: int, clients: int, seconds: float, deadline: float, batch: int) -> dict:
    # The machine is shared: how busy it was before this run started.
    ambient_load = round(os.getloadavg()[0], 1)
    with (
        tempfile.TemporaryDirectory() as work,
        local_suite(
            Path(work),
            ROOT / "models",
            workers=0,
            services=("modelserver",),
            extra_env={"MAX_CONCURRENT_RPCS": str(limit), "LOG_LEVEL": "WARNING"},
        ) as suite,
    ):
        address = suite.env["MODEL_SERVER_ADDR"]
        model = ModelClient(address, timeout=deadline, tls=ClientTLS())
        shape = model.shape()
        images = np.random.default_rng(0).random(
            (batch, shape.image_height, shape.image_width, 3), dtype=np.float32
        )
        model.encode(images, shape.version)  # warm
        outcomes: dict[str, list[float]] = {"OK": [], "RESOURCE_EXHAUSTED": [], "other": []}
        health: list[float] = []
        health_failures = 0
        lock = threading.Lock()
        stop = time.monotonic() + seconds

        def caller() -> None:
            while time.monotonic() < stop:
                started = time.monotonic()
                hint_ms = 0
                try:
                    model.encode(images, shape.version)
                    code = "OK"
                except grpc.RpcError as error:
                    code = error.code().name
                    if code == "RESOURCE_EXHAUSTED":
                        metadata = dict(error.trailing_metadata() or ())
                        hint_ms = int(metadata.get("retry-after-ms", "50"))
                elapsed = time.monotonic() - started
                with lock:
                    outcomes[code if code in outcomes else "other"].append(elapsed)
                # Honour the hint, as a client with a retry policy would.
                time.sleep(hint_ms / 1000)

        threads = [threading.Thread(target=caller) for _ in range(clients)]
        for thread in threads:
            thread.start()
        with make_channel(address, ClientTLS()) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < stop:
                started = time.monotonic()
                try:
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=deadline)
                    health.append(time.monotonic() - started)
                except grpc.RpcError:
                    health_failures += 1
                time.sleep(0.1)
        for thread in threads:
            thread.join()
        model.close()
    answered, refused = outcomes["OK"], outcomes["RESOURCE_EXHAUSTED"]
    return {
        "max_concurrent_rpcs": limit,
        "ambient_load_average_1m": ambient_load,
        "request_mb": round(images.nbytes / 2**20, 2),
        "answered": len(answered),
        "answered_per_second": round(len(answered) / seconds, 1),
        "refused": len(refused),
        "timed_out_or_failed": len(outcomes["other"]),
        "answered_p50_ms": _ms(answered, 50),
        "answered_p99_ms": _ms(answered, 99),
        "refusal_p50_ms": _ms(refused, 50),
        "refusal_p99_ms": _ms(refused, 99),
        "health_p50_ms": _ms(health, 50),
        "health_p99_ms": _ms(health, 99),
        "health_failures": health_failures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--limit", type=int, default=2)
    parser.add_argument("--deadline", type=float, default=2.0, help="per call, seconds")
    parser.add_argument("--batch", type=int, default=16, help="images per Predict")
    args = parser.parse_args()
    runs = {}
    for name, limit in (("limited", args.limit), ("unlimited", 4 * args.clients)):
        runs[name] = run(limit, args.clients, args.seconds, args.deadline, args.batch)
        print(name, runs[name], flush=True)
    figures = {
        **runs,
        "clients": args.clients,
        "seconds": args.seconds,
        "deadline_s": args.deadline,
        "batch": args.batch,
        "notes": (
            "The real model server (Predict, encoder signature) under CLIENTS callers sending back "
            "to back; refused callers wait the server's retry-after-ms hint, then call again. "
            "'unlimited' sets MAX_CONCURRENT_RPCS above the number of callers: every call is "
            "queued and served, so latency grows with the load until deadlines pass. A refusal's "
            "time includes sending the request's images and the client's own CPU contention (the "
            "callers run in one process beside the server)."
        ),
    }
    update(
        "overload_backpressure",
        figures,
        "python -m bench.overload " + " ".join(sys.argv[1:]),
        report="reliability",
    )


if __name__ == "__main__":
    main()
