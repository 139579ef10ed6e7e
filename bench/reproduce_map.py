"""Reproduce the retrieval mAP table of docs/results.json through the running services, over gRPC.

    python -m bench.reproduce_map [--results docs/results.json]

Encodes the evaluation catalogue through the real queue (EncoderService, Celery, model server),
serves it, asks RetrievalService.Search for every evaluation query (item-id queries, k=500) for
every method and scope, scores the answers with the same mAP code, and writes the comparison into
docs/results.json (`service_reproduction`) and a section of docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from atelier.catalogue import prepare_dataset
from atelier.evaluation import KS, METHODS, SCOPES, render_markdown, sample_queries
from atelier.metrics import mean_average_precision
from atelier.store import CodeStore
from atelier.v1 import common_pb2, encoder_pb2
from services.common.client import Addresses, AtelierClient, follow_job, make_query
from services.common.launcher import local_suite

log = logging.getLogger("bench.reproduce_map")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=Path, default=Path("docs/results.json"))
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout
    )
    results = json.loads(args.results.read_text())
    data = results["data"]
    families = None if data["families"] == "all" else tuple(data["families"])
    dataset = prepare_dataset(
        Path(data["csv"]),
        None,
        families,
        None,
        tuple(data["image_size"]),
        data["test_fraction"],
        data["split_seed"],
    )
    catalogue = dataset.catalogue
    fam, art = catalogue.categories, catalogue.article_types
    queries = sample_queries(fam, dataset.is_test, results["queries_per_family"], results["seed"])
    if {f: int((fam[queries] == f).sum()) for f in sorted(set(fam.tolist()))} != results["queries"]:
        raise SystemExit(
            "the evaluation's queries could not be rebuilt; rerun the evaluation first"
        )

    with (
        tempfile.TemporaryDirectory() as tmp,
        local_suite(Path(tmp), args.models, workers=args.workers) as suite,
    ):
        client = AtelierClient(
            Addresses(
                *(
                    suite.env[f"{n.upper()}_ADDR"]
                    for n in ("encoder", "decoder", "retrieval", "recommender")
                )
            ),
            timeout=60,
        )
        entries = [
            encoder_pb2.CatalogueEntry(
                item=common_pb2.Item(
                    item_id=i.item_id,
                    category=i.category,
                    article_type=i.article_type,
                    image_ref=str(i.image_path.resolve()),
                )
            )
            for i in catalogue.items
        ]
        job = client.encoder.SubmitCatalogue(
            encoder_pb2.SubmitCatalogueRequest(
                entries=encoder_pb2.CatalogueEntries(entries=entries),
                model_version=results["model"]["version"],
            ),
            timeout=300,
        )
        job = follow_job(client.encoder, job, "encoding through the queue", timeout=3600)
        if job.failed:
            raise SystemExit(f"{job.failed} items failed to encode")
        CodeStore.from_url(suite.env["REDIS_URL"]).serve(job.model_version)
        suite.start_service("retrieval", timeout=600)

        totals = {
            "family": {f: int((fam == f).sum()) for f in set(fam.tolist())},
            "article_type": {a: int((art == a).sum()) for a in set(art.tolist())},
        }
        grid: dict = {}
        row_of = {item_id: row for row, item_id in enumerate(catalogue.ids)}
        for method in METHODS:
            for scope in SCOPES:
                ranked: dict[str, list[np.ndarray]] = {"family": [], "article_type": []}
                for q in tqdm(queries, desc=f"{method}/{scope}", unit="query", leave=False):
                    reply = client.search(
                        make_query(item_id=catalogue.ids[q]),
                        method,
                        "cluster" if scope == "cluster" else "catalogue",
                        500,
                    )
                    rows = np.array([row_of[r.item.item_id] for r in reply.results], dtype=int)
                    ranked["family"].append(fam[rows] == fam[q])
                    ranked["article_type"].append(art[rows] == art[q])
                for relevance in ("family", "article_type"):
                    labels = fam if relevance == "family" else art
                    relevant = [totals[relevance][labels[q]] - 1 for q in queries]
                    grid.setdefault(relevance, {}).setdefault(scope, {})[method] = (
                        mean_average_precision(ranked[relevance], relevant, KS)
                    )
        client.close()

    differences = [
        abs(grid[r][s][m][k] - results["retrieval"][r][s][m][k])
        for r in grid
        for s in SCOPES
        for m in METHODS
        for k in map(str, KS)
    ]
    reproduction = {
        "command": "python -m bench.reproduce_map " + " ".join(sys.argv[1:]),
        "path": "EncoderService.SubmitCatalogue -> Celery workers -> model server -> Redis -> RetrievalService.Search (gRPC)",
        "queries": len(queries),
        "retrieval": grid,
        "max_abs_difference": max(differences),
        "identical_to_3_decimals": bool(max(differences) < 5e-4),
    }
    results["service_reproduction"] = reproduction
    args.results.write_text(json.dumps(results, indent=1))
    args.results.with_suffix(".md").write_text(render_markdown(results))
    print(json.dumps({k: v for k, v in reproduction.items() if k != "retrieval"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
