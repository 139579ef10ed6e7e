"""Live updates through the real services: UpsertItems and DeleteItems on the served generation
reach a running retrieval replica (approximate index) and recommender through the change stream,
with no rebuild; exact answers equal a brute-force scan of what the store holds now; a deleted
item never comes back; a replica started afterwards agrees with the one that followed along."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest

from atelier.store import CodeStore
from atelier.v1 import (
    common_pb2,
    encoder_pb2,
    encoder_pb2_grpc,
    recommender_pb2,
    recommender_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)
from services.common.launcher import local_suite

pytestmark = pytest.mark.integration
VERSION = 1


@pytest.fixture(scope="module")
def live_suite(tmp_path_factory, two_version_models, tiny_csv):
    work = tmp_path_factory.mktemp("live-suite")
    env = {"KMEANS_K": "0", "INDEX_KIND": "ivf", "NPROBE": "2"}
    with local_suite(work, two_version_models, workers=1, extra_env=env) as suite:
        suite.encode(
            encoder_pb2.SubmitCatalogueRequest(csv_path=str(tiny_csv), model_version=VERSION),
            timeout=180,
        )
        CodeStore.from_url(suite.env["REDIS_URL"]).serve(VERSION)
        for name in ("retrieval", "recommender"):
            suite.start_service(name)
        yield suite


@pytest.fixture(scope="module")
def stubs(live_suite):
    channels = {name: live_suite.channel(name) for name in ("encoder", "retrieval", "recommender")}
    yield (
        encoder_pb2_grpc.EncoderServiceStub(channels["encoder"]),
        retrieval_pb2_grpc.RetrievalServiceStub(channels["retrieval"]),
        recommender_pb2_grpc.RecommenderServiceStub(channels["recommender"]),
    )
    for channel in channels.values():
        channel.close()


@pytest.fixture()
def store(live_suite) -> CodeStore:
    return CodeStore.from_url(live_suite.env["REDIS_URL"])


def by_vector(search, vector: np.ndarray, k: int = 10, exact: bool = False):
    return search(
        retrieval_pb2.SearchRequest(
            query=common_pb2.Query(vector=common_pb2.LatentVector(values=vector.tolist())),
            method=common_pb2.RANKING_METHOD_FIXED_EPS,
            scope=retrieval_pb2.SEARCH_SCOPE_CATALOGUE,
            k=k,
            exact=exact,
        ),
        timeout=10,
    )


def on_top(results, item_id: str) -> bool:
    """Among the best-scored results (a photo that is also in the catalogue ties with it)."""
    return any(r.item.item_id == item_id and r.score == results[0].score for r in results)


def eventually(condition, timeout: float = 10.0) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "the change never became visible"
        time.sleep(0.02)
    return time.monotonic() - started


def entry(tiny_images, item_id: str, photo: str, sub: str = "Topwear", master: str = "Apparel"):
    return encoder_pb2.CatalogueEntry(
        item=common_pb2.Item(
            item_id=item_id, sub_category=sub, master_category=master, gender="Men"
        ),
        image=(tiny_images / f"{photo}.jpg").read_bytes(),
    )


def brute_force_ids(store: CodeStore, query: np.ndarray, k: int) -> tuple[list[str], np.ndarray]:
    """The store's live items, nearest first by fixed-ε distance, ties by item id."""
    matrix = store.load_codes(VERSION)
    distances = np.sqrt(((matrix.z.astype(np.float64) - query) ** 2).sum(axis=1))
    order = np.lexsort((np.asarray(matrix.item_ids), distances))[:k]
    return [matrix.item_ids[i] for i in order], -distances[order]


