"""AP@k and cluster-to-class matching against hand-worked examples."""

from __future__ import annotations

import numpy as np
import pytest

from atelier.metrics import average_precision_at_k, match_clusters_to_classes, per_class_scores


def test_average_precision_hand_example():
    ranked = np.array([1, 0, 1, 0, 0], dtype=bool)
    # P@1 = 1, P@3 = 2/3; min(k=5, R=2) = 2
    assert average_precision_at_k(ranked, 5, 2) == pytest.approx((1 + 2 / 3) / 2)
    # R larger than k: divide by k; items past k are ignored
    assert average_precision_at_k(ranked, 2, 10) == pytest.approx(1 / 2)
    assert average_precision_at_k(np.ones(10, bool), 10, 50) == pytest.approx(1.0)
    assert average_precision_at_k(np.zeros(10, bool), 10, 50) == 0.0


def test_clusters_are_matched_by_overlap_not_label():
    classes = np.array(["a"] * 4 + ["b"] * 4 + ["c"] * 2)
    clusters = np.array([2, 2, 2, 1, 0, 0, 0, 0, 1, 1])
    assert match_clusters_to_classes(clusters, classes) == {2: "a", 0: "b", 1: "c"}
    scores = per_class_scores(clusters, classes)
    assert scores["b"] == {"accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert scores["a"]["precision"] == 1.0 and scores["a"]["recall"] == 0.75
    assert scores["c"]["precision"] == pytest.approx(2 / 3) and scores["c"]["recall"] == 1.0
