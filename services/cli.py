"""The `atelier` command line: the model commands from atelier.cli plus the service clients.

encode, generations, similar, recommend and decode talk to the running services over gRPC and
send a bearer token (--token, --token-file, $ATELIER_TOKEN or $ATELIER_TOKEN_FILE); tokens
manages the tokens in Redis.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from atelier import cli as model_cli
from atelier.latent import RANKING_METHODS


def _store(args: argparse.Namespace):
    """The store at --redis, with REDIS_PASSWORD_FILE and the REDIS_TLS_* files applied."""
    from atelier.store import CodeStore
    from services.common.redisconf import with_secrets

    return CodeStore.from_url(with_secrets(args.redis))


def _encoder_client(args: argparse.Namespace):
    from services.common.client import Addresses, AtelierClient

    env = Addresses.from_env()
    return AtelierClient(
        Addresses(args.encoder or env.encoder, env.decoder, env.retrieval, env.recommender),
        timeout=args.timeout,
        token=_token(args),
    )


def _token(args: argparse.Namespace) -> str | None:
    from services.common.auth import client_token, read_token_file

    return client_token(args.token or read_token_file(args.token_file))


def cmd_encode(args: argparse.Namespace) -> int:
    """Submit a catalogue to the EncoderService and follow the job with a progress bar."""
    import grpc

    from atelier.v1 import common_pb2, encoder_pb2
    from services.common.client import follow_job

    version = args.version
    if version == "latest":
        from atelier.modelinfo import model_versions

        versions = model_versions(args.models)
        if not versions:
            print(f"error: no exported model versions under {args.models}", file=sys.stderr)
            return 2
        version = versions[-1]
    client = _encoder_client(args)
    try:
        if args.skip_if_served:
            served = client.list_generations().served_version or None
            if served is not None and (not version or served == version):
                print(f"generation {served} is already served; nothing to do")
                return 0
        request = encoder_pb2.SubmitCatalogueRequest(
            csv_path=str(args.catalogue.resolve()),
            image_dir=str(args.images.resolve()) if args.images else "",
            model_version=int(version),
        )
        job = client.encoder.SubmitCatalogue(request, timeout=120)
        print(f"job {job.job_id}: {job.total} items under model version {job.model_version}")
        job = follow_job(client.encoder, job, max_failures=10_000)
        for failure in job.failures:
            print(f"failed {failure.item_id}: {failure.reason}")
        print(f"{common_pb2.JobState.Name(job.state)}: {job.done} encoded, {job.failed} failed")
        if job.reason:
            print(f"reason: {job.reason}")
        if args.serve and job.state == common_pb2.JOB_STATE_SUCCEEDED and job.done:
            client.serve_generation(job.model_version)
            print(f"now serving model version {job.model_version}")
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 2
    finally:
        client.close()
    return 0 if job.state == common_pb2.JOB_STATE_SUCCEEDED else 1


def cmd_generations(args: argparse.Namespace) -> int:
    if args.action != "list" and args.version is None:
        print(f"error: `generations {args.action}` needs a version", file=sys.stderr)
        return 2
    if args.redis:
        return _generations_in_redis(args)

    def action() -> int:
        client = _encoder_client(args)
        try:
            if args.action == "list":
                for generation in client.list_generations().generations:
                    marker = " (served)" if generation.served else ""
                    print(f"version {generation.model_version}: {generation.items} items{marker}")
            elif args.action == "serve":
                client.serve_generation(args.version)
                print(f"now serving model version {args.version}")
            else:
                removed = client.remove_generation(args.version).removed_keys
                print(f"removed {removed} keys of version {args.version}")
        finally:
            client.close()
        return 0

    return _run_client(action)


def cmd_items(args: argparse.Namespace) -> int:
    """Live updates of a generation: upsert one item from a photo, or delete items by id."""
    from atelier.v1 import common_pb2, encoder_pb2

    def action() -> int:
        client = _encoder_client(args)
        try:
            if args.action == "delete":
                reply = client.encoder.DeleteItems(
                    encoder_pb2.DeleteItemsRequest(item_ids=args.ids, model_version=args.version),
                    timeout=client.timeout,
                )
                print(f"deleted {reply.deleted} from generation {reply.model_version}")
                for item_id in reply.not_found:
                    print(f"not found: {item_id}")
                return 0 if not reply.not_found else 1
            if len(args.ids) != 1 or args.image is None:
                print("error: `items upsert` takes one id and --image", file=sys.stderr)
                return 2
            item = common_pb2.Item(
                item_id=args.ids[0],
                sub_category=args.sub_category,
                master_category=args.master_category,
                article_type=args.article_type,
                gender=args.gender,
                colour=args.colour,
                name=args.name,
            )
            reply = client.encoder.UpsertItems(
                encoder_pb2.UpsertItemsRequest(
                    entries=[encoder_pb2.CatalogueEntry(item=item, image=args.image.read_bytes())],
                    model_version=args.version,
                ),
                timeout=client.timeout,
            )
            (outcome,) = reply.outcomes
            if not outcome.ok:
                print(f"failed {outcome.item_id}: {outcome.reason}", file=sys.stderr)
                return 1
            print(f"upserted {outcome.item_id} into generation {reply.model_version}")
            return 0
        finally:
            client.close()

    return _run_client(action)


def _generations_in_redis(args: argparse.Namespace) -> int:
    """Operator-only: straight to Redis, no service and no role check (whoever can reach Redis
    can change anything anyway)."""
    store = _store(args)
    if args.action == "list":
        served = store.served_version()
        for version in store.model_versions():
            marker = " (served)" if version == served else ""
            print(f"version {version}: {store.item_count(version)} items{marker}")
        return 0
    try:
        if args.action == "serve":
            store.serve(args.version)
            print(f"now serving model version {args.version}")
        else:
            print(f"removed {store.remove_generation(args.version)} keys of version {args.version}")
    except (KeyError, ValueError) as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    return 0


def cmd_tokens(args: argparse.Namespace) -> int:
    """Create, list and revoke tokens in Redis; init-secrets writes the compose secrets."""
    import redis

    from atelier.auth import Role, TokenStore
    from services.common.redisconf import with_secrets

    password_file = getattr(args, "redis_password_file", None)
    if password_file is not None:
        # First, with no Redis yet: compose's Redis starts with this password (and
        # REDIS_PASSWORD_FILE, read just below, usually names this very file).
        from services.common.secrets import ensure_redis_password

        print(f"redis-password: {ensure_redis_password(password_file)}")
    store = TokenStore.from_url(with_secrets(args.redis))
    try:
        if getattr(args, "wait", 0) > 0:
            _wait_for_redis(store.redis, args.wait)
        if args.action == "create":
            token = store.create(args.name, Role.parse(args.role))
            print(token)
            print(
                f"token {args.name!r} ({args.role}) created; it is shown only now, keep it safe",
                file=sys.stderr,
            )
        elif args.action == "list":
            import time

            for record in store.list():
                created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.created))
                print(f"{record.name:<24} {record.role.label:<7} created {created} UTC")
        elif args.action == "revoke":
            if not store.revoke(args.name):
                print(f"error: no token named {args.name!r}", file=sys.stderr)
                return 2
            print(f"revoked {args.name!r} (services may accept it for a few seconds more)")
        else:
            from services.common.secrets import DEFAULT_SECRETS, init_secrets

            wanted = dict(args.secret) if args.secret else DEFAULT_SECRETS
            for name, outcome in init_secrets(store, args.dir, wanted).items():
                print(f"{name}: {outcome}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"error: redis: {exc}", file=sys.stderr)
        return 2
    return 0


def _wait_for_redis(client, seconds: float) -> None:
    """Until Redis answers (compose starts init-secrets before Redis, which needs its password)."""
    import time

    import redis

    deadline = time.monotonic() + seconds
    while True:
        try:
            client.ping()
            return
        except redis.RedisError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(1.0)


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
        token=_token(args),
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
            f"  {rank:>3}. {item.item_id:>8}  {result.score:>10.4f}  {result.partition:<14} "
            f"{item.article_type:<16} {item.gender:<7} {item.name}"
        )


def _describe_category(category) -> str:
    if category.from_label:
        return f"{category.master_category}/{category.sub_category} (catalogue label)"
    return (
        f"{category.master_category}/{category.sub_category} "
        f"(predicted, confidence {category.confidence:.2f})"
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
        searched = ", ".join(reply.searched) or "the whole catalogue"
        print(f"query category: {_describe_category(reply.query_category)}")
        _print_items(
            f"{len(reply.results)} items like it in {searched} "
            f"(model version {reply.model_version}, {args.method}):",
            reply.results,
        )
        return 0

    return _run_client(action)


def cmd_recommend(args: argparse.Namespace) -> int:
    def action() -> int:
        reply = _client(args).recommend(
            _query(args),
            args.method,
            args.partition,
            args.k,
            args.targets.split(",") if args.targets else (),
            args.match_gender,
            args.gender or "",
        )
        print(f"query category: {_describe_category(reply.query_category)}")
        if reply.matched_gender:
            print(f"pairings matched to gender {reply.matched_gender} (--no-match-gender: off)")
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
                f"starting from item {start.item.item_id} "
                f"({start.item.sub_category}/{start.item.article_type}: {start.item.name})"
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


def _version(text: str) -> int | str:
    if text == "latest":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a version is a number or 'latest', got {text!r}"
        ) from None


def _add_client_arguments(parser: argparse.ArgumentParser, query: bool = True) -> None:
    for name in ("encoder", "decoder", "retrieval", "recommender"):
        parser.add_argument(
            f"--{name}", default=None, help=f"{name} address (default ${name.upper()}_ADDR)"
        )
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline per call, seconds")
    _add_token_arguments(parser)
    if query:
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--item", help="catalogue item id")
        source.add_argument("--image", type=Path, help="a product photo")
        source.add_argument("--code", help="a latent vector, comma-separated")
        parser.add_argument(
            "--method",
            default="fixed_eps",
            choices=RANKING_METHODS,
        )
        parser.add_argument("-k", type=int, default=10)


def _add_token_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--token",
        default=None,
        help="bearer token (default $ATELIER_TOKEN; prefer it or --token-file: a flag shows in ps)",
    )
    parser.add_argument(
        "--token-file", default=None, help="file holding the token (default $ATELIER_TOKEN_FILE)"
    )


def _secret(text: str) -> tuple[str, str]:
    name, sep, role = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"give a secret as NAME:ROLE, got {text!r}")
    return name, role


def add_service_commands(commands: argparse._SubParsersAction) -> None:
    encode = commands.add_parser(
        "encode", help="encode a catalogue through the queue (EncoderService)"
    )
    encode.add_argument("--catalogue", type=Path, required=True)
    encode.add_argument("--images", type=Path, default=None)
    encode.add_argument(
        "--version",
        type=_version,
        default=0,
        help="model version, or 'latest' for the newest under --models (default: the served one)",
    )
    encode.add_argument("--models", type=Path, default=Path(os.environ.get("MODELS_DIR", "models")))
    encode.add_argument("--encoder", default=None, help="encoder address (default $ENCODER_ADDR)")
    encode.add_argument("--timeout", type=float, default=120.0, help="deadline per call, seconds")
    _add_token_arguments(encode)
    encode.add_argument(
        "--serve", action="store_true", help="serve this generation once it is complete"
    )
    encode.add_argument(
        "--skip-if-served",
        action="store_true",
        help="do nothing if this version's generation is served (without --version: if any is)",
    )
    encode.set_defaults(handler=cmd_encode)

    generations = commands.add_parser(
        "generations", help="list, serve or remove generations of codes"
    )
    generations.add_argument("action", choices=("list", "serve", "remove"))
    generations.add_argument("version", type=int, nargs="?", default=None)
    generations.add_argument(
        "--encoder", default=None, help="encoder address (default $ENCODER_ADDR)"
    )
    generations.add_argument("--timeout", type=float, default=30.0)
    _add_token_arguments(generations)
    generations.add_argument(
        "--redis",
        default=None,
        help="operator only: change Redis directly, bypassing the services and their role checks",
    )
    generations.set_defaults(handler=cmd_generations)

    items = commands.add_parser(
        "items",
        help="live updates: upsert an item from its photo, or delete items (served generation)",
        description="An upsert replaces the item's whole record: give every label it keeps "
        "(one left out is stored empty, and its subCategory is then predicted from the photo).",
    )
    items.add_argument("action", choices=("upsert", "delete"))
    items.add_argument("ids", nargs="+", help="the item id (upsert) or ids (delete)")
    items.add_argument("--image", type=Path, default=None, help="upsert: the item's photo")
    for field in ("sub-category", "master-category", "article-type", "gender", "colour", "name"):
        items.add_argument(f"--{field}", default="", help="upsert: the item's label")
    items.add_argument("--version", type=int, default=0, help="model version (default: served)")
    items.add_argument("--encoder", default=None, help="encoder address (default $ENCODER_ADDR)")
    items.add_argument("--timeout", type=float, default=30.0)
    _add_token_arguments(items)
    items.set_defaults(handler=cmd_items)

    tokens = commands.add_parser(
        "tokens", help="manage bearer tokens (create, list, revoke) and the compose secrets"
    )
    tokens_commands = tokens.add_subparsers(dest="action", required=True)
    create = tokens_commands.add_parser("create", help="a new token, printed once")
    create.add_argument("name")
    create.add_argument("--role", required=True, choices=("reader", "writer", "admin"))
    tokens_commands.add_parser("list", help="every token's name, role and creation time")
    revoke = tokens_commands.add_parser("revoke", help="revoke a token by name")
    revoke.add_argument("name")
    init = tokens_commands.add_parser(
        "init-secrets",
        help="create the suite's tokens as 0400 files in --dir (idempotent: keeps live ones)",
    )
    init.add_argument("--dir", type=Path, required=True)
    init.add_argument(
        "--secret",
        type=_secret,
        action="append",
        default=[],
        metavar="NAME:ROLE",
        help="a token to keep in <dir>/NAME.token (repeatable; default: the compose set)",
    )
    init.add_argument(
        "--redis-password-file",
        type=Path,
        default=None,
        help="first, make sure this file holds a Redis password (generated once, 0400)",
    )
    init.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for Redis to answer first (compose starts it alongside Redis)",
    )
    for sub in tokens_commands.choices.values():
        sub.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    tokens.set_defaults(handler=cmd_tokens)

    similar = commands.add_parser(
        "similar", help="catalogue items most like an item, a photo or a code"
    )
    _add_client_arguments(similar)
    similar.add_argument(
        "--scope",
        default="sub_category",
        choices=("sub_category", "master_category", "catalogue", "cluster"),
        help="the query's own subCategory (default) or masterCategory, the whole catalogue, "
        "or its k-means cluster",
    )
    similar.add_argument(
        "--category", default=None, help="only items of this subCategory or masterCategory"
    )
    similar.add_argument("--nprobe", type=int, default=1, help="clusters to search (cluster scope)")
    similar.set_defaults(handler=cmd_similar)

    recommend = commands.add_parser(
        "recommend", help="complete the look: similar items plus pairings from other categories"
    )
    _add_client_arguments(recommend)
    recommend.add_argument(
        "--partition",
        default="sub_category",
        choices=("sub_category", "master_category", "kmeans"),
    )
    recommend.add_argument(
        "--targets", default=None, help="comma-separated categories to pair with (default: all)"
    )
    recommend.add_argument(
        "--match-gender",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pair only items whose gender suits the query's (default on)",
    )
    recommend.add_argument("--gender", default=None, help="the gender of a code or photo query")
    recommend.set_defaults(handler=cmd_recommend)

    decode = commands.add_parser(
        "decode", help="decode a code (or a random catalogue item's) to a PNG"
    )
    _add_client_arguments(decode, query=False)
    decode.add_argument(
        "--code", default=None, help="latent vector, comma-separated (default: RandomStart)"
    )
    decode.add_argument(
        "--category", default=None, help="RandomStart from this subCategory or masterCategory"
    )
    decode.add_argument("--seed", type=int, default=None)
    decode.add_argument(
        "--dimension", type=int, default=None, help="traverse this dimension instead"
    )
    decode.add_argument("--low", type=float, default=-3.0)
    decode.add_argument("--high", type=float, default=3.0)
    decode.add_argument("--steps", type=int, default=9)
    decode.add_argument("-o", "--output", type=Path, default=Path("decoded.png"))
    decode.set_defaults(handler=cmd_decode)

    from services.cli_personal import add_personalization_commands

    add_personalization_commands(commands)


def main(argv: list[str] | None = None) -> int:
    return model_cli.main(argv, model_cli.build_parser(add_service_commands))


if __name__ == "__main__":
    sys.exit(main())