def test_upserted_items_are_searchable_without_a_rebuild(stubs, store, tiny_images):
    encoder, retrieval, _ = stubs
    reply = encoder.UpsertItems(
        encoder_pb2.UpsertItemsRequest(
            entries=[entry(tiny_images, "live-1", "1164"), entry(tiny_images, "live-2", "1603")]
        ),
        timeout=30,
    )
    assert [(o.item_id, o.ok, o.reason) for o in reply.outcomes] == [
        ("live-1", True, ""),
        ("live-2", True, ""),
    ]
    assert reply.model_version == VERSION and reply.change_sequence >= 2
    code = store.item(VERSION, "live-1").z.astype(np.float64)
    eventually(lambda: on_top(by_vector(retrieval.Search, code).results, "live-1"))
    # Found by its id too (it lives in the replica's delta, not its base).
    found = retrieval.Search(
        retrieval_pb2.SearchRequest(query=common_pb2.Query(item_id="live-2"), k=5), timeout=10
    )
    assert "live-2" not in [r.item.item_id for r in found.results]
    assert found.query_category.sub_category == "Topwear"


def test_exact_answers_equal_a_scan_of_the_store_after_changes(stubs, store, tiny_images):
    encoder, retrieval, _ = stubs
    ids = store.item_ids(VERSION)
    replaced, deleted = ids[3], ids[7]
    encoder.UpsertItems(
        encoder_pb2.UpsertItemsRequest(entries=[entry(tiny_images, replaced, "1806", "Sandal")]),
        timeout=30,
    )
    assert encoder.DeleteItems(
        encoder_pb2.DeleteItemsRequest(item_ids=[deleted, "no-such-item"]), timeout=10
    ).not_found == ["no-such-item"]
    moved = store.item(VERSION, replaced).z.astype(np.float64)
    eventually(lambda: on_top(by_vector(retrieval.Search, moved).results, replaced))
    rng = np.random.default_rng(0)
    matrix = store.load_codes(VERSION)
    for row in rng.choice(len(matrix.item_ids), 12, replace=False):
        query = matrix.z[row].astype(np.float64) + rng.normal(0, 0.05, matrix.z.shape[1])
        answer = by_vector(retrieval.Search, query, k=20, exact=True)
        expected_ids, expected_scores = brute_force_ids(store, query, 20)
        assert [r.item.item_id for r in answer.results] == expected_ids
        assert np.allclose([r.score for r in answer.results], expected_scores, rtol=1e-6)
        assert deleted not in expected_ids
    with pytest.raises(grpc.RpcError) as raised:
        retrieval.Search(
            retrieval_pb2.SearchRequest(query=common_pb2.Query(item_id=deleted), k=5), timeout=10
        )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_deleted_items_never_come_back_in_recommendations(stubs, store):
    encoder, retrieval, recommender = stubs
    ids = store.item_ids(VERSION)
    victim = ids[0]
    code = store.item(VERSION, victim).z.astype(np.float64)
    encoder.DeleteItems(encoder_pb2.DeleteItemsRequest(item_ids=[victim]), timeout=10)
    eventually(
        lambda: victim not in [r.item.item_id for r in by_vector(retrieval.Search, code).results]
    )
    look = recommender.Recommend(
        recommender_pb2.RecommendRequest(
            query=common_pb2.Query(vector=common_pb2.LatentVector(values=code.tolist())),
            k=50,
            exact=True,
        ),
        timeout=10,
    )
    listed = [i.item.item_id for i in look.similar.items] + [
        i.item.item_id for p in look.pairings for i in p.items
    ]
    assert listed and victim not in listed


def test_a_replica_started_after_the_changes_agrees(live_suite, store):
    live_suite.processes["retrieval"].stop()
    live_suite.start_service("retrieval")
    with live_suite.channel("retrieval") as channel:
        restarted = retrieval_pb2_grpc.RetrievalServiceStub(channel)
        matrix = store.load_codes(VERSION)
        for row in range(0, len(matrix.item_ids), 37):
            query = matrix.z[row].astype(np.float64)
            fresh = by_vector(restarted.Search, query, k=20, exact=True)
            assert [r.item.item_id for r in fresh.results] == brute_force_ids(store, query, 20)[0]


