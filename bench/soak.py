"""Soak benchmark: mixed traffic at saturation for minutes; errors, latencies and memory per process.

    python -m bench.soak [--minutes 10] [--threads 2]

The whole suite on loopback (bench.load.running_suite); `--threads` client loops per kind of call
(Search, Recommend, Decode, Encode and the studio round trip through the gateway), back to back
with no pause, every reply checked against the reference answers. Every 30 s the resident memory
of each process (with its children: a Celery worker's pool) is sampled.

- errors: client statuses other than OK, by status; RESOURCE_EXHAUSTED (documented back-pressure)
  is counted apart in `resource_exhausted` and is not an error;
- p50/p99 per kind of call (successful calls);
- rss_growth_pct per process: (last sample - sample at 1 minute) / sample at 1 minute x 100, so
  start-up and warm-up allocations are not counted as growth.

Writes the `soak` section of docs/reliability.json and docs/reliability.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from atelier.store import CodeStore
from bench import report
from bench.load import (
    PROCESSES,
    Calls,
    Clients,
    Load,
    References,
    latencies,
    process_of,
    rss_mb,
    running_suite,
    summarise,
)

log = logging.getLogger("bench.soak")
SAMPLE_SECONDS = 30.0
BASE_SAMPLE_SECONDS = 60.0
RSS_GROWTH_TARGET_PCT = 5.0
LOGS_KEPT = Path(".bench-logs")  # git-ignored; a run with errors copies its suite logs here


def growth_pct(series: list[tuple[float, float]]) -> float | None:
    """Growth from the sample at one minute (the first at or after it) to the last sample."""
    after = [mb for t, mb in series if t >= BASE_SAMPLE_SECONDS]
    if len(after) < 2 or after[0] <= 0:
        return None
    return round((after[-1] - after[0]) / after[0] * 100, 2)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--catalogue", type=Path, default=Path("data/sample-catalogue/styles.csv"))
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2, help="client loops per kind of call")
    args = parser.parse_args()
    if args.minutes * 60 < BASE_SAMPLE_SECONDS + SAMPLE_SECONDS:
        parser.error("--minutes must leave two samples after the first minute (at least 1.5)")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout
    )
    command = "python -m bench." + Path(__file__).stem + " " + " ".join(sys.argv[1:])
    seconds = args.minutes * 60

    series: dict[str, list[tuple[float, float]]] = {name: [] for name in PROCESSES}
    load_averages: list[float] = []  # the machine's 1-minute load at each sample
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_suite(Path(tmp), args.models, args.catalogue) as suite,
        Clients(suite.env, timeout=10.0) as clients,
    ):
        refs = References.take(clients, CodeStore.from_url(suite.env["REDIS_URL"]), args.catalogue)
        restarts = {name: p.restarts for name, p in suite.processes.items()}
        with Load(Calls(clients, refs), seconds, threads=args.threads) as load:
            started = time.monotonic()
            next_sample = started
            while (now := time.monotonic()) < started + seconds:
                if now >= next_sample:
                    load_averages.append(round(os.getloadavg()[0], 1))
                    for name in PROCESSES:
                        series[name].append(
                            (round(now - started, 1), rss_mb(process_of(suite, name).pid))
                        )
                    log.info(
                        "t=%.0fs: %d calls; RSS MB %s",
                        now - started,
                        len(load.events),
                        {n: s[-1][1] for n, s in series.items()},
                    )
                    next_sample += SAMPLE_SECONDS
                time.sleep(min(1.0, max(0.0, next_sample - time.monotonic())))
            ended = time.monotonic()
            for name in PROCESSES:  # the closing sample
                series[name].append(
                    (round(ended - started, 1), rss_mb(process_of(suite, name).pid))
                )
        events = load.window(started, float("inf"))
        restarted = sorted(n for n, p in suite.processes.items() if p.restarts != restarts[n])
        if load.failure_samples:  # the suite's logs go with its temporary folder: keep them
            kept = LOGS_KEPT / time.strftime("soak-%Y%m%dT%H%M%S")
            shutil.copytree(suite.log_dir, kept)
            log.warning("errors seen: the suite's logs are kept in %s", kept)

    summary = summarise(events)
    growth = {name: growth_pct(s) for name, s in series.items()}
    figures = {
        "minutes": args.minutes,
        "threads_per_kind": args.threads,
        "calls": summary["calls"],
        "calls_per_second": round(summary["calls"] / (ended - started), 1),
        "errors": sum(summary["errors"].values()),
        "errors_by_code": summary["errors"],
        "resource_exhausted": summary["resource_exhausted"],
        "wrong_answers": summary["wrong_answers"],
        "latency": latencies(events),
        "rss_growth_pct": growth,
        "rss_mb_series": {name: [mb for _, mb in s] for name, s in series.items()},
        "rss_sample_seconds": [t for t, _ in series[PROCESSES[0]]],
        "load_average_1m": load_averages,
        "restarted": restarted,
        "failure_samples": load.failure_samples,
        "targets_met": summary["errors"] == {}
        and summary["wrong_answers"] == 0
        and not restarted
        and all(g is not None and g < RSS_GROWTH_TARGET_PCT for g in growth.values()),
        "notes": f"{args.threads} client loops per kind of call (Search, Recommend, Decode, Encode, "
        "the studio round trip start -> decode -> recommend through the gateway), back to back on "
        "loopback, every reply checked against reference answers. errors excludes "
        "RESOURCE_EXHAUSTED (documented back-pressure, counted in resource_exhausted). latency: "
        "successful calls. RSS: the process and its children, sampled every 30 s; growth from the "
        "sample at 1 minute to the last. A run shorter than 10 minutes only checks the script. The "
        "suite and the load clients share the machine's CPUs (load_average_1m).",
    }
    data = report.update("soak", figures, command, report="reliability")
    print({k: data["soak"][k] for k in ("calls", "errors", "wrong_answers", "rss_growth_pct")})
    return 0 if figures["targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
