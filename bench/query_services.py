"""Benchmark find, pair and design over gRPC, each against an in-process baseline measured in the same run.

    python -m bench.query_services [--catalogue ../shared/data/fashion-product-small/styles.csv]

Writes the `search`, `decode_rpc` and `recommend_rpc` sections of docs/benchmarks.json and .md:

- search.catalogue / search.1m: RetrievalService.Search p50/p99 (item queries, k=10, the query's
  cluster, fixed-ε and log-likelihood) at the real catalogue's size and at 1,000,000 synthetic codes;
- search.speedup_vs_numpy / _vs_sklearn: one query, FAISS per-cluster search against a numpy
  brute-force scan and scikit-learn NearestNeighbors over the whole catalogue;
- decode_rpc: DecoderService.Decode of one code; recommend_rpc: RecommenderService.Recommend
  (the similar list plus the cross-cluster lists, k=10).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import faiss
import grpc
import numpy as np
from sklearn.neighbors import NearestNeighbors
from tqdm import tqdm

from atelier.catalogue import load_images, read_catalogue_csv
from atelier.generation import MASTER, SUB, Partitioning, categorise, index_partitions
from atelier.modelinfo import read_metadata
from atelier.modelstore import LoadedDecoder, LoadedEncoder
from atelier.recommend import gender_rule, recommend
from atelier.search import CodeSet
from atelier.store import CodeStore, ItemRecord, ModelRecord
from bench import report
from services.common.client import Addresses, AtelierClient, make_query
from services.common.launcher import local_suite
from services.decoder.server import to_png

log = logging.getLogger("bench.query_services")


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(float(np.percentile(samples_ms, 50)), 3),
        "p99_ms": round(float(np.percentile(samples_ms, 99)), 3),
        "calls": len(samples_ms),
    }


def timed(call, repeats: int, warmup: int = 20) -> list[float]:
    for index in range(warmup):
        call(index)
    samples = []
    for index in range(repeats):
        started = time.perf_counter()
        call(index)
        samples.append((time.perf_counter() - started) * 1e3)
    return samples


def write_generation(
    store: CodeStore, version: int, codes: CodeSet, metadata: list[dict], epsilon: np.ndarray
) -> None:
    store.register_model(ModelRecord(version, codes.mu.shape[1], 80, 64, "bench", epsilon))
    batch = 5000
    for start in tqdm(
        range(0, len(codes), batch), desc=f"writing generation {version}", unit="batch"
    ):
        records = [
            ItemRecord(codes.item_ids[i], codes.mu[i], codes.sigma[i], codes.z[i], metadata[i])
            for i in range(start, min(start + batch, len(codes)))
        ]
        store.upsert_codes(version, records)


SYNTHETIC_CATEGORIES = {  # subCategory: (masterCategory, share), roughly the catalogue's
    "Topwear": ("Apparel", 0.36), "Shoes": ("Footwear", 0.17), "Bags": ("Accessories", 0.08),
    "Bottomwear": ("Apparel", 0.07), "Watches": ("Accessories", 0.06), "Innerwear": ("Apparel", 0.05),
    "Jewellery": ("Accessories", 0.04), "Eyewear": ("Accessories", 0.04), "Sandal": ("Footwear", 0.05),
    "Wallets": ("Accessories", 0.04), "Flip Flops": ("Footwear", 0.04),
}  # fmt: skip


def synthetic_codes(n: int, dim: int, seed: int = 0) -> tuple[CodeSet, list[dict]]:
    """Codes shaped like a category-prior model's: a Gaussian cloud around each subCategory's own
    mean, in the catalogue's proportions, tight σ; and their labels."""
    rng = np.random.default_rng(seed)
    names = list(SYNTHETIC_CATEGORIES)
    shares = np.array([SYNTHETIC_CATEGORIES[c][1] for c in names])
    family = rng.choice(len(names), size=n, p=shares / shares.sum())
    means = rng.normal(scale=4.0, size=(len(names), dim)).astype(np.float32)
    mu = means[family] + rng.normal(scale=1.0, size=(n, dim)).astype(np.float32)
    sigma = np.exp(rng.normal(-1.6, 0.3, size=(n, dim))).astype(np.float32)
    z = mu + sigma * rng.standard_normal(dim).astype(np.float32)
    genders = np.array(["Men", "Women", "Unisex"])[rng.choice(3, size=n, p=[0.5, 0.45, 0.05])]
    metadata = [
        {
            "sub_category": names[f],
            "master_category": SYNTHETIC_CATEGORIES[names[f]][0],
            "gender": g,
        }
        for f, g in zip(family.tolist(), genders.tolist(), strict=True)
    ]
    return CodeSet([f"s{i:07d}" for i in range(n)], mu, sigma, z), metadata


def by_sub_category(codes: CodeSet, metadata: list[dict]) -> tuple[Partitioning, np.ndarray]:
    """The services' subCategory partitioning, built in-process from the same codes and labels."""
    subs = np.array([m.get("sub_category", "") for m in metadata])
    masters = np.array([m.get("master_category", "") for m in metadata])
    categories = categorise(codes.mu, subs, masters, None)
    genders = np.array([m.get("gender", "") for m in metadata])
    attributes = {SUB: categories.subs, MASTER: categories.masters, "gender": genders}
    return index_partitions(codes, attributes, categories.master_of)[SUB], attributes