def test_upserts_and_deletes_say_what_is_wrong(stubs, tiny_images):
    encoder, _, _ = stubs
    reply = encoder.UpsertItems(
        encoder_pb2.UpsertItemsRequest(
            entries=[
                entry(tiny_images, "live-good", "2235", "Sandal", "Footwear"),
                encoder_pb2.CatalogueEntry(
                    item=common_pb2.Item(item_id="live-bad", sub_category="Topwear"),
                    image=b"not an image",
                ),
                encoder_pb2.CatalogueEntry(
                    item=common_pb2.Item(item_id="live-outside", image_ref="/etc/passwd")
                ),
            ]
        ),
        timeout=30,
    )
    outcomes = {o.item_id: (o.ok, o.reason) for o in reply.outcomes}
    assert outcomes["live-good"] == (True, "")
    assert not outcomes["live-bad"][0] and outcomes["live-bad"][1]
    assert outcomes["live-outside"] == (
        False,
        "image_ref '/etc/passwd' is outside the catalogue roots",
    )
    too_many = [entry(tiny_images, f"many-{i}", "2235") for i in range(257)]
    for request, wanted in (
        (encoder_pb2.UpsertItemsRequest(entries=too_many), "at most 256"),
        (encoder_pb2.UpsertItemsRequest(), "at least one"),
        (encoder_pb2.DeleteItemsRequest(), "at least one"),
        (encoder_pb2.UpsertItemsRequest(entries=[entry(tiny_images, "x", "2235")] * 2), "twice"),
    ):
        call = encoder.UpsertItems if hasattr(request, "entries") else encoder.DeleteItems
        with pytest.raises(grpc.RpcError) as raised:
            call(request, timeout=30)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert wanted in raised.value.details()
    with pytest.raises(grpc.RpcError) as raised:
        encoder.DeleteItems(encoder_pb2.DeleteItemsRequest(item_ids=["a"], model_version=99))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_cli_upserts_and_deletes_items(live_suite, stubs, store, tiny_images):
    _, retrieval, _ = stubs

    def atelier(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "services.cli", "items", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **live_suite.env},
        )

    added = atelier(
        "upsert", "cli-1", "--image", str(tiny_images / "1164.jpg"), "--sub-category", "Topwear"
    )
    assert added.returncode == 0, added.stderr
    assert f"upserted cli-1 into generation {VERSION}" in added.stdout
    code = store.item(VERSION, "cli-1").z.astype(np.float64)
    eventually(lambda: on_top(by_vector(retrieval.Search, code).results, "cli-1"))
    removed = atelier("delete", "cli-1", "never-was")
    assert removed.returncode == 1  # one id was not found, and says so
    assert "deleted 1" in removed.stdout and "not found: never-was" in removed.stdout
    assert store.item(VERSION, "cli-1") is None
    bad = atelier("upsert", "cli-2", "--image", str(tiny_images / "missing.jpg"))
    assert bad.returncode == 2 and "error:" in bad.stderr


def test_an_item_of_a_new_category_is_found_without_a_rebuild(stubs, store, tiny_images):
    encoder, retrieval, _ = stubs
    reply = encoder.UpsertItems(
        encoder_pb2.UpsertItemsRequest(
            entries=[entry(tiny_images, "live-cape", "1603", "Capes", "Apparel")]
        ),
        timeout=30,
    )
    assert reply.outcomes[0].ok
    code = store.item(VERSION, "live-cape").z.astype(np.float64)
    eventually(lambda: on_top(by_vector(retrieval.Search, code).results, "live-cape"))
    # Its own category has no partition yet: its scope says so, the whole catalogue answers.
    with pytest.raises(grpc.RpcError) as raised:
        retrieval.Search(
            retrieval_pb2.SearchRequest(query=common_pb2.Query(item_id="live-cape"), k=3),
            timeout=10,
        )
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "search the whole catalogue instead" in raised.value.details()
    found = retrieval.Search(
        retrieval_pb2.SearchRequest(
            query=common_pb2.Query(item_id="live-cape"),
            k=3,
            scope=retrieval_pb2.SEARCH_SCOPE_CATALOGUE,
        ),
        timeout=10,
    )
    assert found.query_category.sub_category == "Capes" and len(found.results) == 3
    assert "live-cape" not in [r.item.item_id for r in found.results]
