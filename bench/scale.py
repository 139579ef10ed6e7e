"""Ten million items: bulk write, replica start, memory, live updates and search at scale.

    python -m bench.scale --items 1000000 --items 10000000 [--shards 2 --shards 3]

Writes the `scale` section of docs/benchmarks.json (and re-renders docs/benchmarks.md). Per size
(`200k`, `1m`, `10m`, ...), each with a fresh redis-server unless --redis-url is given:

- write: synthetic codes drawn from a Gaussian mixture fitted to the real catalogue's codes
  (bench/synthetic.py), written chunk by chunk with CodeStore.write_generation; items/s counts the
  writes only (drawing the next chunk is not timed); Redis bytes per item from INFO memory;
- search: a retrieval replica (`python -m services.retrieval`, KMEANS_K=0, no auth, loopback),
  first start (process start -> gRPC SERVING, fitting the generation's derived state) and its RSS;
  Search p50/p99 over gRPC, one call at a time, k=10, fixed-ε, queries = held-out codes drawn
  from the same mixture, in the query's subCategory (the default scope; the headline `exact` and
  `ann`) and over the whole catalogue; ANN recall@10 against the exact answer to the same query;
- cold_start: a replica started again once the derived state is in Redis (what a new replica
  pays): process start -> SERVING, and its RSS per item;
- visibility: an item upserted into the served generation (CodeStore.upsert_codes, its z equal
  to a query's vector) until Search returns it first, p50/p99;
- shards: the same searches fanned out over 2 and 3 shards on loopback
  (services.common.fanout), and the fanned-out exact answers against the single node's.

Approximate search needs the IVF deployment option (INDEX_KIND=ivf, NPROBE) and, to ask the same
replica for exact answers, SearchRequest.exact; without the flag the exact figures come from a
flat deployment started beside it, and without IVF the ANN figures record why they are missing.
Every part's figures are written as soon as it ends; a part that fails records its error and the
others still run. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from atelier.latent import fixed_eps_code
from atelier.modelinfo import read_metadata
from atelier.processes import free_port, start_redis
from atelier.store import CodeStore, ItemRecord, ModelRecord
from atelier.v1 import common_pb2, retrieval_pb2, retrieval_pb2_grpc
from bench import report, synthetic
from bench.load import environment
from services.common.launcher import ManagedProcess, start_process, wait_serving
from services.common.tls import ClientTLS, make_channel

log = logging.getLogger("bench.scale")
ROOT = Path(__file__).resolve().parents[1]
SECTION = "scale"
PARTS = ("write", "search", "cold_start", "visibility", "shards")
SCOPES = {
    "sub_category": retrieval_pb2.SEARCH_SCOPE_SUB_CATEGORY,
    "catalogue": retrieval_pb2.SEARCH_SCOPE_CATALOGUE,
}
FIXED_EPS = common_pb2.RANKING_METHOD_FIXED_EPS
K = 10
WARMUP = 20
# key in the section -> (comparison, target); compared on the figures of this run.
TARGETS = {
    "10m.ann.p99_ms": ("<", 10),
    "10m.ann.recall_at_10": (">=", 0.99),
    "1m.exact.p99_ms": ("<", 10),
    "10m.cold_start_seconds": ("<", 60),
    "bulk_write_items_per_s": (">=", 200_000),
    "update_visibility_p99_ms": ("<", 1000),
    "shards.exact_mismatches": ("==", 0),
}
_INDEXED = re.compile(r"generation \d+: \d+ items .*indexed in ([\d.]+)s")


def size_label(items: int) -> str:
    """200000 -> 200k, 1000000 -> 1m, 10000000 -> 10m (the section's per-size keys)."""
    for unit, suffix in ((1_000_000, "m"), (1_000, "k")):
        if items >= unit and items % unit == 0:
            return f"{items // unit}{suffix}"
    return str(items)


def percentiles(samples_ms: list[float]) -> dict:
    return {
        "p50_ms": round(float(np.percentile(samples_ms, 50)), 3),
        "p99_ms": round(float(np.percentile(samples_ms, 99)), 3),
        "calls": len(samples_ms),
    }


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# --- what the deployment offers (being built beside this benchmark) ---


@dataclasses.dataclass(frozen=True)
class Capabilities:
    ivf: str | None  # None when INDEX_KIND=ivf is honoured, else why not
    exact_flag: bool  # SearchRequest.exact exists
    shards: str | None  # None when SHARD_INDEX/SHARD_COUNT and the fan-out exist, else why not


def capabilities() -> Capabilities:
    """Read the retrieval settings as a replica would with INDEX_KIND=ivf and SHARD_COUNT=2, and
    see whether they took."""
    from services.retrieval.config import Settings

    probe = {
        "INDEX_KIND": "ivf",
        "NPROBE": "7",
        "SHARD_INDEX": "1",
        "SHARD_COUNT": "2",
        "ATELIER_AUTH": "none",
        "REDIS_URL": "redis://127.0.0.1:1/0",
    }
    with environment(**probe):
        settings = Settings.from_env()
    ivf = getattr(getattr(settings, "index", None), "kind", None) == "ivf"
    sharded = getattr(settings, "shard_count", 1) == 2
    try:
        from services.common.fanout import ShardedRetrieval  # noqa: F401

        fanout = True
    except ImportError:
        fanout = False
    return Capabilities(
        ivf=None if ivf else "the retrieval settings do not read INDEX_KIND=ivf yet",
        exact_flag="exact" in retrieval_pb2.SearchRequest.DESCRIPTOR.fields_by_name,
        shards=(
            None
            if sharded and fanout
            else "retrieval does not read SHARD_INDEX/SHARD_COUNT yet"
            if not sharded
            else "services.common.fanout is missing"
        ),
    )


# --- the benchmark's section, written after every part ---


class Section:
    """The `scale` section: kept from earlier runs for sizes not re-run, saved after each part."""

    def __init__(self, command: str):
        self.command = command
        path = report.DOCS / "benchmarks.json"
        existing = json.loads(path.read_text()).get(SECTION, {}) if path.exists() else {}
        self.data: dict = {
            k: v for k, v in existing.items() if k not in ("command", "measured_at", "machine")
        }

    def size(self, label: str, items: int) -> dict:
        entry = self.data.setdefault(label, {})
        entry.pop("error", None)  # an earlier run's failure; this run records its own
        entry.update(
            items=items,
            command=self.command,
            measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        return entry

    def save(self) -> None:
        summarise(self.data)
        report.update(SECTION, self.data, self.command)


def _sizes(data: dict) -> list[tuple[int, str]]:
    return sorted((v["items"], k) for k, v in data.items() if isinstance(v, dict) and "items" in v)


def lookup(data: dict, key: str):
    value = data
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def summarise(data: dict) -> None:
    """The section's top-level figures (from the largest size that has each) and the targets."""
    sizes = _sizes(data)
    for key, path in (
        ("bulk_write_items_per_s", "write.items_per_s"),
        ("update_visibility_p50_ms", "visibility.p50_ms"),
        ("update_visibility_p99_ms", "visibility.p99_ms"),
    ):
        found = [(n, lookup(data[label], path)) for n, label in sizes]
        found = [(n, v) for n, v in found if v is not None]
        data[key] = found[-1][1] if found else None
        data.setdefault("figures_from", {})[key] = (
            size_label(found[-1][0]) if found else "not measured"
        )
    # RSS includes the interpreter and libraries: the growth between the two largest sizes is
    # what an item costs.
    # Only between sizes whose replicas index the same methods (each method is an index).
    rss = [
        (n, lookup(data[label], "cold_start.rss_bytes"), data[label].get("methods"))
        for n, label in sizes
    ]
    rss = [(n, v, m) for n, v, m in rss if v is not None]
    data["replica_rss_marginal_bytes_per_item"] = (
        round((rss[-1][1] - rss[-2][1]) / (rss[-1][0] - rss[-2][0]), 1)
        if len(rss) >= 2 and rss[-1][0] != rss[-2][0] and rss[-1][2] == rss[-2][2]
        else None
    )
    mismatches, compared = 0, 0
    measured = False
    for _, label in sizes:
        for shard in (data[label].get("shards") or {}).values():
            if isinstance(shard, dict) and "exact_mismatches" in shard:
                measured = True
                mismatches += shard["exact_mismatches"]
                compared += shard.get("exact_compared", 0)
    data["shards"] = (
        {"exact_mismatches": mismatches, "exact_compared": compared}
        if measured
        else {"exact_mismatches": None, "why": "no sharded run yet"}
    )
    targets = {}
    for key, (op, goal) in TARGETS.items():
        value = lookup(data, key)
        met = (
            None
            if value is None
            else {"<": value < goal, ">=": value >= goal, "==": value == goal}[op]
        )
        targets[key] = {
            "target": f"{op} {goal}",
            "value": value,
            "met": "not measured" if met is None else met,
        }
    data["targets"] = targets


@contextlib.contextmanager
def part(entry: dict, name: str, section: Section) -> Iterator[dict]:
    """Figures of one part go to entry[name]; a failure is recorded there and the run goes on."""
    figures: dict = {}
    started = time.perf_counter()
    log.info("--- %s", name)
    try:
        yield figures
    except Exception as exc:  # one part's failure must not lose the others' figures
        log.error("%s failed:\n%s", name, traceback.format_exc())
        figures["error"] = f"{type(exc).__name__}: {exc}"[:500]
    figures.setdefault("part_seconds", round(time.perf_counter() - started, 1))
    # A size's parts may come from different runs (--parts): each says which.
    figures["command"] = section.command
    figures["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    entry[name] = figures
    section.save()


# --- processes ---


@dataclasses.dataclass
class Deployment:
    """Retrieval replicas of one index kind: one node, or one process per shard."""

    kind: str
    processes: list[ManagedProcess]
    start_seconds: float

    @property
    def addresses(self) -> list[str]:
        return [p.address or "" for p in self.processes]

    def rss(self) -> int:
        return sum(rss_bytes(p.pid) for p in self.processes)

    def indexed_seconds(self) -> float | None:
        """The slowest process's load-and-index time, as its log reports it (the last build in
        each log: a re-run with the same --work-dir appends to the same logs)."""
        found = []
        for process in self.processes:
            text = process.log_path.read_text() if process.log_path else ""
            found += [float(v) for v in _INDEXED.findall(text)[-1:]]
        return max(found) if found else None

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


def start_deployment(
    redis_url: str,
    log_dir: Path,
    kind: str,
    shards: int,
    args: argparse.Namespace,
    name: str,
) -> Deployment:
    """Start `shards` retrieval processes at once; ready when every one says SERVING."""
    processes = []
    started = time.perf_counter()
    try:
        for index in range(shards):
            port = free_port()
            env = {
                "REDIS_URL": redis_url,
                "RETRIEVAL_HOST": "127.0.0.1",
                "RETRIEVAL_PORT": str(port),
                "ENCODER_ADDR": "127.0.0.1:1",  # vector queries only: never called
                "ATELIER_AUTH": "none",
                "ATELIER_TOKEN": "",
                "KMEANS_K": "0",
                "FAISS_THREADS": str(args.faiss_threads),
                "INDEX_KIND": kind,
                "SHARD_INDEX": str(index),
                "SHARD_COUNT": str(shards),
                **({"NPROBE": str(args.nprobe)} if args.nprobe else {}),
                **({"SEARCH_METHODS": args.methods} if args.methods else {}),
            }
            argv = [sys.executable, "-m", "services.retrieval"]
            label = f"{name}-{kind}-{index}of{shards}"
            processes.append(start_process(label, argv, env, log_dir, f"127.0.0.1:{port}"))
        for process in processes:
            wait_serving(process, args.start_timeout, ClientTLS())
    except BaseException:
        for process in processes:
            process.stop()
        raise
    seconds = time.perf_counter() - started
    log.info("%s (%s, %d shard(s)) serving after %.1fs", name, kind, shards, seconds)
    return Deployment(kind, processes, seconds)


@contextlib.contextmanager
def searcher(deployment: Deployment) -> Iterator[Callable]:
    """Search(request) over the deployment: the fan-out client over its shards, or the stub."""
    channels = [make_channel(address, ClientTLS()) for address in deployment.addresses]
    stubs = [retrieval_pb2_grpc.RetrievalServiceStub(c) for c in channels]
    try:
        if len(stubs) == 1:
            stub = stubs[0]
            yield lambda request: stub.Search(request, timeout=60)
        else:
            from services.common.fanout import ShardedRetrieval

            sharded = ShardedRetrieval(stubs)
            yield lambda request: sharded.Search(request, timeout=60)
    finally:
        for channel in channels:
            channel.close()


# --- queries ---


def search_request(
    vector: np.ndarray, scope: str, exact: bool | None, k: int = K
) -> retrieval_pb2.SearchRequest:
    request = retrieval_pb2.SearchRequest(
        query=common_pb2.Query(vector=common_pb2.LatentVector(values=vector.tolist())),
        method=FIXED_EPS,
        scope=SCOPES[scope],
        k=k,
    )
    if exact is not None:
        request.exact = exact
    return request


Answer = list[tuple[str, float]]


def run_queries(
    search: Callable, vectors: np.ndarray, scope: str, exact: bool | None
) -> tuple[dict, list[Answer]]:
    """Latencies of one call at a time (after WARMUP calls) and every answer."""
    requests = [search_request(v, scope, exact) for v in vectors]
    for request in requests[:WARMUP]:
        search(request)
    samples, answers = [], []
    for request in requests[WARMUP:]:
        started = time.perf_counter()
        reply = search(request)
        samples.append((time.perf_counter() - started) * 1e3)
        answers.append([(r.item.item_id, r.score) for r in reply.results])
    return percentiles(samples), answers


def recall_at_k(approximate: list[Answer], exact: list[Answer]) -> float:
    shares = [
        len({i for i, _ in a} & {i for i, _ in e}) / len(e)
        for a, e in zip(approximate, exact, strict=True)
        if e
    ]
    return round(float(np.mean(shares)), 4) if shares else float("nan")


def mismatches(got: list[Answer], expected: list[Answer]) -> tuple[int, float]:
    """Queries whose ids or scores differ, and the largest score difference among equal ids."""
    count, largest = 0, 0.0
    for g, e in zip(got, expected, strict=True):
        if [i for i, _ in g] != [i for i, _ in e]:
            count += 1
            continue
        diff = max((abs(a - b) for (_, a), (_, b) in zip(g, e, strict=True)), default=0.0)
        largest = max(largest, diff)
        if diff > 1e-9 * max(1.0, max((abs(s) for _, s in e), default=1.0)):
            count += 1
    return count, largest


def plan(caps: Capabilities) -> list[tuple[str, tuple[str, ...]]]:
    """Which deployments answer which modes: (index kind, modes)."""
    if caps.ivf is not None:
        return [("flat", ("exact",))]
    if caps.exact_flag:
        return [("ivf", ("exact", "ann"))]
    return [("flat", ("exact",)), ("ivf", ("ann",))]


def measure_searches(
    deployment: Deployment,
    modes: tuple[str, ...],
    caps: Capabilities,
    queries: dict[str, np.ndarray],
) -> dict[str, dict[str, tuple[dict, list[Answer]]]]:
    """scope -> mode -> (latencies, answers)."""
    results: dict[str, dict[str, tuple[dict, list[Answer]]]] = {}
    with searcher(deployment) as search:
        for scope, vectors in queries.items():
            for mode in modes:
                # On an IVF deployment, exact answers are asked for; on a flat one all are exact.
                flag = (mode == "exact") if deployment.kind == "ivf" and caps.exact_flag else None
                figures, answers = run_queries(search, vectors, scope, flag)
                log.info("%s %s %s: %s", deployment.kind, scope, mode, figures)
                results.setdefault(scope, {})[mode] = (figures, answers)
    return results


def search_figures(
    found: dict[str, dict[str, tuple[dict, list[Answer]]]],
    caps: Capabilities,
    reference: dict[str, list[Answer]] | None = None,
) -> dict:
    """Per scope: exact and ANN latencies, ANN recall@10, and (shards) mismatches against the
    single node's exact answers. The first scope's figures are the headline `exact` / `ann`."""
    out: dict = {}
    for position, (scope, modes) in enumerate(found.items()):
        figures: dict = {}
        if "exact" in modes:
            figures["exact"] = dict(modes["exact"][0])
            if reference is not None and scope in reference:
                count, largest = mismatches(modes["exact"][1], reference[scope])
                figures["exact"]["mismatches"] = count
                figures["exact"]["max_score_difference"] = largest
        if "ann" in modes:
            figures["ann"] = dict(modes["ann"][0])
            truth = modes["exact"][1] if "exact" in modes else (reference or {}).get(scope)
            if truth is not None:
                figures["ann"]["recall_at_10"] = recall_at_k(modes["ann"][1], truth)
        else:
            figures["ann"] = {"skipped": caps.ivf or "no IVF deployment in this run"}
        if position == 0:
            out.update(figures)
            out["scope"] = scope
        else:
            out[f"{scope}_scope"] = figures
    return out


def merge(a: dict, b: dict) -> dict:
    out = {scope: dict(modes) for scope, modes in a.items()}
    for scope, modes in b.items():
        out.setdefault(scope, {}).update(modes)
    return out


# --- the parts ---


def write_part(
    store: CodeStore,
    version: int,
    items: int,
    mixture: synthetic.Mixture,
    chunk: int,
    figures: dict,
) -> None:
    info = store.redis.info("memory")
    before, dataset_before = info["used_memory"], info.get("used_memory_dataset", 0)
    written, writing, started = 0, 0.0, time.perf_counter()
    while written < items:
        drawn = mixture.sample(written, min(chunk, items - written))
        began = time.perf_counter()
        store.write_generation(
            version, drawn.item_ids, drawn.mu, drawn.sigma, drawn.z, drawn.metadata
        )
        writing += time.perf_counter() - began
        written += len(drawn)
        del drawn
        log.info(
            "written %d of %d (%.0f items/s writing)", written, items, written / max(writing, 1e-9)
        )
    wall = time.perf_counter() - started
    info = store.redis.info("memory")
    held = store.item_count(version)
    if held != items:
        raise RuntimeError(f"generation {version} holds {held} items, expected {items}")
    figures.update(
        seconds=round(writing, 2),
        items_per_s=round(items / writing),
        wall_seconds_with_sampling=round(wall, 2),
        chunk=chunk,
        redis_used_memory_bytes=int(info["used_memory"] - before),
        redis_bytes_per_item=round((info["used_memory"] - before) / items, 1),
        redis_dataset_bytes_per_item=round(
            (info.get("used_memory_dataset", 0) - dataset_before) / items, 1
        ),
    )


def visibility_part(
    store: CodeStore,
    version: int,
    deployment: Deployment,
    vectors: np.ndarray,
    epsilon: np.ndarray,
    timeout: float,
    figures: dict,
) -> None:
    """Upsert items whose z equals a query vector, and poll Search until each comes first."""
    latencies: list[float] = []
    timeouts, ids = 0, []
    rng = np.random.default_rng(7)
    with searcher(deployment) as search:
        try:
            for index, vector in enumerate(vectors):
                reply = search(search_request(vector, "sub_category", None, k=1))
                predicted = reply.query_category
                item_id = f"visible-{index:05d}"
                sigma = np.exp(rng.normal(-1.6, 0.3, vector.shape)).astype(np.float32)
                mu = (vector - sigma * epsilon).astype(np.float32)
                # z = μ + σ⊙ε as the store derives it: the query vector to within rounding.
                vector = fixed_eps_code(mu, sigma, epsilon)
                record = ItemRecord(
                    item_id,
                    mu,
                    sigma,
                    vector,
                    {
                        "sub_category": predicted.sub_category,
                        "master_category": predicted.master_category,
                        "gender": "Unisex",
                    },
                )
                probe = search_request(vector, "sub_category", None, k=1)
                ids.append(item_id)
                started = time.perf_counter()
                store.upsert_codes(version, [record])
                while True:
                    reply = search(probe)
                    if reply.results and reply.results[0].item.item_id == item_id:
                        latencies.append((time.perf_counter() - started) * 1e3)
                        break
                    if time.perf_counter() - started > timeout:
                        timeouts += 1
                        break
                    time.sleep(0.002)
                if timeouts >= 3 and not latencies:
                    log.warning(
                        "none of the first %d upserts became searchable: stopping", timeouts
                    )
                    break
        finally:
            if ids:
                store.delete_codes(version, ids)
    figures.update(
        upserts=len(ids),
        visible=len(latencies),
        not_visible_within_timeout=timeouts,
        timeout_seconds=timeout,
    )
    if latencies:
        figures.update(percentiles(latencies))
        figures["calls"] = len(latencies)
    if timeouts:
        figures["why"] = (
            f"{timeouts} of {len(ids)} upserted items were not returned by Search within "
            f"{timeout:g} s (the replica does not apply the generation's change stream yet?)"
        )


def run_size(
    items: int,
    args: argparse.Namespace,
    caps: Capabilities,
    mixture: synthetic.Mixture,
    section: Section,
    work: Path,
) -> None:
    label = size_label(items)
    entry = section.size(label, items)
    entry["capabilities"] = {
        "ivf": caps.ivf or "yes",
        "exact_flag": caps.exact_flag,
        "shards": caps.shards or "yes",
    }
    log.info("=== %s items (%s)", f"{items:,}", label)
    version = items
    queries_mixture = synthetic.with_seed(mixture, args.seed + 1, "q")
    held_out = queries_mixture.sample(0, max(args.queries, args.catalogue_queries) + WARMUP).z
    queries = {"sub_category": held_out[: args.queries + WARMUP]}
    if args.catalogue_queries:
        queries["catalogue"] = held_out[: args.catalogue_queries + WARMUP]
    visibility_vectors = (
        synthetic.with_seed(mixture, args.seed + 2, "v").sample(0, args.visibility_items).z
    )
    with contextlib.ExitStack() as stack:
        if args.redis_url:
            redis_url = args.redis_url
        else:
            server = start_redis(
                work / f"redis-{label}",
                appendonly=args.appendfsync != "no",
                appendfsync=args.appendfsync if args.appendfsync != "no" else "everysec",
            )
            stack.callback(server.stop)
            redis_url = server.url
        entry["methods"] = args.methods or "every method"
        entry["redis_persistence"] = (
            "external" if args.redis_url else f"appendfsync {args.appendfsync}"
        )
        store = CodeStore.from_url(redis_url)
        log_dir = work / f"logs-{label}"
        fresh = store.item_count(version) != items
        if "write" in args.parts or fresh:
            if not fresh:
                store.redis.delete(*[k for k in store.redis.scan_iter(f"atelier:gen:{version}:*")])
            store.register_model(
                ModelRecord(version, mixture.latent_dim, 80, 64, "scale-synthetic", mixture.epsilon)
            )
            with part(entry, "write", section) as figures:
                write_part(store, version, items, mixture, args.chunk, figures)
        store.serve(version)

        reference: dict[str, list[Answer]] = {}
        primary_kind = "flat" if caps.ivf is not None else "ivf"
        if "search" in args.parts:
            with part(entry, "search", section) as figures:
                found: dict = {}
                for position, (kind, modes) in enumerate(plan(caps)):
                    deployment = start_deployment(redis_url, log_dir, kind, 1, args, "replica")
                    try:
                        figures.setdefault("deployments", {})[kind] = {
                            "start_seconds": round(deployment.start_seconds, 2),
                            "first_start_in_generation": position == 0,
                            "load_and_index_seconds": deployment.indexed_seconds(),
                            "rss_bytes_serving": deployment.rss(),
                        }
                        found = merge(found, measure_searches(deployment, modes, caps, queries))
                        figures["deployments"][kind]["rss_bytes_after_queries"] = deployment.rss()
                    finally:
                        deployment.stop()
                reference = {scope: modes["exact"][1] for scope, modes in found.items()}
                figures.update(search_figures(found, caps))
                figures["queries"] = {
                    "held_out": True,
                    "k": K,
                    "method": "fixed_eps",
                    "nprobe": args.nprobe or "deployment default",
                }
            for mode in ("exact", "ann"):
                entry[mode] = entry["search"].get(mode, {"skipped": "search failed"})

        replica: Deployment | None = None
        try:
            if "cold_start" in args.parts or "visibility" in args.parts:
                with part(entry, "cold_start", section) as figures:
                    replica = start_deployment(redis_url, log_dir, primary_kind, 1, args, "cold")
                    rss = replica.rss()
                    figures.update(
                        kind=primary_kind,
                        seconds=round(replica.start_seconds, 2),
                        load_and_index_seconds=replica.indexed_seconds(),
                        rss_bytes=rss,
                        rss_bytes_per_item=round(rss / items, 1),
                        note="derived state (category predictor, IVF sublist centroids) already in Redis",
                    )
                    entry["cold_start_seconds"] = figures["seconds"]
                    entry["replica_rss_bytes_per_item"] = figures["rss_bytes_per_item"]
            if "visibility" in args.parts:
                with part(entry, "visibility", section) as figures:
                    if replica is None:
                        raise RuntimeError("no replica started (cold start failed)")
                    visibility_part(
                        store,
                        version,
                        replica,
                        visibility_vectors,
                        mixture.epsilon,
                        args.visibility_timeout,
                        figures,
                    )
        finally:
            if replica is not None:
                replica.stop()

        if "shards" in args.parts:
            entry.setdefault("shards", {})
            for count in args.shards:
                with part(entry["shards"], str(count), section) as figures:
                    if caps.shards is not None:
                        figures["skipped"] = caps.shards
                        continue
                    if not reference:
                        raise RuntimeError("no single-node exact answers to compare with")
                    found = {}
                    for kind, modes in plan(caps):
                        deployment = start_deployment(
                            redis_url, log_dir, kind, count, args, f"shards{count}"
                        )
                        try:
                            figures.setdefault("deployments", {})[kind] = {
                                "start_seconds": round(deployment.start_seconds, 2),
                                "load_and_index_seconds": deployment.indexed_seconds(),
                                "rss_bytes_serving": deployment.rss(),
                            }
                            found = merge(found, measure_searches(deployment, modes, caps, queries))
                        finally:
                            deployment.stop()
                    figures.update(search_figures(found, caps, reference))
                    figures["exact_mismatches"] = sum(
                        f.get("exact", {}).get("mismatches", 0)
                        for f in [figures, *(v for k, v in figures.items() if k.endswith("_scope"))]
                    )
                    figures["exact_compared"] = sum(len(v) for v in reference.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Sizes: --items N, repeated. Parts: " + ", ".join(PARTS),
    )
    parser.add_argument("--items", type=int, action="append", help="catalogue size (repeat)")
    parser.add_argument(
        "--catalogue",
        type=Path,
        default=ROOT.parent / "shared/data/fashion-product-small/styles.csv",
    )
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--queries", type=int, default=1000, help="per mode, in the subCategory")
    parser.add_argument(
        "--catalogue-queries", type=int, default=200, help="per mode, over the catalogue (0: none)"
    )
    parser.add_argument("--shards", type=int, action="append", help="shard counts (default 2, 3)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--visibility-items", type=int, default=200)
    parser.add_argument("--visibility-timeout", type=float, default=5.0)
    parser.add_argument("--nprobe", type=int, default=0, help="NPROBE for IVF (0: its default)")
    parser.add_argument("--faiss-threads", type=int, default=1)
    parser.add_argument(
        "--methods", default="", help="SEARCH_METHODS for the replicas (default: every method)"
    )
    parser.add_argument(
        "--chunk", type=int, default=100_000, help="items drawn and written at once"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start-timeout", type=float, default=900.0)
    parser.add_argument(
        "--appendfsync",
        choices=("everysec", "always", "no"),
        default="everysec",
        help="the bench's own Redis: AOF as compose runs it (everysec), or none",
    )
    parser.add_argument(
        "--redis-url", help="an existing Redis (generations of the right size reused)"
    )
    parser.add_argument("--work-dir", type=Path, help="logs and Redis data (default: a temp dir)")
    args = parser.parse_args(argv)
    args.items = args.items or [1_000_000, 10_000_000]
    args.shards = args.shards or [2, 3]
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
    )
    command = "python -m bench.scale " + " ".join(sys.argv[1:] if argv is None else argv)

    caps = capabilities()
    log.info("deployment: %s", caps)
    metadata = read_metadata(args.models)
    real = synthetic.real_codes(args.catalogue, args.models)
    started = time.perf_counter()
    mixture = synthetic.fit_mixture(real, metadata.epsilon, seed=args.seed)
    log.info(
        "mixture: %d components over %d subCategories, fitted on %d real codes in %.1fs",
        mixture.components,
        len(set(mixture.sub_category)),
        len(real.item_ids),
        time.perf_counter() - started,
    )
    section = Section(command)
    section.data["synthetic"] = {
        "real_codes": len(real.item_ids),
        "model_version": metadata.version,
        "components": mixture.components,
        "sub_categories": len(set(mixture.sub_category)),
        "latent_dim": mixture.latent_dim,
        **synthetic.realism(real, mixture),
    }
    section.data["notes"] = (
        "Synthetic codes from a Gaussian mixture (full covariances) over [mu, log sigma] fitted per "
        "subCategory to the real catalogue's codes (bench/synthetic.py); z = mu + sigma*eps with "
        "the model's eps. Search: held-out codes from the same mixture as vector queries, "
        "fixed-eps, k=10, one call at a time over loopback gRPC; `exact`/`ann` in the query's "
        "subCategory, `catalogue_scope` over every item; recall@10 of ANN against the exact answer "
        "to the same query. Cold start: process start to gRPC SERVING with the generation's "
        "derived state already in Redis. Visibility: CodeStore.upsert_codes on the served "
        "generation until Search returns the item first. Shards: the fan-out's exact answers "
        "against the single node's, ids and scores."
    )
    with contextlib.ExitStack() as stack:
        if args.work_dir:
            work = args.work_dir
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="scale-")))
        for items in args.items:
            try:
                run_size(items, args, caps, mixture, section, work)
            except Exception:
                log.error("size %d failed:\n%s", items, traceback.format_exc())
                entry = section.data.setdefault(size_label(items), {"items": items})
                entry["error"] = traceback.format_exc(limit=2)[-500:]
            section.save()
    for key, target in section.data["targets"].items():
        log.info(
            "target %s %s: %s (met: %s)", key, target["target"], target["value"], target["met"]
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
