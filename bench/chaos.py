"""Chaos benchmark: under steady mixed load, kill -9 each process in turn and measure recovery.

    python -m bench.chaos [--catalogue data/sample-catalogue/styles.csv] [--only worker,redis]

The whole suite runs on loopback (bench.load.running_suite), every process restarted when it dies
as compose's `restart: unless-stopped` does; Redis with AOF, restarted on the same port and data.
For each process (model server, encoder, worker, decoder, retrieval, recommender, gateway, Redis):
a few seconds of steady load; a catalogue job submitted and running; SIGKILL of the process and
its children; then

- recovery_seconds: from the kill until every process answers again (bench.load.probe: health
  SERVING everywhere and one real call of each kind succeeding with the reference answer), with
  nothing but the victim restarted (others_restarted lists any that were);
- errors / wrong_answers: what the load's clients saw from the kill until the next kill; only
  UNAVAILABLE and DEADLINE_EXCEEDED are allowed, and no reply may differ from the reference;
- job_lost / job_duplicated / job_wrong_codes: the job's accounting once it finished
  (job_finish_seconds after the kill).

Writes the `chaos` section of docs/reliability.json and docs/reliability.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis

from atelier import jobs
from atelier.catalogue import CatalogueItem, read_catalogue_csv
from atelier.store import CodeStore
from atelier.v1 import common_pb2, encoder_pb2
from bench import report
from bench.load import (
    ALLOWED_ERRORS,
    JOB_KIND,
    JOB_VERSION,
    KINDS,
    PROCESSES,
    Calls,
    Clients,
    Load,
    References,
    probe,
    process_of,
    running_suite,
    summarise,
)

log = logging.getLogger("bench.chaos")
RECOVERY_TARGET_SECONDS = 10.0


def job_request(
    items: list[CatalogueItem], prefix: str, repeat: int
) -> tuple[encoder_pb2.SubmitCatalogueRequest, dict[str, str]]:
    """The catalogue `repeat` times over under fresh ids, images inline; and new id -> source id."""
    entries, sources = [], {}
    for copy in range(repeat):
        for item in items:
            new_id = f"{prefix}-{copy}-{item.item_id}"
            sources[new_id] = item.item_id
            labels = item.metadata()
            entries.append(
                encoder_pb2.CatalogueEntry(
                    item=common_pb2.Item(item_id=new_id, **labels),
                    image=item.image_path.read_bytes(),
                )
            )
    request = encoder_pb2.SubmitCatalogueRequest(
        entries=encoder_pb2.CatalogueEntries(entries=entries), model_version=JOB_VERSION
    )
    return request, sources


def job_progress(store: CodeStore, job_id: str) -> jobs.JobProgress | None:
    try:
        return jobs.progress(store, job_id)
    except redis.RedisError:
        return None  # Redis is down or restarting: ask again


def finished(progress: jobs.JobProgress | None) -> bool:
    return progress is not None and progress.done + progress.failed >= progress.total


def job_accounting(
    store: CodeStore,
    job_id: str,
    sources: dict[str, str],
    reference_mu: dict[str, np.ndarray],
    version: int = JOB_VERSION,
) -> dict:
    """Lost: an item with neither a code nor a recorded failure. Duplicated: an item both done and
    failed, done or failed items the job never had, or progress counted beyond the total. Wrong
    code: a stored code that differs from its source image's code in the served generation (the
    same model under another version)."""
    progress = jobs.progress(store, job_id, max_failures=len(sources))
    assert progress is not None
    expected = list(sources)
    done = store.job_done_ids(job_id, expected)
    failed = set(progress.failures) & set(expected)
    stored, wrong = set(), 0
    for new_id in expected:
        record = store.item(version, new_id)
        if record is None:
            continue
        stored.add(new_id)
        if not np.allclose(record.mu, reference_mu[sources[new_id]], atol=1e-4):
            wrong += 1
    outside = (progress.done - len(done)) + (progress.failed - len(failed))
    return {
        "job_items": progress.total,
        "job_done": progress.done,
        "job_failed": progress.failed,
        "job_state": progress.state.value,
        "job_lost": len(set(expected) - stored - failed),
        "job_duplicated": len(done & failed)
        + outside
        + max(0, progress.done + progress.failed - progress.total),
        "job_wrong_codes": wrong,
    }


def kill_one(
    victim: str,
    suite,
    clients: Clients,
    calls: Calls,
    store: CodeStore,
    refs: References,
    items: list[CatalogueItem],
    args: argparse.Namespace,
) -> tuple[float, dict]:
    """Submit a job, kill the victim mid-job, wait for recovery and for the job. Returns the
    kill's time and the figures."""
    request, sources = job_request(items, victim, args.repeat)
    job = clients.encoder.SubmitCatalogue(request, timeout=120)
    calls.job_id = job.job_id
    started = time.monotonic()
    # Kill while the job runs: once a share of it is done (small jobs may finish first).
    while time.monotonic() - started < 120:
        progress = job_progress(store, job.job_id)
        if progress and (progress.done + progress.failed) >= args.kill_at * progress.total:
            break
        time.sleep(0.05)
    progress = job_progress(store, job.job_id)
    at_kill = (progress.done + progress.failed) if progress else -1
    managed = process_of(suite, victim)
    before = {name: p.restarts for name, p in suite.processes.items()}
    load_average = round(os.getloadavg()[0], 1)  # how busy the machine was: read seconds with it
    killed_at = time.monotonic()
    pids = managed.kill_tree()
    log.info("killed %s (pids %s) with %d/%d job items done", victim, pids, at_kill, len(sources))

    recovered_at, failing = None, ["not restarted"]
    while time.monotonic() - killed_at < args.recovery_timeout:
        if managed.restarts > before[managed.name]:
            failing = probe(suite.env, refs, job.job_id)
            if not failing:
                recovered_at = time.monotonic()
                break
        time.sleep(0.1)
    recovery = round(recovered_at - killed_at, 2) if recovered_at else None
    log.info("%s: recovered in %s s%s", victim, recovery, "" if recovery else f" ({failing})")

    while time.monotonic() - killed_at < args.job_timeout:
        if finished(job_progress(store, job.job_id)):
            break
        time.sleep(0.2)
    job_seconds = time.monotonic() - killed_at
    figures = {
        "recovery_seconds": recovery,
        "killed_pids": len(pids),
        "load_average_1m_at_kill": load_average,
        "job_items_done_at_kill": at_kill,
        "job_finish_seconds": round(job_seconds, 2)
        if finished(job_progress(store, job.job_id))
        else None,
        **job_accounting(store, job.job_id, sources, refs.mu),
        "others_restarted": sorted(
            name
            for name, p in suite.processes.items()
            if p is not managed and p.restarts != before[name]
        ),
    }
    if recovery is None:
        figures["still_failing"] = failing
    log.info("%s: %s", victim, figures)
    return killed_at, figures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--catalogue", type=Path, default=Path("data/sample-catalogue/styles.csv"))
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--only", default="", help="comma-separated processes (default: all)")
    parser.add_argument("--steady", type=float, default=5.0, help="seconds of load before a kill")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds of load after a job")
    parser.add_argument("--repeat", type=int, default=2, help="catalogue copies per job")
    parser.add_argument("--kill-at", type=float, default=0.2, help="job share done at the kill")
    parser.add_argument("--pause", type=float, default=0.02, help="seconds between a loop's calls")
    parser.add_argument("--recovery-timeout", type=float, default=180.0)
    parser.add_argument("--job-timeout", type=float, default=600.0)
    parser.add_argument("--visibility-timeout", type=int, default=10)
    parser.add_argument(
        "--requeue-after", type=float, default=30.0, help="JOB_REQUEUE_AFTER_SECONDS"
    )
    parser.add_argument(
        "--appendfsync",
        choices=("always", "everysec"),
        default="always",
        help="Redis AOF fsync policy (see docs/architecture.md, Chaos)",
    )
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout
    )
    victims = [v for v in args.only.split(",") if v] or list(PROCESSES)
    unknown = set(victims) - set(PROCESSES)
    if unknown:
        parser.error(f"unknown processes {sorted(unknown)}; choose from {PROCESSES}")
    command = "python -m bench." + Path(__file__).stem + " " + " ".join(sys.argv[1:])
    env = {
        "QUEUE_VISIBILITY_TIMEOUT_SECONDS": str(args.visibility_timeout),
        "JOB_REQUEUE_AFTER_SECONDS": str(args.requeue_after),
    }

    results: dict[str, dict] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_suite(Path(tmp), args.models, args.catalogue, env, args.appendfsync) as suite,
        Clients(suite.env) as clients,
    ):
        store = CodeStore.from_url(suite.env["REDIS_URL"])
        refs = References.take(clients, store, args.catalogue)
        items = [i for i in read_catalogue_csv(args.catalogue) if i.item_id in refs.mu]
        budget = len(victims) * (args.steady + args.recovery_timeout + args.job_timeout + 60)
        calls = Calls(clients, refs)
        with Load(calls, budget, pause=args.pause, kinds=(*KINDS, JOB_KIND)) as load:
            load_started = time.monotonic()
            kills: list[tuple[str, float]] = []
            for victim in victims:
                time.sleep(args.steady)
                killed_at, figures = kill_one(
                    victim, suite, clients, calls, store, refs, items, args
                )
                kills.append((victim, killed_at))
                results[victim] = figures
                time.sleep(args.settle)
            load_ended = time.monotonic()
        baseline = summarise(load.window(load_started, kills[0][1]))
        for (victim, start), end in zip(
            kills, [k[1] for k in kills[1:]] + [load_ended], strict=True
        ):
            results[victim].update(summarise(load.window(start, end)))

    def met(f: dict) -> bool:
        return (
            f["recovery_seconds"] is not None
            and f["recovery_seconds"] < RECOVERY_TARGET_SECONDS
            and f["wrong_answers"] == 0
            and f["disallowed_errors"] == 0
            and f["job_lost"] == 0
            and f["job_duplicated"] == 0
            and f["job_wrong_codes"] == 0
            and not f["others_restarted"]
        )

    figures = {
        **results,
        "baseline": baseline,
        "order": victims,
        "targets_met": {victim: met(results[victim]) for victim in victims},
        "settings": {
            "redis_appendfsync": args.appendfsync,
            "queue_visibility_timeout_seconds": args.visibility_timeout,
            "job_requeue_after_seconds": args.requeue_after,
            "job_items": args.repeat * len(items),
            "kill_at_job_share": args.kill_at,
            "steady_seconds": args.steady,
            "pause_seconds": args.pause,
            "allowed_errors": list(ALLOWED_ERRORS),
            "recovery_target_seconds": RECOVERY_TARGET_SECONDS,
        },
        "notes": "Each process in turn is killed with SIGKILL (with its children) under steady load "
        "(one client loop each for Search, Recommend, Decode, Encode, the studio round trip "
        "start -> decode -> recommend through the gateway, and GetJob of the running job) while a catalogue job runs; the launcher "
        "restarts it as compose's restart: unless-stopped would (Redis on the same port and AOF). "
        "recovery_seconds: kill until Redis PINGs, every gRPC health check says SERVING, the "
        "gateway's /healthz is 200, a worker answers Celery's ping, and one call of each kind plus "
        "GetJob succeeds with the reference answer on fresh connections. errors: client statuses "
        "from the kill to the next kill (only UNAVAILABLE and DEADLINE_EXCEEDED allowed); "
        "wrong_answers: replies differing from the answers taken before the first kill. job_*: the "
        "job's accounting once finished (lost = neither code nor failure; duplicated = done and "
        "failed, outside the job, or counted past the total; wrong codes = differ from the same "
        "image's code). The suite and the load clients share the machine's CPUs; "
        "load_average_1m_at_kill says how busy they were at each kill.",
    }
    data = report.update("chaos", figures, command, report="reliability")
    print({victim: data["chaos"][victim] for victim in victims})
    return 0 if all(figures["targets_met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
