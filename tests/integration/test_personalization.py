"""PersonalizationService over real gRPC, Redis, Celery workers and the model server: events,
CSV imports (one whose worker is killed with kill -9), a training job on a simulated history, and
"for you" rankings, re-ranking and designs. The interactions are synthetic (atelier/simulate.py)."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from atelier.auth import Role, TokenStore
from atelier.catalogue import read_catalogue_csv
from atelier.interactions import InteractionLog
from atelier.simulate import SimulatorParams, simulate, write_csv
from atelier.store import CodeStore
from atelier.v1 import (
    common_pb2,
    encoder_pb2,
    personalization_pb2_grpc,
)
from atelier.v1 import (
    personalization_pb2 as pb,
)
from services.common.launcher import PERSONALIZATION_WORKERS, local_suite

pytestmark = pytest.mark.integration
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def suite(tmp_path_factory, models_dir, tiny_csv):
    work = tmp_path_factory.mktemp("personal")
    env = {
        "CATALOGUE_ROOTS": os.pathsep.join([str(tmp_path_factory.getbasetemp()), str(FIXTURES)]),
        # A killed importer's batch comes back within seconds; small batches, so a kill lands
        # mid-file.
        "IMPORT_VISIBILITY_TIMEOUT_SECONDS": "3",
        "IMPORT_BATCH_ROWS": "50",
    }
    with local_suite(work, models_dir, workers=1, extra_env=env) as suite:
        job = suite.encode(encoder_pb2.SubmitCatalogueRequest(csv_path=str(tiny_csv)))
        CodeStore.from_url(suite.env["REDIS_URL"]).serve(job.model_version)
        suite.start_service("recommender")
        suite.start_personalization()
        # /healthz needs the decoder and retrieval, which this suite does not run: the page will do.
        suite.start_gateway(extra_env={"GATEWAY_IMAGE_ROOT": str(tiny_csv.parent)}, ready_path="/")
        yield suite


@pytest.fixture(scope="module")
def stub(suite):
    with suite.channel("personalization") as channel:
        yield personalization_pb2_grpc.PersonalizationServiceStub(channel)


@pytest.fixture(scope="module")
def history(tiny_csv, tmp_path_factory):
    """A seeded simulated history over the tiny catalogue, as an importer CSV."""
    items = read_catalogue_csv(tiny_csv)
    simulation = simulate(items, SimulatorParams(n_users=150, seed=4, start_time=1.7e9))
    path = tmp_path_factory.mktemp("history") / "history.csv"
    write_csv(simulation.events, path)
    return path, simulation


def _wait(stub, job_id: str, timeout: float = 300.0) -> pb.PersonalizationJob:
    deadline = time.monotonic() + timeout
    while True:
        job = stub.GetPersonalizationJob(
            pb.GetPersonalizationJobRequest(job_id=job_id, max_failures=100), timeout=5
        )
        if job.state in (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def _reader(suite, name: str) -> str:
    return TokenStore.from_url(suite.env["REDIS_URL"]).create(name, Role.READER)


def test_events_are_accepted_rejected_and_deduplicated_per_event(stub, tiny_csv):
    item = read_catalogue_csv(tiny_csv)[0].item_id
    now = time.time()
    event = pb.Interaction(
        event_id="evt-1",
        user_id="alice",
        item_id=item,
        kind=pb.INTERACTION_KIND_PURCHASE,
        timestamp_unix=now - 60,
    )
    bad = [
        pb.Interaction(event_id="evt-2", user_id="alice", item_id="no-such-item",
                       kind=pb.INTERACTION_KIND_VIEW, timestamp_unix=now),
        pb.Interaction(event_id="evt-3", user_id="alice", item_id=item,
                       kind=pb.INTERACTION_KIND_VIEW, timestamp_unix=now + 86400),
        pb.Interaction(event_id="evt-4", user_id="", item_id=item,
                       kind=pb.INTERACTION_KIND_VIEW, timestamp_unix=now),
        pb.Interaction(event_id="evt-5", user_id="alice", item_id=item, timestamp_unix=now),
    ]  # fmt: skip
    reply = stub.RecordInteractions(
        pb.RecordInteractionsRequest(events=[event, *bad, event]), timeout=10
    )
    outcomes = [(r.event_id, r.outcome) for r in reply.results]
    assert outcomes == [
        ("evt-1", pb.EVENT_OUTCOME_ACCEPTED),
        ("evt-2", pb.EVENT_OUTCOME_REJECTED),
        ("evt-3", pb.EVENT_OUTCOME_REJECTED),
        ("evt-4", pb.EVENT_OUTCOME_REJECTED),
        ("evt-5", pb.EVENT_OUTCOME_REJECTED),
        ("evt-1", pb.EVENT_OUTCOME_DUPLICATE),
    ]
    reasons = [r.reason for r in reply.results]
    assert "unknown item 'no-such-item'" in reasons[1]
    assert "future" in reasons[2]
    assert "user_id is empty" in reasons[3]
    assert "kind is missing" in reasons[4]
    assert (reply.accepted, reply.duplicates, reply.rejected) == (1, 1, 4)
    # a retried call records nothing again
    again = stub.RecordInteractions(pb.RecordInteractionsRequest(events=[event]), timeout=10)
    assert again.results[0].outcome == pb.EVENT_OUTCOME_DUPLICATE
    with pytest.raises(grpc.RpcError) as empty:
        stub.RecordInteractions(pb.RecordInteractionsRequest(), timeout=10)
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_csv_import_reports_bad_rows_and_refuses_paths_outside_the_roots(
    stub, tiny_csv, tmp_path
):
    items = [i.item_id for i in read_catalogue_csv(tiny_csv)[:3]]
    path = tmp_path / "small.csv"
    path.write_text(
        "user_id,item_id,timestamp,kind\n"
        f"bob,{items[0]},1700000000,view\n"
        f"bob,{items[1]},2023-11-14T22:13:20Z,purchase\n"
        "bob,not-an-item,1700000000,view\n"
        f"bob,{items[2]},next tuesday,view\n"
        f"bob,{items[2]},1700000000,like\n"
    )
    job = _wait(stub, stub.ImportInteractions(
        pb.ImportInteractionsRequest(csv_path=str(path)), timeout=30).job_id)  # fmt: skip
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED
    assert job.kind == pb.PERSONALIZATION_JOB_KIND_IMPORT
    assert (job.total, job.done, job.failed) == (5, 2, 3)
    failures = {f.line: f.reason for f in job.failures}
    assert set(failures) == {4, 5, 6}
    assert "unknown item" in failures[4] and "timestamp" in failures[5]
    assert "unknown kind" in failures[6]
    for outside, code in (
        ("/etc/passwd", grpc.StatusCode.PERMISSION_DENIED),
        (str(tmp_path / "missing.csv"), grpc.StatusCode.NOT_FOUND),
        ("relative.csv", grpc.StatusCode.INVALID_ARGUMENT),
        (str(tiny_csv), grpc.StatusCode.INVALID_ARGUMENT),  # a catalogue, not interactions
    ):
        with pytest.raises(grpc.RpcError) as refused:
            stub.ImportInteractions(pb.ImportInteractionsRequest(csv_path=outside), timeout=30)
        assert refused.value.code() == code, outside


def test_killing_the_importer_with_kill_9_loses_no_event(suite, stub, history):
    path, simulation = history
    log = InteractionLog(CodeStore.from_url(suite.env["REDIS_URL"]).redis)
    before = log.count()
    job_id = stub.ImportInteractions(
        pb.ImportInteractionsRequest(csv_path=str(path)), timeout=30
    ).job_id
    deadline = time.monotonic() + 120
    while True:  # kill the worker once the import is under way
        job = stub.GetPersonalizationJob(pb.GetPersonalizationJobRequest(job_id=job_id), timeout=5)
        if job.done > 0:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert job.state == common_pb2.JOB_STATE_RUNNING, "the import finished before the kill"
    suite.processes["importer"].kill_tree()
    app, queue = PERSONALIZATION_WORKERS["importer"]
    suite.start_worker("importer2", app=app, queues=queue)
    job = _wait(stub, job_id)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.reason
    events = simulation.events
    assert (job.total, job.done, job.failed) == (len(events), len(events), 0)
    assert log.count() - before == len(events)
    imported = Counter((e.user_id, e.item_id, e.kind) for e in list(log.read())[before:])
    assert imported == Counter((e.user_id, e.item_id, e.kind) for e in events)


def test_a_reader_cannot_train_and_an_unservable_kind_is_refused(suite, stub):
    with suite.channel("personalization", token=_reader(suite, "personal-reader")) as channel:
        reader = personalization_pb2_grpc.PersonalizationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as denied:
            reader.TrainPreferenceModel(pb.TrainPreferenceModelRequest(), timeout=10)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as denied:
            reader.RecordInteractions(pb.RecordInteractionsRequest(), timeout=10)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as refused:
        stub.TrainPreferenceModel(pb.TrainPreferenceModelRequest(model_kind="bpr_mf"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def trained(stub, history):
    """A model trained by the Celery job on the imported history (after the import test)."""
    job = stub.TrainPreferenceModel(pb.TrainPreferenceModelRequest(epochs=8, seed=1), timeout=30)
    assert job.kind == pb.PERSONALIZATION_JOB_KIND_TRAIN
    job = _wait(stub, job.job_id, timeout=600)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.reason
    deadline = time.monotonic() + 60
    while True:  # the service loads the new model in the background
        try:
            users = stub.ListUsers(pb.ListUsersRequest(limit=5), timeout=5)
            if users.preference_version == job.preference_version:
                return job, users
        except grpc.RpcError as exc:
            assert exc.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE)
        assert time.monotonic() < deadline
        time.sleep(0.3)


def test_training_stores_a_served_model_version(stub, trained, history):
    job, users = trained
    models = stub.ListPreferenceModels(pb.ListPreferenceModelsRequest(), timeout=5)
    assert models.served_version == job.preference_version
    (info,) = [m for m in models.models if m.preference_version == job.preference_version]
    assert info.model_kind == "vbpr_codes" and info.served
    assert info.users >= 100 and info.interactions > 0
    assert len(users.users) == 5
    counts = [u.interactions for u in users.users]
    assert counts == sorted(counts, reverse=True)


def test_rank_for_a_known_user_and_a_new_user(stub, trained):
    _, users = trained
    user = users.users[0].user_id
    known = stub.RankForUser(pb.RankForUserRequest(user_id=user, k=10), timeout=5)
    assert known.fallback == pb.FALLBACK_NONE and len(known.items) == 10
    scores = [s.score for s in known.items]
    assert scores == sorted(scores, reverse=True)
    new = stub.RankForUser(pb.RankForUserRequest(user_id="nobody-yet", k=10), timeout=5)
    assert new.fallback == pb.FALLBACK_POPULARITY and len(new.items) == 10
    assert [s.item.item_id for s in new.items] != [s.item.item_id for s in known.items]
    # within a category: only its items, still best first
    category = known.items[0].item.sub_category
    within = stub.RankForUser(
        pb.RankForUserRequest(user_id=user, k=5, category=category), timeout=5
    )
    assert within.items and all(s.item.sub_category == category for s in within.items)
    with pytest.raises(grpc.RpcError) as unknown:
        stub.RankForUser(pb.RankForUserRequest(user_id=user, category="Spaceships"), timeout=5)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_re_ranking_a_given_list(stub, trained):
    _, users = trained
    user = users.users[0].user_id
    full = stub.RankForUser(pb.RankForUserRequest(user_id=user, k=30), timeout=5)
    ids = [s.item.item_id for s in full.items]
    shuffled = [ids[i] for i in np.random.default_rng(0).permutation(len(ids))][:12]
    reply = stub.RankForUser(
        pb.RankForUserRequest(user_id=user, candidate_item_ids=[*shuffled, "ghost"]), timeout=5
    )
    assert list(reply.unknown_item_ids) == ["ghost"]
    assert [s.item.item_id for s in reply.items] == [i for i in ids if i in shuffled]


def test_similar_for_user_re_ranks_the_recommenders_lists(stub, trained):
    _, users = trained
    user = users.users[0].user_id
    item = stub.RankForUser(pb.RankForUserRequest(user_id=user, k=1), timeout=5).items[0]
    reply = stub.SimilarForUser(
        pb.SimilarForUserRequest(user_id=user, item_id=item.item.item_id, k=4), timeout=10
    )
    assert reply.fallback == pb.FALLBACK_NONE
    assert 0 < len(reply.similar.items) <= 4
    for listed in (reply.similar, *reply.pairings):
        scores = [s.score for s in listed.items]
        assert scores == sorted(scores, reverse=True)
    with pytest.raises(grpc.RpcError) as missing:
        stub.SimilarForUser(pb.SimilarForUserRequest(user_id=user, item_id="ghost"), timeout=10)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_design_for_user_returns_a_png_its_code_and_scores(stub, trained):
    _, users = trained
    user = users.users[0].user_id
    category = stub.RankForUser(pb.RankForUserRequest(user_id=user, k=1), timeout=5).items[0]
    reply = stub.DesignForUser(
        pb.DesignForUserRequest(user_id=user, category=category.item.sub_category, nearest=3),
        timeout=30,
    )
    image = Image.open(io.BytesIO(reply.png))
    assert image.format == "PNG" and image.size[0] > 0
    assert len(reply.code.values) > 0 and np.isfinite(reply.code.values).all()
    assert reply.score >= reply.start_score
    assert reply.best_item.item.sub_category == category.item.sub_category
    assert np.isfinite(reply.best_item_score)
    assert reply.max_abs_sigma <= 3.0 + 1e-4
    assert len(reply.nearest) == 3
    distances = [-s.score for s in reply.nearest]
    assert distances == sorted(distances)
    with pytest.raises(grpc.RpcError) as cold:
        stub.DesignForUser(
            pb.DesignForUserRequest(user_id="nobody-yet", category=category.item.sub_category),
            timeout=30,
        )
    assert cold.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def _http(suite, path: str, body: dict | None = None, token: str | None = None):
    request = urllib.request.Request(
        f"http://{suite.env['GATEWAY_ADDR']}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token or suite.token}"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_the_studio_routes_for_you_and_design_for_me(suite, trained):
    users = _http(suite, "/api/users")
    assert users["preference_version"] == trained[0].preference_version
    user = users["users"][0]["user_id"]
    ranked = _http(suite, "/api/for-you", {"user_id": user, "k": 4})
    assert ranked["fallback"] == "none" and len(ranked["items"]) == 4
    new = _http(suite, "/api/for-you", {"user_id": "nobody-yet", "k": 4})
    assert new["fallback"] == "popularity"
    category = ranked["items"][0]["sub_category"]
    design = _http(suite, "/api/design-for-me", {"user_id": user, "category": category})
    assert base64.b64decode(design["png_base64"]).startswith(b"\x89PNG")
    assert design["score"] >= design["start_score"] and design["nearest"]
    with pytest.raises(urllib.error.HTTPError) as bad:
        _http(suite, "/api/for-you", {"k": 4})
    assert bad.value.code == 400


def _cli(suite, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PERSONALIZATION_ADDR": suite.env["PERSONALIZATION_ADDR"],
        "ATELIER_TOKEN": suite.token or "",
    }
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_the_cli_lists_ranks_and_designs_for_a_user(suite, trained, tmp_path):
    job, users = trained
    listed = _cli(suite, "preferences", "list")
    assert listed.returncode == 0, listed.stderr
    assert f"* {job.preference_version:>4}  vbpr_codes" in listed.stdout
    user = users.users[0].user_id
    ranked = _cli(suite, "for-you", "--user", user, "-k", "3")
    assert ranked.returncode == 0, ranked.stderr
    assert f"preference model {job.preference_version}" in ranked.stdout
    assert (
        len([line for line in ranked.stdout.splitlines() if line.strip()[:2] in ("1.", "2.", "3.")])
        == 3
    )
    new = _cli(suite, "for-you", "--user", "nobody-yet", "-k", "3")
    assert "popularity: no history" in new.stdout
    design = tmp_path / "design.png"
    made = _cli(
        suite, "design-for", "--user", user, "-o", str(design), "--item", users.users[0].user_id
    )
    assert made.returncode == 2 and "NOT_FOUND" in made.stderr  # a user id is not an item id
    first_item = ranked.stdout.splitlines()[1].split()[1]
    made = _cli(suite, "design-for", "--user", user, "--item", first_item, "-o", str(design))
    assert made.returncode == 0, made.stderr
    assert design.read_bytes().startswith(b"\x89PNG") and "nearest catalogue items" in made.stdout
    refused = _cli(suite, "for-you", "--user", user, "--token", "not-a-token")
    assert refused.returncode == 2 and "UNAUTHENTICATED" in refused.stderr
