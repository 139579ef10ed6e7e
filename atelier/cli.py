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
        "--catalogue", type=Path, required=True, help="styles.csv or id,image_path,category CSV"
    )
    parser.add_argument(
        "--images", type=Path, default=None, help="image folder (default: <csv dir>/images)"
    )
    parser.add_argument(
        "--families",
        type=_families,
        default="Footwear,Bags,Eyewear",
        help="comma-separated families to use, or 'all' (default: the paper's three)",
    )
    parser.add_argument(
        "--duplicates", type=Path, default=None, help="group,id CSV of byte-duplicates"
    )
    parser.add_argument("--test-fraction", type=float, default=0.15)
    parser.add_argument("--split-seed", type=int, default=0)


def _prepare(args: argparse.Namespace, size: tuple[int, int]):
    from atelier.catalogue import prepare_dataset

    families = args.families if not isinstance(args.families, str) else _families(args.families)
    dataset = prepare_dataset(
        args.catalogue,
        args.images,
        families,
        args.duplicates,
        size,
        args.test_fraction,
        args.split_seed,
    )
    for item_id, reason in dataset.catalogue.report.failures.items():
        log.warning("skipped %s: %s", item_id, reason)
    log.info("data: %s", {k: v for k, v in dataset.description.items() if k != "skipped_ids"})
    return dataset


def cmd_train(args: argparse.Namespace) -> int:
    from atelier.modelstore import export_model
    from atelier.training import TrainConfig, train
    from atelier.vae import ModelConfig

    dataset = _prepare(args, args.size)
    images, families, article_types = dataset.split(test=False)
    guided = args.guided and args.kind == "vae"
    model_config = ModelConfig(
        image_size=args.size,
        latent_dim=args.latent_dim,
        beta=args.beta,
        variational=args.kind == "vae",
        prior_scale=args.prior_scale if guided else 0.0,
        families=tuple(sorted(set(families))) if guided else (),
        article_types=tuple(sorted(set(article_types))) if guided and args.article_weight else (),
        article_weight=args.article_weight if guided else 0.0,
    )
    train_config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
    )
    result = train(model_config, train_config, images, families, article_types, args.run_dir)
    summary = {
        "run_dir": str(args.run_dir),
        "epochs": train_config.epochs,
        "epochs_this_run": result.epochs_run,
        "seconds_this_run": round(result.seconds, 1),
        "train_seconds_total": result.history[-1]["seconds"] if result.history else 0.0,
        "final": result.history[-1] if result.history else {},
        "data": {k: v for k, v in dataset.description.items() if k != "skipped_ids"},
        "data_hash": dataset.fingerprint,
    }
    (Path(args.run_dir) / "summary.json").write_text(json.dumps(summary, indent=1))
    if args.export_dir:
        metadata = export_model(
            result.model,
            args.export_dir,
            args.version,
            dataset.fingerprint,
            extra={
                "training": {
                    "epochs": train_config.epochs,
                    "seed": train_config.seed,
                    "train_seconds": summary["train_seconds_total"],
                    "final_losses": summary["final"],
                    "data": summary["data"],
                    "command": " ".join(["atelier", *sys.argv[1:]]),
                }
            },
        )
        log.info("exported version %d to %s", metadata.version, args.export_dir)
    print(json.dumps(summary, indent=1))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from atelier.evaluation import EvaluationInputs, run_evaluation

    inputs = EvaluationInputs(
        models_dir=args.models,
        version=args.version,
        ae_run_dir=args.ae_run,
        plain_vae_run_dir=args.plain_vae_run,
        docs_dir=args.docs,
        queries_per_family=args.queries_per_family,
        seed=args.seed,
        command=" ".join(["atelier", *sys.argv[1:]]),
    )
    from atelier.modelstore import read_metadata

    size = read_metadata(args.models, args.version).image_size
    dataset = _prepare(args, size)
    results = run_evaluation(dataset, inputs)
    print(json.dumps({k: results[k] for k in ("reconstruction", "clustering")}, indent=1))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from atelier.demo import run_demo

    summary = run_demo(args.catalogue, args.models, args.out, args.item)
    print(json.dumps(summary, indent=1))
    print(
        f"\nOpen {args.out / 'tour.png'}: row 1 the item and its decoded code, rows 2-3 its nearest "
        "neighbours (fixed-ε, log-likelihood), then one row per other cluster (eq. 3)."
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
    train.add_argument("--latent-dim", type=int, default=16)
    train.add_argument("--beta", type=float, default=1.0)
    train.add_argument(
        "--guided",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="family prior means and an articleType head (default on; --no-guided for the paper's plain VAE)",
    )
    train.add_argument(
        "--prior-scale", type=float, default=10.0, help="family prior mean's distance from 0"
    )
    train.add_argument(
        "--article-weight", type=float, default=30.0, help="weight of the articleType loss"
    )
    train.add_argument("--epochs", type=int, default=40)
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--learning-rate", type=float, default=1e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--run-dir", type=Path, required=True, help="checkpoints go here; rerun to resume"
    )
    train.add_argument(
        "--export-dir", type=Path, default=None, help="export to <dir>/<name>/<version>/"
    )
    train.add_argument("--version", type=int, default=1)
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser(
        "evaluate", help="reconstruction, clustering and retrieval metrics"
    )
    _add_data_arguments(evaluate)
    evaluate.add_argument("--models", type=Path, default=Path("models"))
    evaluate.add_argument("--version", type=int, default=None)
    evaluate.add_argument("--ae-run", type=Path, default=None, help="run dir of the AE baseline")
    evaluate.add_argument(
        "--plain-vae-run", type=Path, default=None, help="run dir of the unguided VAE"
    )
    evaluate.add_argument("--docs", type=Path, default=Path("docs"))
    evaluate.add_argument("--queries-per-family", type=int, default=500)
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
