"""Retrieval, recommender and decoder over real gRPC, against numpy references on the same Redis codes."""

from __future__ import annotations

import io
import time

import grpc
import numpy as np
import pytest
from PIL import Image

from atelier.clustering import by_category, from_centres
from atelier.search import METHODS, CodeSet, brute_force, query_space
from atelier.store import CodeStore
from atelier.v1 import (
    common_pb2,
    decoder_pb2,
    decoder_pb2_grpc,
    encoder_pb2,
    encoder_pb2_grpc,
    recommender_pb2,
    recommender_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)
from services.common.launcher import local_suite

pytestmark = pytest.mark.integration
METHOD_ENUM = {
    "loglik": common_pb2.RANKING_METHOD_LOGLIK,
    "fixed_eps": common_pb2.RANKING_METHOD_FIXED_EPS,
    "mu_l2": common_pb2.RANKING_METHOD_MU_L2,
    "cosine": common_pb2.RANKING_METHOD_COSINE,
    "cityblock": common_pb2.RANKING_METHOD_CITYBLOCK,
}


@pytest.fixture(scope="module")
def query_suite(tmp_path_factory, two_version_models, tiny_csv):
    work = tmp_path_factory.mktemp("query-suite")
    with local_suite(work, two_version_models, workers=1) as suite:
        with grpc.insecure_channel(suite.env["ENCODER_ADDR"]) as channel:
            stub = encoder_pb2_grpc.EncoderServiceStub(channel)
            for version in (1, 2):
                job = stub.SubmitCatalogue(
                    encoder_pb2.SubmitCatalogueRequest(
                        csv_path=str(tiny_csv), model_version=version
                    ),
                    timeout=60,
                )
                deadline = time.monotonic() + 180
                while (
                    stub.GetJob(encoder_pb2.GetJobRequest(job_id=job.job_id), timeout=5).state
                    != common_pb2.JOB_STATE_SUCCEEDED
                ):
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
        CodeStore.from_url(suite.env["REDIS_URL"]).serve(1)
        for name in ("retrieval", "recommender", "decoder"):
            suite.start_service(name)
        yield suite


@pytest.fixture(scope="module")
def channels(query_suite):
    opened = {
        name: grpc.insecure_channel(query_suite.env[f"{name.upper()}_ADDR"])
        for name in ("retrieval", "recommender", "decoder")
    }
    yield opened
    for channel in opened.values():
        channel.close()


@pytest.fixture(scope="module")
def search(channels):
    return retrieval_pb2_grpc.RetrievalServiceStub(channels["retrieval"]).Search


@pytest.fixture(scope="module")
def recommend(channels):
    return recommender_pb2_grpc.RecommenderServiceStub(channels["recommender"]).Recommend


@pytest.fixture(scope="module")
def decoder(channels):
    return decoder_pb2_grpc.DecoderServiceStub(channels["decoder"])


@pytest.fixture(scope="module")
def reference(query_suite):
    """The served generation's codes and k-means centres, read straight from Redis."""
    store = CodeStore.from_url(query_suite.env["REDIS_URL"])
    matrix = store.load_codes(1)
    categories = np.array([m["category"] for m in matrix.metadata])
    codes = CodeSet(matrix.item_ids, matrix.mu, matrix.sigma, matrix.z, categories)
    partitions = {
        s: from_centres(codes.space(s), store.partition_centres(1, s, 3)) for s in ("mu", "z")
    }
    return codes, partitions


def _ids(response_items) -> list[str]:
    return [r.item.item_id for r in response_items]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scope", ["cluster", "catalogue", "category"])
def test_search_equals_numpy_brute_force(search, reference, method, scope):
    codes, partitions = reference
    space = query_space(method)
    partition = partitions[space]
    for row in (0, 57, 123, 201, 299):
        query = codes.space(space)[row].astype(np.float64)
        rows = np.arange(len(codes))
        request = retrieval_pb2.SearchRequest(
            query=common_pb2.Query(item_id=codes.item_ids[row]), method=METHOD_ENUM[method], k=25
        )
        if scope == "cluster":
            request.scope = retrieval_pb2.SEARCH_SCOPE_CLUSTER
            rows = rows[partition.labels == partition.assign(query)[0]]
        else:
            request.scope = retrieval_pb2.SEARCH_SCOPE_CATALOGUE
        if scope == "category":
            request.category = codes.categories[row]
            rows = rows[codes.categories == request.category]
        want, scores = brute_force(method, query, codes, rows[rows != row], 25)
        reply = search(request, timeout=10)
        assert _ids(reply.results) == [codes.item_ids[r] for r in want]
        np.testing.assert_allclose([r.score for r in reply.results], scores, rtol=1e-9, atol=1e-9)
        assert reply.model_version == 1


