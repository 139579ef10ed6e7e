"""FAISS search equals a float64 brute-force scan, for every method, scope, filter and k."""

from __future__ import annotations

import numpy as np
import pytest

from atelier.clustering import by_labels, fit_kmeans, from_centres
from atelier.generation import KMEANS, MASTER, SUB, categorise, index_partitions
from atelier.latent import log_likelihood
from atelier.recommend import gender_rule, genders_compatible, recommend
from atelier.search import (
    METHODS,
    CodeSet,
    IndexOptions,
    SearchIndex,
    brute_force,
    exact_scores,
    query_space,
)

SUBS = np.array(["Shoes", "Sandal", "Bags", "Wallets", "Topwear", "Bottomwear"])
MASTER_OF = {
    "Shoes": "Footwear",
    "Sandal": "Footwear",
    "Bags": "Accessories",
    "Wallets": "Accessories",
    "Topwear": "Apparel",
    "Bottomwear": "Apparel",
}
GENDERS = np.array(["Men", "Women", "Unisex", "Boys"])
IVF = IndexOptions(kind="ivf")


def _codes(n: int = 3000, dim: int = 16, seed: int = 0) -> tuple[CodeSet, dict[str, np.ndarray]]:
    """Codes shaped like a category-prior model's: six subCategories around their own means, tight
    σ, and a gender per item."""
    rng = np.random.default_rng(seed)
    family = rng.choice(len(SUBS), size=n, p=[0.3, 0.1, 0.15, 0.05, 0.3, 0.1])
    means = rng.normal(scale=4.0, size=(len(SUBS), dim))
    mu = means[family] + rng.normal(scale=1.0, size=(n, dim))
    sigma = np.exp(rng.normal(-1.8, 0.4, size=(n, dim)))
    eps = rng.standard_normal(dim)
    ids = [f"{i:06d}" for i in range(n)]
    codes = CodeSet(
        ids, mu.astype(np.float32), sigma.astype(np.float32), (mu + sigma * eps).astype(np.float32)
    )
    attributes = {
        SUB: SUBS[family],
        MASTER: np.array([MASTER_OF[s] for s in SUBS[family]]),
        "gender": GENDERS[rng.choice(4, size=n, p=[0.45, 0.4, 0.1, 0.05])],
    }
    return codes, attributes


@pytest.fixture(scope="module")
def labelled():
    return _codes()


@pytest.fixture(scope="module")
def codes(labelled) -> CodeSet:
    return labelled[0]


@pytest.fixture(scope="module")
def partitionings(labelled):
    codes, attributes = labelled
    kmeans = {space: fit_kmeans(codes.space(space), codes.item_ids, 3) for space in ("mu", "z")}
    return index_partitions(codes, attributes, MASTER_OF, kmeans)


@pytest.fixture(scope="module")
def index(partitionings) -> SearchIndex:
    return partitionings[KMEANS].index


@pytest.fixture(scope="module")
def ivf_index(labelled, partitionings) -> SearchIndex:
    """The k-means partitions cut into IVF sublists (about 15 per cluster)."""
    codes, attributes = labelled
    return SearchIndex(codes, partitionings[KMEANS].by_space, attributes, options=IVF)


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


