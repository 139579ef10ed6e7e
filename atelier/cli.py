"""The model half of the `atelier` command line: train, export, evaluate, demo (no gRPC here).

The service commands (encode, generations, similar, recommend, decode) are added by services/cli.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("atelier")


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size must look like 80x64 (HxW), got {text!r}") from exc
    return height, width


def _families(text: str) -> tuple[str, ...] | None:
    return None if text.lower() == "all" else tuple(v.strip() for v in text.split(",") if v.strip())


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--catalogue", type=Path, required=True, help="styles.csv or id,image_path[,category] CSV"
    )
    parser.add_argument(
        "--images", type=Path, default=None, help="image folder (default: <csv dir>/images)"
    )
    parser.add_argument(
        "--families",
        type=_families,
        default=None,
        help="the paper's protocol: keep only these comma-separated families "
        "(e.g. Footwear,Bags,Eyewear) and stratify the split by family; default: the whole catalogue",
    )
    parser.add_argument(
        "--duplicates", type=Path, default=None, help="group,id CSV of byte-duplicates"
    )
    parser.add_argument("--test-fraction", type=float, default=0.15)
    parser.add_argument("--split-seed", type=int, default=0)


def split_from_args(args: argparse.Namespace):
    from atelier.catalogue import SplitSpec

    return SplitSpec(
        test_fraction=args.test_fraction,
        seed=args.split_seed,
        stratify="family" if args.families else "sub_category",
        families=args.families,
    )


def _prepare(args: argparse.Namespace, size: tuple[int, int], split=None):
    from atelier.catalogue import prepare_dataset

    dataset = prepare_dataset(
        args.catalogue, args.images, split or split_from_args(args), args.duplicates, size
    )
    log.info("data: %s", {k: v for k, v in dataset.description.items() if k != "skipped_ids"})
    return dataset


def cmd_train(args: argparse.Namespace) -> int:
    import numpy as np

    from atelier.modelinfo import ModelConfig
    from atelier.modelstore import export_model
    from atelier.taxonomy import Taxonomy
    from atelier.training import TrainConfig, train

    dataset = _prepare(args, args.size)
    images = dataset.images(test=False)
    taxonomy = None
    components = None
    if args.category_prior and args.kind == "vae":
        taxonomy = Taxonomy.fit(
            dataset.labels("master_category"),
            dataset.labels("sub_category"),
            dataset.labels("article_type"),
            ~dataset.is_test,
            args.min_subcategory_images,
            args.min_component_images,
        )
        components = taxonomy.component_index(
            dataset.labels("sub_category", test=False), dataset.labels("article_type", test=False)
        )
        keep = components >= 0
        images, components = images[keep], components[keep]
        for sub, reason in taxonomy.left_out.items():
            log.info("left out of training: %s (%s)", sub, reason)
    model_config = ModelConfig(
        image_size=args.size,
        latent_dim=args.latent_dim,
        filters=tuple(args.filters),
        dense_units=args.dense_units,
        convs_per_stage=args.convs_per_stage,
        beta=args.beta,
        variational=args.kind == "vae",
        components=taxonomy.components if taxonomy else (),
        class_weight=args.class_weight if taxonomy else 0.0,
        prior_init_scale=args.prior_init_scale,
    )
    train_config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        schedule=args.schedule,
        seed=args.seed,
        flip=args.flip,
    )
    result = train(model_config, train_config, images, components, args.run_dir)
    summary = {
        "run_dir": str(args.run_dir),
        "epochs": train_config.epochs,
        "epochs_this_run": result.epochs_run,
        "seconds_this_run": round(result.seconds, 1),
        "train_seconds_total": result.history[-1]["seconds"] if result.history else 0.0,
        "final": result.history[-1] if result.history else {},
        "data": {k: v for k, v in dataset.description.items() if k != "skipped_ids"},
        "data_hash": dataset.fingerprint,
        "trained_on": len(images),
        "left_out": taxonomy.left_out if taxonomy else {},
        "command": " ".join(["atelier", *sys.argv[1:]]),
    }
    (Path(args.run_dir) / "summary.json").write_text(json.dumps(summary, indent=1))
    if args.export_dir:
        extra: dict = {
            "split": dataset.split.to_dict(),
            "training": {
                "epochs": train_config.epochs,
                "seed": train_config.seed,
                "flip": train_config.flip,
                "batch_size": train_config.batch_size,
                "learning_rate": train_config.learning_rate,
                "schedule": train_config.schedule,
                "train_seconds": summary["train_seconds_total"],
                "final_losses": summary["final"],
                "data": summary["data"],
                "trained_on": summary["trained_on"],
                "left_out": summary["left_out"],
                "command": summary["command"],
                "hardware": _hardware(),
            },
        }
        if result.model.prior_means is not None:
            extra["prior_means"] = np.round(result.model.prior_means.numpy(), 6).tolist()
        metadata = export_model(
            result.model, args.export_dir, args.version, dataset.fingerprint, extra=extra
        )
        log.info("exported version %d to %s", metadata.version, args.export_dir)
    print(json.dumps(summary, indent=1))
    return 0


def _hardware() -> str:
    import os

    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return f"{len(gpus)} GPU" if gpus else f"CPU, {os.cpu_count()} cores"


def _baseline(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"give a baseline as NAME=RUN_DIR, got {text!r}")
    return name, Path(path)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from atelier.evaluation import (
        EvaluationInputs,
        SplitMismatch,
        evaluate_paper_protocol,
        evaluate_whole_catalogue,
        write_results,
    )
    from atelier.modelinfo import read_metadata

    inputs = EvaluationInputs(
        models_dir=args.models,
        version=args.version,
        docs_dir=args.docs,
        baseline_runs=dict(args.baseline),
        queries=args.queries,
        queries_per_family=args.queries_per_family,
        pairing_queries=args.pairing_queries,
        seed=args.seed,
        command=" ".join(["atelier", *sys.argv[1:]]),
    )
    size = read_metadata(args.models, args.version).image_size
    dataset = _prepare(args, size)
    paper = bool(args.families)
    try:
        results = (evaluate_paper_protocol if paper else evaluate_whole_catalogue)(dataset, inputs)
    except SplitMismatch as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_results("paper_protocol" if paper else "whole_catalogue", results, args.docs)
    keys = ("reconstruction", "clustering") if paper else (
        "article_type_map10", "subcategory_accuracy", "subcategory_macro_f1", "psnr", "pairing"
    )  # fmt: skip
    print(json.dumps({k: results[k] for k in keys}, indent=1))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from atelier.demo import run_demo

    summary = run_demo(args.catalogue, args.models, args.out, args.item)
    print(json.dumps(summary, indent=1))
    print(
        f"\nOpen {args.out / 'tour.png'}: row 1 the item and its decoded code, rows 2-3 its nearest "
        "neighbours in its subCategory (fixed-ε, log-likelihood), then one complete-the-look row "
        "per other subCategory (eq. 3)."
    )
    return 0


def build_parser(
    add_more: Callable[[argparse._SubParsersAction], None] | None = None,
) -> argparse.ArgumentParser:
    """The model commands; `add_more` lets services/cli.py add the service clients."""
    parser = argparse.ArgumentParser(
        prog="atelier",
        description="Atelier: design, find and pair products in a VAE's latent space.",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train", help="train a VAE (or the plain AE baseline) and export it"
    )
    _add_data_arguments(train)
    train.add_argument("--kind", choices=("vae", "ae"), default="vae")
    train.add_argument(
        "--size", type=_size, default=(80, 64), help="model input HxW (default 80x64)"
    )
    train.add_argument("--latent-dim", type=int, default=64)
    train.add_argument(
        "--filters", type=int, nargs=3, default=[32, 64, 128], help="conv filters per stage"
    )
    train.add_argument("--dense-units", type=int, default=256)
    train.add_argument(
        "--convs-per-stage", type=int, default=0, help="extra 3x3 convolutions per stage"
    )
    train.add_argument(
        "--prior-init-scale", type=float, default=0.1, help="spread of the initial prior means"
    )
    train.add_argument("--beta", type=float, default=1.0)
    train.add_argument(
        "--category-prior",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="learned per-category prior means (label-supervised; default on). "
        "--no-category-prior trains the paper's plain VAE",
    )
    train.add_argument(
        "--class-weight", type=float, default=500.0, help="weight of the category posterior's loss"
    )
    train.add_argument("--min-subcategory-images", type=int, default=50)
    train.add_argument("--min-component-images", type=int, default=20)
    train.add_argument("--epochs", type=int, default=40)
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--learning-rate", type=float, default=1e-3)
    train.add_argument(
        "--schedule",
        choices=("cosine", "constant"),
        default="cosine",
        help="learning-rate schedule (default: cosine decay to 5%% over the run)",
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="mirror training images left-right at random (default on)",
    )
    train.add_argument(
        "--run-dir", type=Path, required=True, help="checkpoints go here; rerun to resume"
    )
    train.add_argument(
        "--export-dir", type=Path, default=None, help="export to <dir>/<name>/<version>/"
    )
    train.add_argument("--version", type=int, default=1)
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser(
        "evaluate",
        help="whole-catalogue metrics, or the paper's protocol with --families; writes docs/results.*",
    )
    _add_data_arguments(evaluate)
    evaluate.add_argument("--models", type=Path, default=Path("models"))
    evaluate.add_argument("--version", type=int, default=None)
    evaluate.add_argument(
        "--baseline",
        type=_baseline,
        action="append",
        default=[],
        metavar="NAME=RUN_DIR",
        help="a trained baseline to evaluate on the same queries (repeatable), e.g. plain_vae=runs/plain-vae",
    )
    evaluate.add_argument("--docs", type=Path, default=Path("docs"))
    evaluate.add_argument("--queries", type=int, default=3000, help="natural sample size")
    evaluate.add_argument("--queries-per-family", type=int, default=500)
    evaluate.add_argument("--pairing-queries", type=int, default=1000)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.set_defaults(handler=cmd_evaluate)

    demo = commands.add_parser("demo", help="design, find and pair on the shipped sample catalogue")
    demo.add_argument("--catalogue", type=Path, default=Path("data/sample-catalogue/styles.csv"))
    demo.add_argument("--models", type=Path, default=Path("models"))
    demo.add_argument(
        "--item", default=None, help="catalogue id to start from (default: a random one)"
    )
    demo.add_argument("--out", type=Path, default=Path("demo-output"))
    demo.set_defaults(handler=cmd_demo)

    if add_more:
        add_more(commands)
    return parser


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    args = (parser or build_parser()).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
