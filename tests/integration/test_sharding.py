"""Sharded retrieval and recommendations over real gRPC: three shards merged equal one node.

One real catalogue generation in real Redis is served by an unsharded retrieval and recommender
and by three shards of each (SHARD_INDEX/SHARD_COUNT), all on loopback; the fan-out client's
merged answers must equal the single node's, item for item and score for score.
"""

from __future__ import annotations

import sys
from collections import Counter

import grpc
import numpy as np
import pytest

from atelier.processes import free_port
from atelier.sharding import shard_of
from atelier.store import CodeStore
from atelier.v1 import common_pb2, encoder_pb2, retrieval_pb2
from services.common.client import METHODS, PARTITIONS, SCOPES, Addresses, AtelierClient
from services.common.launcher import local_suite, start_process, wait_serving

pytestmark = pytest.mark.integration
SHARDS = 3
KMEANS_K = 4
UNLABELLED = {"new-1": "10125", "new-2": "1164"}  # new item id -> a fixture photo
SINGLETON = ("belt-1", "1164")  # the only item of its subCategory: two shards lack it


def _start(suite, name: str, shard: int | None):
    """A retrieval or recommender process, the whole catalogue or one shard of it."""
    port = free_port()
    env = {**suite.env, f"{name.upper()}_PORT": str(port)}
    if shard is not None:
        env.update(SHARD_INDEX=str(shard), SHARD_COUNT=str(SHARDS))
    label = f"{name}-{'all' if shard is None else shard}"
    address = f"127.0.0.1:{port}"
    argv = [sys.executable, "-m", f"services.{name}"]
    return suite.add(start_process(label, argv, env, suite.log_dir, address))


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, two_version_models, tiny_csv, tiny_images):
    work = tmp_path_factory.mktemp("sharding")
    env = {"KMEANS_K": str(KMEANS_K)}
    with local_suite(work, two_version_models, workers=1, extra_env=env) as suite:
        suite.encode(
            encoder_pb2.SubmitCatalogueRequest(csv_path=str(tiny_csv), model_version=1),
            timeout=300,
        )
        entries = [
            encoder_pb2.CatalogueEntry(
                item=common_pb2.Item(item_id=new_id),
                image=(tiny_images / f"{photo}.jpg").read_bytes(),
            )
            for new_id, photo in UNLABELLED.items()
        ]
        belt, photo = SINGLETON
        entries.append(
            encoder_pb2.CatalogueEntry(
                item=common_pb2.Item(
                    item_id=belt,
                    sub_category="Belts",
                    master_category="Accessories",
                    gender="Men",
                ),
                image=(tiny_images / f"{photo}.jpg").read_bytes(),
            )
        )
        suite.encode(
            encoder_pb2.SubmitCatalogueRequest(
                entries=encoder_pb2.CatalogueEntries(entries=entries), model_version=1
            ),
            timeout=120,
        )
        CodeStore.from_url(suite.env["REDIS_URL"]).serve(1)
        # The shards start first and race to derive the shared state; the single node last.
        processes = {
            (name, shard): _start(suite, name, shard)
            for name in ("retrieval", "recommender")
            for shard in (*range(SHARDS), None)
        }
        for managed in processes.values():
            wait_serving(managed, 300, suite.client_tls())
        yield suite, processes


def _client(suite, processes, shards: bool) -> AtelierClient:
    def addresses(name: str) -> str:
        chosen = range(SHARDS) if shards else (None,)
        return ",".join(processes[(name, shard)].address for shard in chosen)

    return AtelierClient(
        Addresses(
            suite.env["ENCODER_ADDR"],
            suite.env["DECODER_ADDR"],
            addresses("retrieval"),
            addresses("recommender"),
        ),
        timeout=30,
        tls=suite.client_tls(),
        token=suite.token or "",
    )


@pytest.fixture(scope="module")
def clients(deployment):
    suite, processes = deployment
    single, sharded = _client(suite, processes, False), _client(suite, processes, True)
    yield single, sharded
    single.close()
    sharded.close()


@pytest.fixture(scope="module")
def catalogue(deployment) -> tuple[list[str], list[np.ndarray]]:
    """Query items from every shard (the unlabelled and the singleton ones among them) and code
    queries near catalogue codes."""
    suite, _ = deployment
    store = CodeStore.from_url(suite.env["REDIS_URL"])
    ids = store.item_ids(1)
    by_shard = Counter(shard_of(i, SHARDS) for i in ids)
    assert len(by_shard) == SHARDS and min(by_shard.values()) > 50, by_shard
    picked = [*UNLABELLED, SINGLETON[0], *ids[::37]]
    rng = np.random.default_rng(7)
    vectors = []
    for item_id in ids[5::97]:
        mu = np.asarray(store.item(1, item_id).mu, np.float64)
        vectors.append(mu + rng.normal(0, 0.3, mu.shape))
    return picked, vectors


def _queries(catalogue):
    items, vectors = catalogue
    return [common_pb2.Query(item_id=i) for i in items] + [
        common_pb2.Query(vector=common_pb2.LatentVector(values=v.tolist())) for v in vectors
    ]


def _scored(items) -> list[tuple]:
    return [(s.item.item_id, s.score, s.partition, s.cluster) for s in items]


def _category(reply) -> tuple:
    c = reply.query_category
    return (c.sub_category, c.master_category, c.from_label, pytest.approx(c.confidence, abs=1e-6))