def test_search_by_vector_and_by_image(search, reference, tiny_images):
    codes, _ = reference
    vector = common_pb2.LatentVector(values=codes.z[10])
    reply = search(
        retrieval_pb2.SearchRequest(
            query=common_pb2.Query(vector=vector), method=METHOD_ENUM["fixed_eps"], k=5
        ),
        timeout=10,
    )
    assert (
        reply.results[0].item.item_id == codes.item_ids[10]
    )  # its own fixed-ε code, at distance 0
    assert reply.results[0].score == pytest.approx(0.0, abs=1e-6)
    image = (tiny_images / f"{codes.item_ids[10]}.jpg").read_bytes()
    reply = search(
        retrieval_pb2.SearchRequest(query=common_pb2.Query(image=image), k=3), timeout=10
    )
    assert reply.results[0].item.item_id == codes.item_ids[10]
    assert reply.results[0].score == pytest.approx(0.0, abs=1e-4)  # the same photo: distance 0


@pytest.mark.parametrize("method", ["loglik", "fixed_eps"])
@pytest.mark.parametrize("partition", ["kmeans", "category"])
def test_recommend_matches_numpy_eq3(recommend, reference, method, partition):
    codes, kmeans = reference
    space = query_space(method)
    parts = (
        kmeans[space]
        if partition == "kmeans"
        else by_category(codes.space(space), codes.categories)
    )
    enum = (
        recommender_pb2.PARTITION_KMEANS
        if partition == "kmeans"
        else recommender_pb2.PARTITION_CATEGORY
    )
    for row in (5, 150, 250):
        q = codes.space(space)[row].astype(np.float64)
        reply = recommend(
            recommender_pb2.RecommendRequest(
                query=common_pb2.Query(item_id=codes.item_ids[row]),
                method=METHOD_ENUM[method],
                partition=enum,
                k=10,
            ),
            timeout=10,
        )
        home = int(np.argmin(((parts.centres.astype(np.float64) - q) ** 2).sum(1)))
        assert reply.query_partition == parts.names[home]
        members = np.flatnonzero(parts.labels == home)
        assert _ids(reply.similar.items) == [
            codes.item_ids[r] for r in brute_force(method, q, codes, members[members != row], 10)[0]
        ]
        assert {p.partition for p in reply.pairings} == set(parts.names) - {parts.names[home]}
        for pairing in reply.pairings:
            other = parts.names.index(pairing.partition)
            target = (
                q + parts.centres[other].astype(np.float64) - parts.centres[home].astype(np.float64)
            )
            others = np.flatnonzero(parts.labels == other)
            assert _ids(pairing.items) == [
                codes.item_ids[r]
                for r in brute_force(method, target, codes, others[others != row], 10)[0]
            ]


def test_decode_traverse_and_random_start(decoder):
    start = decoder.RandomStart(
        decoder_pb2.RandomStartRequest(seed=3, category="Eyewear"), timeout=10
    )
    assert start.item.category == "Eyewear" and len(start.code.mu) == 16
    assert all(lo < hi for lo, hi in zip(start.lower, start.upper, strict=True))
    reply = decoder.Decode(
        decoder_pb2.DecodeRequest(codes=[common_pb2.LatentVector(values=start.code.mu)] * 2),
        timeout=10,
    )
    assert len(reply.png) == 2 and (reply.height, reply.width) == (80, 64)
    assert Image.open(io.BytesIO(reply.png[0])).size == (64, 80)
    strip = decoder.Traverse(
        decoder_pb2.TraverseRequest(
            start=common_pb2.LatentVector(values=start.code.mu),
            dimension=4,
            low=-3,
            high=3,
            steps=7,
        ),
        timeout=10,
    )
    assert len(strip.png) == 7 and strip.png[0] != strip.png[-1]


BAD_VECTORS = {
    "nan": [float("nan")] + [0.0] * 15,
    "inf": [float("inf")] + [0.0] * 15,
    "short": [0.0] * 15,
    "long": [0.0] * 17,
    "huge": [1e6] + [0.0] * 15,
}


