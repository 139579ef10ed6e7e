"""The evaluation's pieces against hand-worked examples: mAP grid, samplers, pairing coherence, split checks."""

from __future__ import annotations

import numpy as np
import pytest

from atelier.catalogue import SplitSpec, prepare_dataset
from atelier.evaluation import (
    Codes,
    SplitMismatch,
    check_split,
    natural_sample,
    pairing_coherence,
    retrieval_grid,
    sample_queries,
)


def test_retrieval_grid_by_hand():
    # Five items on a line; queries 0 (label a) and 2 (label b).
    mu = np.array([[0.0], [1.0], [3.6], [6.0], [10.0]])
    codes = Codes(mu, None, mu)
    labels = np.array(["a", "a", "b", "a", "b"])
    own = np.array(["x", "x", "y", "y", "y"])
    grid = retrieval_grid(
        codes,
        np.array([0, 2]),
        {"article_type": labels},
        {"full": None, "own": own},
        ("mu_l2",),
        ks=(2, 4),
    )
    full = grid["article_type"]["full"]["mu_l2"]
    # Query 0 ranks 1 (a), 2 (b), 3 (a), 4 (b); R = 2: AP@2 = ½(1), AP@4 = ½(1 + ⅔).
    # Query 2 ranks 3 (a), 1 (a), 0 (a), 4 (b); R = 1: AP@2 = 0, AP@4 = ¼.
    assert full["2"] == pytest.approx((0.5 + 0.0) / 2)
    assert full["4"] == pytest.approx(((1 + 2 / 3) / 2 + 0.25) / 2)
    scoped = grid["article_type"]["own"]["mu_l2"]
    # Query 0 sees only item 1 (a): ½ at both depths; query 2 sees 3 (a) then 4 (b): ½.
    assert scoped["2"] == pytest.approx(0.5) and scoped["4"] == pytest.approx(0.5)


def test_sample_queries_by_hand():
    families = np.array(["A", "A", "A", "B", "B", "C"])
    is_test = np.array([True, True, False, True, True, False])
    chosen = sample_queries(families, is_test, 1, seed=0)
    assert len(chosen) == 2
    assert chosen[0] in (0, 1) and chosen[1] in (3, 4)
    assert np.array_equal(chosen, sample_queries(families, is_test, 1, seed=0))
    assert sorted(sample_queries(families, is_test, 5, seed=0).tolist()) == [0, 1, 3, 4]


def test_natural_sample_follows_the_catalogue():
    rng = np.random.default_rng(0)
    families = rng.choice(["Topwear", "Shoes", "Eyewear"], size=20_000, p=[0.6, 0.3, 0.1])
    is_test = rng.random(20_000) < 0.15
    chosen = natural_sample(is_test, 2000, seed=1)
    assert len(chosen) == len(set(chosen.tolist())) == 2000
    assert is_test[chosen].all() and np.all(np.diff(chosen) > 0)
    shares = {f: float((families[chosen] == f).mean()) for f in ("Topwear", "Shoes", "Eyewear")}
    assert shares["Topwear"] == pytest.approx(0.6, abs=0.04)
    assert shares["Eyewear"] == pytest.approx(0.1, abs=0.03)
    # A per-family sample of the same size over-weights the small family.
    balanced = sample_queries(families, is_test, 200, seed=1)
    assert (families[balanced] == "Eyewear").mean() == pytest.approx(1 / 3)
    assert np.array_equal(chosen, natural_sample(is_test, 2000, seed=1))


def test_pairing_coherence_by_hand():
    # Topwear at 0 and 1.2 (centre 0.6), Shoes at 10, 11, 12 (centre 11).
    z = np.array([[0.0], [1.2], [10.0], [11.0], [12.0]])
    partition = np.array(["Topwear", "Topwear", "Shoes", "Shoes", "Shoes"])
    genders = np.array(["Men", "Women", "Men", "Women", "Men"])
    usages = np.array(["Casual", "Formal", "Casual", "Formal", "Formal"])
    result = pairing_coherence(
        z, partition, np.array([0, 1]), genders, usages, ("Topwear", "Shoes"), k=1
    )
    # Query 0 → 0 + 10.4 = 10.4: the men's casual shoe either way.
    # Query 1 → 1.2 + 10.4 = 11.6: free, the men's formal shoe at 12; with the rule, the women's at 11.
    assert result["pair_lists"] == 2
    free = result["without_gender_filter"]
    assert free["gender_match"] == pytest.approx(0.5) and free["usage_match"] == pytest.approx(1.0)
    assert result["gender_match"] == pytest.approx(1.0)
    assert result["usage_match"] == pytest.approx(1.0)
    assert 0.0 <= result["random_gender_match"] <= 1.0
    assert 0.0 <= result["random_usage_match"] <= 1.0


def test_check_split_refuses_another_split(tiny_csv):
    dataset = prepare_dataset(tiny_csv, progress=False)
    check_split(dataset, dataset.split.to_dict(), dataset.fingerprint, "model 9")
    with pytest.raises(SplitMismatch, match="trained with split"):
        check_split(dataset, SplitSpec(seed=1).to_dict(), dataset.fingerprint, "model 9")
    with pytest.raises(SplitMismatch, match="records no split"):
        check_split(dataset, None, dataset.fingerprint, "model 9")
    with pytest.raises(SplitMismatch, match="trained on data"):
        check_split(dataset, dataset.split.to_dict(), "0123456789abcdef", "model 9")