def measure_size(
    label: str,
    suite,
    client: AtelierClient,
    codes: CodeSet,
    metadata: list[dict],
    version: int,
    queries: int,
) -> dict:
    store = CodeStore.from_url(suite.env["REDIS_URL"])
    started = time.perf_counter()
    store.serve(version)
    request_ids = np.random.default_rng(1).choice(len(codes), queries + 20, replace=False)
    probe = make_query(item_id=codes.item_ids[int(request_ids[0])])

    def answered_by_all() -> bool:
        try:
            return (
                client.search(probe).model_version == version
                and client.recommend(probe).model_version == version
                and client.random_start().model_version == version
            )
        except grpc.RpcError:
            return False

    # Every service rebuilds for the new generation in the background; measure only once all
    # three have finished, so no rebuild competes with the timed calls for the 2 cores.
    while not answered_by_all():
        time.sleep(0.5)
    rebuild_s = time.perf_counter() - started
    time.sleep(2.0)
    # in-process baseline: the same index the service builds, without gRPC
    partitioning, attributes = by_sub_category(codes, metadata)
    figures: dict = {"items": len(codes), "index_rebuild_seconds": round(rebuild_s, 1)}
    for method in ("fixed_eps", "loglik"):
        space = "z" if method == "fixed_eps" else "mu"

        def rpc(i, method=method):
            client.search(
                make_query(item_id=codes.item_ids[int(request_ids[i % len(request_ids)])]),
                method,
                "sub_category",
                10,
            )

        def local(i, method=method, space=space):
            row = int(request_ids[i % len(request_ids)])
            home = partitioning.position(str(attributes[SUB][row]))
            partitioning.index.search(
                method,
                codes.space(space)[row],
                10,
                partitioning.members[home],
                exclude_rows=np.array([row]),
            )

        grpc_ms, local_ms = timed(rpc, queries), timed(local, queries)
        figures[method] = {
            **percentiles(grpc_ms),
            "in_process_p50_ms": round(float(np.percentile(local_ms, 50)), 3),
            "in_process_p99_ms": round(float(np.percentile(local_ms, 99)), 3),
            "grpc_overhead_ratio_p50": round(
                float(np.percentile(grpc_ms, 50) / np.percentile(local_ms, 50)), 2
            ),
        }
        log.info("%s %s: %s", label, method, figures[method])
    figures["p50_ms"], figures["p99_ms"] = (
        figures["fixed_eps"]["p50_ms"],
        figures["fixed_eps"]["p99_ms"],
    )
    return figures


