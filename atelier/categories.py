"""Predict an item's category from its code alone: uploaded photos and slider positions have no label.

A multinomial logistic regression on the codes, fitted on the catalogue's labelled items. The
category prior makes categories linearly separable in the latent space, so a linear probe is all
it takes; the same probe runs in the evaluation (fitted on the training split) and in the
services (fitted once per generation on its labelled items and kept in Redis, so every replica
predicts alike). Prediction is numpy only: a standardisation, one matrix product and a softmax.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAX_FIT_ITEMS = (
    200_000  # a probe of a few dozen classes on a few dozen dimensions saturates well below
)


@dataclass(frozen=True)
class Prediction:
    labels: np.ndarray  # (n,) predicted category names
    confidence: np.ndarray  # (n,) the predicted category's probability


@dataclass(frozen=True)
class CategoryPredictor:
    """Category probabilities from codes: softmax(((x − mean) / scale) @ weights.T + bias)."""

    classes: tuple[str, ...]
    mean: np.ndarray  # (d,)
    scale: np.ndarray  # (d,)
    weights: np.ndarray  # (classes, d)
    bias: np.ndarray  # (classes,)

    @classmethod
    def fit(
        cls,
        vectors: np.ndarray,
        labels: Sequence[str],
        seed: int = 0,
        max_items: int = MAX_FIT_ITEMS,
    ) -> CategoryPredictor:
        from sklearn.linear_model import LogisticRegression

        vectors = np.asarray(vectors, np.float64)
        labels = np.asarray(labels).astype(str)
        if len(set(labels.tolist())) < 2:
            raise ValueError("a category predictor needs at least two labelled categories")
        if len(vectors) > max_items:
            keep = np.random.default_rng(seed).choice(len(vectors), max_items, replace=False)
            vectors, labels = vectors[keep], labels[keep]
        mean = vectors.mean(axis=0)
        scale = np.maximum(vectors.std(axis=0), 1e-12)
        model = LogisticRegression(max_iter=1000, random_state=seed)
        model.fit((vectors - mean) / scale, labels)
        weights, bias = model.coef_, model.intercept_
        if len(model.classes_) == 2:  # scikit-learn keeps one row for two classes
            weights = np.vstack([-weights[0] / 2, weights[0] / 2])
            bias = np.array([-bias[0] / 2, bias[0] / 2])
        return cls(tuple(str(c) for c in model.classes_), mean, scale, weights, bias)

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """(n, classes) in the order of `classes`."""
        vectors = np.atleast_2d(np.asarray(vectors, np.float64))
        logits = ((vectors - self.mean) / self.scale) @ self.weights.T + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        return probabilities / probabilities.sum(axis=1, keepdims=True)

    def predict(self, vectors: np.ndarray) -> Prediction:
        probabilities = self.probabilities(vectors)
        best = probabilities.argmax(axis=1)
        return Prediction(
            np.asarray(self.classes, dtype=object)[best].astype(str),
            probabilities[np.arange(len(best)), best],
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "classes": list(self.classes),
                "mean": self.mean.tolist(),
                "scale": self.scale.tolist(),
                "weights": self.weights.tolist(),
                "bias": self.bias.tolist(),
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> CategoryPredictor:
        data = json.loads(text)
        return cls(
            tuple(data["classes"]),
            np.asarray(data["mean"], np.float64),
            np.asarray(data["scale"], np.float64),
            np.asarray(data["weights"], np.float64),
            np.asarray(data["bias"], np.float64),
        )