@pytest.mark.parametrize("case", sorted(BAD_VECTORS))
def test_bad_vectors_are_invalid_argument_everywhere(search, recommend, decoder, case):
    vector = common_pb2.LatentVector(values=BAD_VECTORS[case])
    calls = [
        lambda: search(
            retrieval_pb2.SearchRequest(query=common_pb2.Query(vector=vector), k=5), timeout=10
        ),
        lambda: recommend(
            recommender_pb2.RecommendRequest(query=common_pb2.Query(vector=vector), k=5), timeout=10
        ),
        lambda: decoder.Decode(decoder_pb2.DecodeRequest(codes=[vector]), timeout=10),
        lambda: decoder.Traverse(
            decoder_pb2.TraverseRequest(start=vector, dimension=0, low=-1, high=1, steps=3),
            timeout=10,
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as error:
            call()
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
        assert error.value.details()


@pytest.mark.parametrize(
    ("request_fields", "code"),
    [
        ({"k": 0}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"k": 1001}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"k": 5, "method": 99}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"k": 5, "scope": 42}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"k": 5, "query": common_pb2.Query(item_id="no-such-item")}, grpc.StatusCode.NOT_FOUND),
        ({"k": 5, "query": common_pb2.Query(image=b"")}, grpc.StatusCode.INVALID_ARGUMENT),
        (
            {"k": 5, "query": common_pb2.Query(image=b"x" * (17 * 1024 * 1024))},
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            {"k": 5, "query": common_pb2.Query(image=b"not an image")},
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        ({"k": 5, "query": common_pb2.Query()}, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_bad_search_requests_get_clear_statuses(search, request_fields, code):
    fields = {"query": common_pb2.Query(item_id="1164"), **request_fields}
    with pytest.raises(grpc.RpcError) as error:
        search(retrieval_pb2.SearchRequest(**fields), timeout=20)
    assert error.value.code() == code, error.value.details()
    assert error.value.details()


def test_cluster_smaller_than_k_returns_all_it_has(search, reference):
    codes, partitions = reference
    reply = search(
        retrieval_pb2.SearchRequest(query=common_pb2.Query(item_id=codes.item_ids[0]), k=1000),
        timeout=10,
    )
    partition = partitions["z"]
    size = int((partition.labels == partition.labels[0]).sum())
    assert len(reply.results) == size - 1  # everything in the cluster but the query itself


def test_fuzzed_requests_never_break_the_services(search, recommend, decoder, reference):
    codes, _ = reference
    rng = np.random.default_rng(2026)
    allowed = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
    for _ in range(300):
        values = rng.choice(
            [0.0, 1.0, -1e9, np.nan, np.inf, 3.5], size=int(rng.integers(0, 20))
        ).tolist()
        query = rng.choice(["vector", "item", "image"])
        q = {
            "vector": common_pb2.Query(vector=common_pb2.LatentVector(values=values)),
            "item": common_pb2.Query(
                item_id=rng.choice([codes.item_ids[0], "", "x" * 300, "../../etc"])
            ),
            "image": common_pb2.Query(image=rng.bytes(int(rng.integers(0, 64)))),
        }[query]
        k = int(rng.choice([-5, 0, 1, 7, 1000, 1001, 2**31 - 1]))
        method, scope = int(rng.integers(-2, 8)), int(rng.integers(-1, 4))
        calls = [
            (
                search,
                retrieval_pb2.SearchRequest(
                    query=q,
                    k=k,
                    method=method,
                    scope=scope,
                    nprobe=int(rng.integers(-2, 5)),
                    category=rng.choice(["", "Bags", "??"]),
                ),
            ),
            (
                recommend,
                recommender_pb2.RecommendRequest(
                    query=q, k=k, method=method, partition=int(rng.integers(-1, 4))
                ),
            ),
            (
                decoder.Decode,
                decoder_pb2.DecodeRequest(
                    codes=[common_pb2.LatentVector(values=values)] * int(rng.integers(0, 3))
                ),
            ),
        ]
        for call, request in calls:
            try:
                call(request, timeout=10)
            except grpc.RpcError as exc:
                assert exc.code() in allowed, (exc.code(), exc.details())
    # and the next ordinary request is served normally
    reply = search(
        retrieval_pb2.SearchRequest(query=common_pb2.Query(item_id=codes.item_ids[1]), k=5),
        timeout=10,
    )
    assert len(reply.results) == 5


def test_generation_switch_rebuilds_without_failing_searches(query_suite, search, reference):
    codes, _ = reference
    store = CodeStore.from_url(query_suite.env["REDIS_URL"])
    request = retrieval_pb2.SearchRequest(query=common_pb2.Query(item_id=codes.item_ids[3]), k=10)
    assert search(request, timeout=10).model_version == 1
    store.serve(2)
    versions = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        versions.append(search(request, timeout=10).model_version)  # never fails mid-rebuild
        if versions[-1] == 2:
            break
    assert versions[-1] == 2 and versions == sorted(versions)
    store.serve(1)
    deadline = time.monotonic() + 60
    while search(request, timeout=10).model_version != 1:
        assert time.monotonic() < deadline