@pytest.mark.parametrize("method", list(METHODS))
def test_merged_search_equals_one_node(clients, catalogue, method):
    single, sharded = clients
    owners = Counter()
    for query in _queries(catalogue):
        for scope in ("sub_category", "master_category", "catalogue", "cluster"):
            for k in (1, 5, 50):
                one = single.search(query, method, scope, k, nprobe=2)
                merged = sharded.search(query, method, scope, k, nprobe=2)
                assert _scored(merged.results) == _scored(one.results), (query, scope, k)
                assert list(merged.searched) == list(one.searched)
                assert merged.query_cluster == one.query_cluster
                assert _category(merged) == _category(one)
                assert (merged.shard_count, list(merged.shards), merged.partial) == (
                    SHARDS,
                    list(range(SHARDS)),
                    False,
                )
                assert (one.shard_count, list(one.shards)) == (1, [0])
                owners.update(shard_of(s.item.item_id, SHARDS) for s in merged.results)
    # Every shard contributed: the merge really combined three lists.
    assert len(owners) == SHARDS and min(owners.values()) > 100, owners


def test_merged_search_with_the_query_item_and_a_named_category(clients, catalogue):
    single, sharded = clients
    belt = common_pb2.Query(item_id=SINGLETON[0])
    for request in (
        retrieval_pb2.SearchRequest(query=belt, k=5, exclude_query_item=False),
        retrieval_pb2.SearchRequest(
            query=belt, k=5, scope=SCOPES["catalogue"], category="Belts", exclude_query_item=False
        ),
        retrieval_pb2.SearchRequest(query=belt, k=20, scope=SCOPES["catalogue"], category="Shoes"),
    ):
        one, merged = single.retrieval.Search(request), sharded.retrieval.Search(request)
        assert _scored(merged.results) == _scored(one.results)
        assert merged.results  # the singleton's shard found it; the others lack Belts
    with pytest.raises(grpc.RpcError) as unknown:
        sharded.search(common_pb2.Query(item_id="no-such-item"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def _lists(reply) -> list[tuple]:
    return [("similar", reply.similar.partition, _scored(reply.similar.items))] + [
        (p.rank, p.partition, _scored(p.items)) for p in reply.pairings
    ]


@pytest.mark.parametrize("partition", list(PARTITIONS))
def test_merged_recommendations_equal_one_node(clients, catalogue, partition):
    single, sharded = clients
    compared = 0
    for query in _queries(catalogue):
        for method in METHODS:
            for k, match_gender in ((1, True), (5, True), (5, False)):
                one = single.recommend(query, method, partition, k, match_gender=match_gender)
                merged = sharded.recommend(query, method, partition, k, match_gender=match_gender)
                assert _lists(merged) == _lists(one), (query, method, k)
                assert merged.query_partition == one.query_partition
                assert merged.matched_gender == one.matched_gender
                assert _category(merged) == _category(one)
                assert list(merged.shards) == list(range(SHARDS)) and not merged.partial
                compared += len(one.pairings)
    assert compared > 100  # pairings were there to compare
    targets = ("Shoes", "Belts", "Watches")
    query = common_pb2.Query(item_id=catalogue[0][-1])
    one = single.recommend(query, "loglik", "sub_category", 5, targets=targets, match_gender=False)
    merged = sharded.recommend(query, "loglik", "sub_category", 5, targets, match_gender=False)
    assert _lists(merged) == _lists(one)
    assert [p.partition for p in merged.pairings if p.partition != one.query_partition] == [
        t for t in targets if t != one.query_partition
    ]


def test_a_shard_down_fails_the_call_unless_partial_answers_are_allowed(
    deployment, clients, catalogue
):
    _, processes = deployment
    single, sharded = clients
    down = 2
    for name in ("retrieval", "recommender"):
        processes[(name, down)].stop()
    # An item the stopped shard holds: the others read its code from Redis.
    owned = next(i for i in catalogue[0] if shard_of(i, SHARDS) == down)
    query = common_pb2.Query(item_id=owned)
    with pytest.raises(grpc.RpcError) as refused:
        sharded.search(query, "loglik", "catalogue", 5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"retrieval shard {down} of {SHARDS}" in refused.value.details()
    with pytest.raises(grpc.RpcError) as refused:
        sharded.recommend(query, "loglik", "sub_category", 5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"recommender shard {down} of {SHARDS}" in refused.value.details()

    def live(items, k):
        return [s for s in _scored(items) if shard_of(s[0], SHARDS) != down][:k]

    partial = sharded.search(query, "loglik", "catalogue", 5, allow_partial=True)
    assert partial.partial and list(partial.missing_shards) == [down]
    assert list(partial.shards) == [i for i in range(SHARDS) if i != down]
    whole = single.search(query, "loglik", "catalogue", 200)
    assert _scored(partial.results) == live(whole.results, 5)
    assert len(live(whole.results, 200)) < len(whole.results)  # the shard did hold items
    partial = sharded.recommend(query, "loglik", "sub_category", 5, allow_partial=True)
    assert partial.partial and list(partial.missing_shards) == [down]
    whole = single.recommend(query, "loglik", "sub_category", 200)
    assert _scored(partial.similar.items) == live(whole.similar.items, 5)
    assert {p.partition: _scored(p.items) for p in partial.pairings} == {
        p.partition: live(p.items, 5) for p in whole.pairings if live(p.items, 5)
    }
    # A request the caller got wrong is the caller's error, whichever shards are up.
    with pytest.raises(grpc.RpcError) as wrong:
        sharded.search(query, "loglik", "catalogue", 0, allow_partial=True)
    assert wrong.value.code() == grpc.StatusCode.INVALID_ARGUMENT
