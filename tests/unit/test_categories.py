"""The category probe and the design sliders: predictions, serialisation, slider bases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from atelier.categories import CategoryPredictor
from atelier.sliders import slider_basis


def _blobs(seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = {"Shoes": [0, 0, 0], "Bags": [6, 0, 0], "Topwear": [0, 6, 0]}
    labels = np.repeat(list(centres), 100)
    vectors = np.vstack([rng.normal(centres[c], 1.0, size=(100, 3)) for c in centres])
    return vectors, labels


def test_predictor_recovers_separable_categories():
    vectors, labels = _blobs()
    predictor = CategoryPredictor.fit(vectors, labels)
    test_vectors, test_labels = _blobs(seed=1)
    prediction = predictor.predict(test_vectors)
    assert np.mean(prediction.labels == test_labels) > 0.97
    assert np.all((prediction.confidence > 1 / 3) & (prediction.confidence <= 1.0))
    probabilities = predictor.probabilities(test_vectors)
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    assert predictor.predict(np.array([[6.0, 0, 0]])).labels[0] == "Bags"


def test_predictor_survives_json_and_matches_scikit_learn():
    vectors, labels = _blobs()
    predictor = CategoryPredictor.fit(vectors, labels)
    again = CategoryPredictor.from_json(predictor.to_json())
    assert again.classes == predictor.classes
    assert np.allclose(again.probabilities(vectors), predictor.probabilities(vectors))
    scaled = (vectors - vectors.mean(0)) / vectors.std(0)
    reference = LogisticRegression(max_iter=1000, random_state=0).fit(scaled, labels)
    assert np.allclose(predictor.probabilities(vectors), reference.predict_proba(scaled), atol=1e-8)


def test_two_categories_and_one():
    vectors, labels = _blobs()
    keep = labels != "Topwear"
    predictor = CategoryPredictor.fit(vectors[keep], labels[keep])
    scaled = (vectors[keep] - vectors[keep].mean(0)) / vectors[keep].std(0)
    reference = LogisticRegression(max_iter=1000, random_state=0).fit(scaled, labels[keep])
    assert np.allclose(predictor.probabilities(vectors[keep]), reference.predict_proba(scaled))
    with pytest.raises(ValueError, match="at least two"):
        CategoryPredictor.fit(vectors[:100], labels[:100])


def test_sliders_are_the_latent_dimensions_for_a_small_latent():
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(200, 16)) * np.arange(1, 17)
    basis = slider_basis(mu)
    assert np.array_equal(basis.directions, np.eye(16)) and np.array_equal(
        basis.origin, np.zeros(16)
    )
    assert basis.labels[3] == "z3"
    assert np.allclose(basis.lower, mu.min(0) - mu.std(0))
    assert np.allclose(basis.upper, mu.max(0) + mu.std(0))
    assert np.allclose(basis.values(mu[5]), mu[5])


def test_sliders_follow_the_leading_directions_for_a_large_latent():
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(500, 32)) * 0.1
    mu[:, 7] += rng.normal(scale=5.0, size=500)  # the direction the codes vary most along
    basis = slider_basis(mu, max_sliders=16)
    assert basis.directions.shape == (16, 32)
    assert np.allclose(basis.directions @ basis.directions.T, np.eye(16), atol=1e-10)
    assert abs(basis.directions[0, 7]) > 0.99
    assert np.all(np.diff(basis.explained_variance) <= 1e-12)
    assert basis.labels[0] == "direction 1"
    values = basis.values(mu)
    assert np.all(values >= basis.lower) and np.all(values <= basis.upper)
