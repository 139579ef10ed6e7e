"""FAISS search equals a float64 brute-force scan, for every method, scope, filter and k."""

from __future__ import annotations

import numpy as np
import pytest

from atelier.clustering import by_category, fit_kmeans, from_centres
from atelier.latent import log_likelihood
from atelier.search import METHODS, CodeSet, SearchIndex, brute_force, exact_scores, query_space


def _codes(n: int = 3000, dim: int = 16, seed: int = 0) -> CodeSet:
    """Codes shaped like the guided model's: three families far apart on their own axes, tight σ."""
    rng = np.random.default_rng(seed)
    family = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])
    mu = rng.normal(scale=1.5, size=(n, dim))
    mu[np.arange(n), family] += 10.0
    sigma = np.exp(rng.normal(-1.8, 0.4, size=(n, dim)))
    eps = rng.standard_normal(dim)
    categories = np.array(["Footwear", "Bags", "Eyewear"])[family]
    ids = [f"{i:06d}" for i in range(n)]
    return CodeSet(
        ids,
        mu.astype(np.float32),
        sigma.astype(np.float32),
        (mu + sigma * eps).astype(np.float32),
        categories,
    )


@pytest.fixture(scope="module")
def codes() -> CodeSet:
    return _codes()


@pytest.fixture(scope="module")
def index(codes) -> SearchIndex:
    partitions = {space: fit_kmeans(codes.space(space), codes.item_ids, 3) for space in ("mu", "z")}
    return SearchIndex(codes, partitions)


def test_exact_scores_follow_the_definitions(codes):
    rows = np.arange(50)
    q = codes.mu[100].astype(np.float64)
    assert np.allclose(
        exact_scores("loglik", q, codes, rows),
        log_likelihood(q, codes.mu[:50], codes.sigma[:50])[0],
    )
    assert np.allclose(
        exact_scores("mu_l2", q, codes, rows), -np.linalg.norm(codes.mu[:50] - q, axis=1)
    )
    assert np.allclose(exact_scores("cityblock", q, codes, rows), -np.abs(codes.mu[:50] - q).sum(1))
    z = codes.z[100].astype(np.float64)
    assert np.allclose(
        exact_scores("fixed_eps", z, codes, rows), -np.linalg.norm(codes.z[:50] - z, axis=1)
    )


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scope", ["cluster", "catalogue", "category", "nprobe2"])
@pytest.mark.parametrize("k", [1, 10, 137])
def test_search_equals_brute_force(codes, index, method, scope, k):
    rng = np.random.default_rng(k)
    space = query_space(method)
    partition = index.partitions[space]
    for query_row in rng.choice(len(codes), 15, replace=False):
        query = codes.space(space)[query_row]
        rows = np.arange(len(codes))
        parts, category = None, None
        if scope in ("cluster", "nprobe2"):
            parts = partition.nearest(query, 1 if scope == "cluster" else 2)
            rows = rows[np.isin(partition.labels, parts)]
        if scope == "category":
            category = codes.categories[query_row]
            rows = rows[codes.categories == category]
        rows = rows[rows != query_row]
        got_rows, got_scores = index.search(
            method, query, k, parts, category, exclude_row=int(query_row)
        )
        want_rows, want_scores = brute_force(method, query, codes, rows, k)
        assert np.array_equal(got_rows, want_rows)
        assert np.allclose(got_scores, want_scores, rtol=0, atol=1e-12)


def test_loglik_through_faiss_matches_eq2_for_slider_vectors(codes, index):
    rng = np.random.default_rng(5)
    for _ in range(20):
        query = rng.normal(scale=3.0, size=16)  # anywhere the sliders can go
        rows, scores = index.search("loglik", query, 50)
        direct = log_likelihood(query, codes.mu, codes.sigma)[0]
        assert np.array_equal(rows, np.lexsort((np.arange(len(codes)), -direct))[:50])
        assert np.allclose(scores, direct[rows], rtol=0, atol=1e-9)


def test_small_partition_returns_what_it_has(codes):
    partitions = {space: by_category(codes.space(space), codes.categories) for space in ("mu", "z")}
    index = SearchIndex(codes, partitions)
    eyewear = int(np.flatnonzero(np.array(partitions["mu"].names) == "Eyewear")[0])
    size = int((partitions["mu"].labels == eyewear).sum())
    rows, _ = index.search("mu_l2", codes.mu[0], 1000, [eyewear])
    assert len(rows) == min(size, 1000)


def test_bad_arguments_raise(index, codes):
    with pytest.raises(ValueError, match="k must be"):
        index.search("mu_l2", codes.mu[0], 0)
    with pytest.raises(ValueError, match="k must be"):
        index.search("mu_l2", codes.mu[0], 1001)
    with pytest.raises(ValueError, match="unknown method"):
        index.search("hamming", codes.mu[0], 5)
    with pytest.raises(ValueError, match="non-zero"):
        index.search("cosine", np.zeros(16), 5)


def test_kmeans_is_independent_of_row_order(codes):
    forward = fit_kmeans(codes.mu, codes.item_ids, 3)
    perm = np.random.default_rng(1).permutation(len(codes))
    shuffled = fit_kmeans(codes.mu[perm], [codes.item_ids[i] for i in perm], 3)
    assert np.array_equal(forward.centres, shuffled.centres)
    assert np.array_equal(forward.labels[perm], shuffled.labels)
    rebuilt = from_centres(codes.mu, forward.centres)
    assert np.array_equal(rebuilt.labels, forward.labels)


@pytest.mark.parametrize("method", METHODS)
def test_recommend_matches_numpy_eq3(codes, index, method):
    from atelier.recommend import recommend

    space = query_space(method)
    partition = index.partitions[space]
    vectors = codes.space(space).astype(np.float64)
    centres = np.stack([vectors[partition.labels == c].mean(0) for c in range(3)])
    assert np.allclose(
        centres, partition.centres, atol=1e-3
    )  # k-means centres are the cluster means
    for query_row in (3, 500, 2999):
        q = vectors[query_row]
        result = recommend(index, method, q, 20, exclude_row=query_row)
        home = int(np.argmin(((partition.centres - q) ** 2).sum(1)))
        assert result.home == home
        rows = np.flatnonzero(partition.labels == home)
        assert np.array_equal(
            result.similar[0], brute_force(method, q, codes, rows[rows != query_row], 20)[0]
        )
        assert set(result.pairings) == {0, 1, 2} - {home}
        for other, (got, _) in result.pairings.items():
            target = (
                q
                + partition.centres[other].astype(np.float64)
                - partition.centres[home].astype(np.float64)
            )
            members = np.flatnonzero(partition.labels == other)
            assert np.array_equal(got, brute_force(method, target, codes, members, 20)[0])