@pytest.mark.parametrize("layout", ["flat", "ivf"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scope", ["cluster", "catalogue", "category", "nprobe2", "gender"])
@pytest.mark.parametrize("k", [1, 10, 137])
def test_search_equals_brute_force(labelled, index, ivf_index, layout, method, scope, k):
    """Flat indexes, and IVF sublists searched with exact=True, rank as numpy does."""
    codes, attributes = labelled
    index = ivf_index if layout == "ivf" else index
    rng = np.random.default_rng(k)
    space = query_space(method)
    partition = index.partitions[space]
    for query_row in rng.choice(len(codes), 15, replace=False):
        query = codes.space(space)[query_row]
        rows = np.arange(len(codes))
        parts, where = None, ()
        if scope in ("cluster", "nprobe2"):
            parts = partition.nearest(query, 1 if scope == "cluster" else 2)
            rows = rows[np.isin(partition.labels, parts)]
        if scope == "category":
            where = ((SUB, (attributes[SUB][query_row],)),)
            rows = rows[attributes[SUB] == attributes[SUB][query_row]]
        if scope == "gender":
            where = gender_rule("Women")
            rows = rows[genders_compatible("Women", attributes["gender"])]
        rows = rows[rows != query_row]
        got_rows, got_scores = index.search(
            method, query, k, parts, where, np.array([query_row]), exact=layout == "ivf"
        )
        want_rows, want_scores = brute_force(method, query, codes, rows, k)
        assert np.array_equal(got_rows, want_rows)
        assert np.allclose(got_scores, want_scores, rtol=0, atol=1e-12)


@pytest.mark.parametrize("level", [SUB, MASTER])
@pytest.mark.parametrize("method", ["fixed_eps", "loglik", "cosine"])
def test_category_partitions_search_their_own_items(labelled, partitionings, level, method):
    codes, attributes = labelled
    partitioning = partitionings[level]
    space = query_space(method)
    for name in partitioning.names:
        position = partitioning.position(name)
        query = codes.space(space)[7]
        got, _ = partitioning.index.search(method, query, 40, partitioning.members[position])
        members = np.flatnonzero(attributes[level] == name)
        assert np.array_equal(got, brute_force(method, query, codes, members, 40)[0])
        centre = codes.space(space)[members].astype(np.float64).mean(axis=0)
        assert np.allclose(partitioning.by_space[space].centres[position], centre, atol=1e-5)


@pytest.mark.parametrize("layout", ["flat", "ivf"])
def test_loglik_through_faiss_matches_eq2_for_slider_vectors(codes, index, ivf_index, layout):
    index = ivf_index if layout == "ivf" else index
    rng = np.random.default_rng(5)
    for _ in range(20):
        query = rng.normal(scale=3.0, size=16)  # anywhere the sliders can go
        rows, scores = index.search("loglik", query, 50, exact=True)
        direct = log_likelihood(query, codes.mu, codes.sigma)[0]
        assert np.array_equal(rows, np.lexsort((np.arange(len(codes)), -direct))[:50])
        assert np.allclose(scores, direct[rows], rtol=0, atol=1e-9)


def test_small_partition_returns_what_it_has(labelled):
    codes, attributes = labelled
    partitions = {space: by_labels(codes.space(space), attributes[SUB]) for space in ("mu", "z")}
    index = SearchIndex(codes, partitions)
    wallets = partitions["mu"].names.index("Wallets")
    size = int((partitions["mu"].labels == wallets).sum())
    rows, _ = index.search("mu_l2", codes.mu[0], 1000, [wallets])
    assert len(rows) == min(size, 1000)


def test_filter_on_an_unknown_attribute_is_refused(index, codes):
    with pytest.raises(ValueError, match="cannot filter on 'colour'"):
        index.search("mu_l2", codes.mu[0], 5, None, (("colour", ("Red",)),))


def test_labels_are_used_where_the_catalogue_has_them():
    from atelier.categories import CategoryPredictor

    rng = np.random.default_rng(3)
    mu = np.vstack([rng.normal(0, 1, (50, 4)), rng.normal(8, 1, (50, 4))])
    truth = np.array(["Shoes"] * 50 + ["Bags"] * 50)
    masters = np.array(["Footwear"] * 50 + ["Accessories"] * 50)
    subs = truth.copy()
    subs[[0, 60]] = ""  # two items came without a label
    subs[1] = "Bags"  # and one is labelled against its looks: the label wins
    masters[[0, 60]] = ""
    predictor = CategoryPredictor.fit(mu[subs != ""], subs[subs != ""])
    categories = categorise(mu, subs, masters, predictor)
    assert categories.subs[0] == "Shoes" and categories.subs[60] == "Bags"
    assert categories.subs[1] == "Bags" and categories.from_label[1]
    assert not categories.from_label[0] and 0.5 < categories.confidence[0] <= 1.0
    assert categories.confidence[5] == 1.0
    assert categories.masters[0] == "Footwear" and categories.masters[1] == "Accessories"
    assert categories.master_of == {"Shoes": "Footwear", "Bags": "Accessories"}


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
@pytest.mark.parametrize("level", [SUB, MASTER, KMEANS])
def test_recommend_matches_numpy_eq3(labelled, partitionings, method, level):
    codes, _ = labelled
    partitioning = partitionings[level]
    space = query_space(method)
    partition = partitioning.by_space[space]
    vectors = codes.space(space).astype(np.float64)
    count = len(partition.names)
    centres = np.stack([vectors[partition.labels == c].mean(0) for c in range(count)])
    assert np.allclose(centres, partition.centres, atol=1e-3)  # centres are the partition means
    for query_row in (3, 500, 2999):
        q = vectors[query_row]
        home = int(partition.labels[query_row])
        result = recommend(partitioning, method, q, 20, home, exclude_rows=np.array([query_row]))
        rows = np.flatnonzero(partition.labels == home)
        assert np.array_equal(
            result.similar[0], brute_force(method, q, codes, rows[rows != query_row], 20)[0]
        )
        assert set(result.pairings) == set(range(count)) - {home}
        for other, (got, _) in result.pairings.items():
            target = q + partition.centres[other].astype(np.float64) - partition.centres[home]
            members = np.flatnonzero(partition.labels == other)
            assert np.array_equal(got, brute_force(method, target, codes, members, 20)[0])


def test_pairing_by_category_with_the_gender_rule(labelled, partitionings):
    codes, attributes = labelled
    partitioning = partitionings[SUB]
    z = codes.z.astype(np.float64)
    topwear, shoes = partitioning.position("Topwear"), partitioning.position("Shoes")
    query_row = int(
        np.flatnonzero((attributes[SUB] == "Topwear") & (attributes["gender"] == "Men"))[0]
    )
    result = recommend(
        partitioning,
        "fixed_eps",
        z[query_row],
        15,
        topwear,
        [shoes],
        gender_rule("Men"),
        np.array([query_row]),
    )
    assert list(result.pairings) == [shoes]
    rows, _ = result.pairings[shoes]
    assert set(attributes["gender"][rows]) <= {"Men", "Unisex"}
    centres = partitioning.by_space["z"].centres.astype(np.float64)
    target = z[query_row] + centres[shoes] - centres[topwear]
    allowed = np.flatnonzero(
        (attributes[SUB] == "Shoes") & np.isin(attributes["gender"], ["Men", "Unisex"])
    )
    assert np.array_equal(rows, brute_force("fixed_eps", target, codes, allowed, 15)[0])
    # Without the rule the same target reaches women's shoes too.
    free = recommend(partitioning, "fixed_eps", z[query_row], 15, topwear, [shoes])
    members = np.flatnonzero(attributes[SUB] == "Shoes")
    assert np.array_equal(
        free.pairings[shoes][0], brute_force("fixed_eps", target, codes, members, 15)[0]
    )


def test_gender_rule():
    genders = np.array(["Men", "Women", "Unisex", "Boys", ""])
    assert genders_compatible("Men", genders).tolist() == [True, False, True, False, True]
    assert genders_compatible("Unisex", genders).all() and genders_compatible("", genders).all()
    assert gender_rule("") == () and gender_rule("Unisex") == ()
    assert gender_rule("Girls") == (("gender", ("Girls", "Unisex", "")),)


@pytest.mark.parametrize("method", METHODS)
def test_a_row_scores_the_same_whatever_it_is_scored_with(method):
    """A short list must score each row bit for bit as the full scan does, or near-ties (the same
    photo encoded twice) would order differently. 64 dimensions, as the model's codes have: that
    is where a BLAS matrix-vector product rounds a row by its neighbours."""
    codes, _ = _codes(n=2000, dim=64)
    query = codes.space(query_space(method))[11].astype(np.float64)
    everything = exact_scores(method, query, codes, np.arange(len(codes)))
    rng = np.random.default_rng(6)
    for size in (1, 3, 42, 57, 500):
        rows = rng.choice(len(codes), size, replace=False)
        assert np.array_equal(exact_scores(method, query, codes, rows), everything[rows])
