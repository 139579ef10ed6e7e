"""Reproduce the whole-catalogue retrieval figures of docs/results.json through the running services.

    python -m bench.reproduce_map [--results docs/results.json]

Encodes the evaluation catalogue through the real queue (EncoderService, Celery, model server),
serves it, asks RetrievalService.Search for every natural-sample query of the evaluation (item
queries over the whole catalogue, and in the item's own subCategory) for every method, scores
the answers with the same mAP code, and writes the comparison into docs/results.json
(`service_reproduction`) and docs/results.md.
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

from atelier.catalogue import SplitSpec, prepare_dataset
from atelier.evaluation import METHODS, natural_sample
from atelier.metrics import mean_average_precision
from atelier.results_markdown import render_markdown
from atelier.store import CodeStore
from atelier.v1 import common_pb2, encoder_pb2
from services.common.client import Addresses, AtelierClient, follow_job, make_query
from services.common.launcher import local_suite

log = logging.getLogger("bench.reproduce_map")
KS = (10, 50)
SCOPES = {"full": "catalogue", "own_sub_category": "sub_category"}


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
    everything = json.loads(args.results.read_text())
    results = everything["whole_catalogue"]
    data = results["data"]
    dataset = prepare_dataset(
        Path(data["csv"]),
        split=SplitSpec.from_dict(data["split"]),
        size=tuple(data["image_size"]),
        progress=False,
    )
    if dataset.fingerprint != data["data_hash"]:
        raise SystemExit("the evaluation's catalogue has changed; rerun the evaluation first")
    catalogue = dataset.catalogue
    labels = {
        "article_type": dataset.labels("article_type"),
        "sub_category": dataset.labels("sub_category"),
    }
    queries = natural_sample(
        dataset.is_test, results["queries"]["count"], results["queries"]["seed"]
    )
    version = results["model"]["version"]

    with (
        tempfile.TemporaryDirectory() as tmp,
        local_suite(
            Path(tmp),
            args.models,
            workers=args.workers,
            # The encoder reads images only below its roots: the catalogue's folder.
            extra_env={"CATALOGUE_ROOTS": str(Path(data["csv"]).resolve().parent)},
        ) as suite,
    ):
        client = AtelierClient(
            Addresses(
                *(
                    suite.env[f"{n.upper()}_ADDR"]
                    for n in ("encoder", "decoder", "retrieval", "recommender")
                )
            ),
            timeout=60,
            token=suite.token or "",
        )
        entries = [
            encoder_pb2.CatalogueEntry(
                item=common_pb2.Item(
                    item_id=i.item_id, image_ref=str(i.image_path.resolve()), **i.metadata()
                )
            )
            for i in catalogue.items
        ]
        job = client.encoder.SubmitCatalogue(
            encoder_pb2.SubmitCatalogueRequest(
                entries=encoder_pb2.CatalogueEntries(entries=entries), model_version=version
            ),
            timeout=300,
        )
        job = follow_job(client.encoder, job, "encoding through the queue", timeout=3600)
        if job.failed:
            raise SystemExit(f"{job.failed} items failed to encode")
        CodeStore.from_url(suite.env["REDIS_URL"]).serve(job.model_version)
        suite.start_service("retrieval", timeout=600)

        totals = {
            name: dict(zip(*np.unique(values, return_counts=True), strict=True))
            for name, values in labels.items()
        }
        grid: dict = {}
        row_of = {item_id: row for row, item_id in enumerate(catalogue.ids)}
        for method in METHODS:
            for scope, service_scope in SCOPES.items():
                ranked: dict[str, list[np.ndarray]] = {name: [] for name in labels}
                for q in tqdm(queries, desc=f"{method}/{scope}", unit="query", leave=False):
                    reply = client.search(
                        make_query(item_id=catalogue.ids[q]), method, service_scope, max(KS)
                    )
                    rows = np.array([row_of[r.item.item_id] for r in reply.results], dtype=int)
                    for name, values in labels.items():
                        ranked[name].append(values[rows] == values[q])
                for name, values in labels.items():
                    if scope == "own_sub_category" and name == "sub_category":
                        continue  # searching the item's own subCategory makes this 1 by construction
                    relevant = [int(totals[name][values[q]]) - 1 for q in queries]
                    grid.setdefault(name, {}).setdefault(scope, {})[method] = (
                        mean_average_precision(ranked[name], relevant, KS)
                    )
        client.close()

    evaluated = results["retrieval"]["vae"]
    differences = [
        abs(grid[r][s][m][str(k)] - evaluated[r][s][m][str(k)])
        for r in grid
        for s in grid[r]
        for m in grid[r][s]
        for k in KS
    ]
    reproduction = {
        "command": "python -m bench.reproduce_map " + " ".join(sys.argv[1:]),
        "path": "EncoderService.SubmitCatalogue -> Celery workers -> model server -> Redis -> "
        "RetrievalService.Search (gRPC)",
        "queries": len(queries),
        "k": max(KS),
        "ks": list(KS),
        "retrieval": grid,
        "max_abs_difference": max(differences),
    }
    everything["service_reproduction"] = reproduction
    args.results.write_text(json.dumps(everything, indent=1))
    args.results.with_suffix(".md").write_text(render_markdown(everything))
    print(json.dumps({k: v for k, v in reproduction.items() if k != "retrieval"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
