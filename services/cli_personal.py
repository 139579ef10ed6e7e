"""The CLI's personalisation commands (PersonalizationService): import a retailer's interaction
log, train and serve preference models, rank for a user and design for a user.

    atelier interactions import --csv /catalogue/history.csv
    atelier preferences train [--epochs N] [--seed S] | list | serve VERSION
    atelier for-you --user U [-k 10] [--category Shoes] [--items a,b,c]
    atelier design-for --user U [--category Shoes | --item ID] [-o design.png]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from services import cli


def _stub(args: argparse.Namespace):
    from atelier.v1 import personalization_pb2_grpc
    from services.common.auth import with_token
    from services.common.tls import make_channel

    address = args.personalization or os.environ.get("PERSONALIZATION_ADDR", "127.0.0.1:50055")
    channel = with_token(make_channel(address), cli._token(args))
    return personalization_pb2_grpc.PersonalizationServiceStub(channel)


def _follow(stub, job, what: str, timeout: float):
    """Poll a personalisation job to its end with a progress bar; returns the finished job."""
    from tqdm import tqdm

    from atelier.v1 import common_pb2
    from atelier.v1 import personalization_pb2 as pb

    finished = (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED)
    with tqdm(total=job.total or None, desc=what, unit="row") as bar:
        while job.state not in finished:
            time.sleep(0.5)
            request = pb.GetPersonalizationJobRequest(job_id=job.job_id, max_failures=20)
            job = stub.GetPersonalizationJob(request, timeout=timeout)
            bar.total = job.total or None
            bar.update(job.done + job.failed - bar.n)
    for failure in job.failures:
        print(f"  line {failure.line}: {failure.reason}")
    if job.state == common_pb2.JOB_STATE_FAILED:
        print(f"job {job.job_id} failed: {job.reason}", file=sys.stderr)
    return job


def cmd_interactions(args: argparse.Namespace) -> int:
    from atelier.v1 import common_pb2
    from atelier.v1 import personalization_pb2 as pb

    def action() -> int:
        stub = _stub(args)
        request = pb.ImportInteractionsRequest(csv_path=str(args.csv.resolve()))
        job = _follow(
            stub, stub.ImportInteractions(request, timeout=args.timeout), "importing", args.timeout
        )
        print(
            f"job {job.job_id}: {job.done} events recorded, {job.duplicates} already there, "
            f"{job.failed} rows refused"
        )
        return 0 if job.state == common_pb2.JOB_STATE_SUCCEEDED else 1

    return cli._run_client(action)


def cmd_preferences(args: argparse.Namespace) -> int:
    from atelier.v1 import common_pb2
    from atelier.v1 import personalization_pb2 as pb

    def action() -> int:
        stub = _stub(args)
        if args.action == "train":
            request = pb.TrainPreferenceModelRequest(epochs=args.epochs, seed=args.seed)
            job = _follow(
                stub,
                stub.TrainPreferenceModel(request, timeout=args.timeout),
                "training",
                args.timeout,
            )
            if job.state != common_pb2.JOB_STATE_SUCCEEDED:
                return 1
            served = f"kept unserved: {job.reason}" if job.reason else "served"
            print(f"preference model {job.preference_version} trained; {served}")
        elif args.action == "serve":
            request = pb.ServePreferenceModelRequest(preference_version=args.version)
            stub.ServePreferenceModel(request, timeout=args.timeout)
            print(f"preference model {args.version} is served (the service loads it now)")
        else:
            reply = stub.ListPreferenceModels(
                pb.ListPreferenceModelsRequest(), timeout=args.timeout
            )
            for model in reply.models:
                print(
                    f"{'*' if model.served else ' '} {model.preference_version:>4}  "
                    f"{model.model_kind:<11} codes v{model.model_version}  {model.users} users, "
                    f"{model.items} items, {model.interactions} interactions  "
                    f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(model.trained_unix))}"
                )
            if not reply.models:
                print("no preference model yet: `atelier preferences train`")
        return 0

    return cli._run_client(action)


def cmd_for_you(args: argparse.Namespace) -> int:
    from atelier.v1 import personalization_pb2 as pb

    def action() -> int:
        request = pb.RankForUserRequest(
            user_id=args.user,
            k=args.k,
            category=args.category or "",
            candidate_item_ids=args.items.split(",") if args.items else [],
        )
        reply = _stub(args).RankForUser(request, timeout=args.timeout)
        how = (
            "popularity: no history for this user"
            if reply.fallback == pb.FALLBACK_POPULARITY
            else f"preference model {reply.preference_version}"
        )
        cli._print_items(f"for {args.user} ({how}):", reply.items)
        if reply.unknown_item_ids:
            print(f"not in the catalogue: {', '.join(reply.unknown_item_ids)}")
        return 0

    return cli._run_client(action)


def cmd_design_for(args: argparse.Namespace) -> int:
    from atelier.v1 import personalization_pb2 as pb

    def action() -> int:
        request = pb.DesignForUserRequest(user_id=args.user, steps=args.steps)
        if args.item:
            request.item_id = args.item
        else:
            request.category = args.category or ""
        reply = _stub(args).DesignForUser(request, timeout=args.timeout)
        args.output.write_bytes(reply.png)
        print(
            f"wrote {args.output}: a {reply.category} designed for {args.user}, preference "
            f"{reply.score:.3f} (started at {reply.start_score:.3f}; the best catalogue item "
            f"{reply.best_item.item.item_id} scores {reply.best_item_score:.3f}), at most "
            f"{reply.max_abs_sigma:.2f}σ of its category's spread from the category's mean"
        )
        cli._print_items("nearest catalogue items:", reply.nearest)
        return 0

    return cli._run_client(action)


def _add_arguments(parser: argparse.ArgumentParser, timeout: float = 10.0) -> None:
    parser.add_argument(
        "--personalization",
        default=None,
        help="personalization address (default $PERSONALIZATION_ADDR, else 127.0.0.1:50055)",
    )
    parser.add_argument("--timeout", type=float, default=timeout, help="deadline per call, seconds")
    cli._add_token_arguments(parser)


def add_personalization_commands(commands: argparse._SubParsersAction) -> None:
    interactions = commands.add_parser(
        "interactions", help="import an interaction log CSV (user_id,item_id,timestamp[,kind])"
    )
    interactions.add_argument("action", choices=("import",))
    interactions.add_argument("--csv", type=Path, required=True, help="inside the catalogue roots")
    _add_arguments(interactions, timeout=30.0)
    interactions.set_defaults(handler=cmd_interactions)

    preferences = commands.add_parser(
        "preferences", help="train, list and serve preference models (VBPR over the codes)"
    )
    preferences.add_argument("action", choices=("train", "list", "serve"))
    preferences.add_argument("version", type=int, nargs="?", default=0, help="for serve")
    preferences.add_argument("--epochs", type=int, default=0, help="0: the model's default")
    preferences.add_argument("--seed", type=int, default=0)
    _add_arguments(preferences, timeout=30.0)
    preferences.set_defaults(handler=cmd_preferences)

    for_you = commands.add_parser("for-you", help="a user's top items (RankForUser)")
    for_you.add_argument("--user", required=True)
    for_you.add_argument("-k", type=int, default=10)
    for_you.add_argument("--category", default=None, help="only this subCategory or masterCategory")
    for_you.add_argument("--items", default=None, help="re-rank these item ids (comma-separated)")
    _add_arguments(for_you)
    for_you.set_defaults(handler=cmd_for_you)

    design = commands.add_parser("design-for", help="design a new item for a user (DesignForUser)")
    design.add_argument("--user", required=True)
    start = design.add_mutually_exclusive_group()
    start.add_argument("--category", default=None, help="start from this category's centre")
    start.add_argument("--item", default=None, help="start from this item's code")
    design.add_argument("--steps", type=int, default=0, help="gradient steps (0: the default)")
    design.add_argument("-o", "--output", type=Path, default=Path("design.png"))
    _add_arguments(design, timeout=30.0)
    design.set_defaults(handler=cmd_design_for)
