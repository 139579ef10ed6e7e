"""Benchmark the batch encoder: queue throughput vs the in-process ceiling, worker-kill safety, Encode RPC latency.

    python -m bench.encode_queue [--catalogue ../shared/data/fashion-product-small/styles.csv]

Writes the `encode_queue` and `encode_rpc` sections of docs/benchmarks.json and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from atelier.catalogue import ImageError, decode_image, load_image_file, read_catalogue_csv
from atelier.modelstore import LoadedEncoder
from atelier.store import CodeStore
from atelier.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc
from bench import report
from services.common.client import follow_job
from services.common.launcher import local_suite

log = logging.getLogger("bench.encode_queue")


def in_process_ceiling(models_dir: Path, paths: list[Path], batch: int) -> float:
    """Items/s for the same work in one process: read, decode and encode, batch by batch."""
    encoder = LoadedEncoder(models_dir)
    size = encoder.metadata.image_size
    started = time.perf_counter()
    for start in tqdm(range(0, len(paths), batch), desc="in-process ceiling", unit="batch"):
        pixels = []
        for path in paths[start : start + batch]:
            with contextlib.suppress(ImageError):  # the queue reports these per item
                pixels.append(load_image_file(path, size))
        if pixels:
            encoder.encode(np.stack(pixels), batch_size=batch)
    return len(paths) / (time.perf_counter() - started)


def wait_for(stub, job, timeout: float, on_progress=None) -> common_pb2.Job:
    return follow_job(stub, job, "queue", timeout=timeout, on_update=on_progress)


def children(pid: int) -> list[int]:
    try:
        return [int(v) for v in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--catalogue", type=Path, default=Path("../shared/data/fashion-product-small/styles.csv")
    )
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument(
        "--kill-items", type=int, default=10_000, help="items in the worker-kill run"
    )
    parser.add_argument("--rpc-calls", type=int, default=500)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout
    )
    command = "python -m bench." + Path(__file__).stem + " " + " ".join(sys.argv[1:])

    items = read_catalogue_csv(args.catalogue)
    paths = [i.image_path for i in items]
    ceiling = in_process_ceiling(args.models, paths, args.chunk)
    log.info("in-process ceiling: %.0f items/s", ceiling)

    env = {"ENCODE_CHUNK_SIZE": str(args.chunk), "QUEUE_VISIBILITY_TIMEOUT_SECONDS": "10"}
    catalogue_dir = str(args.catalogue.resolve().parent)
    with (
        tempfile.TemporaryDirectory() as tmp,
        local_suite(
            Path(tmp),
            args.models,
            workers=args.workers,
            # The encoder reads catalogues only below its roots: the catalogue's folder and ours.
            extra_env={**env, "CATALOGUE_ROOTS": os.pathsep.join([catalogue_dir, tmp])},
        ) as suite,
    ):
        channel = suite.channel("encoder")
        stub = encoder_pb2_grpc.EncoderServiceStub(channel)
        store = CodeStore.from_url(suite.env["REDIS_URL"])

        # 1. Throughput: the whole catalogue through the queue.
        started = time.perf_counter()
        job = stub.SubmitCatalogue(
            encoder_pb2.SubmitCatalogueRequest(csv_path=str(args.catalogue.resolve())), timeout=120
        )
        finished = wait_for(stub, job, timeout=3600)
        wall = time.perf_counter() - started
        queue_rate = (finished.done + finished.failed) / wall
        log.info(
            "queue: %d items in %.1fs = %.0f items/s (ratio %.2f)",
            finished.total,
            wall,
            queue_rate,
            queue_rate / ceiling,
        )
        version = finished.model_version

        # 2. Crash safety: kill -9 one worker (and its pool children) mid-job, under a fresh key space.
        csv_path = Path(tmp) / "kill.csv"
        subset = items[: args.kill_items]
        csv_path.write_text(
            "id,image_path,category\n"
            + "".join(
                f"kill-{i.item_id},{i.image_path.resolve()},{i.sub_category}\n" for i in subset
            )
        )
        kill_job = stub.SubmitCatalogue(
            encoder_pb2.SubmitCatalogueRequest(csv_path=str(csv_path)), timeout=120
        )
        victim = suite.processes["worker1"]
        killed = {}

        def maybe_kill(progress):
            if not killed and progress.done + progress.failed >= len(subset) // 3:
                for pid in [victim.pid, *children(victim.pid)]:
                    os.kill(pid, signal.SIGKILL)
                killed["at"] = progress.done + progress.failed
                log.info("killed worker1 (pid %d) at %d items", victim.pid, killed["at"])

        killed_job = wait_for(stub, kill_job, timeout=1800, on_progress=maybe_kill)
        # What can go wrong is an item with no code and no failure (lost), or a code written
        # twice (a second slot taken for the same item) or counted twice by the job (duplicated).
        stored_ids = {i for i in store.item_ids(version) if i.startswith("kill-")}
        extra_slots = int(store.redis.get(f"atelier:gen:{version}:next") or 0) - (
            store.item_count(version)
        )
        failed_ids = {
            k.decode() for k in store.redis.hkeys(f"atelier:job:{kill_job.job_id}:failed")
        }
        done_ids = {k.decode() for k in store.redis.smembers(f"atelier:job:{kill_job.job_id}:done")}
        expected_ids = {f"kill-{i.item_id}" for i in subset}
        lost = len(expected_ids - stored_ids - failed_ids)
        duplicated = (
            extra_slots
            + len(done_ids & failed_ids)
            + max(0, killed_job.done + killed_job.failed - len(subset))
        )

        # 3. Encode RPC latency for one 60x80 JPEG, against the in-process encoder on the same bytes.
        data = paths[0].read_bytes()
        encoder = LoadedEncoder(args.models)
        size = encoder.metadata.image_size
        rpc, local = [], []
        for _ in range(20):
            stub.Encode(encoder_pb2.EncodeRequest(image=data), timeout=10)
            encoder.encode(decode_image(data, size)[None])
        for _ in range(args.rpc_calls):
            t = time.perf_counter()
            stub.Encode(encoder_pb2.EncodeRequest(image=data), timeout=10)
            rpc.append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            encoder.encode(decode_image(data, size)[None])
            local.append((time.perf_counter() - t) * 1e3)
        channel.close()

    def pct(values, q):
        return float(np.percentile(values, q))

    report.update(
        "encode_queue",
        {
            "items": finished.total,
            "done": finished.done,
            "failed": finished.failed,
            "workers": args.workers,
            "chunk": args.chunk,
            "seconds": round(wall, 2),
            "items_per_s": round(queue_rate, 1),
            "ceiling_items_per_s": round(ceiling, 1),
            "ratio": round(queue_rate / ceiling, 3),
            "kill_run_items": len(subset),
            "kill_run_done": killed_job.done,
            "kill_run_failed": killed_job.failed,
            "killed_at_items": killed.get("at", -1),
            "lost_after_worker_kill": lost,
            "duplicated_after_worker_kill": duplicated,
            "notes": "Ceiling: one process reading, decoding and encoding the same images in batches of the same size. "
            "Queue: SubmitCatalogue to SUCCEEDED through Redis, Celery workers and the model server. Kill run: "
            "SIGKILL of one whole worker (and its pool child) a third of the way through; lost = items with neither "
            "a code nor a recorded failure; duplicated = extra code keys, items both done and failed, or progress "
            "counted beyond the job's total.",
        },
        command,
    )
    data = report.update(
        "encode_rpc",
        {
            "calls": args.rpc_calls,
            "p50_ms": round(pct(rpc, 50), 3),
            "p99_ms": round(pct(rpc, 99), 3),
            "in_process_p50_ms": round(pct(local, 50), 3),
            "in_process_p99_ms": round(pct(local, 99), 3),
            "overhead_ratio_p50": round(pct(rpc, 50) / pct(local, 50), 2),
            "mean_ms": round(statistics.fmean(rpc), 3),
            "notes": "One 60x80 catalogue JPEG per call over loopback gRPC (EncoderService.Encode -> model server), "
            "against decoding and encoding the same bytes in-process, interleaved call by call.",
        },
        command,
    )
    print({k: data[k] for k in ("encode_queue", "encode_rpc")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
