"""Retrieval, recommender and decoder over real gRPC, against numpy references on the same Redis codes."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from PIL import Image

from atelier.clustering import Partition, by_labels, from_centres
from atelier.recommend import genders_compatible
from atelier.search import METHODS, CodeSet, brute_force, query_space
from atelier.store import CodeStore
from atelier.v1 import (
    common_pb2,
    decoder_pb2,
    decoder_pb2_grpc,
    encoder_pb2,
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


KMEANS_K = 4
UNLABELLED = {"new-1": "10125", "new-2": "1164"}  # new item id -> a fixture photo


@pytest.fixture(scope="module")
def query_suite(tmp_path_factory, two_version_models, tiny_csv, tiny_images):
    work = tmp_path_factory.mktemp("query-suite")
    with local_suite(
        work, two_version_models, workers=1, extra_env={"KMEANS_K": str(KMEANS_K)}
    ) as suite:
        requests = [
            encoder_pb2.SubmitCatalogueRequest(csv_path=str(tiny_csv), model_version=v)
            for v in (1, 2)
        ]
        # Two items with no labels at all: their categories are predicted from their codes.
        requests.append(
            encoder_pb2.SubmitCatalogueRequest(
                entries=encoder_pb2.CatalogueEntries(
                    entries=[
                        encoder_pb2.CatalogueEntry(
                            item=common_pb2.Item(item_id=new_id),
                            image=(tiny_images / f"{photo}.jpg").read_bytes(),
                        )
                        for new_id, photo in UNLABELLED.items()
                    ]
                ),
                model_version=1,
            )
        )
        for request in requests:
            suite.encode(request, timeout=180)
        CodeStore.from_url(suite.env["REDIS_URL"]).serve(1)
        for name in ("retrieval", "recommender", "decoder"):
            suite.start_service(name)
        yield suite


@pytest.fixture(scope="module")
def channels(query_suite):
    opened = {name: query_suite.channel(name) for name in ("retrieval", "recommender", "decoder")}
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


@dataclass
class Reference:
    """The served generation read straight from Redis: codes, labels and k-means centres."""

    codes: CodeSet
    kmeans: dict[str, Partition]
    sub: np.ndarray  # labelled items' subCategory; the unlabelled ones' is filled in per test
    master: np.ndarray
    gender: np.ndarray
    labelled: np.ndarray


@pytest.fixture(scope="module")
def reference(query_suite) -> Reference:
    store = CodeStore.from_url(query_suite.env["REDIS_URL"])
    matrix = store.load_codes(1)
    codes = CodeSet(matrix.item_ids, matrix.mu, matrix.sigma, matrix.z)
    kmeans = {
        s: from_centres(codes.space(s), store.partition_centres(1, s, KMEANS_K))
        for s in ("mu", "z")
    }
    sub = np.array([m["sub_category"] for m in matrix.metadata])
    master = np.array([m["master_category"] for m in matrix.metadata])
    gender = np.array([m["gender"] for m in matrix.metadata])
    return Reference(codes, kmeans, sub, master, gender, sub != "")


def _ids(response_items) -> list[str]:
    return [r.item.item_id for r in response_items]


def _served_categories(search, reference) -> tuple[np.ndarray, np.ndarray]:
    """Every item's effective subCategory and masterCategory: labels, and for the unlabelled
    items the partition the service reports (checked against its prediction elsewhere)."""
    sub, master = reference.sub.copy(), reference.master.copy()
    for row in np.flatnonzero(~reference.labelled):
        reply = search(
            retrieval_pb2.SearchRequest(
                query=common_pb2.Query(item_id=reference.codes.item_ids[row]), k=1
            ),
            timeout=10,
        )
        sub[row] = reply.query_category.sub_category
        master[row] = reply.query_category.master_category
    return sub, master


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "scope", ["cluster", "catalogue", "named", "sub_category", "master_category"]
)
def test_search_equals_numpy_brute_force(search, reference, method, scope):
    codes = reference.codes
    sub, master = _served_categories(search, reference)
    space = query_space(method)
    partition = reference.kmeans[space]
    for row in (0, 57, 123, 201, 299, len(codes) - 1):
        query = codes.space(space)[row].astype(np.float64)
        rows = np.arange(len(codes))
        request = retrieval_pb2.SearchRequest(
            query=common_pb2.Query(item_id=codes.item_ids[row]), method=METHOD_ENUM[method], k=25
        )
        if scope == "cluster":
            request.scope = retrieval_pb2.SEARCH_SCOPE_CLUSTER
            rows = rows[partition.labels == partition.assign(query)[0]]
        elif scope == "sub_category":
            request.scope = retrieval_pb2.SEARCH_SCOPE_SUB_CATEGORY
            rows = rows[sub == sub[row]]
        elif scope == "master_category":
            request.scope = retrieval_pb2.SEARCH_SCOPE_MASTER_CATEGORY
            rows = rows[master == master[row]]
        else:
            request.scope = retrieval_pb2.SEARCH_SCOPE_CATALOGUE
        if scope == "named":
            request.category = "Footwear"  # a masterCategory, named
            rows = rows[master == "Footwear"]
        want, scores = brute_force(method, query, codes, rows[rows != row], 25)
        reply = search(request, timeout=10)
        assert _ids(reply.results) == [codes.item_ids[r] for r in want]
        np.testing.assert_allclose([r.score for r in reply.results], scores, rtol=1e-9, atol=1e-9)
        assert reply.model_version == 1
        if scope == "sub_category":
            assert list(reply.searched) == [sub[row]]
            assert all(r.partition == sub[row] for r in reply.results)


def test_unlabelled_items_get_a_predicted_partition(search, reference, tiny_images):
    codes = reference.codes
    for new_id, photo in UNLABELLED.items():
        row = codes.item_ids.index(new_id)
        assert not reference.labelled[row]
        by_item = search(
            retrieval_pb2.SearchRequest(query=common_pb2.Query(item_id=new_id), k=3), timeout=10
        )
        category = by_item.query_category
        assert not category.from_label and 0 < category.confidence <= 1
        assert category.sub_category in set(reference.sub[reference.labelled])
        # The same photo queried directly is predicted the same way, with the same confidence.
        image = (tiny_images / f"{photo}.jpg").read_bytes()
        by_photo = search(
            retrieval_pb2.SearchRequest(query=common_pb2.Query(image=image), k=3), timeout=10
        )
        assert by_photo.query_category.sub_category == category.sub_category
        assert by_photo.query_category.confidence == pytest.approx(category.confidence, abs=1e-4)
        assert list(by_photo.searched) == [category.sub_category]
        # Its photo's labelled twin is found in the same partition, at distance 0.
        assert by_photo.results[0].item.item_id in (photo, new_id)
        # Image refs are the gateway's URLs, never server paths; inline items have none.
        for result in (*by_item.results, *by_photo.results):
            item = result.item
            assert item.image_ref in ("", f"/api/image/{item.item_id}"), item.image_ref
            assert (item.image_ref == "") == (item.item_id in UNLABELLED)
    labelled_row = int(np.flatnonzero(reference.labelled)[0])
    reply = search(
        retrieval_pb2.SearchRequest(
            query=common_pb2.Query(item_id=codes.item_ids[labelled_row]), k=1
        ),
        timeout=10,
    )
    assert reply.query_category.from_label and reply.query_category.confidence == 1.0
    assert reply.query_category.sub_category == reference.sub[labelled_row]


def test_search_by_vector_and_by_image(search, reference, tiny_images):
    codes = reference.codes
    vector = common_pb2.LatentVector(values=codes.z[10])
    reply = search(
        retrieval_pb2.SearchRequest(
            query=common_pb2.Query(vector=vector),
            method=METHOD_ENUM["fixed_eps"],
            scope=retrieval_pb2.SEARCH_SCOPE_CATALOGUE,
            k=5,
        ),
        timeout=10,
    )
    assert reply.results[0].item.item_id == codes.item_ids[10]  # its own code, at distance 0
    assert reply.results[0].score == pytest.approx(0.0, abs=1e-6)
    assert not reply.query_category.from_label and reply.query_category.sub_category
    image = (tiny_images / f"{codes.item_ids[10]}.jpg").read_bytes()
    reply = search(
        retrieval_pb2.SearchRequest(
            query=common_pb2.Query(image=image), scope=retrieval_pb2.SEARCH_SCOPE_CATALOGUE, k=3
        ),
        timeout=10,
    )
    assert reply.results[0].item.item_id == codes.item_ids[10]
    assert reply.results[0].score == pytest.approx(0.0, abs=1e-4)  # the same photo: distance 0


PARTITION_ENUM = {
    "kmeans": recommender_pb2.PARTITION_KMEANS,
    "sub_category": recommender_pb2.PARTITION_SUB_CATEGORY,
    "master_category": recommender_pb2.PARTITION_MASTER_CATEGORY,
}


@pytest.mark.parametrize("method", ["loglik", "fixed_eps"])
@pytest.mark.parametrize("partition", sorted(PARTITION_ENUM))
@pytest.mark.parametrize("match_gender", [True, False])
def test_recommend_matches_numpy_eq3(search, recommend, reference, method, partition, match_gender):
    codes = reference.codes
    space = query_space(method)
    sub, master = _served_categories(search, reference)
    parts = (
        reference.kmeans[space]
        if partition == "kmeans"
        else by_labels(codes.space(space), sub if partition == "sub_category" else master)
    )
    for row in (5, 150, 250):
        q = codes.space(space)[row].astype(np.float64)
        reply = recommend(
            recommender_pb2.RecommendRequest(
                query=common_pb2.Query(item_id=codes.item_ids[row]),
                method=METHOD_ENUM[method],
                partition=PARTITION_ENUM[partition],
                k=10,
                match_gender=match_gender,
            ),
            timeout=10,
        )
        home = int(parts.labels[row])
        assert reply.query_partition == parts.names[home]
        members = np.flatnonzero(parts.labels == home)
        assert _ids(reply.similar.items) == [
            codes.item_ids[r] for r in brute_force(method, q, codes, members[members != row], 10)[0]
        ]
        allowed = (
            genders_compatible(reference.gender[row], reference.gender)
            if match_gender
            else np.ones(len(codes), bool)
        )
        expected = {
            parts.names[p]
            for p in range(len(parts.names))
            if p != home and ((parts.labels == p) & allowed).any()
        }
        assert {p.partition for p in reply.pairings} == expected
        assert reply.matched_gender == (
            reference.gender[row] if match_gender and reference.gender[row] != "Unisex" else ""
        )
        for pairing in reply.pairings:
            other = parts.names.index(pairing.partition)
            target = q + parts.centres[other].astype(np.float64) - parts.centres[home]
            others = np.flatnonzero((parts.labels == other) & allowed)
            assert _ids(pairing.items) == [
                codes.item_ids[r]
                for r in brute_force(method, target, codes, others[others != row], 10)[0]
            ]


def test_recommend_named_targets_and_a_code_query(recommend, reference):
    codes = reference.codes
    row = int(np.flatnonzero(reference.sub == "Topwear")[0])
    reply = recommend(
        recommender_pb2.RecommendRequest(
            query=common_pb2.Query(item_id=codes.item_ids[row]),
            target_categories=["Shoes", "Watches"],
            k=4,
        ),
        timeout=10,
    )
    assert reply.query_partition == "Topwear"
    assert [p.partition for p in reply.pairings] == ["Shoes", "Watches"]
    with pytest.raises(grpc.RpcError) as error:
        recommend(
            recommender_pb2.RecommendRequest(
                query=common_pb2.Query(item_id=codes.item_ids[row]), target_categories=["Hats"], k=4
            ),
            timeout=10,
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Hats" in error.value.details() and "Shoes" in error.value.details()
    # A code has no gender of its own: the request's is used for the pairing rule.
    reply = recommend(
        recommender_pb2.RecommendRequest(
            query=common_pb2.Query(vector=common_pb2.LatentVector(values=codes.mu[row])),
            method=METHOD_ENUM["mu_l2"],
            gender="Women",
            k=5,
        ),
        timeout=10,
    )
    assert reply.matched_gender == "Women"
    assert not reply.query_category.from_label
    for pairing in reply.pairings:
        assert {i.item.gender for i in pairing.items} <= {"Women", "Unisex", ""}


def test_decode_traverse_and_random_start(decoder, reference):
    start = decoder.RandomStart(
        decoder_pb2.RandomStartRequest(seed=3, category="Eyewear"), timeout=10
    )
    latent_dim = reference.codes.mu.shape[1]
    assert start.item.sub_category == "Eyewear" and len(start.code.mu) == latent_dim
    assert start.item.image_ref == f"/api/image/{start.item.item_id}"
    assert start.category.sub_category == "Eyewear" and start.category.from_label
    assert all(lo < hi for lo, hi in zip(start.lower, start.upper, strict=True))
    sliders = start.sliders
    # One slider per dimension up to 16 dimensions, else the 16 leading directions.
    expected_labels = ["z0", "z1"] if latent_dim <= 16 else ["direction 1", "direction 2"]
    assert len(sliders.directions) == min(16, latent_dim)
    assert list(sliders.labels[:2]) == expected_labels
    assert all(lo < hi for lo, hi in zip(sliders.lower, sliders.upper, strict=True))
    footwear = decoder.RandomStart(
        decoder_pb2.RandomStartRequest(seed=1, category="Footwear"), timeout=10
    )
    assert footwear.item.master_category == "Footwear"
    with pytest.raises(grpc.RpcError) as error:
        decoder.RandomStart(decoder_pb2.RandomStartRequest(category="Hats"), timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND and "Eyewear" in error.value.details()
    listing = decoder.ListCategories(decoder_pb2.ListCategoriesRequest(), timeout=10)
    counts = {c.sub_category: c.items for c in listing.categories}
    assert sum(counts.values()) == len(reference.codes)
    assert {c.master_category for c in listing.categories if c.sub_category == "Sandal"} == {
        "Footwear"
    }
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
        ({"k": 5, "category": "Hats"}, grpc.StatusCode.NOT_FOUND),
    ],
)
def test_bad_search_requests_get_clear_statuses(search, request_fields, code):
    fields = {"query": common_pb2.Query(item_id="1164"), **request_fields}
    with pytest.raises(grpc.RpcError) as error:
        search(retrieval_pb2.SearchRequest(**fields), timeout=20)
    assert error.value.code() == code, error.value.details()
    assert error.value.details()


def test_partition_smaller_than_k_returns_all_it_has(search, reference):
    codes = reference.codes
    reply = search(
        retrieval_pb2.SearchRequest(query=common_pb2.Query(item_id=codes.item_ids[0]), k=1000),
        timeout=10,
    )
    sub, _ = _served_categories(search, reference)
    size = int((sub == sub[0]).sum())
    assert len(reply.results) == size - 1  # its whole subCategory but the query itself


def test_fuzzed_requests_never_break_the_services(search, recommend, decoder, reference):
    codes = reference.codes
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
        method, scope = int(rng.integers(-2, 8)), int(rng.integers(-1, 6))
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
                    query=q,
                    k=k,
                    method=method,
                    partition=int(rng.integers(-1, 5)),
                    target_categories=[[], ["Shoes"], ["??", "Bags"]][int(rng.integers(0, 3))],
                    gender=rng.choice(["", "Men", "x" * 50]),
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
    codes = reference.codes
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
