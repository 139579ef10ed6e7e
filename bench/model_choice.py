"""Measure the latent-size and objective choices behind the default model, on one short schedule.

    python -m bench.model_choice --catalogue ../shared/data/fashion-product-small/styles.csv

Trains each candidate with `atelier train` for the same few epochs (the default model's recipe
otherwise), then scores every one on the same whole-catalogue test queries with the evaluation's
own functions: reconstruction PSNR, subCategory accuracy of the category probe, and articleType
mAP@10 (fixed-ε, natural sample). Writes docs/model_choice.json and docs/model_choice.md.
Short runs rank the candidates; they are not the default model's final figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from atelier.catalogue import SplitSpec, prepare_dataset
from atelier.evaluation import (
    classification_scores,
    codes_from_run,
    decode_with,
    natural_sample,
    reconstruction_scores,
    retrieval_grid,
)
from atelier.latent import draw_epsilon
from atelier.taxonomy import MIN_SUBCATEGORY_IMAGES

log = logging.getLogger("bench.model_choice")
CANDIDATES = {
    "latent 16": ["--latent-dim", "16"],
    "latent 32": ["--latent-dim", "32"],
    "latent 64 (default)": ["--latent-dim", "64"],
    "latent 64, plain VAE (no category prior)": ["--latent-dim", "64", "--no-category-prior"],
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--catalogue", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--runs", type=Path, default=Path("runs/model-choice"))
    parser.add_argument("--queries", type=int, default=1500)
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    parser.add_argument("--only", nargs="*", default=None, help="candidate names to run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    dataset = prepare_dataset(args.catalogue, split=SplitSpec(), progress=False)
    images = dataset.catalogue.images
    is_test = dataset.is_test
    subs = dataset.labels("sub_category")
    articles = dataset.labels("article_type")
    names, counts = np.unique(subs, return_counts=True)
    known = np.isin(subs, names[counts >= MIN_SUBCATEGORY_IMAGES])
    queries = natural_sample(is_test, args.queries, 0)
    path = args.docs / "model_choice.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results.setdefault("candidates", {})
    for name, flags in CANDIDATES.items():
        if args.only and name not in args.only:
            continue
        run_dir = args.runs / re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        command = [
            "atelier", "train", "--catalogue", str(args.catalogue), "--epochs", str(args.epochs),
            "--run-dir", str(run_dir), *flags,
        ]  # fmt: skip
        log.info("training %s: %s", name, " ".join(command))
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "services.cli", *command[1:]], check=True)
        summary = json.loads((run_dir / "summary.json").read_text())
        saved = json.loads((run_dir / "config.json").read_text())["model"]
        codes, model = codes_from_run(run_dir, images, draw_epsilon(saved["latent_dim"], 0))
        recon = reconstruction_scores(images[is_test], decode_with(model, codes.mu[is_test]))
        train, test = ~is_test & known, is_test & known
        probe = classification_scores(codes.mu[train], subs[train], codes.mu[test], subs[test])
        grid = retrieval_grid(
            codes, queries, {"article_type": articles}, {"full": None}, ("fixed_eps",), (10,)
        )
        results["candidates"][name] = {
            "command": " ".join(command),
            "latent_dim": saved["latent_dim"],
            "psnr": recon["psnr"],
            "subcategory_accuracy": probe["accuracy"],
            "subcategory_macro_f1": probe["macro_f1"],
            "article_type_map10": grid["article_type"]["full"]["fixed_eps"]["10"],
            "seconds_per_epoch": summary["train_seconds_total"] / args.epochs,
            "wall_seconds": round(time.perf_counter() - started, 1),
        }
        log.info("%s: %s", name, results["candidates"][name])
        results.update(
            {
                "epochs": args.epochs,
                "queries": len(queries),
                "command": "python -m bench.model_choice " + " ".join(sys.argv[1:]),
                "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
        args.docs.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))
        (args.docs / "model_choice.md").write_text(render(results))
    return 0


def render(results: dict) -> str:
    lines = [
        "# Choosing the latent size and objective",
        "",
        f"Written by `{results['command']}`. Each candidate trained for {results['epochs']} epochs "
        "on the whole catalogue's training split with the default recipe otherwise, then scored "
        f"on the same test items ({results['queries']} natural-sample queries for mAP). Short "
        "runs rank the candidates; the default model's own figures are in results.md.",
        "",
        "| candidate | latent | PSNR (dB) | subCategory accuracy | macro F1 | articleType mAP@10 (fixed-ε) | s / epoch |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, c in results["candidates"].items():
        lines.append(
            f"| {name} | {c['latent_dim']} | {c['psnr']:.2f} | {c['subcategory_accuracy']:.3f} | "
            f"{c['subcategory_macro_f1']:.3f} | {c['article_type_map10']:.3f} | "
            f"{c['seconds_per_epoch']:.0f} |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
