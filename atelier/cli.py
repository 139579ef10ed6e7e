"""The `atelier` command line: train, export, evaluate and demo the model."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
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


def cmd_encode(args: argparse.Namespace) -> int:
    """Submit a catalogue to the EncoderService and follow the job with a progress bar."""
    import time

    import grpc
    from tqdm import tqdm

    from atelier.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc

    with grpc.insecure_channel(args.encoder) as channel:
        stub = encoder_pb2_grpc.EncoderServiceStub(channel)
        request = encoder_pb2.SubmitCatalogueRequest(
            csv_path=str(args.catalogue.resolve()),
            image_dir=str(args.images.resolve()) if args.images else "",
            model_version=args.version,
        )
        try:
            job = stub.SubmitCatalogue(request, timeout=120)
        except grpc.RpcError as exc:
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 2
        print(f"job {job.job_id}: {job.total} items under model version {job.model_version}")
        with tqdm(total=job.total, unit="item", desc="encoding") as bar:
            while job.state not in (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_CANCELLED):
                time.sleep(0.5)
                job = stub.GetJob(
                    encoder_pb2.GetJobRequest(job_id=job.job_id, max_failures=50), timeout=10
                )
                bar.update(job.done + job.failed - bar.n)
                bar.set_postfix(
                    failed=job.failed,
                    rate=f"{job.items_per_second:.0f}/s",
                    eta=f"{job.eta_seconds:.0f}s",
                )
    for failure in job.failures:
        print(f"failed {failure.item_id}: {failure.reason}")
    print(f"{common_pb2.JobState.Name(job.state)}: {job.done} encoded, {job.failed} failed")
    if args.serve and job.state == common_pb2.JOB_STATE_SUCCEEDED:
        from atelier.store import CodeStore

        CodeStore.from_url(args.redis).serve(job.model_version)
        print(f"now serving model version {job.model_version}")
    return 0 if job.state == common_pb2.JOB_STATE_SUCCEEDED else 1


def cmd_generations(args: argparse.Namespace) -> int:
    from atelier.store import CodeStore

    store = CodeStore.from_url(args.redis)
    if args.action == "list":
        served = store.served_version()
        for version in store.model_versions():
            marker = " (served)" if version == served else ""
            print(f"version {version}: {store.item_count(version)} items{marker}")
    elif args.action == "serve":
        store.serve(args.version)
        print(f"now serving model version {args.version}")
    elif args.action == "remove":
        print(f"removed {store.remove_generation(args.version)} keys of version {args.version}")
    return 0


def _client(args: argparse.Namespace):
    from services.common.client import Addresses, AtelierClient

    env = Addresses.from_env()
    return AtelierClient(
        Addresses(
            encoder=args.encoder or env.encoder,
            decoder=args.decoder or env.decoder,
            retrieval=args.retrieval or env.retrieval,
            recommender=args.recommender or env.recommender,
        ),
        timeout=args.timeout,
    )


def _query(args: argparse.Namespace):
    from services.common.client import make_query

    image = args.image.read_bytes() if args.image else None
    vector = [float(v) for v in args.code.split(",")] if args.code else None
    return make_query(item_id=args.item, image=image, vector=vector)


def _print_items(title: str, items) -> None:
    print(title)
    for rank, result in enumerate(items, 1):
        item = result.item
        print(
            f"  {rank:>3}. {item.item_id:>8}  {result.score:>10.4f}  cluster {result.cluster}  "
            f"{item.category}/{item.article_type}  {item.name}"
        )


def _run_client(action) -> int:
    import grpc

    try:
        return action()
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def cmd_similar(args: argparse.Namespace) -> int:
    def action() -> int:
        reply = _client(args).search(
            _query(args), args.method, args.scope, args.k, args.category or "", args.nprobe
        )
        _print_items(
            f"{len(reply.results)} items like it (query cluster {reply.query_cluster}, "
            f"model version {reply.model_version}, {args.method}):",
            reply.results,
        )
        return 0

    return _run_client(action)


def cmd_recommend(args: argparse.Namespace) -> int:
    def action() -> int:
        reply = _client(args).recommend(_query(args), args.method, args.partition, args.k)
        _print_items(f"similar, in {reply.similar.partition}:", reply.similar.items)
        for pairing in reply.pairings:
            _print_items(
                f"pairs from {pairing.partition} (z + centre_j − centre_i):", pairing.items
            )
        return 0

    return _run_client(action)


def cmd_decode(args: argparse.Namespace) -> int:
    def action() -> int:
        client = _client(args)
        if args.code:
            vector = [float(v) for v in args.code.split(",")]
        else:
            start = client.random_start(args.category or "", args.seed)
            vector = list(start.code.mu)
            print(
                f"starting from item {start.item.item_id} ({start.item.category}/{start.item.article_type})"
            )
            print("code: " + ",".join(f"{v:.4f}" for v in vector))
        if args.dimension is None:
            reply = client.decode([vector])
            args.output.write_bytes(reply.png[0])
        else:
            import io

            from PIL import Image

            reply = client.traverse(vector, args.dimension, args.low, args.high, args.steps)
            frames = [Image.open(io.BytesIO(png)) for png in reply.png]
            strip = Image.new("RGB", (sum(f.width for f in frames), frames[0].height), "white")
            for index, frame in enumerate(frames):
                strip.paste(frame, (index * frames[0].width, 0))
            strip.save(args.output)
        print(
            f"wrote {args.output} ({reply.width}x{reply.height} per image, model version {reply.model_version})"
        )
        return 0

    return _run_client(action)


def _add_client_arguments(parser: argparse.ArgumentParser, query: bool = True) -> None:
    for name in ("encoder", "decoder", "retrieval", "recommender"):
        parser.add_argument(
            f"--{name}", default=None, help=f"{name} address (default ${name.upper()}_ADDR)"
        )
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline per call, seconds")
    if query:
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--item", help="catalogue item id")
        source.add_argument("--image", type=Path, help="a product photo")
        source.add_argument("--code", help="a latent vector, comma-separated")
        parser.add_argument(
            "--method",
            default="fixed_eps",
            choices=("fixed_eps", "loglik", "mu_l2", "cosine", "cityblock"),
        )
        parser.add_argument("-k", type=int, default=10)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atelier", description=__doc__)
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
    train.add_argument("--prior-scale", type=float, default=4.0)
    train.add_argument("--article-weight", type=float, default=10.0)
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

    encode = commands.add_parser(
        "encode", help="encode a catalogue through the queue (EncoderService)"
    )
    encode.add_argument("--catalogue", type=Path, required=True)
    encode.add_argument("--images", type=Path, default=None)
    encode.add_argument(
        "--version", type=int, default=0, help="model version (default: the served one)"
    )
    encode.add_argument("--encoder", default=os.environ.get("ENCODER_ADDR", "127.0.0.1:50051"))
    encode.add_argument(
        "--serve", action="store_true", help="serve this generation once it is complete"
    )
    encode.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    encode.set_defaults(handler=cmd_encode)

    generations = commands.add_parser(
        "generations", help="list, serve or remove generations of codes"
    )
    generations.add_argument("action", choices=("list", "serve", "remove"))
    generations.add_argument("version", type=int, nargs="?", default=0)
    generations.add_argument(
        "--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    generations.set_defaults(handler=cmd_generations)

    similar = commands.add_parser(
        "similar", help="catalogue items most like an item, a photo or a code"
    )
    _add_client_arguments(similar)
    similar.add_argument("--scope", default="cluster", choices=("cluster", "catalogue"))
    similar.add_argument("--category", default=None, help="only items of this category")
    similar.add_argument("--nprobe", type=int, default=1, help="clusters to search (cluster scope)")
    similar.set_defaults(handler=cmd_similar)

    recommend = commands.add_parser(
        "recommend", help="similar items plus pairings from the other clusters"
    )
    _add_client_arguments(recommend)
    recommend.add_argument("--partition", default="kmeans", choices=("kmeans", "category"))
    recommend.set_defaults(handler=cmd_recommend)

    decode = commands.add_parser(
        "decode", help="decode a code (or a random catalogue item's) to a PNG"
    )
    _add_client_arguments(decode, query=False)
    decode.add_argument(
        "--code", default=None, help="latent vector, comma-separated (default: RandomStart)"
    )
    decode.add_argument("--category", default=None, help="RandomStart from this category")
    decode.add_argument("--seed", type=int, default=None)
    decode.add_argument(
        "--dimension", type=int, default=None, help="traverse this dimension instead"
    )
    decode.add_argument("--low", type=float, default=-3.0)
    decode.add_argument("--high", type=float, default=3.0)
    decode.add_argument("--steps", type=int, default=9)
    decode.add_argument("-o", "--output", type=Path, default=Path("decoded.png"))
    decode.set_defaults(handler=cmd_decode)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
