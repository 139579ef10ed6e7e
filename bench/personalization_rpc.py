"""RankForUser latency over gRPC at the catalogue's size: `python -m bench.personalization_rpc`.

Starts the suite locally (authentication on), encodes the catalogue (the shipped sample by
default) and serves it, imports a simulated history (atelier/simulate.py: synthetic users)
through ImportInteractions, trains the served preference model with TrainPreferenceModel, then
times RankForUser from one client: known users (their own scores) and users with no history
(popularity), over the whole catalogue and within a category. Writes `rank_for_user_rpc` to
docs/personalisation.json and .md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from atelier.catalogue import read_catalogue_csv
from atelier.simulate import SimulatorParams, simulate, write_csv
from atelier.store import CodeStore
from atelier.v1 import common_pb2, encoder_pb2, personalization_pb2_grpc
from atelier.v1 import personalization_pb2 as pb
from bench.report import update
from services.common.launcher import local_suite

log = logging.getLogger("bench.personalization_rpc")
ROOT = Path(__file__).resolve().parents[1]
TARGET_P99_MS = 20.0


def _wait(call, done, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        reply = call()
        if done(reply):
            return reply
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not finish in {timeout:.0f}s: {reply}")
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalogue", type=Path, default=ROOT / "data/sample-catalogue/styles.csv")
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--users", type=int, default=3000, help="simulated users")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--k", type=int, default=20)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    catalogue = args.catalogue.resolve()
    with tempfile.TemporaryDirectory(prefix="atelier-bench-personal-") as work:
        env = {"CATALOGUE_ROOTS": os.pathsep.join([str(catalogue.parent), work])}
        with local_suite(Path(work), args.models, workers=2, extra_env=env) as suite:
            job = suite.encode(
                encoder_pb2.SubmitCatalogueRequest(csv_path=str(catalogue)), timeout=3600
            )
            CodeStore.from_url(suite.env["REDIS_URL"]).serve(job.model_version)
            suite.start_service("recommender")
            suite.start_personalization()
            items = read_catalogue_csv(catalogue)
            simulation = simulate(items, SimulatorParams(n_users=args.users, seed=0))
            history = Path(work) / "history.csv"
            write_csv(simulation.events, history)
            with suite.channel("personalization") as channel:
                stub = personalization_pb2_grpc.PersonalizationServiceStub(channel)

                def job_state(job_id):
                    return lambda: stub.GetPersonalizationJob(
                        pb.GetPersonalizationJobRequest(job_id=job_id), timeout=10
                    )

                finished = (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED)
                imported = stub.ImportInteractions(
                    pb.ImportInteractionsRequest(csv_path=str(history)), timeout=60
                )
                imported = _wait(
                    job_state(imported.job_id), lambda j: j.state in finished, 1800, "import"
                )
                if imported.state != common_pb2.JOB_STATE_SUCCEEDED or not imported.done:
                    raise SystemExit(f"the import failed: {imported.reason}")
                trained = stub.TrainPreferenceModel(
                    pb.TrainPreferenceModelRequest(epochs=args.epochs), timeout=60
                )
                trained = _wait(
                    job_state(trained.job_id), lambda j: j.state in finished, 3600, "training"
                )
                if trained.state != common_pb2.JOB_STATE_SUCCEEDED:
                    raise SystemExit(f"training failed: {trained.reason}")

                def served_version() -> int | None:
                    try:
                        reply = stub.ListUsers(pb.ListUsersRequest(limit=1), timeout=10)
                    except grpc.RpcError as exc:  # still loading: UNAVAILABLE until it is
                        if exc.code() != grpc.StatusCode.UNAVAILABLE:
                            raise
                        return None
                    return reply.preference_version

                _wait(
                    served_version,
                    lambda version: version == trained.preference_version,
                    600,
                    "loading the model",
                )
                users = [u.user_id for u in stub.ListUsers(
                    pb.ListUsersRequest(limit=1000), timeout=10).users]  # fmt: skip
                categories = sorted({i.sub_category for i in items if i.sub_category})
                rng = np.random.default_rng(0)
                requests = []
                for n in range(args.requests):
                    user = users[rng.integers(len(users))] if n % 10 else f"new-user-{n}"
                    category = categories[rng.integers(len(categories))] if n % 4 == 0 else ""
                    requests.append(
                        pb.RankForUserRequest(user_id=user, k=args.k, category=category)
                    )
                for request in requests[:200]:  # warm-up: connections, caches
                    stub.RankForUser(request, timeout=5)
                latencies = []
                for request in requests:
                    started = time.perf_counter()
                    reply = stub.RankForUser(request, timeout=5)
                    latencies.append((time.perf_counter() - started) * 1000.0)
                    if not reply.items:
                        raise SystemExit(f"RankForUser returned nothing for {request}")
                served_items = CodeStore.from_url(suite.env["REDIS_URL"]).item_count(
                    job.model_version
                )
    ms = np.asarray(latencies)
    figures = {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "target_p99_ms": TARGET_P99_MS,
        "meets_target": bool(np.percentile(ms, 99) < TARGET_P99_MS),
        "requests": len(ms),
        "k": args.k,
        "catalogue_items": served_items,
        "simulated_users": args.users,
        "interactions": int(imported.done),
        "notes": (
            "Synthetic interactions (atelier/simulate.py). One client, sequential calls over an "
            "authenticated loopback channel; 10% of requests are users with no history "
            "(popularity fallback), 25% are limited to a subCategory."
        ),
    }
    command = " ".join(["python -m bench.personalization_rpc", *sys.argv[1:]])
    update("rank_for_user_rpc", figures, command, report="personalisation")
    log.info("RankForUser p50 %.2f ms, p99 %.2f ms over %d items", figures["p50_ms"],
             figures["p99_ms"], served_items)  # fmt: skip


if __name__ == "__main__":
    main()
