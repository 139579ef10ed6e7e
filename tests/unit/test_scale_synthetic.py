"""The scale benchmark's synthetic catalogue: drawn from a mixture fitted per subCategory, the same
items whatever the chunking, z = μ + σ ⊙ ε, labels from the component's own subCategory."""

from __future__ import annotations

import numpy as np
import pytest

from bench import synthetic
from bench.scale import recall_at_k, size_label, summarise

DIM = 4


def _real(seed: int = 0) -> synthetic.RealCodes:
    """Three well-separated subCategories of unequal size in a small latent space."""
    rng = np.random.default_rng(seed)
    sizes = {"Topwear": 600, "Shoes": 300, "Watches": 40}
    masters = {"Topwear": "Apparel", "Shoes": "Footwear", "Watches": "Accessories"}
    centres = {name: rng.normal(scale=10.0, size=DIM) for name in sizes}
    mu = np.concatenate([centres[n] + rng.normal(size=(k, DIM)) for n, k in sizes.items()])
    sigma = np.exp(rng.normal(-1.5, 0.2, size=mu.shape))
    subs = np.concatenate([[n] * k for n, k in sizes.items()])
    n = len(subs)
    labels = {
        "sub_category": subs,
        "master_category": np.array([masters[s] for s in subs]),
        "gender": np.where(subs == "Watches", "Women", "Men"),
        "article_type": np.array([f"{s} type" for s in subs]),
        "colour": np.array(["Red", "Blue"] * (n // 2)),
        "usage": np.array(["Casual"] * n),
        "season": np.array(["Summer"] * n),
    }
    return synthetic.RealCodes(
        [str(i) for i in range(n)], mu.astype(np.float32), sigma.astype(np.float32), labels
    )


@pytest.fixture(scope="module")
def fitted() -> tuple[synthetic.RealCodes, synthetic.Mixture]:
    real = _real()
    epsilon = np.linspace(-1.0, 1.0, DIM).astype(np.float32)
    return real, synthetic.fit_mixture(real, epsilon, items_per_component=200)


def test_components_follow_the_sub_categories(fitted) -> None:
    _, mixture = fitted
    assert mixture.sub_category.count("Topwear") == 3
    assert mixture.sub_category.count("Shoes") == 1
    assert mixture.sub_category.count("Watches") == 1
    shares = {s: 0.0 for s in set(mixture.sub_category)}
    for sub, weight in zip(mixture.sub_category, mixture.weights, strict=True):
        shares[sub] += weight
    assert shares["Topwear"] == pytest.approx(600 / 940)
    assert mixture.weights.sum() == pytest.approx(1.0)


def test_items_are_the_same_whatever_the_chunks(fitted) -> None:
    _, mixture = fitted
    whole = mixture.sample(0, 2 * synthetic.SAMPLE_BLOCK + 10)
    first = mixture.sample(5, synthetic.SAMPLE_BLOCK)
    last = mixture.sample(5 + synthetic.SAMPLE_BLOCK, synthetic.SAMPLE_BLOCK + 5)
    for name in ("mu", "sigma", "z", "component"):
        joined = np.concatenate([getattr(first, name), getattr(last, name)])
        np.testing.assert_array_equal(joined, getattr(whole, name)[5:])
    assert first.item_ids[0] == "s00000005" and whole.metadata[7] == first.metadata[2]
    assert len(mixture.sample(3, 0)) == 0


def test_codes_and_labels_follow_the_component(fitted) -> None:
    real, mixture = fitted
    drawn = mixture.sample(0, 20_000)
    np.testing.assert_allclose(drawn.z, drawn.mu + drawn.sigma * mixture.epsilon, rtol=1e-6)
    assert (drawn.sigma > 0).all()
    subs = np.array([m["sub_category"] for m in drawn.metadata])
    assert (subs == np.array(mixture.sub_category)[drawn.component]).all()
    assert {m["gender"] for m in drawn.metadata if m["sub_category"] == "Watches"} == {"Women"}
    assert {m["master_category"] for m in drawn.metadata if m["sub_category"] == "Shoes"} == {
        "Footwear"
    }
    # Each subCategory's synthetic codes sit where its real codes do, in its real share.
    for sub in ("Topwear", "Shoes", "Watches"):
        real_mean = real.mu[real.labels["sub_category"] == sub].mean(axis=0)
        np.testing.assert_allclose(drawn.mu[subs == sub].mean(axis=0), real_mean, atol=0.3)
    assert np.mean(subs == "Topwear") == pytest.approx(600 / 940, abs=0.02)


def test_another_seed_draws_other_items(fitted) -> None:
    _, mixture = fitted
    queries = synthetic.with_seed(mixture, 1, "q").sample(0, 100)
    assert queries.item_ids[0] == "q00000000"
    assert not np.allclose(queries.mu, mixture.sample(0, 100).mu)


def test_report_helpers() -> None:
    assert [size_label(n) for n in (200_000, 1_000_000, 10_000_000, 1234)] == [
        "200k",
        "1m",
        "10m",
        "1234",
    ]
    exact = [[("a", -1.0), ("b", -2.0)], [("c", -1.0), ("d", -3.0)]]
    approximate = [[("a", -1.0), ("x", -2.5)], [("c", -1.0), ("d", -3.0)]]
    assert recall_at_k(approximate, exact) == 0.75
    data = {
        "1m": {"items": 1_000_000, "exact": {"p99_ms": 4.0}, "write": {"items_per_s": 150_000}},
        "10m": {"items": 10_000_000, "ann": {"p99_ms": 12.0}, "write": {"items_per_s": 210_000}},
    }
    summarise(data)
    assert data["bulk_write_items_per_s"] == 210_000
    assert data["targets"]["1m.exact.p99_ms"]["met"] is True
    assert data["targets"]["10m.ann.p99_ms"]["met"] is False
    assert data["targets"]["10m.ann.recall_at_10"]["met"] == "not measured"
    assert data["targets"]["bulk_write_items_per_s"]["met"] is True