def raw_speedups(codes: CodeSet, metadata: list[dict], queries: int) -> dict:
    """One query at a time: FAISS inside the query's subCategory vs brute force over the catalogue."""
    partitioning, attributes = by_sub_category(codes, metadata)
    nn = NearestNeighbors(n_neighbors=10, algorithm="brute", metric="euclidean").fit(codes.z)
    rows = np.random.default_rng(2).choice(len(codes), queries, replace=False)

    def faiss_search(i):
        home = partitioning.position(str(attributes[SUB][rows[i]]))
        partitioning.index.search("fixed_eps", codes.z[rows[i]], 10, partitioning.members[home])

    def numpy_search(i):
        q = codes.z[rows[i]]
        distances = ((codes.z - q) ** 2).sum(axis=1)
        top = np.argpartition(distances, 10)[:10]
        top[np.argsort(distances[top])]

    def sklearn_search(i):
        nn.kneighbors(codes.z[rows[i]][None])

    faiss_ms, numpy_ms, sklearn_ms = (
        np.median(timed(f, queries)) for f in (faiss_search, numpy_search, sklearn_search)
    )
    return {
        "faiss_partition_p50_ms": round(float(faiss_ms), 4),
        "numpy_brute_force_p50_ms": round(float(numpy_ms), 4),
        "sklearn_nearest_neighbors_p50_ms": round(float(sklearn_ms), 4),
        "speedup_vs_numpy": round(float(numpy_ms / faiss_ms), 2),
        "speedup_vs_sklearn": round(float(sklearn_ms / faiss_ms), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--catalogue", type=Path, default=Path("../shared/data/fashion-product-small/styles.csv")
    )
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--synthetic", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout
    )
    # The in-process baselines search as the services do (FAISS_THREADS=1).
    faiss.omp_set_num_threads(1)
    command = "python -m bench." + Path(__file__).stem + " " + " ".join(sys.argv[1:])

    metadata_model = read_metadata(args.models)
    encoder = LoadedEncoder(args.models)
    loaded = load_images(read_catalogue_csv(args.catalogue), metadata_model.image_size)
    encoded = encoder.encode(loaded.images)
    order = np.argsort(np.asarray(loaded.ids, dtype=object), kind="stable")
    catalogue = CodeSet(
        [loaded.ids[i] for i in order],
        encoded["mu"][order],
        encoded["sigma"][order],
        encoded["z"][order],
    )
    catalogue_meta = [loaded.items[i].metadata() for i in order]
    synthetic, synthetic_meta = synthetic_codes(args.synthetic, metadata_model.latent_dim)

    with (
        tempfile.TemporaryDirectory() as tmp,
        local_suite(Path(tmp), args.models, workers=0, services=("modelserver",)) as suite,
    ):
        store = CodeStore.from_url(suite.env["REDIS_URL"])
        write_generation(
            store, metadata_model.version, catalogue, catalogue_meta, metadata_model.epsilon
        )
        store.serve(metadata_model.version)
        for name in ("encoder", "retrieval", "recommender", "decoder"):
            suite.start_service(name, timeout=600)
        addresses = Addresses(
            *(
                suite.env[f"{n.upper()}_ADDR"]
                for n in ("encoder", "decoder", "retrieval", "recommender")
            )
        )
        client = AtelierClient(addresses, timeout=30, token=suite.token or "")

        search_catalogue = measure_size(
            "catalogue",
            suite,
            client,
            catalogue,
            catalogue_meta,
            metadata_model.version,
            args.queries,
        )

        # decode: one code over gRPC vs decoding and PNG-encoding it in-process
        decoder = LoadedDecoder(args.models)
        vectors = catalogue.mu[:64]
        decode_rpc = timed(lambda i: client.decode([vectors[i % 64]]), args.queries)
        decode_local = timed(
            lambda i: to_png(decoder.decode(vectors[i % 64][None])[0]), args.queries
        )

        # recommend: the similar list plus one eq. 3 list per other subCategory, gender rule on
        by_sub, attributes = by_sub_category(catalogue, catalogue_meta)
        ids = np.random.default_rng(3).choice(len(catalogue), 64, replace=False)
        recommend_rpc = timed(
            lambda i: client.recommend(
                make_query(item_id=catalogue.item_ids[int(ids[i % 64])]), k=10
            ),
            args.queries,
        )

        def recommend_in_process(i: int):
            row = int(ids[i % 64])
            home = by_sub.position(str(attributes[SUB][row]))
            rule = gender_rule(str(attributes["gender"][row]))
            return recommend(by_sub, "fixed_eps", catalogue.z[row], 10, home, None, rule, row)

        recommend_local = timed(recommend_in_process, args.queries)

        speedups = raw_speedups(catalogue, catalogue_meta, args.queries)
        speedups_1m = raw_speedups(synthetic, synthetic_meta, min(args.queries, 300))

        # 1M synthetic codes: a second generation, served after the first
        write_generation(
            store, metadata_model.version + 1000, synthetic, synthetic_meta, metadata_model.epsilon
        )
        search_1m = measure_size(
            "1m",
            suite,
            client,
            synthetic,
            synthetic_meta,
            metadata_model.version + 1000,
            args.queries,
        )
        client.close()

    def ratio(a, b):
        return round(float(np.percentile(a, 50) / np.percentile(b, 50)), 2)

    report.update(
        "search",
        {
            "catalogue": search_catalogue,
            "1m": search_1m,
            "speedup_vs_numpy": speedups["speedup_vs_numpy"],
            "speedup_vs_sklearn": speedups["speedup_vs_sklearn"],
            "raw_catalogue": speedups,
            "raw_1m": speedups_1m,
            "goals": {"catalogue_p99_ms": 5, "1m_p99_ms": 15},
            "notes": "Search: item-id queries, k=10, inside the query's own subCategory (the default scope), over "
            "loopback gRPC to RetrievalService; in_process_* is the same SearchIndex call without gRPC. Speedups: "
            "one fixed-ε query, FAISS in the query's partition vs a numpy scan and sklearn NearestNeighbors(brute) "
            "over all codes.",
        },
        command,
    )
    report.update(
        "decode_rpc",
        {**percentiles(decode_rpc), "in_process_p50_ms": round(float(np.percentile(decode_local, 50)), 3),
         "in_process_p99_ms": round(float(np.percentile(decode_local, 99)), 3),
         "grpc_overhead_ratio_p50": ratio(decode_rpc, decode_local), "goal_p99_ms": 15,
         "notes": "One catalogue code -> DecoderService.Decode -> model server -> PNG, against LoadedDecoder + PNG in-process."},
        command,
    )  # fmt: skip
    data = report.update(
        "recommend_rpc",
        {**percentiles(recommend_rpc), "in_process_p50_ms": round(float(np.percentile(recommend_local, 50)), 3),
         "in_process_p99_ms": round(float(np.percentile(recommend_local, 99)), 3),
         "grpc_overhead_ratio_p50": ratio(recommend_rpc, recommend_local), "goal_p99_ms": 20,
         "notes": "Item query, fixed-ε, k=10: the similar list in the query's subCategory plus one eq. 3 list per "
                  "other subCategory, with the gender rule (the defaults)."},
        command,
    )  # fmt: skip
    print({k: data[k] for k in ("search", "decode_rpc", "recommend_rpc")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
