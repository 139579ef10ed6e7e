"""IVF sublists: recall of approximate search against exact, exactness of exact=True, ties by item
id, and filters and exclusions applied inside FAISS, on a Gaussian mixture and on real codes."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest

from atelier.clustering import by_labels
from atelier.search import (
    MAX_BATCH_EXCLUSIONS,
    METHODS,
    CodeSet,
    IndexOptions,
    SearchIndex,
    brute_force,
    query_space,
    rank,
    recall_at_k,
)

IVF = IndexOptions(kind="ivf")
PARTITIONS = 20


def _mixture(n: int, dim: int, seed: int) -> tuple[CodeSet, np.ndarray, np.ndarray, np.ndarray]:
    """Codes from a Gaussian mixture: PARTITIONS partitions of uneven size, each a mixture of 40
    overlapping components (so sublists do not simply follow the components). Also held-out
    queries drawn the same way: their partitions, μ and z."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(PARTITIONS, dim))
    components = centres[:, None] + rng.normal(scale=1.5, size=(PARTITIONS, 40, dim))
    weights = rng.dirichlet(np.full(PARTITIONS, 3.0))
    epsilon = rng.standard_normal(dim)

    def draw(count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        partition = rng.choice(PARTITIONS, count, p=weights)
        mu = components[partition, rng.integers(40, size=count)]
        mu = mu + rng.normal(scale=2.0, size=(count, dim))
        sigma = np.exp(rng.normal(np.log(0.4), 0.3, size=(count, dim)))
        z = mu + sigma * epsilon
        return partition, mu.astype(np.float32), sigma.astype(np.float32), z.astype(np.float32)

    partition, mu, sigma, z = draw(n)
    # Item ids in no particular row order: rows are storage slots, not id order.
    ids = [f"item{i:07d}" for i in rng.permutation(n)]
    query_partition, query_mu, _, query_z = draw(100)
    queries = np.stack([query_mu, query_z])
    return CodeSet(ids, mu, sigma, z), partition, query_partition, queries


class Mixture(NamedTuple):
    codes: CodeSet
    partitions: dict
    attributes: dict[str, np.ndarray]
    index: SearchIndex
    query_partition: np.ndarray
    queries: np.ndarray  # (2, n, d): μ and z


@pytest.fixture(scope="module")
def mixture() -> Mixture:
    codes, partition, query_partition, queries = _mixture(50_000, 64, seed=1)
    labels = np.array([f"p{p:02d}" for p in partition])
    partitions = {s: by_labels(codes.space(s), labels) for s in ("mu", "z")}
    rng = np.random.default_rng(2)
    attributes = {"colour": rng.choice(["red", "blue", "rare"], len(codes), p=[0.6, 0.395, 0.005])}
    index = SearchIndex(codes, partitions, attributes, options=IVF)
    return Mixture(codes, partitions, attributes, index, query_partition, queries)


def _queries(queries: np.ndarray, method: str) -> np.ndarray:
    return queries[1] if query_space(method) == "z" else queries[0]


def test_partitions_are_cut_into_sublists_holding_each_item_once(mixture):
    partitions, index = mixture.partitions, mixture.index
    for method in METHODS:
        layout = index.sublists(method)
        labels = partitions[query_space(method)].labels
        sizes = np.bincount(labels, minlength=PARTITIONS)
        assert np.array_equal(np.diff(layout.starts), [IVF.lists_for(int(n)) for n in sizes])
        assert layout.starts[-1] > 10 * PARTITIONS  # really cut, not one list per partition
        per_partition = np.add.reduceat(layout.sizes, layout.starts[:-1])
        assert np.array_equal(per_partition, sizes)
        assert np.array_equal(
            layout.owner, np.repeat(np.arange(PARTITIONS), np.diff(layout.starts))
        )


@pytest.mark.parametrize("method", METHODS)
def test_recall_at_10_with_the_default_nprobe(mixture, method):
    index, query_partition = mixture.index, mixture.query_partition
    vectors = _queries(mixture.queries, method)
    catalogue = recall_at_k(index, method, vectors, k=10)
    home = np.mean(
        [
            recall_at_k(index, method, vector[None], 10, [int(p)])
            for vector, p in zip(vectors, query_partition, strict=True)
        ]
    )
    assert catalogue >= 0.99 and home >= 0.99
    # One sublist is not enough: the search is approximate and the measure can tell.
    assert recall_at_k(index, method, vectors, k=10, nprobe=1) < 0.95


@pytest.mark.parametrize("method", METHODS)
def test_exact_search_equals_brute_force(mixture, method):
    codes, partitions, attributes, index, _, queries = mixture
    labels = partitions[query_space(method)].labels
    rng = np.random.default_rng(3)
    for number, vector in enumerate(_queries(queries, method)[:12]):
        chosen = sorted(rng.choice(PARTITIONS, 3, replace=False).tolist())
        eligible = np.flatnonzero(np.isin(labels, chosen) & (attributes["colour"] == "blue"))
        excluded = np.sort(rng.choice(eligible, 50, replace=False))
        for parts, where, exclude, rows in (
            (None, (), None, np.arange(len(codes))),
            (chosen, (("colour", ("blue",)),), excluded, np.setdiff1d(eligible, excluded)),
        ):
            k = (1, 10, 100)[number % 3]
            got_rows, got_scores = index.search(
                method, vector, k, parts, where, exclude, exact=True
            )
            want_rows, want_scores = brute_force(method, vector, codes, rows, k)
            assert np.array_equal(got_rows, want_rows)
            assert np.allclose(got_scores, want_scores, rtol=0, atol=1e-12)


@pytest.mark.parametrize("count", [100, MAX_BATCH_EXCLUSIONS + 1000])
def test_exclusions_never_shorten_an_approximate_result(mixture, count):
    codes, index = mixture.codes, mixture.index
    vector = mixture.queries[0][0]
    nearest, _ = brute_force("mu_l2", vector, codes, np.arange(len(codes)), count)
    excluded = np.sort(nearest)  # every item the probed sublists would have offered first
    rows, _ = index.search("mu_l2", vector, 10, exclude_rows=excluded)
    assert len(rows) == 10 and not np.isin(rows, excluded).any()
    rest = np.setdiff1d(np.arange(len(codes)), excluded)
    exact = index.search("mu_l2", vector, 10, exclude_rows=excluded, exact=True)[0]
    assert np.array_equal(exact, brute_force("mu_l2", vector, codes, rest, 10)[0])


def test_a_selective_filter_still_fills_k(mixture):
    attributes, index, query_partition = mixture.attributes, mixture.index, mixture.query_partition
    rare = np.flatnonzero(attributes["colour"] == "rare")
    for vector, p in zip(mixture.queries[0][:10], query_partition[:10], strict=True):
        in_home = rare[index.partitions["mu"].labels[rare] == p]
        rows, _ = index.search("cosine", vector, 10, [int(p)], (("colour", ("rare",)),))
        assert len(rows) == min(10, len(in_home)) and np.isin(rows, in_home).all()


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_ties_break_by_item_id_not_row(kind):
    """Forty copies of each of 1000 codes, ids in no relation to rows: equal scores come back in
    ascending id order, from FAISS as from brute force."""
    rng = np.random.default_rng(4)
    base = rng.normal(size=(1000, 8)).astype(np.float32)
    mu = np.repeat(base, 40, axis=0)
    sigma = np.full_like(mu, 0.5)
    ids = [f"id{i:06d}" for i in rng.permutation(len(mu))]
    codes = CodeSet(ids, mu, sigma, mu.copy())
    partitions = {s: by_labels(codes.space(s), np.zeros(len(mu), int)) for s in ("mu", "z")}
    index = SearchIndex(codes, partitions, options=IndexOptions(kind=kind, min_list_size=16))
    for method in METHODS:
        query = base[7].astype(np.float64)
        rows, scores = index.search(method, query, 25, exact=True)
        copies = np.arange(7 * 40, 8 * 40)
        assert np.array_equal(rows, sorted(copies, key=lambda r: ids[r])[:25])
        assert np.array_equal(rows, brute_force(method, query, codes, np.arange(len(mu)), 25)[0])
        assert np.ptp(scores) <= 1e-12


def test_rank_breaks_ties_by_id():
    scores = np.array([1.0, 3.0, 3.0, 2.0, 3.0])
    rows = np.array([10, 11, 12, 13, 14])
    ids = {10: "e", 11: "c", 12: "a", 13: "d", 14: "b"}
    got, got_scores = rank(scores, rows, 4, ids)
    assert got.tolist() == [12, 14, 11, 13] and got_scores.tolist() == [3.0, 3.0, 3.0, 2.0]
    assert rank(scores, rows, 10, ids)[0].tolist() == [12, 14, 11, 13, 10]


def test_index_options():
    assert IndexOptions().kind == "flat" and IndexOptions().lists_for(10**6) == 1
    assert IVF.lists_for(50) == 1  # small partitions get one list
    assert IVF.lists_for(10_000) == 50  # ½√n
    assert IVF.lists_for(1000) == 1000 // IVF.min_list_size  # lists of at least min_list_size
    with pytest.raises(ValueError, match="index kind"):
        IndexOptions(kind="hnsw")
    with pytest.raises(ValueError, match="nprobe"):
        IndexOptions(kind="ivf", nprobe=0)


@pytest.fixture(scope="module")
def real(tiny_csv, tiny_images, models_dir):
    """The 300 fixture images encoded by the committed model, in subCategory partitions."""
    from atelier.catalogue import load_images, read_catalogue_csv
    from atelier.modelstore import LoadedEncoder

    encoder = LoadedEncoder(models_dir)
    loaded = load_images(
        read_catalogue_csv(tiny_csv, tiny_images), encoder.metadata.image_size, progress=False
    )
    encoded = encoder.encode(loaded.images)
    codes = CodeSet([item.item_id for item in loaded.items], **encoded)
    subs = np.array([item.sub_category or "Unknown" for item in loaded.items])
    partitions = {s: by_labels(codes.space(s), subs) for s in ("mu", "z")}
    # Lists of about eight items, so 300 items are cut into many sublists.
    options = IndexOptions(kind="ivf", min_list_size=8)
    return codes, SearchIndex(codes, partitions, options=options)


@pytest.mark.parametrize("method", METHODS)
def test_real_codes(real, method):
    codes, index = real
    vectors = codes.space(query_space(method)).astype(np.float64)
    assert index.sublists(method).starts[-1] > 2 * len(index.partitions["mu"].names)
    for row in range(0, len(codes), 7):
        rows = np.flatnonzero(np.arange(len(codes)) != row)
        got = index.search(method, vectors[row], 10, None, (), np.array([row]), exact=True)
        want = brute_force(method, vectors[row], codes, rows, 10)
        assert np.array_equal(got[0], want[0])
        assert np.allclose(got[1], want[1], rtol=0, atol=1e-12)
    rows = np.arange(len(codes))
    assert recall_at_k(index, method, vectors, k=10, own_rows=rows) >= 0.99


def test_a_later_build_reuses_the_trained_sublists(mixture):
    """A replica that finds the generation's sublist centroids (kept in Redis) only assigns its
    items: the same lists and the same answers as the build that trained them."""
    trained = mixture.index.trained_lists()
    assert set(trained) == {"z", "mu", "unit"}
    again = SearchIndex(
        mixture.codes, mixture.partitions, mixture.attributes, options=IVF, trained=trained
    )
    for method in METHODS:
        first, second = mixture.index.sublists(method), again.sublists(method)
        assert np.array_equal(first.centroids, second.centroids)
        assert np.array_equal(first.sizes, second.sizes)
        query = _queries(mixture.queries, method)[0]
        assert all(
            np.array_equal(a, b)
            for a, b in zip(
                mixture.index.search(method, query, 10),
                again.search(method, query, 10),
                strict=True,
            )
        )
    assert not again.retrained
    # Reused partition by partition, by name: one whose list count no longer matches (it grew,
    # or another category took its place) is trained again, the others are not.
    names, counts, centroids = trained["z"]
    other_counts = counts.copy()
    other_counts[0] += 1  # as if the first partition had been cut into one list more
    grown = np.vstack([centroids[: counts[0]], centroids[:1], centroids[counts[0] :]])
    swapped = (names[1], names[0], *names[2:])
    rebuilt = SearchIndex(
        mixture.codes,
        mixture.partitions,
        options=IVF,
        trained={"z": (names, other_counts, grown)},
    )
    layout = rebuilt.sublists("fixed_eps")
    assert rebuilt.retrained and np.array_equal(np.diff(layout.starts), counts)
    assert np.array_equal(layout.centroids[counts[0] :], centroids[counts[0] :])
    renamed = SearchIndex(
        mixture.codes, mixture.partitions, options=IVF, trained={"z": (swapped, counts, centroids)}
    )
    assert renamed.retrained and np.array_equal(
        np.diff(renamed.sublists("fixed_eps").starts), counts
    )
